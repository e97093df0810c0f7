"""A check at the user's own rate: ``dm-tune recommend CONFIG --noise K --rate R --verify``.

The advice at a rate no campaign searched is a prediction. Verifying it re-trains the
risk-aware pick there (``guidelines/advice.py``) and the next-ranked candidates that
differ from it (:func:`distinct_candidates`) with new seeds, as one population, and
answers with the verified pick: the risk-aware one unless another's mean clean-validation
accuracy over those seeds leads it by more than seed noise (``advice.order_verified``).

Stored like a confirmation, so it resumes and its budget is exact:

- one study per rate, ``C/<kind>-<rate>/verify`` (role ``verify``), with the DM study's
  attributes; the candidates are written on it (``verify_plan``) before any job is queued,
  so a re-run verifies the same ones even though finished verify runs change the advice;
- one job per (candidate, seed), seeds ``campaign seed + VERIFY_SEED_OFFSET + r``, never a
  search or confirmation seed; a job is queued only when no non-failed trial of it exists
  (``confirm.queue_replicates``), and the study's budget counts the jobs;
- a run killed mid-way leaves RUNNING trials; the next run fails them and queues their
  jobs again (once their heartbeat is stale), then trains what is WAITING.

Finished verify runs are evidence for the kind's risk model and surface at that rate
(``guidelines/loading.py`` reads them), and the verified candidates join the advice's
candidates there.
"""

from __future__ import annotations

import statistics
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import TrialState

from dm_tune.campaign import _optuna
from dm_tune.campaign.candidates import distinct_candidates
from dm_tune.campaign.claims import ClaimedTrial, worker_name
from dm_tune.campaign.confirm import queue_replicates
from dm_tune.campaign.create import (
    check_campaign,
    check_study_matches,
    ensure_study,
    lock_name,
    study_attrs,
)
from dm_tune.campaign.locks import campaign_lock
from dm_tune.campaign.records import (
    JOB_ATTRS,
    PARAM_MODE,
    PARAM_VARIANCE,
    ROLE_VERIFY,
    StudyKey,
)
from dm_tune.campaign.settings import Setting, load_setting_data, settings_of
from dm_tune.config import CampaignConfig, with_population
from dm_tune.errors import CampaignError

__all__ = [
    "DEFAULT_CANDIDATES",
    "DEFAULT_SEEDS",
    "VERIFY_SEED_OFFSET",
    "VerifyPlan",
    "VerifiedPick",
    "plan_verification",
    "run_verification",
    "verified_pick",
]

#: verification seeds start here above the campaign seed (confirmations use +1000)
VERIFY_SEED_OFFSET = 2000
DEFAULT_CANDIDATES = 3
DEFAULT_SEEDS = 3
#: verify candidates lie at least this far apart (scaled mode and variance, each spanning
#: [0, 1]) where the ranking allows: the top three were often neighbours, so a check
#: could not move the advice out of a region that was worse at the rate
CANDIDATE_DISTANCE = 0.15


@dataclass(frozen=True)
class VerifyPlan:
    """What a verification trains: its study, candidates and seeds, and how much is done."""

    study_name: str
    setting: Setting
    candidates: tuple[tuple[float, float, str], ...]  # (mode, variance, origin)
    seeds: tuple[int, ...]
    epochs: int
    done: int  # COMPLETE runs already stored

    @property
    def runs(self) -> int:
        return len(self.candidates) * len(self.seeds)

    @property
    def remaining(self) -> int:
        return self.runs - self.done


@dataclass(frozen=True)
class VerifiedPick:
    """The verified candidate: best mean clean-validation accuracy over its seeds."""

    emphasis_mode: float
    emphasis_variance: float
    origin: str
    val_accuracy: float
    val_accuracy_std: float | None
    test_accuracy: float | None
    n_seeds: int


def _setting(config: CampaignConfig, kind: str, rate: float) -> Setting:
    """The verify setting, refused when the campaign has no such kind or the rate is odd."""
    kinds = sorted({s.kind for s in settings_of(config) if s.kind != "human"})
    if kind not in kinds:
        raise CampaignError(f"--noise {kind!r}: the campaign searched {', '.join(kinds)}")
    if not 0.0 <= rate < 1.0 or abs(rate - round(rate, 2)) > 1e-9:
        raise CampaignError(f"--rate {rate:g}: --verify takes a rate in [0, 1) with at most "
                            "2 decimals (it names the study)")
    return Setting(kind, round(rate, 2))


def plan_verification(
    storage: optuna.storages.RDBStorage, config: CampaignConfig, kind: str, rate: float,
    candidates: int = DEFAULT_CANDIDATES, seeds: int = DEFAULT_SEEDS,
) -> VerifyPlan:
    """Create (or load) the rate's verify study and queue its missing jobs.

    The first call picks ``candidates`` risk-aware settings at the rate (the best, then
    the best that differ from those chosen: :func:`distinct_candidates`) and stores them;
    later calls reuse the stored ones (``candidates`` is then ignored).

    Raises:
        CampaignError: an unknown kind, a rate with more than 2 decimals, fewer than one
            candidate or seed, a kind without a fitted surface, or studies made from
            another campaign file.
        DigestMismatchError: this machine's noisy labels differ from the studies'.
    """
    if candidates < 1 or seeds < 1:
        raise CampaignError("--candidates and --seeds must be at least 1")
    setting = _setting(config, kind, rate)
    name = setting.study_name(config.name, ROLE_VERIFY)
    first = config.campaign.seed + VERIFY_SEED_OFFSET
    seed_list = tuple(range(first, first + seeds))
    data = load_setting_data(config, setting)  # outside the lock: can take seconds
    # the searched settings' studies must come from this very file (and this machine's
    # labels): verify runs of another experiment would join this one's evidence
    check_campaign(storage, config, require_created=True)
    with campaign_lock(storage, lock_name(config)):
        existing = {s.study_name: s for s in storage.get_all_studies()}
        if name in existing:
            check_study_matches(optuna.load_study(study_name=name, storage=storage), config,
                                data)
        stored = existing[name].user_attrs.get(StudyKey.VERIFY_PLAN) if name in existing else None
        if stored:
            plan = [(float(m), float(v), str(o)) for m, v, o in stored]
        else:
            plan = _pick(storage, config, kind, setting.rate, candidates)
        attrs = study_attrs(config, setting, ROLE_VERIFY, data, len(plan) * seeds)
        study, _ = ensure_study(storage, name, attrs)
        if not stored:
            study.set_user_attr(StudyKey.VERIFY_PLAN, [list(c) for c in plan])
        jobs = [({PARAM_MODE: m, PARAM_VARIANCE: v}, index)
                for index, (m, v, _) in enumerate(plan)]
        queue_replicates(study, jobs, seed_list)
        done = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    return VerifyPlan(name, setting, tuple(plan), seed_list, config.training.epochs, done)


def _pick(storage: optuna.storages.RDBStorage, config: CampaignConfig, kind: str,
          rate: float, count: int) -> list[tuple[float, float, str]]:
    """``count`` risk-aware candidates at ``rate`` from the stored results: the best, then
    the best that differ from those chosen (:func:`distinct_candidates`)."""
    from dm_tune.guidelines.advice import advise
    from dm_tune.guidelines.loading import load_campaign

    results = load_campaign(storage, config.name)
    if kind not in results.surfaces:
        reason = results.fallbacks.get(kind, "no finished DM trial")
        raise CampaignError(f"{kind}: no surface to rank candidates ({reason})")
    surface = results.surfaces[kind]
    ranked = advise(surface, results.settings_of(kind), surface.clamp(rate),
                    results.verified.get(kind, ()))
    chosen = distinct_candidates(
        surface.scaled(np.array([a.emphasis_mode for a in ranked]),
                       np.array([a.emphasis_variance for a in ranked])), count,
        CANDIDATE_DISTANCE)
    return [(ranked[i].emphasis_mode, ranked[i].emphasis_variance, ranked[i].origin)
            for i in chosen]


def run_verification(
    storage: optuna.storages.RDBStorage, config: CampaignConfig, plan: VerifyPlan,
    device: str = "cpu", stop: threading.Event | None = None,
) -> int:
    """Train every job of the plan's study not yet done, as one population; the runs trained.

    The whole run holds the rate's verify lock (released by the database or the kernel
    when the process dies), so a RUNNING trial found under it was left by a killed run:
    it is failed and its job queued again before anything trains.
    """
    from dm_tune.campaign.population_run import run_claimed_population

    study = optuna.load_study(study_name=plan.study_name, storage=storage,
                              pruner=optuna.pruners.NopPruner())
    with campaign_lock(storage, f"{lock_name(config)}/verify/{plan.setting.name}"):
        _optuna.requeue_running(study, JOB_ATTRS)
        waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        claimed = []
        for _ in range(waiting):
            with warnings.catch_warnings():  # we beat ourselves (_optuna.heartbeat)
                warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
                trial = study.ask()
            _optuna.record_heartbeat(trial)
            claimed.append(ClaimedTrial(study, trial, plan.setting, ROLE_VERIFY,
                                        lock_name(config)))
        if claimed:
            run_claimed_population(claimed, with_population(config, len(claimed)), device,
                                   worker_name(), stop)
    return len(claimed)


def verified_pick(
    runs: Sequence[tuple[float, object]], plan: VerifyPlan,
) -> VerifiedPick | None:
    """The plan's verified candidate at the rate: its first (risk-aware) candidate unless
    another's mean clean-val over the verify runs leads by more than seed noise
    (``guidelines.advice.order_verified``)."""
    from dm_tune.guidelines.advice import order_verified

    by_params: dict[tuple[float, float], list] = {}
    for rate, point in runs:
        if abs(rate - plan.setting.rate) > 1e-6:
            continue
        key = (round(point.emphasis_mode, 6), round(point.emphasis_variance, 6))
        by_params.setdefault(key, []).append(point)
    origins = {(round(m, 6), round(v, 6)): o for m, v, o in plan.candidates}
    scored = [(key, points) for key, points in by_params.items() if key in origins]
    if not scored:
        return None
    groups = dict(scored)
    incumbent = (round(plan.candidates[0][0], 6), round(plan.candidates[0][1], 6))
    mode, variance = order_verified(
        {k: [p.val_accuracy for p in v] for k, v in groups.items()}, incumbent)[0]
    points = groups[(mode, variance)]
    vals = [p.val_accuracy for p in points]
    tests = [p.test_accuracy for p in points if p.test_accuracy is not None]
    return VerifiedPick(
        emphasis_mode=mode, emphasis_variance=variance, origin=origins[(mode, variance)],
        val_accuracy=statistics.fmean(vals),
        val_accuracy_std=statistics.stdev(vals) if len(vals) > 1 else None,
        test_accuracy=statistics.fmean(tests) if tests else None,
        n_seeds=len(points),
    )
