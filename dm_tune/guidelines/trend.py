"""The trend of the recommended parameters against the noise rate (pure numpy)."""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from dm_tune.guidelines.results import (
    DEFAULT_INTERVAL,
    DEFAULT_RESAMPLES,
    DEFAULT_TOP_K,
    SettingResult,
    Trend,
    TrendPoint,
)

__all__ = ["fit_trends"]


def fit_trends(
    settings: Sequence[SettingResult],
    *,
    top_k: int = DEFAULT_TOP_K,
    resamples: int = DEFAULT_RESAMPLES,
    interval: float = DEFAULT_INTERVAL,
    seed: int = 0,
) -> dict[str, Trend]:
    """Fit one trend per noise kind from each setting's top-k trials."""
    by_kind: dict[str, list[TrendPoint]] = defaultdict(list)
    for s in settings:
        if s.trials:
            by_kind[s.noise_kind].append(
                _trend_point(s, top_k=top_k, resamples=resamples, interval=interval, seed=seed)
            )
    return {
        kind: Trend(kind, tuple(sorted(points, key=lambda p: p.noise_rate)))
        for kind, points in sorted(by_kind.items())
    }


def _trend_point(
    s: SettingResult, *, top_k: int, resamples: int, interval: float, seed: int
) -> TrendPoint:
    """Centre and bootstrap band of one setting's top-k parameters."""
    values = np.array([t.val_accuracy for t in s.trials])
    modes = np.array([t.emphasis_mode for t in s.trials])
    variances = np.array([t.emphasis_variance for t in s.trials])
    k = min(top_k, len(values))
    centre = _top_k_centre(values[None], modes[None], variances[None], k, s.variance_log)
    # Seed per setting (not per position) so a band does not change when settings are added.
    rng = np.random.default_rng([seed, zlib.crc32(f"{s.noise_kind}/{s.noise_rate}".encode())])
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    boot = _top_k_centre(values[idx], modes[idx], variances[idx], k, s.variance_log)
    tail = (1.0 - interval) / 2.0
    low = np.quantile(boot, tail, axis=1)
    high = np.quantile(boot, 1.0 - tail, axis=1)
    return TrendPoint(
        noise_rate=s.noise_rate,
        emphasis_mode=float(centre[0, 0]),
        emphasis_mode_low=float(min(low[0], centre[0, 0])),
        emphasis_mode_high=float(max(high[0], centre[0, 0])),
        emphasis_variance=float(centre[1, 0]),
        emphasis_variance_low=float(min(low[1], centre[1, 0])),
        emphasis_variance_high=float(max(high[1], centre[1, 0])),
        n_trials=len(values),
        k=k,
    )


def _top_k_centre(
    values: np.ndarray, modes: np.ndarray, variances: np.ndarray, k: int, log_variance: bool
) -> np.ndarray:
    """Rank-weighted mean of the top-k rows' parameters; returns shape (2, rows).

    Rank weights k, k-1, ..., 1: the best trial counts most, yet one lucky trial on a
    noisy objective cannot alone set the recommendation.
    """
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    weights = np.arange(k, 0, -1, dtype=float)
    weights /= weights.sum()
    mode = np.take_along_axis(modes, order, axis=1) @ weights
    var = np.take_along_axis(variances, order, axis=1)
    # Average in the space the sampler searched: a log-scale variance gets a geometric mean.
    variance = np.exp(np.log(var) @ weights) if log_variance else var @ weights
    return np.stack([mode, variance])
