"""The benchmarks' second offline dataset ("synthetic"): generated data, not a real one.

scikit-learn's ``make_classification`` with fixed arguments, written to an npz that
dm-tune loads with ``dataset = "npz"`` (``root`` = the file): 2,000 examples, 32
features (12 informative, 4 redundant), 10 classes of one cluster each, class_sep 1.5, no
label flips of its own (dm-tune adds the noise). The same arguments in every benchmark.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ARGS = dict(n_samples=2000, n_features=32, n_informative=12, n_redundant=4, n_classes=10,
            n_clusters_per_class=1, class_sep=1.5, flip_y=0.0, random_state=7)


def write_synthetic(path: Path | str) -> Path:
    """Write the synthetic dataset to ``path`` (x float32, y int64) and return the path."""
    from sklearn.datasets import make_classification

    x, y = make_classification(**ARGS)
    path = Path(path)
    np.savez(path, x=x.astype(np.float32), y=y.astype(np.int64))
    return path
