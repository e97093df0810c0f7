"""scikit-learn's stratified shuffle split, the same draw without importing scikit-learn.

`train_test_split(..., stratify=y, random_state=seed)` is the split dm-tune has always
made; importing `sklearn.model_selection` pulls in SciPy, about a second of every worker's
start-up (and of `status` and `export`). This module replays its random draws
(`StratifiedShuffleSplit._iter_indices` with `_approximate_mode`, scikit-learn 1.x) with
numpy's `RandomState`, so the held-out examples are the same ones; a test compares the two
over many seeds, sizes and class balances.
"""

from __future__ import annotations

import numpy as np

__all__ = ["stratified_holdout"]


def _approximate_mode(class_counts: np.ndarray, n_draws: int,
                      rng: np.random.RandomState) -> np.ndarray:
    """Draws per class closest to proportional, ties broken at random (sklearn's)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add_now = min(len(tied), need_to_add)
            floored[rng.choice(tied, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def stratified_holdout(labels: np.ndarray, n_out: int, seed: int) -> np.ndarray:
    """Positions in `labels` of the held-out side of a stratified split of `n_out` examples.

    The test side of `train_test_split(range(len(labels)), test_size=n_out,
    stratify=labels, random_state=seed)`, unordered. The caller checks that every class has
    at least 2 examples and each side at least one per class (sklearn's own refusals).
    """
    rng = np.random.RandomState(seed)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    kept = _approximate_mode(counts, len(labels) - n_out, rng)
    held = _approximate_mode(counts - kept, n_out, rng)
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    out = [members.take(rng.permutation(count), mode="clip")[keep:keep + take]
           for members, count, keep, take in zip(by_class, counts, kept, held, strict=True)]
    return np.concatenate(out)
