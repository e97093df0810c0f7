"""The noise transition matrix of a label set, estimated by confident learning (numpy).

Given out-of-fold predicted probabilities (each example's from models that never saw
it) and the given labels, the confident joint (Northcutt, Jiang and Chuang, JAIR 2021,
Sec. 3.1; ``cleanlab.count.compute_confident_joint`` with explicit per-class thresholds)
counts, for each class i, the given labels of the examples the fold models are most sure
belong to i: the top ``ANCHOR_FRACTION`` (at least ``MIN_ANCHORS``) of the examples
predicted as i, ranked by ``p(i | x)``. Row i of the counts, normalised, is
``T[i, :] = P(given | true i)`` (rows true classes, DESIGN.md section 2), and the
overall rate is ``sum_i prior_i (1 - T[i, i])`` with the prior the fold models'
predicted class frequencies, directly comparable with a corruption's realised rate
(when the nearest kind is pairflip, corrected for the anchors' contamination: below).

Why not cleanlab's default (thresholds at each class's mean self-confidence, counts
calibrated to the label marginals): with those thresholds about half of every class
counts, including the examples the fold models get wrong, and each of their errors is
counted as label noise. On clean labels that alone reads as 0.024 noise on the
benchmarks' synthetic data, and it grows with the noise as the fold models get worse
(+0.09 at symmetric 0.4, +0.13 at 0.6; benchmarks/noise_estimate.py). The most
confident fifth is far purer. Because the given labels of the selected examples are
what is counted, the selection must not depend on them: ``groups`` (the fold each
example was predicted in) makes the ranking per fold, so that an example competes only
with examples scored by the same models, models that saw none of their labels. Ranked
across folds, a wrong label pushes its neighbours (scored by models that trained on it)
out of the selection while it stays in, and the count leans towards the wrong labels
(digits, symmetric 0.6: +0.045 ranked across folds, +0.002 per fold; measured).

Pairflip's rate, corrected for the anchors' contamination. At pairflip rate rho class
i - 1's labels are i - 1 with probability 1 - rho and i with rho, so the fold models
confuse the two, and the examples they are most sure belong to i are partly (a
fraction c) truly of class i - 1 (measured with the benchmark's true labels, 20 %
counted, 10 draws at pairflip 0.4: c = 0.11 on digits, 0.12 on the synthetic data; the
next class 0.00). Row i of the counts is then forward ``f = T[i, i+1] = (1 - c) rho``,
backward ``b = T[i, i-1] = c (1 - rho)``, diagonal ``(1 - c)(1 - rho) + c rho``: the
plain rate ``1 - T[i, i] = f + b = rho + c (1 - 2 rho)`` over-estimates (every miss of
benchmarks/noise_estimate.py at pairflip 0.4 did), and the least-squares pairflip rate
``f + b / 2 = rho + c (1 - 3 rho) / 2`` is biased too. Eliminating ``c = b / (1 - rho)``
gives ``rho^2 + rho (b - f - 1) + f = 0``, whose smaller root
(:func:`pairflip_contamination`; ``f`` when ``b = 0``) is pairflip's rate. When the
nearest kind is pairflip, that root (from the prior-weighted f and b) is reported as
pairflip's rate, and the estimated rate is the root plus T's off-diagonal mass outside
the two neighbours of the diagonal (a matrix nearest pairflip need not be pairflip, so
that mass stays noise). The matrix stays as counted; ``extra["pairflip_correction"]``
records c, f, b and the uncorrected figures.

The root is counted from more anchors (``PAIRFLIP_ANCHOR_FRACTION``, 0.5): its
contamination is modelled, and at pairflip 0.4 what is left is sampling noise in the
counted labels, which more anchors reduce. The other off-diagonal mass, whose
contamination (the fold models' errors) is not modelled, is counted from the purest
anchors, ``fraction``: at 50 % it reads a model's errors as noise (+0.020 against
-0.002 in tests/test_estimate.py's general matrix). Reporting the root alone as the
estimated rate would read that matrix 0.09 low, so it is not done. The estimators
compared on the benchmark's saved out-of-fold probabilities, and why this one was kept:
benchmarks/README.md, "What limits the figures that miss".

The nearest of dm-tune's kinds: every kind's matrix is affine in the rate,
``T(r) = I + r (M - I)``, so the least-squares rate is ``<T - I, M - I> / ||M - I||^2``;
the fit is ``1 - ||T - T_kind(r*)||_F^2 / ||T - I||_F^2`` (1: exactly that kind; 0: no
better than "no noise"). This module reads and writes the estimate file that
``dm-tune recommend --from-estimate`` and ``[baselines] forward_estimate`` accept.

Example:
    >>> import numpy as np
    >>> T = np.array([[0.8, 0.2], [0.2, 0.8]])
    >>> nearest_kind(T).kind
    'symmetric'
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dm_tune import noise
from dm_tune.errors import EstimateError

__all__ = [
    "ANCHOR_FRACTION",
    "ESTIMATE_VERSION",
    "MIN_ANCHORS",
    "PAIRFLIP_ANCHOR_FRACTION",
    "EstimateError",
    "KindFit",
    "NoiseEstimate",
    "anchor_counts",
    "check_fold_labels",
    "estimate_from_probabilities",
    "held_out_log_loss",
    "kind_fits",
    "nearest_kind",
    "pairflip_contamination",
    "read_estimate",
    "write_estimate",
]

ESTIMATE_VERSION = 1
#: of the examples predicted as a class, the most confident fraction counted for it
ANCHOR_FRACTION = 0.2
#: ... but at least this many of them (all if fewer): a row of T needs enough labels
MIN_ANCHORS = 30
#: the counted fraction behind the contamination-corrected pairflip rate (module notes)
PAIRFLIP_ANCHOR_FRACTION = 0.5


@dataclass(frozen=True)
class KindFit:
    """How well one of dm-tune's noise kinds, at its least-squares rate, fits T
    (:func:`estimate_from_probabilities` replaces pairflip's rate by the
    contamination-corrected one and keeps the fit)."""

    kind: str
    rate: float
    fit: float


@dataclass
class NoiseEstimate:
    """What ``dm-tune estimate-noise`` reports and writes."""

    transition: list[list[float]]
    estimated_rate: float
    nearest_kind: str
    nearest_rate: float
    fit: float
    fits: list[KindFit]
    num_examples: int
    source: str = ""
    folds: int = 0
    realised_rate: float | None = None  # known only for synthetic noise
    true_kind: str | None = None
    true_rate: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The estimate file's document (see :func:`write_estimate`)."""
        doc = asdict(self)
        doc["fits"] = [asdict(f) for f in self.fits]
        return {"version": ESTIMATE_VERSION, **doc}


def check_fold_labels(labels: ArrayLike, num_classes: int, folds: int) -> NDArray[np.int64]:
    """The labels as int64 if K-fold estimation can use them; ``EstimateError`` if not."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise EstimateError("labels must be a non-empty 1-D array of integers")
    if folds < 2:
        raise EstimateError(f"folds must be at least 2, got {folds}")
    counts = np.bincount(arr.astype(np.int64), minlength=num_classes)
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise EstimateError(f"the labels hold only one class ({int(present[0])}): "
                            "there is no noise to estimate between classes")
    if counts.min() < folds:
        low = int(counts.argmin())
        raise EstimateError(f"class {low} has {int(counts[low])} example(s), fewer than the "
                            f"{folds} folds: every class needs one per fold")
    return arr.astype(np.int64)


def _kind_matrix(kind: str, num_classes: int, dataset: str | None) -> NDArray[np.float64]:
    """M with T_kind(r) = I + r (M - I): the kind's matrix at rate 1 (formally)."""
    eye = np.eye(num_classes)
    if kind == "symmetric":
        return (1.0 - eye) / (num_classes - 1)
    if kind == "pairflip":
        return np.roll(eye, 1, axis=1)
    mapping = noise.ASYMMETRIC_MAPS[dataset]  # type: ignore[index]
    matrix = eye.copy()
    for source, target in mapping.items():
        matrix[source, source] = 0.0
        matrix[source, target] = 1.0
    return matrix


def kind_fits(transition: ArrayLike, dataset: str | None = None) -> list[KindFit]:
    """Each kind's least-squares rate and fit to T, best first (asymmetric only for a
    dataset with a class map of the same size)."""
    t = noise.check_transition_matrix(transition, tolerance=1e-4)
    c = t.shape[0]
    kinds = ["symmetric", "pairflip"]
    mapping = noise.ASYMMETRIC_MAPS.get(dataset or "")
    if mapping and max(max(mapping), max(mapping.values())) < c:
        kinds.append("asymmetric")
    eye = np.eye(c)
    residual0 = float(np.sum((t - eye) ** 2))
    fits = []
    for kind in kinds:
        direction = _kind_matrix(kind, c, dataset) - eye
        rate = float(np.sum((t - eye) * direction) / np.sum(direction**2))
        rate = min(max(rate, 0.0), math.nextafter(noise.max_rate(kind, c), 0.0))
        residual = float(np.sum((t - eye - rate * direction) ** 2))
        fit = 1.0 - residual / residual0 if residual0 > 0 else 1.0
        fits.append(KindFit(kind, rate, fit))
    return sorted(fits, key=lambda f: -f.fit)


def nearest_kind(transition: ArrayLike, dataset: str | None = None) -> KindFit:
    """The kind that fits T best (:func:`kind_fits`' first)."""
    return kind_fits(transition, dataset)[0]


def pairflip_contamination(transition: ArrayLike,
                           prior: ArrayLike | None = None) -> tuple[float, float]:
    """Pairflip's rate rho and the anchors' contamination c that explain T's
    forward and backward entries (module notes).

    With ``f`` and ``b`` the ``prior``-weighted (default: uniform) means of
    ``T[i, i+1]`` and ``T[i, i-1]``, rho is the smaller root of
    ``rho^2 + rho (b - f - 1) + f = 0``, i.e. ``f = (1 - c) rho`` and
    ``b = c (1 - rho)``; a negative discriminant (no such c) is read as zero.
    rho is capped just below pairflip's bound 0.5, c is ``b / (1 - rho)``.

    Example:
        >>> T = [[0.54, 0.28, 0.0, 0.18], [0.18, 0.54, 0.28, 0.0],
        ...      [0.0, 0.18, 0.54, 0.28], [0.28, 0.0, 0.18, 0.54]]
        >>> [round(x, 6) for x in pairflip_contamination(T)]
        [0.4, 0.3]
    """
    t = noise.check_transition_matrix(transition, tolerance=1e-4)
    return _pairflip_root(*_neighbour_means(t, prior), t.shape[0])


def _pairflip_root(forward: float, backward: float, classes: int) -> tuple[float, float]:
    """(rho, c) from the neighbour means (:func:`pairflip_contamination`'s solution)."""
    s = 1.0 + forward - backward
    rho = (s - math.sqrt(max(s * s - 4.0 * forward, 0.0))) / 2.0
    rho = min(max(rho, 0.0), math.nextafter(noise.max_rate("pairflip", classes), 0.0))
    return rho, backward / (1.0 - rho)


def _neighbour_means(t: NDArray[np.float64],
                     prior: ArrayLike | None = None) -> tuple[float, float]:
    """The ``prior``-weighted (default: uniform) means of ``T[i, i+1]`` and ``T[i, i-1]``;
    with two classes the next class is the previous one, so the second is 0."""
    c = t.shape[0]
    weights = np.full(c, 1.0 / c) if prior is None else np.asarray(prior, dtype=np.float64)
    rows = np.arange(c)
    forward = float(weights @ t[rows, (rows + 1) % c])
    backward = 0.0 if c == 2 else float(weights @ t[rows, (rows - 1) % c])
    return forward, backward


def held_out_log_loss(labels: ArrayLike, pred_probs: ArrayLike) -> float:
    """Mean ``-log p(given label | x)`` (probabilities floored at 1e-7): with out-of-fold
    probabilities, a cross-validated proper score of how well they model the labels."""
    probs = np.asarray(pred_probs, dtype=np.float64)
    given = np.asarray(labels, dtype=np.int64)
    picked = probs[np.arange(len(given)), given]
    return float(-np.mean(np.log(np.maximum(picked, 1e-7))))


def anchor_counts(
    labels: ArrayLike,
    pred_probs: ArrayLike,
    groups: ArrayLike | None = None,
    fraction: float = ANCHOR_FRACTION,
    min_count: int = MIN_ANCHORS,
) -> NDArray[np.float64]:
    """Counts ``A[i, j]``: examples confidently of class i whose given label is j.

    Class i's fraction is ``max(fraction, min_count / n_i)`` (at most 1), ``n_i`` the
    examples predicted as i: a row estimated from a handful of labels is mostly sampling
    noise. Within each group (default: all examples one group), class i's threshold is
    the ``1 - fraction_i`` quantile of ``p(i | x)`` over its examples predicted as i;
    cleanlab's confident joint counts the examples at or above a threshold (above two: the most
    probable class). cleanlab puts 1 in a diagonal cell nobody was counted in, so a
    class always has one example labelled as itself per group.
    """
    from cleanlab.count import compute_confident_joint

    probs = np.asarray(pred_probs, dtype=np.float64)
    given = np.asarray(labels, dtype=np.int64)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ids = np.zeros(given.shape, dtype=np.int64) if groups is None else np.asarray(groups)
    if ids.shape != given.shape:
        raise ValueError(f"groups must have one entry per label ({given.shape[0]}), "
                         f"got shape {ids.shape}")
    c = probs.shape[1]
    predicted_all = np.bincount(probs.argmax(axis=1), minlength=c)
    fractions = np.minimum(1.0, np.maximum(fraction, min_count / np.maximum(predicted_all, 1)))
    counts = np.zeros((c, c))
    for group in np.unique(ids):
        rows = ids == group
        p = probs[rows]
        predicted = p.argmax(axis=1)
        thresholds = np.full(c, 2.0)  # a class nobody is predicted as: no examples
        for i in np.unique(predicted):
            thresholds[i] = np.quantile(p[predicted == i, i], 1.0 - fractions[i])
        joint = compute_confident_joint(given[rows], p, thresholds=thresholds,
                                        calibrate=False)  # [given, true]
        counts += joint.T
    return counts


def _rows(counts: NDArray[np.float64]) -> NDArray[np.float64]:
    """Counts [true, given] as a transition matrix; a true class with no confident example
    keeps its label (no evidence of noise)."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.where(totals > 0, counts / np.where(totals > 0, totals, 1.0),
                    np.eye(counts.shape[0]))


def estimate_from_probabilities(
    labels: ArrayLike,
    pred_probs: ArrayLike,
    dataset: str | None = None,
    groups: ArrayLike | None = None,
    fraction: float = ANCHOR_FRACTION,
    min_count: int = MIN_ANCHORS,
    pairflip_fraction: float | None = PAIRFLIP_ANCHOR_FRACTION,
) -> NoiseEstimate:
    """T, the overall rate and the nearest kind from out-of-fold probabilities.

    ``pred_probs`` (N, C) must be out-of-fold: a model's probabilities on its own
    training examples have memorised their noisy labels and hide the noise. ``groups``
    (N,): the fold each example was predicted in, so that the ranking is per fold (see
    the module's notes); ``fraction``, ``min_count``: :func:`anchor_counts`'. When the
    nearest kind is pairflip, pairflip's rate is :func:`pairflip_contamination`'s, from
    the anchors of ``pairflip_fraction`` (None: ``fraction``), and the estimated rate is
    that rate plus T's off-diagonal mass beyond the diagonal's two neighbours;
    ``extra["pairflip_correction"]`` says what was done.
    """
    probs = np.asarray(pred_probs, dtype=np.float64)
    given = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[0] != given.shape[0]:
        raise EstimateError(f"pred_probs must have shape ({given.shape[0]}, C), "
                            f"got {probs.shape}")
    given = check_fold_labels(given, probs.shape[1], 2)
    transition = _rows(anchor_counts(given, probs, groups, fraction, min_count))
    # the prior of the true classes: what the fold models predict (the given labels'
    # frequencies are the noisy prior, T^T times it)
    prior = np.bincount(probs.argmax(axis=1), minlength=probs.shape[1]) / len(given)
    best = kind_fits(transition, dataset)
    rate = float(prior @ (1.0 - np.diag(transition)))
    extra: dict[str, Any] = {}
    if best[0].kind == "pairflip":
        other = max(rate - sum(_neighbour_means(transition, prior)), 0.0)  # beyond i -/+ 1
        counted = transition
        if pairflip_fraction is not None and pairflip_fraction != fraction:
            counted = _rows(anchor_counts(given, probs, groups, pairflip_fraction, min_count))
        forward, backward = _neighbour_means(counted, prior)
        rho, contamination = _pairflip_root(forward, backward, counted.shape[0])
        extra["pairflip_correction"] = {
            "note": "pairflip's rate solves forward = (1 - c) rate, backward = c (1 - rate) "
                    "for the anchors' contamination c by the previous class (counted at "
                    "anchor_fraction); estimated_rate = that rate + other_rate (T's "
                    "off-diagonal mass beyond the two neighbours); transition is as counted",
            "anchor_fraction": fraction if pairflip_fraction is None else pairflip_fraction,
            "contamination": contamination,
            "forward": forward,
            "backward": backward,
            "other_rate": other,
            "uncorrected_rate": rate,
            "least_squares_rate": best[0].rate,
        }
        rate = min(rho + other, math.nextafter(1.0, 0.0))
        best = [KindFit(f.kind, rho, f.fit) if f.kind == "pairflip" else f for f in best]
    return NoiseEstimate(
        transition=transition.tolist(),
        estimated_rate=rate,
        nearest_kind=best[0].kind, nearest_rate=best[0].rate, fit=best[0].fit, fits=best,
        num_examples=int(given.shape[0]), extra=extra,
    )


def write_estimate(estimate: NoiseEstimate, path: Path | str) -> None:
    """Write the estimate file (JSON; ``version``, ``transition`` and the figures)."""
    Path(path).write_text(json.dumps(estimate.to_json(), indent=2) + "\n", encoding="utf-8")


def read_estimate(path: Path | str) -> dict[str, Any]:
    """An estimate file's document, checked: version, a transition matrix (rows true
    classes, summing to 1), a rate in [0, 1) and a known kind; ``EstimateError`` names
    the file and the fault in one line."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EstimateError(f"{path}: estimate file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EstimateError(f"{path}: not a JSON estimate file: "
                            f"{str(error).splitlines()[0]}") from None
    if not isinstance(doc, dict) or doc.get("version") != ESTIMATE_VERSION:
        raise EstimateError(f"{path}: not a dm-tune estimate file (version "
                            f"{ESTIMATE_VERSION} expected)")
    try:
        matrix = noise.check_transition_matrix(doc.get("transition"), tolerance=1e-4)
    except ValueError as error:
        raise EstimateError(f"{path}: transition: {error}") from None
    rate, kind = doc.get("estimated_rate"), doc.get("nearest_kind")
    if not (isinstance(rate, int | float) and math.isfinite(rate) and 0.0 <= rate < 1.0):
        raise EstimateError(f"{path}: estimated_rate must be a number in [0, 1), got {rate!r}")
    if kind not in noise.NOISE_KINDS:
        raise EstimateError(f"{path}: nearest_kind must be one of "
                            f"{', '.join(noise.NOISE_KINDS)}, got {kind!r}")
    nearest_rate = doc.get("nearest_rate")
    if not (isinstance(nearest_rate, int | float) and math.isfinite(nearest_rate)
            and 0.0 <= nearest_rate < noise.max_rate(kind, matrix.shape[0])):
        raise EstimateError(f"{path}: nearest_rate must be in [0, "
                            f"{noise.max_rate(kind, matrix.shape[0]):.4g}) for {kind}, "
                            f"got {nearest_rate!r}")
    doc["transition"] = matrix.tolist()
    return doc
