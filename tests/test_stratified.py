"""The stratified split without scikit-learn: the same examples held out as sklearn's."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from dm_tune import datasets
from dm_tune.stratified import stratified_holdout


def _sklearn_holdout(labels: np.ndarray, n_out: int, seed: int) -> np.ndarray:
    _, out = train_test_split(np.arange(len(labels)), test_size=n_out, stratify=labels,
                              random_state=seed)
    return np.sort(out)


@pytest.mark.parametrize("counts", [
    [178] * 10,                # balanced (digits-like)
    [180, 170, 7, 2, 95],      # imbalanced, a class of 2
    [3, 3, 3, 3, 3, 3, 3],     # every remainder tied: the random tie-breaks matter
    [50, 49, 51, 2, 2, 2],
])
def test_holdout_equals_sklearn_train_test_split(counts: list[int]) -> None:
    rng = np.random.default_rng(sum(counts))
    labels = rng.permutation(np.repeat(np.arange(len(counts)) * 3 + 1, counts))
    classes = len(counts)
    checked = 0
    for seed in range(0, 4_000_000_000, 397_000_003):
        for fraction in (0.05, 0.125, 0.2, 0.37, 0.5, 0.8):
            n_out = int(np.ceil(fraction * len(labels)))
            if n_out < classes or len(labels) - n_out < classes:
                continue
            mine = np.sort(stratified_holdout(labels, n_out, seed))
            np.testing.assert_array_equal(mine, _sklearn_holdout(labels, n_out, seed))
            assert len(np.unique(mine)) == n_out
            checked += 1
    assert checked >= 20  # every case meets both sides' one-per-class floor often


def test_digits_read_from_the_bundled_file_equal_load_digits() -> None:
    pixels, labels = datasets._digits_arrays()
    bunch = load_digits()
    np.testing.assert_array_equal(pixels, bunch.data)
    np.testing.assert_array_equal(labels, bunch.target)
    assert datasets._digits_file() is not None  # the fast path, not the fallback


def test_preparing_digits_imports_neither_sklearn_nor_scipy() -> None:
    code = ("import sys\n"
            "from dm_tune.data import DataSpec, prepare_data\n"
            "data = prepare_data(DataSpec('digits', noise_kind='symmetric', noise_rate=0.4))\n"
            "print(len(data.y_train), len(data.y_val), len(data.y_test))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout.splitlines()
    assert out[1] == "[]"
    assert sum(map(int, out[0].split())) == 1797
