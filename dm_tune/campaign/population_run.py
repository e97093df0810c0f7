"""Running K claimed trials as one population model (``[search] population = K``).

The trials are claimed under one acquisition of the campaign lock and trained by one
:func:`dm_tune.population.train_population`; each member is an exact replicate of the
single trial it stands for, and reports, prunes and records exactly as
:func:`dm_tune.campaign.run_trial.run_claimed_trial` would, plus ``population_size``.
"""

from __future__ import annotations

import statistics
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
    TrialTakenOver,
    base_attrs,
    beat_failed,
    collapse_attrs,
    end_complete,
    end_failed,
    end_pruned,
    end_stopped,
    report_and_prune,
    report_epochs,
    suggest_job,
    taken_over,
)
from dm_tune.campaign.settings import load_setting_data, train_spec
from dm_tune.config import CampaignConfig

__all__ = ["REPLICATE_STRIDE", "claim_trials", "replicate_seeds", "run_claimed_population"]


def claim_trials(
    storage: optuna.storages.RDBStorage, config: CampaignConfig, cache: StudyCache, k: int
) -> list[ClaimedTrial]:
    """Claim up to ``k`` trials under one campaign lock (fewer when fewer are left)."""
    claimed: list[ClaimedTrial] = []
    with campaign_lock(storage, lock_name(config)):
        while len(claimed) < k:
            one = claim_locked(storage, config, cache)
            if one is None:
                break
            claimed.append(one)
    return claimed


#: replicate r of a search trial trains with seed + REPLICATE_STRIDE * r (r = 0: the seed
#: a single-seed trial uses, so S = 1 is today's trial; the stride keeps clear of the
#: confirmation seeds at seed + 1000 + k)
REPLICATE_STRIDE = 10_007


def replicate_seeds(seed: int, replicates: int) -> list[int]:
    """The seeds of a search trial's ``replicates`` replicate members."""
    return [seed + REPLICATE_STRIDE * r for r in range(replicates)]


@dataclass
class _Job:
    """One claimed trial: its member slots (one per replicate seed) and its mean curve."""

    claimed: ClaimedTrial
    base: dict[str, Any]
    slots: list[int]
    num_classes: int
    curve: list[dict[str, float]] = field(default_factory=list)
    outcome: TrialOutcome | None = None


def _replicates(one: ClaimedTrial, config: CampaignConfig) -> int:
    # DM search trials only: baselines and confirmations carry their own seeds
    explicit_seed = TrialKey.SEED in one.trial.user_attrs
    return config.search.seeds if one.role == ROLE_DM and not explicit_seed else 1


def _mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.fmean(row[key] for row in rows) for key in rows[0]}


def _replicate_attrs(results: list[Any]) -> dict[str, Any]:
    vals = [r.val_accuracy for r in results]
    tests = [r.test_accuracy for r in results]
    return {TrialKey.REPLICATE_VAL_ACCURACIES: vals, TrialKey.REPLICATE_TEST_ACCURACIES: tests,
            TrialKey.VAL_ACCURACY_STD: statistics.pstdev(vals)}


def _mean_result(results: list[Any]) -> Any:
    """One TrialResult for S replicates: mean curves and figures (the objective: mean val)."""
    from dataclasses import fields, replace

    if len(results) == 1:
        return results[0]
    mean = {}
    for f in fields(results[0]):
        values = [getattr(r, f.name) for r in results]
        if isinstance(values[0], float):
            mean[f.name] = statistics.fmean(values)
        elif isinstance(values[0], list) and values[0] and isinstance(values[0][0], float):
            mean[f.name] = [statistics.fmean(column) for column in zip(*values, strict=True)]
    return replace(results[0], **mean)


def run_claimed_population(
    claimed: list[ClaimedTrial],
    config: CampaignConfig,
    device: str,
    worker: str,
    stop: threading.Event | None = None,
    on_epoch: EpochHook | None = None,
) -> list[TrialOutcome]:
    """Train the claimed trials (each with its replicate seeds) together; one outcome per
    trial, in order. A search trial's objective is the mean over its replicates.

    A stop request fails every unfinished trial and re-queues it; any other error fails
    them all (recording the error) and propagates.
    """
    from dm_tune.population import Member, train_population

    members, jobs = [], []
    for one in claimed:
        data = load_setting_data(config, one.setting)
        try:
            loss, loss_params, seed = suggest_job(one, config)
        except TrialTakenOver:  # failed as stale before it began: no member slots
            jobs.append(_Job(one, {}, [], data.num_classes, outcome=taken_over(one)))
            continue
        seeds = replicate_seeds(seed, _replicates(one, config))
        slots = list(range(len(members), len(members) + len(seeds)))
        members.extend(Member(data, loss, loss_params, s) for s in seeds)
        base = {**base_attrs(worker, device, data, loss, seed),
                TrialKey.POPULATION_SIZE: len(claimed)}
        if len(seeds) > 1:
            base[TrialKey.REPLICATE_SEEDS] = seeds
        jobs.append(_Job(one, base, slots, data.num_classes))
    started = time.perf_counter()
    reported = report_epochs(config)

    def epoch_callback(epoch: int, metrics: dict[int, dict[str, float]]) -> list[int]:
        removed = []
        for job in jobs:
            rows = [metrics[slot] for slot in job.slots if slot in metrics]
            if job.outcome is not None or not rows:
                continue
            if len(rows) < len(job.slots):  # a replicate diverged: the trial is pruned
                job.outcome = end_pruned(job.claimed, {
                    **job.base, **partial_attrs(job.curve, started),
                    TrialKey.PRUNED_REASON: f"a replicate's training loss became non-finite "
                                            f"in epoch {epoch}"})
                removed.extend(slot for slot in job.slots if slot in metrics)
                continue
            job.curve.append(_mean_metrics(rows))
            if on_epoch is not None:
                on_epoch(job.claimed, epoch, job.curve[-1])
        if stop is not None and stop.is_set():
            raise TrialStopped
        if epoch not in reported:
            return removed
        for job in jobs:
            if job.outcome is not None or not job.curve or len(job.curve) < epoch:
                continue
            try:
                # the pruner sees the mean over the replicates
                if report_and_prune(job.claimed, float(job.curve[-1]["val_accuracy"]), epoch):
                    job.outcome = end_pruned(job.claimed,
                                             {**job.base, **partial_attrs(job.curve, started)})
            except TrialTakenOver:
                job.outcome = taken_over(job.claimed)
            if job.outcome is not None:
                removed.extend(job.slots)
        return removed

    if not members:
        return [job.outcome for job in jobs if job.outcome is not None]
    spec = train_spec(config, device, members[0].seed)  # each member uses its own seed
    with ExitStack() as beats:
        for job in jobs:
            if job.outcome is None:
                trial = job.claimed.trial
                beats.enter_context(_optuna.heartbeat(trial, on_failure=beat_failed(trial)))
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
        for job in jobs:
            if job.outcome is not None:
                continue  # pruned by its study's pruner, or a replicate diverged (recorded)
            mine = [results[slot] for slot in job.slots]
            if all(r.status == "complete" and r.result is not None for r in mine):
                finished = [r.result for r in mine]
                extra = _replicate_attrs(finished) if len(finished) > 1 else {}
                mean = _mean_result(finished)
                extra.update(collapse_attrs(job.claimed.role, job.num_classes,
                                            mean.val_accuracy))
                job.outcome = end_complete(
                    job.claimed, {**job.base, **curve_attrs(job.curve), **extra}, mean)
            else:  # a non-finite loss in the last epoch: pruned with its reason
                reason = next(str(r.reason) for r in mine if r.status != "complete")
                job.outcome = end_pruned(job.claimed, {
                    **job.base, **partial_attrs(job.curve, started),
                    TrialKey.PRUNED_REASON: reason,
                })
    return [job.outcome for job in jobs if job.outcome is not None]
