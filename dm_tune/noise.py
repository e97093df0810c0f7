"""Synthetic label noise: transition matrices, seeded corruption, digests (pure numpy).

Matrix convention (one, validated everywhere): ``T[i, j] = P(given label j | true class i)``;
rows are true classes and sum to 1. Noise is drawn from one ``numpy.random.Generator``
seeded explicitly, so every worker on every machine produces the same labels; the
sha256 :func:`label_digest` of the result is stored on the study to check that.

Kinds:
    symmetric: with probability r the label is replaced by one drawn uniformly from the
        *other* C-1 classes (DM paper, MentorNet, SCE convention).
    pairflip: with probability r, class c becomes (c + 1) mod C (Co-teaching).
    asymmetric: with probability r, class c becomes ``map[c]`` for the classes a
        dataset's map names (:data:`ASYMMETRIC_MAPS`); other classes stay clean.

Example:
    >>> import numpy as np
    >>> clean = np.repeat(np.arange(10), 100)
    >>> noisy = corrupt_labels(clean, 10, "symmetric", 0.4, seed=0)
    >>> round(noisy.realised_rate, 1)
    0.4
    >>> import torch
    >>> torch.as_tensor(noisy.labels).dtype  # the labels are an int64 array
    torch.int64
"""

from __future__ import annotations

import hashlib
import math
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "ASYMMETRIC_MAPS",
    "CIFAR100_COARSE",
    "check_transition_matrix",
    "NOISE_KINDS",
    "NoisyLabels",
    "corrupt_labels",
    "label_digest",
    "max_rate",
    "noise_seed",
    "realised_rate",
    "transition_matrix",
]

NOISE_KINDS = ("symmetric", "pairflip", "asymmetric")

# CIFAR-100 fine label -> superclass (coarse label), as in the dataset's own meta file.
CIFAR100_COARSE: tuple[int, ...] = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)  # fmt: skip


def _within_superclass_map(coarse: tuple[int, ...]) -> dict[int, int]:
    """Each class flips to the next class of its superclass, circularly (SCE convention)."""
    mapping: dict[int, int] = {}
    for superclass in sorted(set(coarse)):
        members = [c for c, s in enumerate(coarse) if s == superclass]
        for position, cls in enumerate(members):
            mapping[cls] = members[(position + 1) % len(members)]
    return mapping


#: dataset -> {true class: class it flips to}
ASYMMETRIC_MAPS: dict[str, dict[int, int]] = {
    # truck->automobile, bird->airplane, cat<->dog, deer->horse (SCE / Patrini et al.)
    "cifar10": {9: 1, 2: 0, 3: 5, 5: 3, 4: 7},
    # Pairs the 8x8 digits confuse: 1<->7 (a stroke), 3<->8 and 5->6 (a closed loop),
    # 9->4 (an open top); 0, 2, 4, 6 stay clean, like CIFAR-10's unmapped classes.
    "digits": {1: 7, 7: 1, 3: 8, 8: 3, 5: 6, 9: 4},
    "cifar100": _within_superclass_map(CIFAR100_COARSE),
}
ASYMMETRIC_MAPS["cifar10n"] = ASYMMETRIC_MAPS["cifar10"]
ASYMMETRIC_MAPS["cifar100n"] = ASYMMETRIC_MAPS["cifar100"]


class NoisyLabels(NamedTuple):
    """Corrupted labels and the fraction of them that differ from the true labels.

    ``labels`` is an int64 numpy array, so the common uses are one line each::

        y_noisy = torch.as_tensor(corrupt_labels(y, 10, "symmetric", 0.4, seed=0).labels)
        y_noisy = np.asarray(corrupt_labels(y, 10, "symmetric", 0.4, seed=0))  # __array__

    (``torch.as_tensor`` of the tuple itself cannot work: torch reads any tuple as a
    nested sequence, here an array and a float.) Unpacking still works:
    ``labels, rate = corrupt_labels(...)``.
    """

    labels: NDArray[np.int64]
    realised_rate: float

    def __array__(self, dtype=None, copy=None) -> NDArray:
        """The labels: ``np.asarray(noisy)`` (numpy, scikit-learn, pandas) is ``noisy.labels``."""
        if copy:
            return np.array(self.labels, dtype=dtype, copy=True)
        return np.asarray(self.labels, dtype=dtype)


def max_rate(kind: str, num_classes: int) -> float:
    """The exclusive upper bound of a noise rate: beyond it the noise beats the signal."""
    if kind == "symmetric":
        return (num_classes - 1) / num_classes
    if kind in ("pairflip", "asymmetric"):
        return 0.5
    raise ValueError(f"kind must be one of {', '.join(NOISE_KINDS)}; got {kind!r}")


def _validate(kind: str, num_classes: int, rate: float) -> None:
    if kind not in NOISE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(NOISE_KINDS)}; got {kind!r}")
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not (isinstance(rate, int | float) and math.isfinite(rate) and 0.0 <= rate < 1.0):
        raise ValueError(f"rate must be in [0, 1), got {rate!r}")
    bound = max_rate(kind, num_classes)
    if rate >= bound:
        raise ValueError(
            f"rate must be below {bound:.4g} for {kind} noise with {num_classes} classes "
            f"(at {bound:.4g} a noisy label is as likely as the true one), got {rate!r}"
        )


def _asymmetric_map(dataset: str | None, num_classes: int, mapping: dict[int, int] | None):
    if mapping is None:
        if dataset not in ASYMMETRIC_MAPS:
            known = ", ".join(sorted(ASYMMETRIC_MAPS))
            raise ValueError(
                f"asymmetric noise needs a dataset with a class map ({known}) or an "
                f"explicit mapping; got dataset={dataset!r}"
            )
        mapping = ASYMMETRIC_MAPS[dataset]
    for source, target in mapping.items():
        if not (0 <= source < num_classes and 0 <= target < num_classes) or source == target:
            raise ValueError(
                f"asymmetric mapping {source}->{target} is invalid for {num_classes} classes "
                "(both in [0, C), and different)"
            )
    return mapping


def transition_matrix(
    kind: str,
    num_classes: int,
    rate: float,
    dataset: str | None = None,
    mapping: dict[int, int] | None = None,
) -> NDArray[np.float64]:
    """T[i, j] = P(given label j | true class i) for a noise ``kind`` at ``rate``."""
    _validate(kind, num_classes, rate)
    eye = np.eye(num_classes)
    if kind == "symmetric":
        return (1.0 - rate) * eye + rate / (num_classes - 1) * (1.0 - eye)
    if kind == "pairflip":
        return (1.0 - rate) * eye + rate * np.roll(eye, 1, axis=1)
    matrix = eye.copy()
    for source, target in _asymmetric_map(dataset, num_classes, mapping).items():
        matrix[source, source] = 1.0 - rate
        matrix[source, target] = rate
    return matrix


def check_transition_matrix(matrix: ArrayLike, num_classes: int | None = None,
                            tolerance: float = 1e-6) -> NDArray[np.float64]:
    """``matrix`` as float64 if it is a transition matrix (square, C >= 2, entries in
    [0, 1], rows summing to 1 within ``tolerance``); ``ValueError`` naming the fault."""
    try:
        arr = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("transition matrix must be a square array of numbers") from None
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 2:
        raise ValueError(f"transition matrix must be square with at least 2 classes, "
                         f"got shape {arr.shape}")
    if num_classes is not None and arr.shape[0] != num_classes:
        raise ValueError(f"transition matrix is {arr.shape[0]}x{arr.shape[0]} but the data "
                         f"has {num_classes} classes")
    if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError("transition matrix entries must be probabilities in [0, 1]")
    sums = arr.sum(axis=1)
    worst = int(np.abs(sums - 1.0).argmax())
    if abs(sums[worst] - 1.0) > tolerance:
        raise ValueError(f"transition matrix row {worst} sums to {sums[worst]:.6g}, not 1 "
                         "(rows are true classes: T[i, j] = P(given j | true i))")
    return arr


def _check_labels(labels: ArrayLike, num_classes: int) -> NDArray[np.int64]:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}), got range [{arr.min()}, {arr.max()}]"
        )
    return arr


def realised_rate(true_labels: ArrayLike, given_labels: ArrayLike) -> float:
    """Fraction of examples whose given label differs from the true one."""
    true = np.asarray(true_labels)
    given = np.asarray(given_labels)
    if true.shape != given.shape:
        raise ValueError(f"label arrays differ in shape: {true.shape} vs {given.shape}")
    return float(np.mean(true != given)) if true.size else 0.0


def corrupt_labels(
    labels: ArrayLike,
    num_classes: int,
    kind: str,
    rate: float,
    seed: int,
    dataset: str | None = None,
    mapping: dict[int, int] | None = None,
) -> NoisyLabels:
    """Draw each given label from row ``T[true class]``; deterministic in ``seed``."""
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    true = _check_labels(labels, num_classes)
    matrix = transition_matrix(kind, num_classes, rate, dataset, mapping)
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(matrix, axis=1)
    cumulative[:, -1] = 1.0  # rounding must never leave a draw past the last class
    draws = rng.random(true.shape[0])
    given = (draws[:, None] < cumulative[true]).argmax(axis=1).astype(np.int64)
    return NoisyLabels(given, realised_rate(true, given))


def noise_seed(dataset: str, kind: str, rate: float, seed: int) -> int:
    """A 63-bit seed from (dataset, kind, rate, seed), identical on every machine."""
    key = f"{dataset}|{kind}|{float(rate):.6f}|{int(seed)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def label_digest(labels: ArrayLike) -> str:
    """sha256 hex digest of the labels as little-endian int64 bytes."""
    arr = np.ascontiguousarray(np.asarray(labels), dtype="<i8")
    return hashlib.sha256(arr.tobytes()).hexdigest()
