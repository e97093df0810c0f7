"""Running K claimed trials as one population model (``[search] population = K``).

The trials are claimed under one acquisition of the campaign lock and trained by one
:func:`dm_tune.population.train_population`; each member is an exact replicate of the
single trial it stands for, and reports, prunes and records exactly as
:func:`dm_tune.campaign.run_trial.run_claimed_trial` would, plus ``population_size``.
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import optuna

from dm_tune.campaign import _optuna
from dm_tune.campaign.claims import ClaimedTrial, StudyCache, claim_locked
from dm_tune.campaign.create import lock_name
from dm_tune.campaign.locks import campaign_lock
from dm_tune.campaign.records import ROLE_DM, TrialKey, curve_attrs, partial_attrs
from dm_tune.campaign.run_trial import (
    EpochHook,
    TrialOutcome,
    TrialStopped,
    base_attrs,
    beat_failed,
    end_complete,
    end_failed,
    end_pruned,
    end_stopped,
    loss_of,
    report_epochs,
)
from dm_tune.campaign.settings import load_setting_data, train_spec
from dm_tune.config import CampaignConfig

__all__ = ["claim_trials", "run_claimed_population"]


def claim_trials(
    storage: optuna.storages.RDBStorage, config: CampaignConfig, cache: StudyCache, k: int
) -> list[ClaimedTrial]:
    """Claim up to ``k`` trials under one campaign lock (fewer when fewer are left)."""
    claimed: list[ClaimedTrial] = []
    with campaign_lock(storage.engine, lock_name(config)):
        while len(claimed) < k:
            one = claim_locked(storage, config, cache)
            if one is None:
                break
            claimed.append(one)
    return claimed


@dataclass
class _Job:
    """One claimed trial as a population member: its attrs and the epochs it has seen."""

    claimed: ClaimedTrial
    base: dict[str, Any]
    curve: list[dict[str, float]] = field(default_factory=list)
    outcome: TrialOutcome | None = None


def run_claimed_population(
    claimed: list[ClaimedTrial],
    config: CampaignConfig,
    device: str,
    worker: str,
    stop: threading.Event | None = None,
    on_epoch: EpochHook | None = None,
) -> list[TrialOutcome]:
    """Train the claimed trials together; one outcome per trial, in order.

    A stop request fails every unfinished trial and re-queues it; any other error fails
    them all (recording the error) and propagates.
    """
    from dm_tune.population import Member, train_population

    members, jobs = [], []
    for one in claimed:
        data = load_setting_data(config, one.setting)
        loss, loss_params, seed = loss_of(one, config)
        members.append(Member(data, loss, loss_params, seed))
        jobs.append(_Job(one, {**base_attrs(worker, device, data, loss, seed),
                               TrialKey.POPULATION_SIZE: len(claimed)}))
    started = time.perf_counter()
    reported = report_epochs(config)

    def epoch_callback(epoch: int, metrics: dict[int, dict[str, float]]) -> list[int]:
        for index, values in metrics.items():
            jobs[index].curve.append(dict(values))
            if on_epoch is not None:
                on_epoch(jobs[index].claimed, epoch, values)
        if stop is not None and stop.is_set():
            raise TrialStopped
        if epoch not in reported:
            return []
        pruned = []
        for index, values in metrics.items():
            job = jobs[index]
            trial = job.claimed.trial
            trial.report(float(values["val_accuracy"]), epoch)
            if job.claimed.role == ROLE_DM and trial.should_prune():
                job.outcome = end_pruned(job.claimed,
                                         {**job.base, **partial_attrs(job.curve, started)})
                pruned.append(index)
        return pruned

    spec = train_spec(config, device, members[0].seed)  # each member uses its own seed
    with ExitStack() as beats:
        for one in claimed:
            beats.enter_context(_optuna.heartbeat(one.trial, on_failure=beat_failed(one.trial)))
        try:
            results = train_population(members, spec, on_epoch=epoch_callback)
        except TrialStopped:
            for job in jobs:
                if job.outcome is None:
                    job.outcome = end_stopped(job.claimed,
                                              {**job.base, **partial_attrs(job.curve, started)})
            return [job.outcome for job in jobs if job.outcome is not None]
        except BaseException as error:
            for job in jobs:
                if job.outcome is None:
                    end_failed(job.claimed, job.base, error)
            raise
        for job, result in zip(jobs, results, strict=True):
            if job.outcome is not None:
                continue  # pruned by its study's pruner (recorded then)
            if result.status == "complete" and result.result is not None:
                job.outcome = end_complete(job.claimed, {**job.base, **curve_attrs(job.curve)},
                                           result.result)
            else:  # a non-finite loss: pruned with its reason, as a single trial would be
                job.outcome = end_pruned(job.claimed, {
                    **job.base, **partial_attrs(job.curve, started),
                    TrialKey.PRUNED_REASON: str(result.reason),
                })
    return [job.outcome for job in jobs if job.outcome is not None]
