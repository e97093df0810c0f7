"""Loading a campaign's studies from a storage into :class:`CampaignResults`."""

from __future__ import annotations

import datetime as _dt
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from dm_tune.campaign.records import (
    PARAM_MODE,
    PARAM_VARIANCE,
    ROLE_BASELINES,
    ROLE_CONFIRM,
    ROLE_DM,
    ROLE_VERIFY,
    StudyKey,
)
from dm_tune.errors import NoResultsError
from dm_tune.guidelines.results import (
    DEFAULT_INTERVAL,
    DEFAULT_METHOD,
    DEFAULT_RESAMPLES,
    DEFAULT_TOP_K,
    METHODS,
    CampaignResults,
    Provenance,
    SettingResult,
)
from dm_tune.guidelines.selection import (
    dm_points,
    fallen_points,
    rank,
    select,
    summarize_baselines,
)
from dm_tune.guidelines.trend import fit_trends

__all__ = ["count_states", "load_campaign", "total_counts", "variance_is_log"]


def load_campaign(
    storage: str | optuna.storages.BaseStorage,
    campaign: str,
    *,
    top_k: int = DEFAULT_TOP_K,
    resamples: int = DEFAULT_RESAMPLES,
    interval: float = DEFAULT_INTERVAL,
    seed: int = 0,
    method: str = DEFAULT_METHOD,
) -> CampaignResults:
    """Aggregate every study whose user attr ``campaign`` equals ``campaign``.

    ``method`` "surface" (the default) fits one Gaussian-process surface per noise kind
    (``surface.py``), takes the trend from its optima and checks it leave-one-rate-out
    (``check.py``); a kind with fewer than ``surface.MIN_OBSERVATIONS`` finished trials
    gets the top-k trend instead, and ``results.fallbacks`` says so (the report and the
    export name it: never silently). "top-k" fits the rank-weighted top-k trend with a
    bootstrap band for every kind.

    Raises:
        NoResultsError: no study of the campaign, or no COMPLETE DM trial.
        ValueError: an unknown ``method``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown trend method {method!r}; known: {', '.join(METHODS)}")
    store = _open(storage)
    studies = [
        s for s in store.get_all_studies() if s.user_attrs.get(StudyKey.CAMPAIGN) == campaign
    ]
    if not studies:
        raise NoResultsError(f"campaign {campaign!r} has no study in this storage")
    grouped: dict[tuple[str, float], dict[str, Any]] = defaultdict(dict)
    verified: dict[str, list[tuple[float, Any]]] = defaultdict(list)
    for study in studies:
        attrs = study.user_attrs
        if StudyKey.NOISE_KIND not in attrs or StudyKey.NOISE_RATE not in attrs:
            continue  # not a per-setting study: nothing to group
        key = (str(attrs[StudyKey.NOISE_KIND]), _rate(attrs[StudyKey.NOISE_RATE]))
        study_id = store.get_study_id_from_name(study.study_name)
        trials = store.get_all_trials(study_id, deepcopy=False)
        role = str(attrs.get(StudyKey.ROLE, ROLE_DM))
        if role == ROLE_VERIFY:  # a user's own rate: evidence for the kind, not a setting
            verified[key[0]].extend((key[1], point) for point in dm_points(trials))
            continue
        grouped[key][role] = (study, trials)
    settings = [
        _setting_result(kind, rate, roles, top_k) for (kind, rate), roles in grouped.items()
    ]
    settings = [s for s in settings if s is not None]
    settings.sort(key=lambda s: (s.noise_kind, s.noise_rate))
    if not any(s.trials for s in settings):
        raise NoResultsError(f"campaign {campaign!r} has no finished DM trial yet")
    results = CampaignResults(
        provenance=_provenance(campaign, studies, total_counts(settings)),
        settings=settings,
        trends={},
        top_k=top_k,
        resamples=resamples,
        interval=interval,
        seed=seed,
        method=method,
    )
    trends = {}
    top_k_settings = settings
    if method == "surface":
        from dm_tune.guidelines.check import leave_one_rate_out  # lazy: scikit-learn
        from dm_tune.guidelines.surface import fit_surfaces, surface_trends

        results.verified = {kind: sorted(runs, key=lambda r: (r[0], r[1].number))
                            for kind, runs in sorted(verified.items())}
        results.surfaces, results.fallbacks = fit_surfaces(settings, verified=results.verified)
        results.checks = leave_one_rate_out(results)
        trends.update(surface_trends(results.surfaces))
        top_k_settings = [s for s in settings if s.noise_kind in results.fallbacks]
    if top_k_settings:
        trends.update(
            fit_trends(
                top_k_settings, top_k=top_k, resamples=resamples, interval=interval, seed=seed
            )
        )
    results.trends = dict(sorted(trends.items()))
    return results


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
    if ROLE_DM not in roles:
        return None  # baselines without a DM study: nothing to recommend
    study, trials = roles[ROLE_DM]
    points = dm_points(trials)
    confirm_trials = roles[ROLE_CONFIRM][1] if ROLE_CONFIRM in roles else ()
    baseline_trials = roles[ROLE_BASELINES][1] if ROLE_BASELINES in roles else ()
    return SettingResult(
        noise_kind=kind,
        noise_rate=rate,
        setting=str(study.user_attrs.get(StudyKey.SETTING, f"{kind}-{rate:.2f}")),
        study_name=study.study_name,
        trial_counts=count_states(trials),
        trials=points,
        top_k=rank(points)[:top_k],
        selected=select(trials, confirm_trials),
        baselines=summarize_baselines(baseline_trials),
        variance_log=variance_is_log(trials),
        mode_range=searched_range(trials, PARAM_MODE),
        confirm_trials=dm_points(confirm_trials),
        num_classes=_int_or_none(study.user_attrs.get(StudyKey.NUM_CLASSES)),
        fallen=fallen_points(trials),
    )


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def count_states(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """Count trials by state name, every state listed so exports have fixed keys."""
    counts = Counter(t.state.name for t in trials)
    return {state.name: counts.get(state.name, 0) for state in TrialState}


def searched_range(trials: Iterable[FrozenTrial], param: str) -> tuple[float, float] | None:
    """(low, high) of ``param``'s search space, the widest over the trials (None: none)."""
    bounds = [(d.low, d.high) for t in trials
              if (d := t.distributions.get(param)) is not None and hasattr(d, "low")]
    if not bounds:
        return None
    return float(min(b[0] for b in bounds)), float(max(b[1] for b in bounds))


def variance_is_log(trials: Iterable[FrozenTrial]) -> bool:
    """Return whether the variance was searched on a log scale."""
    for t in trials:
        dist = t.distributions.get(PARAM_VARIANCE)
        if dist is not None:
            return bool(getattr(dist, "log", False))
    return False


def _provenance(campaign: str, studies: Sequence[Any], counts: dict[str, int]) -> Provenance:
    """Collect provenance from the studies' user attrs."""
    return Provenance(
        campaign=campaign,
        config_hash=_common_attr(studies, StudyKey.CONFIG_HASH),
        dm_tune_version=_common_attr(studies, StudyKey.VERSION),
        dataset=_common_attr(studies, StudyKey.DATASET),
        model=_common_attr(studies, StudyKey.MODEL),
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


def total_counts(settings: Sequence[SettingResult]) -> dict[str, int]:
    """Sum the DM studies' trial counts by state."""
    total: Counter[str] = Counter({state.name: 0 for state in TrialState})
    for s in settings:
        total.update(s.trial_counts)
    return dict(total)
