"""Recommending DM parameters at any rate from results or a loaded export."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from dm_tune.guidelines.results import CampaignResults, Recommendation, Trend, TrendPoint

__all__ = ["recommend"]


def recommend(
    source: CampaignResults | Mapping[str, Any], kind: str, rate: float
) -> Recommendation:
    """Recommend DM parameters for ``kind`` at ``rate`` from results or a loaded export.

    Between searched rates the trend and its band are interpolated linearly; outside
    them the nearest searched rate's values are used, with a warning and
    ``extrapolated=True``.

    Raises:
        ValueError: unknown noise kind, or rate outside [0, 1).
    """
    if not (isinstance(rate, int | float) and 0.0 <= rate < 1.0):
        raise ValueError(f"noise rate must be in [0, 1), got {rate!r}")
    trends = source.trends if isinstance(source, CampaignResults) else _trends_from_export(source)
    if kind not in trends or not trends[kind].points:
        known = ", ".join(sorted(trends)) or "none"
        raise ValueError(f"no results for noise kind {kind!r}; known kinds: {known}")
    points = trends[kind].points
    rates = np.array([p.noise_rate for p in points])
    extrapolated = bool(rate < rates[0] or rate > rates[-1])
    if extrapolated:
        warnings.warn(
            f"{kind} rate {rate:g} is outside the searched rates "
            f"[{rates[0]:g}, {rates[-1]:g}]: using the nearest searched rate's values",
            stacklevel=2,
        )

    def at(name: str) -> float:
        # np.interp holds the end values outside the range: no linear run-off past the data.
        return float(np.interp(rate, rates, [getattr(p, name) for p in points]))

    return Recommendation(
        noise_kind=kind,
        noise_rate=float(rate),
        emphasis_mode=at("emphasis_mode"),
        emphasis_variance=at("emphasis_variance"),
        emphasis_mode_low=at("emphasis_mode_low"),
        emphasis_mode_high=at("emphasis_mode_high"),
        emphasis_variance_low=at("emphasis_variance_low"),
        emphasis_variance_high=at("emphasis_variance_high"),
        nearest_rates=_nearest_rates(rates, rate),
        extrapolated=extrapolated,
    )


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
