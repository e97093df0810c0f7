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

__all__ = ["MIN_DISTANCE", "Candidate", "Observed", "SurfaceLike", "confirm_candidates"]

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


def _take(chosen: list[Candidate], candidate: Candidate, mode_range: tuple[float, float],
          variance_range: tuple[float, float], min_distance: float) -> bool:
    """Append ``candidate`` unless it lies within ``min_distance`` of one chosen."""
    here = _scaled(candidate.emphasis_mode, candidate.emphasis_variance, mode_range,
                   variance_range)
    for other in chosen:
        there = _scaled(other.emphasis_mode, other.emphasis_variance, mode_range, variance_range)
        if math.dist(here, there) < min_distance:
            return False
    chosen.append(candidate)
    return True


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
    chosen: list[Candidate] = []
    if surface is None:
        finished = [p for p in observed if p.value is not None and math.isfinite(p.value)]
        # stable sort: on ties the earlier trial wins, as in selection.rank
        for point in sorted(finished, key=lambda p: -float(p.value)):
            if len(chosen) > count:
                break
            _take(chosen, Candidate(point.emphasis_mode, point.emphasis_variance,
                                    "best observed", None, point.number), mode_range,
                  variance_range, min_distance)
        return chosen
    if rate is None:
        raise ValueError("a surface needs the rate to be asked at")
    best = surface.optimum(rate)
    _take(chosen, Candidate(float(best.emphasis_mode), float(best.emphasis_variance),
                            "surface argmax", getattr(best, "predicted_accuracy", None)),
          mode_range, variance_range, min_distance)
    if not observed or count < 1:
        return chosen
    finished = [p for p in observed if p.value is not None and math.isfinite(p.value)]
    if finished:
        top = min(finished, key=lambda p: -float(p.value))  # the earlier one on ties
        _take(chosen, Candidate(top.emphasis_mode, top.emphasis_variance, "best observed",
                                None, top.number), mode_range, variance_range, min_distance)
    means, _ = surface.predict([p.emphasis_mode for p in observed],
                               [p.emphasis_variance for p in observed], rate)
    ranked = sorted(zip(observed, (float(m) for m in means), strict=True),
                    key=lambda pair: -pair[1])
    wanted = 1 + count
    for point, mean in ranked:
        if len(chosen) >= wanted:
            break
        _take(chosen, Candidate(point.emphasis_mode, point.emphasis_variance, "surface rank",
                                mean, point.number), mode_range, variance_range,
              min_distance)
    return chosen
