"""Recommending DM parameters at any rate from results or a loaded export."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dm_tune.guidelines.results import CampaignResults, Recommendation, Trend, TrendPoint

__all__ = ["recommend"]

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

    With a fitted surface (``method="surface"``) the surface's recommendation at ``rate``
    (``Surface.optimum``) and its credible-set band; from a v2/v3 export the same values,
    interpolated linearly on the export's rate grid (exact at its 0.01 steps). Otherwise (top-k
    method, v1 export, a v3 kind that fell back to top-k) the trend and its band
    interpolated linearly between searched rates. Outside the searched rates the
    nearest searched rate's values are used, with a warning and ``extrapolated=True``.

    Raises:
        ValueError: unknown noise kind, or rate outside [0, 1).
    """
    if not (isinstance(rate, int | float) and 0.0 <= rate < 1.0):
        raise ValueError(f"noise rate must be in [0, 1), got {rate!r}")
    if isinstance(source, CampaignResults):
        trends, dense = source.trends, {}
    else:
        trends, dense = _trends_from_export(source), _surface_from_export(source)
    if kind not in trends or not trends[kind].points:
        known = ", ".join(sorted(trends)) or "none"
        raise ValueError(f"no results for noise kind {kind!r}; known kinds: {known}")
    rates = np.array(trends[kind].rates)
    extrapolated = bool(rate < rates[0] or rate > rates[-1])
    if extrapolated:
        warnings.warn(
            f"{kind} rate {rate:g} is outside the searched rates "
            f"[{rates[0]:g}, {rates[-1]:g}]: using the nearest searched rate's values",
            stacklevel=2,
        )
    surfaces = source.surfaces if isinstance(source, CampaignResults) else {}
    if kind in surfaces:
        point = surfaces[kind].optimum(rate)  # clamps to the searched range itself
        values = {name: getattr(point, name) for name in (*_FIELDS, *_PREDICTIONS)}
    else:
        values = _interpolate(dense.get(kind) or trends[kind].points, rate)
    return Recommendation(
        noise_kind=kind,
        noise_rate=float(rate),
        nearest_rates=_nearest_rates(rates, rate),
        extrapolated=extrapolated,
        **values,
    )


def _interpolate(points: Sequence[TrendPoint], rate: float) -> dict[str, float | None]:
    """Every field at ``rate``, linear between points (np.interp holds the end values
    outside the range: no linear run-off past the data); predictions when all known."""
    xs = [p.noise_rate for p in points]
    out: dict[str, float | None] = {}
    for name in (*_FIELDS, *_PREDICTIONS):
        ys = [getattr(p, name) for p in points]
        out[name] = None if None in ys else float(np.interp(rate, xs, ys))
    return out


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
