"""Recommending DM parameters at any rate from results or a loaded export."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dm_tune.guidelines.results import CampaignResults, Recommendation, Trend, TrendPoint

__all__ = ["ADVICE_STEP", "advice_at", "advice_rows", "recommend"]

#: the rates between searched ones that `run` and the report show the advice at
ADVICE_STEP = 0.05

_FIELDS = (
    "emphasis_mode",
    "emphasis_variance",
    "emphasis_mode_low",
    "emphasis_mode_high",
    "emphasis_variance_low",
    "emphasis_variance_high",
)
_PREDICTIONS = ("predicted_accuracy", "predicted_std")


def recommend(
    source: CampaignResults | Mapping[str, Any], kind: str, rate: float
) -> Recommendation:
    """Recommend DM parameters for ``kind`` at ``rate`` from results or a loaded export.

    With a fitted surface (``method="surface"``): the risk-aware advice at ``rate``
    (``advice.py``: the candidate with the best 10th-percentile accuracy, never a blend of
    two rates' picks), with the surface's credible-set band there, the risk model's
    expected accuracy, 10th percentile and collapse probability, and what is not
    determined at that rate. From a v4 export: the advice stored at the export's rate grid
    point nearest to ``rate`` (0.01 steps). A top-k kind (too few trials for a surface),
    or a v1-v3 export written before the risk model: the nearest point of its trend (or of
    its 0.01 surface grid). Parameters are never blended between rates: a blend of two
    rates' picks can land on DM's collapse cliff. Outside the searched rates the nearest
    searched rate's pick is used, with a warning and ``extrapolated=True``; its band and
    accuracies are then the surface's at ``rate`` (the GP's std and the risk model's
    spread, which grow away from the evidence), or, without a surface (an export, a
    top-k kind), None: nothing there says how sure the pick is (a note says so).

    Raises:
        ValueError: unknown noise kind, or rate outside [0, 1).
    """
    if not (isinstance(rate, int | float) and 0.0 <= rate < 1.0):
        raise ValueError(f"noise rate must be in [0, 1), got {rate!r}")
    if isinstance(source, CampaignResults):
        trends, dense, advice = source.trends, {}, {}
    else:
        trends, dense = _trends_from_export(source), _surface_from_export(source)
        advice = source.get("advice") or {}
    if kind not in trends or not trends[kind].points:
        known = ", ".join(sorted(trends)) or "none"
        raise ValueError(f"no results for noise kind {kind!r}; known kinds: {known}")
    rates = np.array(trends[kind].rates)
    extrapolated = bool(rate < rates[0] or rate > rates[-1])
    surfaces = source.surfaces if isinstance(source, CampaignResults) else {}
    if extrapolated:
        figures = (f"its figures are the surface's extrapolation to {rate:g}, with the "
                   "uncertainty the surface has there" if kind in surfaces else
                   f"no accuracy or band is estimated at {rate:g}: nothing was searched "
                   "there and this source holds no model beyond the searched rates")
        warnings.warn(
            f"{kind} rate {rate:g} is outside the searched rates "
            f"[{rates[0]:g}, {rates[-1]:g}]: the pick is the nearest searched rate's; "
            f"{figures}",
            stacklevel=2,
        )
    shared = {"noise_kind": kind, "noise_rate": float(rate),
              "nearest_rates": _nearest_rates(rates, rate), "extrapolated": extrapolated}
    if kind in surfaces:
        return Recommendation(**shared, **advice_at(source, kind, rate))
    if advice.get(kind):
        values = _nearest_advice(advice[kind], rate)
    else:
        points = dense.get(kind) or trends[kind].points  # a top-k kind, or a v1-v3 export
        nearest = min(points, key=lambda p: (abs(p.noise_rate - rate), p.noise_rate))
        values = {name: getattr(nearest, name) for name in (*_FIELDS, *_PREDICTIONS)}
    if extrapolated:
        values = _without_figures(values, rates, rate)
    return Recommendation(**shared, **values)


def _without_figures(values: dict[str, Any], rates: np.ndarray, rate: float) -> dict[str, Any]:
    """The nearest searched rate's pick without that rate's band and accuracies: beyond
    the searched rates an export or a top-k trend has no model, so nothing it holds says
    how sure the pick is there (its band and spread are the nearest rate's, narrow)."""
    blank = (*_FIELDS[2:], *_PREDICTIONS, "expected_accuracy", "low_accuracy",
             "collapse_probability")
    return {**{k: v for k, v in values.items() if k not in blank},
            **dict.fromkeys(blank), "notes": (
                f"no uncertainty estimate at {rate:g}: outside the searched rates "
                f"[{rates[0]:g}, {rates[-1]:g}] (the campaign's database gives the "
                "surface's extrapolation)",)}


def advice_at(results: CampaignResults, kind: str, rate: float) -> dict[str, Any]:
    """The recommendation's fields at ``rate`` from the kind's surface and risk model."""
    from dm_tune.guidelines.advice import advise, determination

    surface = results.surfaces[kind]
    at = surface.clamp(rate)
    best = advise(surface, results.settings_of(kind), at, results.verified.get(kind, ()))[0]
    notes = tuple(determination(surface, rate).sentences())
    risk = (best.expected_accuracy, best.low_accuracy, best.collapse_probability)
    if abs(rate - at) > 1e-9:
        # outside the searched rates the pick is the nearest searched rate's, but its band
        # and figures are the surface's at the asked rate: the GP's std and the risk
        # model's spread grow with the distance from the evidence (not that rate's spread)
        estimate = surface.risk.estimate([best.emphasis_mode], [best.emphasis_variance],
                                         rate)[0]
        risk = (estimate.expected, estimate.low, estimate.collapse_probability)
        notes = (f"outside the searched rates: the pick is {at:g}'s; the band and "
                 f"accuracies are the surface's extrapolation to {rate:g}", *notes)
    point = surface._point(rate, best.emphasis_mode, best.emphasis_variance)
    values = {name: getattr(point, name) for name in (*_FIELDS, *_PREDICTIONS)}
    return {
        **values,
        "expected_accuracy": risk[0],
        "low_accuracy": risk[1],
        "collapse_probability": risk[2],
        "origin": best.origin,
        "notes": notes,
    }


def advice_rows(results: CampaignResults, step: float = ADVICE_STEP) -> list[Recommendation]:
    """The advice at every ``step`` across each surface kind's searched range (the
    searched rates included), for the tables: one pick per rate, never a blend."""
    rows = []
    for kind in sorted(results.surfaces):
        lo, hi = results.surfaces[kind].searched_rates[0], results.surfaces[kind].searched_rates[-1]
        rates = sorted({round(lo + i * step, 2) for i in range(int((hi - lo) / step + 1e-9) + 1)}
                       | {round(hi, 2)} | set(results.surfaces[kind].searched_rates))
        for rate in rates:
            rows.append(recommend(results, kind, rate))
    return rows


def _nearest_advice(points: Sequence[Mapping[str, Any]], rate: float) -> dict[str, Any]:
    """A v4 export's advice at the grid rate nearest ``rate`` (ties: the lower rate)."""
    point = min(points, key=lambda p: (abs(float(p["noise_rate"]) - rate), p["noise_rate"]))
    names = (*_FIELDS, *_PREDICTIONS, "expected_accuracy", "low_accuracy",
             "collapse_probability", "origin")
    return {**{name: point.get(name) for name in names}, "notes": tuple(point.get("notes", ()))}


def _nearest_rates(rates: np.ndarray, rate: float) -> tuple[float, ...]:
    """The searched rates that bracket ``rate`` (one when it is searched or outside)."""
    exact = np.isclose(rates, rate, atol=1e-9)
    if exact.any():
        return (float(rates[exact][0]),)
    if rate < rates[0]:
        return (float(rates[0]),)
    if rate > rates[-1]:
        return (float(rates[-1]),)
    upper = int(np.searchsorted(rates, rate))
    return (float(rates[upper - 1]), float(rates[upper]))


def _trends_from_export(data: Mapping[str, Any]) -> dict[str, Trend]:
    """Rebuild the trends from an export dict."""
    return {
        kind: Trend(kind, tuple(TrendPoint(**p) for p in points))
        for kind, points in data["trends"].items()
    }


def _surface_from_export(data: Mapping[str, Any]) -> dict[str, tuple[TrendPoint, ...]]:
    """A v2 export's dense rate grid of surface optima per kind (empty for v1)."""
    return {
        kind: tuple(TrendPoint(**p) for p in points)
        for kind, points in (data.get("surface") or {}).items()
    }
