"""The confirmation that ends ``dm-tune run``: new seeds for what the guidelines will say.

Once every search budget is met, ``run`` re-trains with ``[confirm] seeds`` (R) new seeds:

1. :func:`queue_confirmations` (stage 1), per setting:

   - the DM candidates of :func:`dm_tune.campaign.candidates.confirm_candidates` (the
     surface's argmax at the setting's rate and ``[confirm] candidates`` more distinct
     observed settings), R jobs each in ``C/S/confirm``;
   - every baseline loss, R jobs each in ``C/S/baselines`` (GCE excepted when its ``q`` is
     tuned: its tuned ``q`` is confirmed instead, stage 2);
   - GCE's 1-D study ``C/S/gce_q``: ``[confirm] gce_q_trials`` values of ``q`` evenly
     spread over [0.1, 1.0], queued at once. At six trials a grid covers one dimension as
     well as a sampler would, and it trains as one population instead of in rounds.

2. :func:`queue_tuned_gce` (stage 2), once stage 1 has run: GCE with each setting's best
   ``q`` (best clean-validation accuracy; the lower trial number on ties), R jobs in
   ``C/S/baselines`` with ``loss_params = {"q": best}``.

Every confirmation job carries ``confirmation = True`` and a seed ``campaign seed +
CONFIRM_SEED_OFFSET + r``, never a search seed. Queueing is idempotent and exact: a job
is queued only when no non-failed trial of the same job exists, the DM candidates are
stored on the confirm study (``confirm_plan``) before their jobs are queued, so a re-run
queues the same ones, and every budget counts the jobs queued. The jobs then run through
the ordinary worker loop (population engine included), so an interrupted run resumes them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from dm_tune.campaign.candidates import Candidate, Observed, confirm_candidates
from dm_tune.campaign.confirm import CONFIRM_SEED_OFFSET, confirm_study, queue_replicates
from dm_tune.campaign.create import ensure_study, lock_name, study_attrs
from dm_tune.campaign.locks import campaign_lock
from dm_tune.campaign.records import (
    PARAM_MODE,
    PARAM_Q,
    PARAM_VARIANCE,
    ROLE_BASELINES,
    ROLE_CONFIRM,
    ROLE_DM,
    ROLE_GCE_Q,
    StudyKey,
    TrialKey,
)
from dm_tune.campaign.run_trial import GCE_Q_RANGE
from dm_tune.campaign.settings import Setting, load_setting_data, settings_of
from dm_tune.config import CampaignConfig, with_population

if TYPE_CHECKING:
    from dm_tune.data import TrialData

__all__ = [
    "confirmation_config",
    "confirming",
    "gce_q_grid",
    "plan_candidates",
    "queue_confirmations",
    "queue_tuned_gce",
    "tunes_gce",
]

Storage = optuna.storages.RDBStorage


def confirming(config: CampaignConfig) -> bool:
    """Whether ``run`` ends with a confirmation (``[confirm] seeds`` > 0)."""
    return config.confirm.seeds > 0


def tunes_gce(config: CampaignConfig) -> bool:
    """Whether GCE's ``q`` gets its own study (GCE among the baselines, trials > 0)."""
    return confirming(config) and "gce" in config.baselines.losses and \
        config.confirm.gce_q_trials > 0


#: settings whose confirmations a worker trains at once, and the most members in one
#: population: on 2 CPU cores the digits MLP trains a member in 1.08 s at K = 9, 0.41 s at
#: K = 27 and 0.32 s at K = 54 (5 epochs, one thread, /tmp bench of train_population)
CONFIRM_SETTINGS_AT_ONCE = 4
MAX_CONFIRM_POPULATION = 64


def confirmation_config(config: CampaignConfig) -> CampaignConfig:
    """The config the confirmation's worker runs with: a population of R x (candidates + 1)
    members per setting for :data:`CONFIRM_SETTINGS_AT_ONCE` settings (at most
    :data:`MAX_CONFIRM_POPULATION`), never fewer than ``[search] population``.

    The confirmation trains full-length runs only (nothing is pruned), so wider
    populations pay off: a setting's seeds and candidates, and several settings, share one
    vectorized model.
    """
    per_setting = config.confirm.seeds * (config.confirm.candidates + 1)
    wanted = min(MAX_CONFIRM_POPULATION, CONFIRM_SETTINGS_AT_ONCE * per_setting)
    return with_population(config, max(wanted, config.search.population))


def gce_q_grid(trials: int) -> list[float]:
    """``trials`` values of GCE's q evenly spread over :data:`GCE_Q_RANGE` (6 decimals)."""
    low, high = GCE_Q_RANGE
    if trials == 1:
        return [round((low + high) / 2, 6)]
    return [round(float(q), 6) for q in np.linspace(low, high, trials)]


def _seeds(config: CampaignConfig) -> list[int]:
    base = config.campaign.seed + CONFIRM_SEED_OFFSET
    return [base + r for r in range(config.confirm.seeds)]


def _load(storage: Storage, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def _live(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that stand for their job (a failed one was re-queued or gave up)."""
    return [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL]


# ------------------------------------------------------------------ DM candidates


def _observed(trials: list[FrozenTrial]) -> list[Observed]:
    """Every trial with both params, any state; the value only when COMPLETE and finite."""
    points = []
    for t in trials:
        if PARAM_MODE not in t.params or PARAM_VARIANCE not in t.params:
            continue
        finite = t.state == TrialState.COMPLETE and t.value is not None and \
            math.isfinite(t.value)
        points.append(Observed(float(t.params[PARAM_MODE]), float(t.params[PARAM_VARIANCE]),
                               float(t.value) if finite else None, t.number))
    return points


def _surfaces(config: CampaignConfig, studies: dict[Setting, optuna.Study],
              trials: dict[Setting, list[FrozenTrial]]) -> dict[str, Any]:
    """One surface per noise kind, fitted on the search trials only (not on earlier
    confirmations: the candidates must not move when a re-run sees its own results)."""
    # the read side's model; imported here so that the write side loads scikit-learn only
    # when a run confirms (guidelines depends on campaign.records, never the reverse cycle)
    from dm_tune.guidelines.loading import variance_is_log
    from dm_tune.guidelines.results import SettingResult
    from dm_tune.guidelines.selection import dm_points
    from dm_tune.guidelines.surface import fit_surfaces

    results = [
        SettingResult(
            noise_kind=setting.kind,
            noise_rate=round(float(study.user_attrs.get(StudyKey.NOISE_RATE, setting.rate)), 6),
            setting=setting.name, study_name=study.study_name, trial_counts={},
            trials=dm_points(trials[setting]), top_k=[], selected=None,
            variance_log=variance_is_log(trials[setting]),  # as the guideline's surface
        )
        for setting, study in studies.items()
    ]
    # a kind without a surface (too few finished trials, a failed fit): the best observed
    # trials stand in
    surfaces, _ = fit_surfaces(results)
    return surfaces


def plan_candidates(storage: Storage, config: CampaignConfig) -> dict[Setting, list[Candidate]]:
    """Each created setting's DM candidates (surface argmax first), from its search trials."""
    studies: dict[Setting, optuna.Study] = {}
    for setting in settings_of(config):
        study = _load(storage, setting.study_name(config.name, ROLE_DM))
        if study is not None:
            studies[setting] = study
    trials = {s: study.get_trials(deepcopy=False) for s, study in studies.items()}
    surfaces = _surfaces(config, studies, trials)
    search = config.search
    ranges = ((search.emphasis_mode.low, search.emphasis_mode.high),
              (search.emphasis_variance.low, search.emphasis_variance.high))
    plans = {}
    for setting, study in studies.items():
        rate = round(float(study.user_attrs.get(StudyKey.NOISE_RATE, setting.rate)), 6)
        plans[setting] = confirm_candidates(
            _observed(trials[setting]), config.confirm.candidates, *ranges,
            surface=surfaces.get(setting.kind), rate=rate)
    return plans


def _queue_dm(storage: Storage, config: CampaignConfig, setting: Setting,
              candidates: list[Candidate]) -> int:
    """Queue the candidates' jobs in the confirm study; the number of jobs added."""
    dm_study = optuna.load_study(study_name=setting.study_name(config.name), storage=storage)
    study = confirm_study(storage, config, setting, dm_study)
    plan = study.user_attrs.get(StudyKey.CONFIRM_PLAN)
    if plan is None:  # stored first: a re-run (even after a crash here) queues the same
        plan = [[c.emphasis_mode, c.emphasis_variance, c.source_trial] for c in candidates]
        study.set_user_attr(StudyKey.CONFIRM_PLAN, plan)
    jobs = [({PARAM_MODE: float(mode), PARAM_VARIANCE: float(variance)}, source)
            for mode, variance, source in plan]
    return queue_replicates(study, jobs, _seeds(config), **{TrialKey.CONFIRMATION: True})


# ---------------------------------------------------------------- baselines, GCE q


def _queue_baselines(storage: Storage, config: CampaignConfig, setting: Setting,
                     jobs: list[tuple[str, dict[str, float]]]) -> int:
    """Queue (loss, params) x R seeds in the baselines study; the number of jobs added.

    A job is known by (loss, params, seed): when GCE's best q moves (more ``gce_q``
    trials), the new q is confirmed too, and the summary chooses between them.
    """
    study = _load(storage, setting.study_name(config.name, ROLE_BASELINES))
    if study is None or not jobs:
        return 0
    live = _live(study)
    queued = {_job_key(t.user_attrs.get(TrialKey.LOSS), t.user_attrs.get(TrialKey.LOSS_PARAMS),
                       t.user_attrs.get(TrialKey.SEED))
              for t in live if t.user_attrs.get(TrialKey.CONFIRMATION)}
    added = 0
    for loss, params in jobs:
        for seed in _seeds(config):
            if _job_key(loss, params, seed) in queued:
                continue
            study.enqueue_trial({}, user_attrs={
                TrialKey.LOSS: loss, TrialKey.LOSS_PARAMS: dict(params), TrialKey.SEED: seed,
                TrialKey.CONFIRMATION: True})
            queued.add(_job_key(loss, params, seed))
            added += 1
    budget = len(config.baselines.losses) * config.baselines.seeds + len(queued)
    study.set_user_attr(StudyKey.BUDGET, budget)
    return added


def _job_key(loss: Any, params: Any, seed: Any) -> tuple:
    """A confirmation job's identity: loss, its params (rounded) and seed."""
    items = params.items() if isinstance(params, dict) else ()
    return (loss, tuple(sorted((str(k), round(float(v), 6)) for k, v in items)), seed)


def _queue_gce_q(storage: Storage, config: CampaignConfig, setting: Setting,
                 data: TrialData) -> int:
    """Create the setting's gce_q study with its grid queued; the number of jobs added."""
    name = setting.study_name(config.name, ROLE_GCE_Q)
    budget = config.confirm.gce_q_trials
    study, _ = ensure_study(storage, name, study_attrs(config, setting, ROLE_GCE_Q, data, budget))
    live = _live(study)
    queued = {round(float(t.user_attrs.get(TrialKey.LOSS_PARAMS, {}).get(PARAM_Q, -1)), 6)
              for t in live}
    # a changed gce_q_trials on a re-run: never more than the budget leaves (nothing queued
    # is left waiting), each next point the one farthest from those there (grid order on ties)
    chosen = _fill_gaps([q for q in gce_q_grid(budget) if q not in queued], queued,
                        max(0, budget - len(live)))
    for q in chosen:
        study.enqueue_trial({PARAM_Q: q}, user_attrs={
            TrialKey.LOSS: "gce", TrialKey.LOSS_PARAMS: {PARAM_Q: q},
            TrialKey.SEED: config.campaign.seed})
    return len(chosen)


def _fill_gaps(candidates: list[float], present: set[float], count: int) -> list[float]:
    """Up to ``count`` of ``candidates``, each the farthest from ``present`` and those picked."""
    picked: list[float] = []
    left = list(candidates)
    while left and len(picked) < count:
        there = present | set(picked)
        # max keeps the first of equals: grid order on ties (and with nothing there yet)
        best = max(left, key=lambda q: round(min((abs(q - o) for o in there), default=0.0), 6))
        picked.append(best)
        left.remove(best)
    return picked


def _planned(storage: Storage, config: CampaignConfig, setting: Setting) -> bool:
    study = _load(storage, setting.study_name(config.name, ROLE_CONFIRM))
    return study is not None and StudyKey.CONFIRM_PLAN in study.user_attrs


def queue_confirmations(storage: Storage, config: CampaignConfig) -> int:
    """Stage 1: queue the DM candidates, the baselines and GCE's q studies x R seeds.

    Returns the number of jobs added (0 on a re-run that finds them queued).
    """
    if not confirming(config):
        return 0
    if all(_planned(storage, config, s) for s in settings_of(config)):
        plans = {s: [] for s in settings_of(config)}  # a re-run: the stored plans stand
    else:
        plans = plan_candidates(storage, config)  # the surface fit stays outside the lock
    baselines = [(loss, config.baselines.params.get(loss, {}))
                 for loss in config.baselines.losses
                 if not (loss == "gce" and tunes_gce(config))]
    # the data (labels, digest) outside the lock: on CIFAR loading it takes seconds, and
    # every other worker's claims wait on this lock
    data = {s: load_setting_data(config, s) for s in plans} if tunes_gce(config) else {}
    added = 0
    with campaign_lock(storage, lock_name(config)):
        for setting, candidates in plans.items():
            added += _queue_dm(storage, config, setting, candidates)
            added += _queue_baselines(storage, config, setting, baselines)
            if tunes_gce(config):
                added += _queue_gce_q(storage, config, setting, data[setting])
    return added


def best_q(trials: list[FrozenTrial]) -> float | None:
    """The q of the best COMPLETE trial (clean validation; the earlier trial on ties)."""
    finished = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                and math.isfinite(t.value) and PARAM_Q in t.params]
    if not finished:
        return None
    best = min(finished, key=lambda t: (-t.value, t.number))
    return float(best.params[PARAM_Q])


def queue_tuned_gce(storage: Storage, config: CampaignConfig) -> int:
    """Stage 2: GCE with each setting's best q x R seeds; the number of jobs added.

    A setting whose q study finished no trial confirms GCE with its configured q.
    """
    if not tunes_gce(config):
        return 0
    added = 0
    with campaign_lock(storage, lock_name(config)):
        for setting in settings_of(config):
            study = _load(storage, setting.study_name(config.name, ROLE_GCE_Q))
            if study is None:
                continue
            q = best_q(study.get_trials(deepcopy=False))
            params = {PARAM_Q: q} if q is not None else config.baselines.params.get("gce", {})
            added += _queue_baselines(storage, config, setting, [("gce", params)])
    return added
