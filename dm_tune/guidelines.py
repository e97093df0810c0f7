"""Guidelines: aggregate a campaign's studies, fit the trend, recommend, export.

This module only reads an Optuna storage (no training). It turns every study of a
campaign into per-setting results (selected DM parameters, top-k trials, baselines,
trial counts), fits a trend of the recommended parameters against the noise rate per
noise kind with a bootstrap band, and writes and reads a versioned export
(``docs/export-schema.md``).

Example:
    >>> results = load_campaign("sqlite:///dm_tune.db", "digits-quick")  # doctest: +SKIP
    >>> rec = recommend(results, "symmetric", 0.3)  # doctest: +SKIP
    >>> rec.emphasis_mode, rec.emphasis_variance  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import warnings
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

import dm_tune
from dm_tune.errors import NoResultsError

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "BaselineResult",
    "CampaignResults",
    "NoResultsError",
    "Provenance",
    "Recommendation",
    "Selection",
    "SettingResult",
    "Trend",
    "TrendPoint",
    "TrialPoint",
    "dumps_csv",
    "dumps_json",
    "fit_trends",
    "load_campaign",
    "load_export",
    "recommend",
    "summarize_baselines",
    "to_csv_rows",
    "to_export_dict",
    "validate_export",
    "write_csv",
    "write_json",
]

SCHEMA = "dm-tune/recommendations"
SCHEMA_VERSION = 1

MODE = "emphasis_mode"
VARIANCE = "emphasis_variance"

DEFAULT_TOP_K = 5
DEFAULT_RESAMPLES = 200
DEFAULT_INTERVAL = 0.9




# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class TrialPoint:
    """One COMPLETE DM trial: its parameters, objective and recorded outcomes."""

    number: int
    emphasis_mode: float
    emphasis_variance: float
    val_accuracy: float
    test_accuracy: float | None = None
    test_accuracy_at_best_val: float | None = None
    memorized_noisy_fraction: float | None = None


@dataclass(frozen=True)
class Selection:
    """The DM parameters selected for one setting (on clean validation only)."""

    emphasis_mode: float
    emphasis_variance: float
    val_accuracy: float
    test_accuracy: float | None
    test_accuracy_at_best_val: float | None
    memorized_noisy_fraction: float | None
    source: str  # "search" (best DM trial) or "confirm" (best mean over seeds)
    trial_number: int | None
    n_seeds: int = 1


@dataclass(frozen=True)
class BaselineResult:
    """Mean outcomes of one baseline loss over its seeds."""

    loss: str
    n: int
    val_accuracy: float | None
    test_accuracy: float | None
    test_accuracy_at_best_val: float | None
    memorized_noisy_fraction: float | None


@dataclass
class SettingResult:
    """Everything known about one (noise kind, rate) setting."""

    noise_kind: str
    noise_rate: float
    setting: str
    study_name: str
    trial_counts: dict[str, int]
    trials: list[TrialPoint]
    top_k: list[TrialPoint]
    selected: Selection | None
    baselines: dict[str, BaselineResult] = field(default_factory=dict)
    variance_log: bool = False  # the search space sampled the variance on a log scale

    def best_baseline(self) -> BaselineResult | None:
        """Return the baseline with the best mean clean-val accuracy (never test)."""
        scored = [b for b in self.baselines.values() if b.val_accuracy is not None]
        return max(scored, key=lambda b: (b.val_accuracy, b.loss), default=None)


@dataclass(frozen=True)
class TrendPoint:
    """The fitted recommendation at one searched rate, with its bootstrap band."""

    noise_rate: float
    emphasis_mode: float
    emphasis_mode_low: float
    emphasis_mode_high: float
    emphasis_variance: float
    emphasis_variance_low: float
    emphasis_variance_high: float
    n_trials: int
    k: int


@dataclass(frozen=True)
class Trend:
    """Recommended parameters against the noise rate for one noise kind."""

    noise_kind: str
    points: tuple[TrendPoint, ...]  # sorted by rate

    @property
    def rates(self) -> list[float]:
        """Return the searched rates."""
        return [p.noise_rate for p in self.points]


@dataclass(frozen=True)
class Provenance:
    """Where the numbers come from."""

    campaign: str
    config_hash: str | None
    dm_tune_version: str | None
    dataset: str | None
    model: str | None
    trial_counts: dict[str, int]
    created: str
    exported_by: str = dm_tune.__version__


@dataclass
class CampaignResults:
    """Aggregated results of one campaign."""

    provenance: Provenance
    settings: list[SettingResult]
    trends: dict[str, Trend]
    top_k: int = DEFAULT_TOP_K
    resamples: int = DEFAULT_RESAMPLES
    interval: float = DEFAULT_INTERVAL
    seed: int = 0

    @property
    def campaign(self) -> str:
        """Return the campaign name."""
        return self.provenance.campaign

    def kinds(self) -> list[str]:
        """Return the noise kinds in a stable order."""
        return sorted({s.noise_kind for s in self.settings})

    def settings_of(self, kind: str) -> list[SettingResult]:
        """Return one kind's settings sorted by rate."""
        return sorted(
            (s for s in self.settings if s.noise_kind == kind), key=lambda s: s.noise_rate
        )


@dataclass(frozen=True)
class Recommendation:
    """DM parameters recommended for a noise kind and rate."""

    noise_kind: str
    noise_rate: float
    emphasis_mode: float
    emphasis_variance: float
    emphasis_mode_low: float
    emphasis_mode_high: float
    emphasis_variance_low: float
    emphasis_variance_high: float
    nearest_rates: tuple[float, ...]
    extrapolated: bool

    @property
    def emphasis_lambda(self) -> float:
        """Return the paper's lambda = psi / (1 - psi)."""
        return self.emphasis_mode / (1.0 - self.emphasis_mode)


# ----------------------------------------------------------------------- loading


def load_campaign(
    storage: str | optuna.storages.BaseStorage,
    campaign: str,
    *,
    top_k: int = DEFAULT_TOP_K,
    resamples: int = DEFAULT_RESAMPLES,
    interval: float = DEFAULT_INTERVAL,
    seed: int = 0,
) -> CampaignResults:
    """Aggregate every study whose user attr ``campaign`` equals ``campaign``.

    Raises:
        NoResultsError: no study of the campaign, or no COMPLETE DM trial.
    """
    store = _open(storage)
    studies = [s for s in store.get_all_studies() if s.user_attrs.get("campaign") == campaign]
    if not studies:
        raise NoResultsError(f"campaign {campaign!r} has no study in this storage")
    grouped: dict[tuple[str, float], dict[str, Any]] = defaultdict(dict)
    for study in studies:
        attrs = study.user_attrs
        if "noise_kind" not in attrs or "noise_rate" not in attrs:
            continue  # not a per-setting study: nothing to group
        key = (str(attrs["noise_kind"]), _rate(attrs["noise_rate"]))
        trials = store.get_all_trials(study._study_id, deepcopy=False)
        grouped[key][str(attrs.get("role", "dm"))] = (study, trials)
    settings = [
        _setting_result(kind, rate, roles, top_k) for (kind, rate), roles in grouped.items()
    ]
    settings = [s for s in settings if s is not None]
    settings.sort(key=lambda s: (s.noise_kind, s.noise_rate))
    if not any(s.trials for s in settings):
        raise NoResultsError(f"campaign {campaign!r} has no finished DM trial yet")
    return CampaignResults(
        provenance=_provenance(campaign, studies, _total_counts(settings)),
        settings=settings,
        trends=fit_trends(settings, top_k=top_k, resamples=resamples, interval=interval, seed=seed),
        top_k=top_k,
        resamples=resamples,
        interval=interval,
        seed=seed,
    )


def _open(storage: str | optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """Open a storage URL through dm_tune.storage (pool and heartbeat settings live there)."""
    if not isinstance(storage, str):
        return storage
    from dm_tune.storage import open_storage  # lazy: guidelines must import without it

    # Readers neither beat nor create: a typo in the URL must not leave an empty database.
    return open_storage(storage, heartbeat_interval=None, create=False)


def _rate(value: Any) -> float:
    """Normalise a rate so 0.4 from TOML and 0.4000000001 from arithmetic group together."""
    return round(float(value), 6)


def _setting_result(
    kind: str, rate: float, roles: Mapping[str, tuple[Any, list[FrozenTrial]]], top_k: int
) -> SettingResult | None:
    """Build one setting's result from its dm / baselines / confirm studies."""
    if "dm" not in roles:
        return None  # baselines without a DM study: nothing to recommend
    study, trials = roles["dm"]
    points = _dm_points(trials)
    ranked = sorted(points, key=lambda t: (-t.val_accuracy, t.number))
    selected = _selection_from_confirm(roles["confirm"][1]) if "confirm" in roles else None
    if selected is None and ranked:
        selected = _selection_from_trial(ranked[0])
    baselines = summarize_baselines(roles["baselines"][1]) if "baselines" in roles else {}
    return SettingResult(
        noise_kind=kind,
        noise_rate=rate,
        setting=str(study.user_attrs.get("setting", f"{kind}-{rate:.2f}")),
        study_name=study.study_name,
        trial_counts=_count_states(trials),
        trials=points,
        top_k=ranked[:top_k],
        selected=selected,
        baselines=baselines,
        variance_log=_variance_is_log(trials),
    )


def _count_states(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """Count trials by state name, every state listed so exports have fixed keys."""
    counts = Counter(t.state.name for t in trials)
    return {state.name: counts.get(state.name, 0) for state in TrialState}


def _complete(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """Keep COMPLETE trials with a finite objective."""
    return [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
    ]


def _float_attr(trial: FrozenTrial, name: str) -> float | None:
    """Read a numeric user attr; None when missing or not a finite number."""
    value = trial.user_attrs.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _dm_points(trials: Iterable[FrozenTrial]) -> list[TrialPoint]:
    """Turn COMPLETE DM trials (those with both parameters) into TrialPoints."""
    return [_to_point(t) for t in _complete_with_params(trials)]


def _complete_with_params(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """COMPLETE trials that carry both DM parameters."""
    return [t for t in _complete(trials) if MODE in t.params and VARIANCE in t.params]


def _to_point(t: FrozenTrial) -> TrialPoint:
    """One trial's parameters, objective and outcomes."""
    return TrialPoint(
        number=t.number,
        emphasis_mode=float(t.params[MODE]),
        emphasis_variance=float(t.params[VARIANCE]),
        val_accuracy=float(t.value),
        test_accuracy=_float_attr(t, "test_accuracy"),
        test_accuracy_at_best_val=_float_attr(t, "test_accuracy_at_best_val"),
        memorized_noisy_fraction=_float_attr(t, "memorized_noisy_fraction"),
    )


def _variance_is_log(trials: Iterable[FrozenTrial]) -> bool:
    """Return whether the variance was searched on a log scale."""
    for t in trials:
        dist = t.distributions.get(VARIANCE)
        if dist is not None:
            return bool(getattr(dist, "log", False))
    return False


def _selection_from_trial(point: TrialPoint) -> Selection:
    """Select the best search trial."""
    return Selection(
        emphasis_mode=point.emphasis_mode,
        emphasis_variance=point.emphasis_variance,
        val_accuracy=point.val_accuracy,
        test_accuracy=point.test_accuracy,
        test_accuracy_at_best_val=point.test_accuracy_at_best_val,
        memorized_noisy_fraction=point.memorized_noisy_fraction,
        source="search",
        trial_number=point.number,
    )


def _selection_from_confirm(trials: Iterable[FrozenTrial]) -> Selection | None:
    """Select the confirmed parameters with the best mean clean-val accuracy over seeds."""
    groups: dict[tuple[float, float], list[TrialPoint]] = defaultdict(list)
    sources: dict[tuple[float, float], int | None] = {}
    for trial in _complete_with_params(trials):
        point = _to_point(trial)
        key = (point.emphasis_mode, point.emphasis_variance)
        groups[key].append(point)
        source = trial.user_attrs.get("source_trial")
        sources.setdefault(key, int(source) if isinstance(source, int | float) else None)
    if not groups:
        return None
    key, points = max(
        groups.items(), key=lambda kv: (_mean([p.val_accuracy for p in kv[1]]), kv[0])
    )
    return Selection(
        emphasis_mode=key[0],
        emphasis_variance=key[1],
        val_accuracy=_mean([p.val_accuracy for p in points]),
        test_accuracy=_mean([p.test_accuracy for p in points]),
        test_accuracy_at_best_val=_mean([p.test_accuracy_at_best_val for p in points]),
        memorized_noisy_fraction=_mean([p.memorized_noisy_fraction for p in points]),
        source="confirm",
        trial_number=sources[key],
        n_seeds=len(points),
    )


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean of the known values; None when none is known."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def summarize_baselines(trials: Iterable[FrozenTrial]) -> dict[str, BaselineResult]:
    """Average each baseline loss's COMPLETE trials over its seeds."""
    by_loss: dict[str, list[FrozenTrial]] = defaultdict(list)
    for t in _complete(trials):
        by_loss[str(t.user_attrs.get("loss", "unknown"))].append(t)
    return {
        loss: BaselineResult(
            loss=loss,
            n=len(ts),
            val_accuracy=_mean([t.value for t in ts]),
            test_accuracy=_mean([_float_attr(t, "test_accuracy") for t in ts]),
            test_accuracy_at_best_val=_mean(
                [_float_attr(t, "test_accuracy_at_best_val") for t in ts]
            ),
            memorized_noisy_fraction=_mean(
                [_float_attr(t, "memorized_noisy_fraction") for t in ts]
            ),
        )
        for loss, ts in sorted(by_loss.items())
    }


def _provenance(campaign: str, studies: Sequence[Any], counts: dict[str, int]) -> Provenance:
    """Collect provenance from the studies' user attrs."""
    return Provenance(
        campaign=campaign,
        config_hash=_common_attr(studies, "config_hash"),
        dm_tune_version=_common_attr(studies, "dm_tune_version"),
        dataset=_common_attr(studies, "dataset"),
        model=_common_attr(studies, "model"),
        trial_counts=counts,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )


def _common_attr(studies: Sequence[Any], name: str) -> str | None:
    """The attr shared by the studies; warn and take the most common when they differ."""
    values = Counter(str(s.user_attrs[name]) for s in studies if name in s.user_attrs)
    if not values:
        return None
    if len(values) > 1:
        warnings.warn(
            f"studies disagree on {name}: {sorted(values)}; reporting the most common",
            stacklevel=3,
        )
    return values.most_common(1)[0][0]


# ------------------------------------------------------------------------- trend


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


# --------------------------------------------------------------------- recommend


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


# ------------------------------------------------------------------------ export


def to_export_dict(results: CampaignResults) -> dict[str, Any]:
    """Return the versioned export (schema ``dm-tune/recommendations`` v1)."""
    prov = results.provenance
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "provenance": {
            "campaign": prov.campaign,
            "config_hash": prov.config_hash,
            "dm_tune_version": prov.dm_tune_version,
            "exported_by": prov.exported_by,
            "dataset": prov.dataset,
            "model": prov.model,
            "trial_counts": dict(prov.trial_counts),
            "created": prov.created,
            "method": {
                "top_k": results.top_k,
                "weights": "rank",
                "bootstrap_resamples": results.resamples,
                "interval": results.interval,
                "seed": results.seed,
                "interpolation": "linear; constant outside the searched rates",
            },
        },
        "settings": [_setting_dict(s) for s in results.settings],
        "trends": {
            kind: [_point_dict(p) for p in trend.points] for kind, trend in results.trends.items()
        },
    }


def _total_counts(settings: Sequence[SettingResult]) -> dict[str, int]:
    """Sum the DM studies' trial counts by state."""
    total: Counter[str] = Counter({state.name: 0 for state in TrialState})
    for s in settings:
        total.update(s.trial_counts)
    return dict(total)


def _setting_dict(s: SettingResult) -> dict[str, Any]:
    """One setting in the export."""
    return {
        "noise_kind": s.noise_kind,
        "noise_rate": s.noise_rate,
        "setting": s.setting,
        "study_name": s.study_name,
        "trial_counts": dict(s.trial_counts),
        "selected": _clean(vars(s.selected)) if s.selected else None,
        "top_k": [_clean(vars(t)) for t in s.top_k],
        "baselines": {name: _clean(vars(b)) for name, b in s.baselines.items()},
    }


def _point_dict(p: TrendPoint) -> dict[str, Any]:
    """One trend point in the export."""
    return _clean(vars(p))


def _clean(d: Mapping[str, Any]) -> dict[str, Any]:
    """Copy a dataclass dict with non-finite floats as None (JSON has no NaN)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def write_json(results: CampaignResults | Mapping[str, Any], path: Path | str) -> Path:
    """Write the export as JSON; ``path`` "-" is not special (the CLI handles stdout)."""
    data = to_export_dict(results) if isinstance(results, CampaignResults) else dict(results)
    path = Path(path)
    path.write_text(dumps_json(data), encoding="utf-8")
    return path


def dumps_json(data: Mapping[str, Any]) -> str:
    """Serialise an export dict (stable key order, strict JSON)."""
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


CSV_FIXED_COLUMNS = (
    "campaign",
    "config_hash",
    "noise_kind",
    "noise_rate",
    "setting",
    "n_complete",
    "n_pruned",
    "n_failed",
    "selected_source",
    "selected_trial_number",
    "selected_n_seeds",
    "selected_emphasis_mode",
    "selected_emphasis_variance",
    "selected_val_accuracy",
    "selected_test_accuracy",
    "selected_test_accuracy_at_best_val",
    "selected_memorized_noisy_fraction",
    "trend_emphasis_mode",
    "trend_emphasis_mode_low",
    "trend_emphasis_mode_high",
    "trend_emphasis_variance",
    "trend_emphasis_variance_low",
    "trend_emphasis_variance_high",
)
BASELINE_FIELDS = ("val_accuracy", "test_accuracy", "test_accuracy_at_best_val")


def to_csv_rows(results: CampaignResults | Mapping[str, Any]) -> tuple[list[str], list[dict]]:
    """Return (columns, rows): one row per kind x rate, numbers taken from the export dict."""
    data = to_export_dict(results) if isinstance(results, CampaignResults) else results
    losses = sorted({loss for s in data["settings"] for loss in s["baselines"]})
    columns = list(CSV_FIXED_COLUMNS) + [
        f"baseline_{loss}_{name}" for loss in losses for name in BASELINE_FIELDS
    ]
    trend_at = {
        (kind, p["noise_rate"]): p for kind, points in data["trends"].items() for p in points
    }
    rows = []
    for s in data["settings"]:
        row: dict[str, Any] = {
            "campaign": data["provenance"]["campaign"],
            "config_hash": data["provenance"]["config_hash"],
            "noise_kind": s["noise_kind"],
            "noise_rate": s["noise_rate"],
            "setting": s["setting"],
            "n_complete": s["trial_counts"].get("COMPLETE", 0),
            "n_pruned": s["trial_counts"].get("PRUNED", 0),
            "n_failed": s["trial_counts"].get("FAIL", 0),
        }
        selected = s["selected"] or {}
        row["selected_source"] = selected.get("source")
        row["selected_trial_number"] = selected.get("trial_number")
        row["selected_n_seeds"] = selected.get("n_seeds")
        for name in (
            "emphasis_mode",
            "emphasis_variance",
            "val_accuracy",
            "test_accuracy",
            "test_accuracy_at_best_val",
            "memorized_noisy_fraction",
        ):
            row[f"selected_{name}"] = selected.get(name)
        point = trend_at.get((s["noise_kind"], s["noise_rate"]), {})
        for name in ("emphasis_mode", "emphasis_variance"):
            for suffix in ("", "_low", "_high"):
                row[f"trend_{name}{suffix}"] = point.get(f"{name}{suffix}")
        for loss in losses:
            baseline = s["baselines"].get(loss, {})
            for name in BASELINE_FIELDS:
                row[f"baseline_{loss}_{name}"] = baseline.get(name)
        rows.append(row)
    return columns, rows


def dumps_csv(results: CampaignResults | Mapping[str, Any]) -> str:
    """Serialise the CSV export (floats as repr: they read back to the JSON's numbers)."""
    columns, rows = to_csv_rows(results)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def write_csv(results: CampaignResults | Mapping[str, Any], path: Path | str) -> Path:
    """Write the CSV export: one row per noise kind x rate."""
    path = Path(path)
    path.write_text(dumps_csv(results), encoding="utf-8")
    return path


def load_export(path: Path | str) -> dict[str, Any]:
    """Read and validate a JSON export.

    Raises:
        ValueError: unreadable, not JSON, another schema, a newer version, or malformed
            (the message is one line).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read export {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a JSON export ({_one_line(exc)})") from None
    validate_export(data, origin=str(path))
    return data


def validate_export(data: Any, origin: str = "export") -> None:
    """Check an export dict's schema, version and shape; raise ValueError (one line)."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{origin} is not a {SCHEMA} export")
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{origin} has no integer schema_version")
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{origin} has schema_version {version}; this dm-tune "
            f"({dm_tune.__version__}) reads up to {SCHEMA_VERSION}: upgrade dm-tune"
        )
    if version < 1:
        raise ValueError(f"{origin} has invalid schema_version {version}")
    try:
        _check_shape(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{origin} is malformed: {_one_line(exc)}") from None


_POINT_KEYS = frozenset(TrendPoint.__dataclass_fields__)


def _check_shape(data: Mapping[str, Any]) -> None:
    """Check the parts recommend and the CSV writer rely on."""
    if not isinstance(data["provenance"], dict) or "campaign" not in data["provenance"]:
        raise ValueError("provenance.campaign is missing")
    if not isinstance(data["settings"], list):
        raise TypeError("settings must be a list")
    for s in data["settings"]:
        for key in ("noise_kind", "noise_rate", "selected", "top_k", "baselines", "trial_counts"):
            if key not in s:
                raise KeyError(f"settings entry without {key}")
    if not isinstance(data["trends"], dict):
        raise TypeError("trends must be an object")
    for kind, points in data["trends"].items():
        if not isinstance(points, list) or not points:
            raise ValueError(f"trend {kind!r} has no points")
        for p in points:
            if not isinstance(p, dict) or set(p) != _POINT_KEYS:
                raise ValueError(f"trend {kind!r} has a point without the fields of version 1")
            _check_numbers(kind, p)
        rates = [p["noise_rate"] for p in points]
        if rates != sorted(rates):
            raise ValueError(f"trend {kind!r} is not sorted by noise_rate")


def _check_numbers(kind: str, point: Mapping[str, Any]) -> None:
    """Every trend field is a finite number."""
    for key, value in point.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"trend {kind!r} field {key} is not a finite number")


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
