"""Claiming and running trials: exact budgets across workers, the objective, the records.

Claiming a trial (failing stale ones, counting, ``ask``) runs under
:func:`dm_tune.locks.campaign_lock`, so any number of workers share exact budgets. The
objective is the final-epoch clean-validation accuracy; test accuracy and the other
results are trial user attrs, written in one statement.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from dm_tune.campaign import (
    JOB_ATTRS,
    ROLE_BASELINES,
    ROLE_DM,
    Setting,
    StudyProgress,
    campaign_progress,
    load_setting_data,
    settings_of,
    train_spec,
)
from dm_tune.config import CampaignConfig
from dm_tune.locks import campaign_lock
from dm_tune.storage import fail_stale_trials, heartbeat
from dm_tune.training import NonFiniteLossError, TrialResult, train_trial

__all__ = [
    "ClaimedTrial",
    "StudyCache",
    "TrialStopped",
    "claim_trial",
    "fail_stale_everywhere",
    "report_epochs",
    "run_claimed_trial",
    "seed_of",
    "worker_name",
]


class TrialStopped(Exception):
    """The worker was asked to stop; the trial is failed and re-queued."""


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


class StudyCache:
    """Studies loaded once per worker (sampler state and pruner live here)."""

    def __init__(self, storage, config: CampaignConfig, worker_seed: int) -> None:
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
    settings = {s.name: s for s in settings_of(config)}
    with campaign_lock(storage.engine, f"dm-tune/{config.name}"):
        candidates = [
            p for p in campaign_progress(storage, config)
            if _claimable(p, config.search.max_failures)
        ]
        if not candidates:
            return None
        # furthest below budget first; DM before baselines on ties (file order otherwise)
        chosen = max(candidates, key=lambda p: (p.remaining, p.role == ROLE_DM))
        study = cache.get(chosen.study_name, chosen.role)
        fail_stale_trials(study)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize"
            trial = study.ask()
        if hasattr(storage, "record_heartbeat") and storage.get_heartbeat_interval():
            # A trial without any heartbeat is never considered stale: beat once now, so a
            # worker killed before its heartbeat thread starts still gets its trial retried.
            storage.record_heartbeat(trial._trial_id)
    return ClaimedTrial(study, trial, settings[chosen.setting], chosen.role)


def fail_stale_everywhere(
    storage: optuna.storages.RDBStorage, config: CampaignConfig, cache: StudyCache
) -> None:
    """Fail (and re-queue) heartbeat-stale trials in every study of the campaign."""
    with campaign_lock(storage.engine, f"dm-tune/{config.name}"):
        for progress in campaign_progress(storage, config):
            if progress.running:
                fail_stale_trials(cache.get(progress.study_name, progress.role))


# ----------------------------------------------------------------------------- running


def worker_name() -> str:
    """host:pid, recorded on every trial."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _loss_of(claimed: ClaimedTrial, config: CampaignConfig) -> tuple[str, dict[str, Any], int]:
    trial = claimed.trial
    if claimed.role == ROLE_BASELINES:
        attrs = trial.user_attrs
        return str(attrs["loss"]), dict(attrs.get("loss_params", {})), int(attrs["seed"])
    search = config.search
    mode = trial.suggest_float("emphasis_mode", search.emphasis_mode.low,
                               search.emphasis_mode.high)
    variance = trial.suggest_float("emphasis_variance", search.emphasis_variance.low,
                                   search.emphasis_variance.high)
    # search trials share the campaign seed (common random numbers: trials differ only in
    # their hyperparameters); confirmation trials carry their own seed
    seed = int(trial.user_attrs.get("seed", config.campaign.seed))
    return "dm", {"emphasis_mode": mode, "emphasis_variance": variance}, seed


def _record(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Set many trial user attrs in one transaction (one commit instead of one per key)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in attrs.items()}
    storage = trial.storage
    rdb = getattr(storage, "_backend", storage)  # Optuna may wrap the RDB storage in a cache
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
    except ImportError:  # another Optuna layout: one write per key
        for key, value in clean.items():
            trial.set_user_attr(key, value)
        return
    table = models.TrialUserAttributeModel
    # Two statements in one transaction instead of three round trips per key: replace the
    # keys (a re-queued trial may carry some) and insert them all. Only this worker writes
    # to its RUNNING trial, so nothing can interleave.
    with _create_scoped_session(rdb.scoped_session) as session:
        session.query(table).filter(
            table.trial_id == trial._trial_id, table.key.in_(list(clean))
        ).delete(synchronize_session=False)
        session.add_all([
            table(trial_id=trial._trial_id, key=key, value_json=json.dumps(value))
            for key, value in clean.items()
        ])


def report_epochs(config: CampaignConfig) -> frozenset[int]:
    """Epochs at which a DM trial reports to the pruner (each report is a DB write).

    Hyperband and successive halving only ever compare trials at the rungs
    ``min_epochs * 3**k``; the median pruner at every ``min_epochs``-th epoch. The final
    epoch is always reported; the whole validation curve is stored once at the end.
    """
    search, epochs = config.search, config.training.epochs
    if search.pruner == "median":
        marks = set(range(search.min_epochs, epochs + 1, search.min_epochs))
    elif search.pruner == "hyperband":
        marks, rung = set(), search.min_epochs
        while rung < epochs:
            marks.add(rung)
            rung *= 3
    else:
        marks = set()
    return frozenset(marks | {epochs})


def _curves(curve: list[dict[str, float]]) -> dict[str, list[float]]:
    return {
        "val_accuracy_curve": [round(float(m["val_accuracy"]), 6) for m in curve],
        "test_accuracy_curve": [round(float(m["test_accuracy"]), 6) for m in curve],
    }


def _partial_attrs(curve: list[dict[str, float]], started: float) -> dict[str, Any]:
    attrs: dict[str, Any] = {"seconds": time.perf_counter() - started, "epochs_run": len(curve),
                             **_curves(curve)}
    if curve:
        best = max(range(len(curve)), key=lambda i: curve[i]["val_accuracy"])
        attrs.update({
            "test_accuracy": curve[-1]["test_accuracy"],
            "test_accuracy_at_best_val": curve[best]["test_accuracy"],
            "best_val_epoch": best + 1,
        })
    return attrs


def run_claimed_trial(
    claimed: ClaimedTrial,
    config: CampaignConfig,
    device: str,
    worker: str,
    stop: threading.Event | None = None,
    on_epoch: Callable[[ClaimedTrial, int, dict[str, float]], None] | None = None,
) -> TrialState:
    """Train the claimed trial, report every epoch, prune, and tell the study the result.

    A stop request fails the trial and re-queues it with the same parameters.
    """
    trial, study = claimed.trial, claimed.study
    data = load_setting_data(config, claimed.setting)
    loss, loss_params, seed = _loss_of(claimed, config)
    # written once with the results: every user-attr write is a database transaction
    base = {"loss": loss, "seed": seed, "worker": worker, "device": device,
            "realised_noise_rate": data.realised_noise_rate}
    curve: list[dict[str, float]] = []
    started = time.perf_counter()
    reported = report_epochs(config)

    def epoch_callback(epoch: int, metrics: dict[str, float]) -> None:
        curve.append(dict(metrics))
        if on_epoch is not None:
            on_epoch(claimed, epoch, metrics)
        if stop is not None and stop.is_set():
            raise TrialStopped
        if epoch in reported:
            trial.report(float(metrics["val_accuracy"]), epoch)
            if claimed.role == ROLE_DM and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    spec = train_spec(config, device, seed)
    with heartbeat(trial):
        try:
            result: TrialResult = train_trial(data, spec, loss, loss_params,
                                              on_epoch=epoch_callback, progress=False)
        except optuna.TrialPruned:
            _record(trial, {**base, **_partial_attrs(curve, started)})
            study.tell(trial, state=TrialState.PRUNED)
            return TrialState.PRUNED
        except NonFiniteLossError as error:
            _record(trial, {**base, **_partial_attrs(curve, started),
                            "pruned_reason": str(error)})
            study.tell(trial, state=TrialState.PRUNED)
            return TrialState.PRUNED
        except TrialStopped:
            _record(trial, {**base, **_partial_attrs(curve, started), "stopped": "worker stop"})
            study.tell(trial, state=TrialState.FAIL)
            _requeue(study, trial)
            return TrialState.FAIL
        except BaseException as error:
            _record(trial, {**base, "error": f"{type(error).__name__}: {error}"[:500]})
            study.tell(trial, state=TrialState.FAIL)
            if isinstance(error, KeyboardInterrupt):
                _requeue(study, trial)
            raise
    _record(trial, {**base, **result.user_attrs(), **_curves(curve)})
    study.tell(trial, result.val_accuracy)
    return TrialState.COMPLETE


def _requeue(study: optuna.Study, trial: optuna.Trial) -> None:
    # Not the storage's heartbeat retry callback: a stop is no failure of the trial, so it
    # must not use up its bounded retries, nor copy the partial results of the run.
    frozen = study._storage.get_trial(trial._trial_id)
    keep = {k: v for k, v in frozen.user_attrs.items() if k in JOB_ATTRS}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING,
        params=frozen.params,
        distributions=frozen.distributions,
        user_attrs=keep,
        system_attrs={"failed_trial": frozen.number},
    ))


def seed_of(name: str) -> int:
    """A stable small integer for a worker name (sampler seeds differ across workers)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
