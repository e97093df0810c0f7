"""Which DM settings the confirmation re-trains at a rate (pure: no storage, no torch).

The surface's argmax is the setting the guidelines recommend, so it is confirmed first.
One noisy argmax is not enough: the surface can be wrong where it has few points, and
near the top many settings tie within a validation example or two. So ``count`` more
*observed* settings of that rate are confirmed beside it: first the best finished trial
(the search's own pick, which the selection used before any confirmation: the demo's
surface once put its argmax at symmetric 0.4 on a setting that confirmed at 0.20-0.37
clean-validation accuracy while the best trial confirmed above 0.9), then the others
ranked by the surface's posterior mean there. Observed means any trial with both params, pruned and
warm-start ones included: a pruned trial's final accuracy is unknown, but the surface
may still rank its setting high from its neighbours. A candidate within
:data:`MIN_DISTANCE` (normalised by the search ranges) of one already chosen is skipped:
re-training two settings that differ by a rounding error would waste the seeds.

Without a surface (too few trials, or a fit that failed) the best COMPLETE trials by
their own value stand in, with the same distinctness rule.

Example:
    >>> pts = [Observed(0.3, 8.0, 0.9), Observed(0.31, 8.1, 0.89), Observed(0.5, 16.0, 0.8)]
    >>> [(c.emphasis_mode, c.origin) for c in confirm_candidates(pts, 1, (0, 1), (0, 24))]
    [(0.3, 'best observed'), (0.5, 'best observed')]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "MIN_DISTANCE",
    "Candidate",
    "Observed",
    "SurfaceLike",
    "confirm_candidates",
    "distinct_candidates",
]

#: two settings closer than this (Euclidean, each axis scaled by its search range to
#: [0, 1]) count as one: 0.05 is ~1 mode step of 0.04 and ~1.2 of variance on [0, 24]
MIN_DISTANCE = 0.05


@dataclass(frozen=True)
class Observed:
    """One trial's setting and its objective (None when it did not complete)."""

    emphasis_mode: float
    emphasis_variance: float
    value: float | None = None
    number: int | None = None  # the trial's number, carried to the candidate


@dataclass(frozen=True)
class Candidate:
    """A setting to confirm; ``origin`` says why it was chosen."""

    emphasis_mode: float
    emphasis_variance: float
    origin: str  # "surface argmax", "surface rank" or "best observed"
    predicted: float | None = None  # the surface's posterior mean there
    source_trial: int | None = None  # the observed trial it comes from (None: the argmax)


class SurfaceLike(Protocol):
    """What :class:`dm_tune.guidelines.surface.Surface` offers that this module uses."""

    def optimum(self, rate: float) -> Any: ...

    def predict(self, modes: Any, variances: Any, rate: Any) -> tuple[Any, Any]: ...


def _scaled(mode: float, variance: float, mode_range: tuple[float, float],
            variance_range: tuple[float, float]) -> tuple[float, float]:
    mode_span = (mode_range[1] - mode_range[0]) or 1.0
    variance_span = (variance_range[1] - variance_range[0]) or 1.0
    return (mode - mode_range[0]) / mode_span, (variance - variance_range[0]) / variance_span


def distinct_candidates(points: Sequence[Sequence[float]], count: int, distance: float,
                        fill: bool = True) -> list[int]:
    """Indices of up to ``count`` of the ranked ``points`` (scaled coordinates), best first:
    each next one the best at least ``distance`` (Euclidean) from those already chosen;
    with ``fill``, too few that far apart are topped up with the best of the rest.

    One rule for both checks that re-train several settings: the confirmation (search
    ranges scaled to [0, 1], :data:`MIN_DISTANCE`, no fill) and ``recommend --verify``
    (the surface's scale, ``verify.CANDIDATE_DISTANCE``, filled up to its count).
    """
    chosen: list[int] = []
    for i, point in enumerate(points):
        if len(chosen) == count:
            break
        if all(math.dist(point, points[j]) >= distance for j in chosen):
            chosen.append(i)
    if not fill:
        return chosen
    rest = [i for i in range(len(points)) if i not in chosen]
    return chosen + rest[:count - len(chosen)]


def _distinct(ranked: list[Candidate], count: int, mode_range: tuple[float, float],
              variance_range: tuple[float, float], min_distance: float) -> list[Candidate]:
    """The first ``count`` of ``ranked`` that are :func:`distinct_candidates` of each other
    on the search ranges' scale."""
    points = [_scaled(c.emphasis_mode, c.emphasis_variance, mode_range, variance_range)
              for c in ranked]
    return [ranked[i] for i in distinct_candidates(points, count, min_distance, fill=False)]


def confirm_candidates(
    observed: Sequence[Observed],
    count: int,
    mode_range: tuple[float, float],
    variance_range: tuple[float, float],
    surface: SurfaceLike | None = None,
    rate: float | None = None,
    min_distance: float = MIN_DISTANCE,
) -> list[Candidate]:
    """The surface's argmax at ``rate`` and up to ``count`` more distinct observed settings:
    the best finished trial first, then by the surface's posterior mean at ``rate``.

    Args:
        observed: the rate's trials with both params, any state (value None if unknown).
        count: distinct settings wanted besides the argmax.
        mode_range, variance_range: the search ranges, which scale the distance.
        surface: the noise kind's fitted surface; None falls back to the best COMPLETE
            trials (``count + 1`` of them, the first standing in for the argmax).
        rate: the noise rate the surface is asked at (needed with a surface).
        min_distance: the normalised distance under which two settings count as one.

    Returns:
        Distinct candidates, best first; fewer when fewer distinct settings exist.
    """
    if surface is None:
        finished = [p for p in observed if p.value is not None and math.isfinite(p.value)]
        # stable sort: on ties the earlier trial wins, as in selection.rank
        ranked = [Candidate(p.emphasis_mode, p.emphasis_variance, "best observed", None,
                            p.number) for p in sorted(finished, key=lambda p: -float(p.value))]
        return _distinct(ranked, count + 1, mode_range, variance_range, min_distance)
    if rate is None:
        raise ValueError("a surface needs the rate to be asked at")
    best = surface.optimum(rate)
    ranked = [Candidate(float(best.emphasis_mode), float(best.emphasis_variance),
                        "surface argmax", getattr(best, "predicted_accuracy", None))]
    if observed and count >= 1:
        finished = [p for p in observed if p.value is not None and math.isfinite(p.value)]
        if finished:
            top = min(finished, key=lambda p: -float(p.value))  # the earlier one on ties
            ranked.append(Candidate(top.emphasis_mode, top.emphasis_variance,
                                    "best observed", None, top.number))
        means, _ = surface.predict([p.emphasis_mode for p in observed],
                                   [p.emphasis_variance for p in observed], rate)
        by_mean = sorted(zip(observed, (float(m) for m in means), strict=True),
                         key=lambda pair: -pair[1])
        ranked += [Candidate(p.emphasis_mode, p.emphasis_variance, "surface rank", mean,
                             p.number) for p, mean in by_mean]
    return _distinct(ranked, count + 1, mode_range, variance_range, min_distance)
