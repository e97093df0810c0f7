"""Claiming trials: exact budgets across any number of workers.

Claiming (failing stale trials, counting, ``ask``) runs under
:func:`dm_tune.campaign.locks.campaign_lock`: Optuna's ``ask`` creates a trial whenever
no WAITING one exists, so two workers that both saw "one left" would overshoot.
"""

from __future__ import annotations

import hashlib
import os
import socket
import warnings
from dataclasses import dataclass

import optuna

from dm_tune.campaign import _optuna
from dm_tune.campaign.create import lock_name
from dm_tune.campaign.locks import campaign_lock
from dm_tune.campaign.progress import StudyProgress, campaign_progress
from dm_tune.campaign.records import JOB_ATTRS, ROLE_DM, WORKER_JOINS
from dm_tune.campaign.settings import Setting, settings_of
from dm_tune.config import CampaignConfig

__all__ = [
    "ClaimedTrial",
    "StudyCache",
    "claim_locked",
    "claim_trial",
    "fail_stale_everywhere",
    "join_seed",
    "seed_of",
    "worker_name",
]


def worker_name() -> str:
    """host:pid, recorded on every trial."""
    return f"{socket.gethostname()}:{os.getpid()}"


def seed_of(name: str) -> int:
    """A stable small integer for a worker name (sampler seeds differ across workers)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")


#: a worker seed's studies get seeds worker_seed + 0, 1, ... (StudyCache): joins lie this
#: far apart, so that two processes' seeds never meet in one study
JOIN_STRIDE = 65_536


def join_seed(storage: optuna.storages.BaseStorage, config: CampaignConfig) -> int:
    """The worker seed of a process joining the campaign: ``JOIN_STRIDE`` times the number
    of processes that joined before it (counted in the database, under the campaign lock).

    The first process of a campaign gets 0, the seed a lone ``dm-tune run`` always had,
    so that it still reproduces a campaign; every later or concurrent process (a second
    ``run``, each worker of ``launch`` or Slurm, on any machine) gets a seed of its own.
    """
    name = settings_of(config)[0].study_name(config.name, ROLE_DM)
    with campaign_lock(storage, lock_name(config)):
        study_id = storage.get_study_id_from_name(name)
        joined = int(storage.get_study_system_attrs(study_id).get(WORKER_JOINS, 0))
        storage.set_study_system_attr(study_id, WORKER_JOINS, joined + 1)
    return joined * JOIN_STRIDE


def _sampler(config: CampaignConfig, worker_seed: int) -> optuna.samplers.BaseSampler:
    search = config.search
    seed = (config.campaign.seed * 1_000_003 + worker_seed) % 2**31
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if search.sampler == "tpe":
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=True, n_startup_trials=search.startup_trials,
                constant_liar=True,
            )
        if search.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=search.startup_trials)
        if search.sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(
                seed=seed, n_startup_trials=search.startup_trials,
                warn_independent_sampling=False,
            )
    # grid: every grid point is enqueued at creation; random fills any retry gap
    return optuna.samplers.RandomSampler(seed=seed)


def _pruner(config: CampaignConfig, role: str) -> optuna.pruners.BasePruner:
    search, epochs = config.search, config.training.epochs
    if role != ROLE_DM or search.pruner == "none" or epochs <= search.min_epochs:
        return optuna.pruners.NopPruner()
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=search.min_epochs)
    return optuna.pruners.HyperbandPruner(
        min_resource=search.min_epochs, max_resource=epochs, reduction_factor=3
    )


@dataclass
class ClaimedTrial:
    """A RUNNING trial this worker owns, with what it needs to run it."""

    study: optuna.Study
    trial: optuna.Trial
    setting: Setting
    role: str
    lock: str = ""  #: the campaign lock's name (re-queueing takes it, as claims do)


class StudyCache:
    """Studies loaded once per worker (sampler state and pruner live here)."""

    def __init__(
        self, storage: optuna.storages.BaseStorage, config: CampaignConfig, worker_seed: int
    ) -> None:
        self.storage, self.config, self.worker_seed = storage, config, worker_seed
        self._studies: dict[str, optuna.Study] = {}

    def get(self, name: str, role: str) -> optuna.Study:
        if name not in self._studies:
            self._studies[name] = optuna.load_study(
                study_name=name,
                storage=self.storage,
                sampler=_sampler(self.config, self.worker_seed + len(self._studies)),
                pruner=_pruner(self.config, role),
            )
        return self._studies[name]


def _claimable(progress: StudyProgress, max_failures: int) -> bool:
    if progress.remaining <= 0:
        return False
    if progress.waiting > 0:
        return True
    # without a queued trial, DM studies ask the sampler; baselines need a queued job
    return progress.role == ROLE_DM and progress.failed < max_failures + progress.budget // 2


def claim_trial(
    storage: optuna.storages.RDBStorage, config: CampaignConfig, cache: StudyCache
) -> ClaimedTrial | None:
    """Take one trial from the study furthest below its budget; None when nothing is left."""
    with campaign_lock(storage, lock_name(config)):
        return claim_locked(storage, config, cache)


def claim_locked(
    storage: optuna.storages.RDBStorage, config: CampaignConfig, cache: StudyCache
) -> ClaimedTrial | None:
    """:func:`claim_trial`'s work, for a caller that holds the campaign lock already."""
    candidates = [
        p for p in campaign_progress(storage, config)
        if _claimable(p, config.search.max_failures)
    ]
    if not candidates:
        return None
    # furthest below budget first; DM before baselines on ties (file order otherwise)
    chosen = max(candidates, key=lambda p: (p.remaining, p.role == ROLE_DM))
    study = cache.get(chosen.study_name, chosen.role)
    _optuna.fail_stale_trials(study)
    with warnings.catch_warnings():
        # ask/tell with heartbeats is what we mean: we beat ourselves (_optuna.heartbeat)
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        trial = study.ask()
    # A worker killed before its heartbeat thread starts must still get its trial retried.
    _optuna.record_heartbeat(trial)
    settings = {s.name: s for s in settings_of(config)}
    return ClaimedTrial(study, trial, settings[chosen.setting], chosen.role, lock_name(config))


def fail_stale_everywhere(
    storage: optuna.storages.RDBStorage, config: CampaignConfig, cache: StudyCache
) -> None:
    """Fail (and re-queue) heartbeat-stale trials in every study of the campaign."""
    with campaign_lock(storage, lock_name(config)):
        for progress in campaign_progress(storage, config):
            if progress.running:
                study = cache.get(progress.study_name, progress.role)
                _optuna.fail_stale_trials(study)
                _fail_orphans(storage, study)


def _fail_orphans(storage: optuna.storages.BaseStorage, study: optuna.Study) -> None:
    # A claim cut by an outage between `ask` and the first beat leaves a RUNNING trial
    # that never beat; after the grace period it is failed and its job queued again.
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    engine = getattr(storage, "engine", None)
    proxied = getattr(storage, "orphan_trial_ids", None)  # the proxy finds them itself
    if not interval or (engine is None and not callable(proxied)):
        return
    older = 2 * interval + 5
    found = (proxied(study.study_name, older) if callable(proxied)
             else _optuna.orphan_trial_ids(engine, study.study_name, older))
    for trial_id in found:
        _optuna.fail_and_requeue(study, trial_id, JOB_ATTRS)
