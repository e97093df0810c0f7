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
from collections.abc import Callable
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
    """One claimed trial: its member slots (one per replicate seed), its mean curve, its
    members' results as they end, and its heartbeat (stopped when the trial ends)."""

    claimed: ClaimedTrial
    base: dict[str, Any]
    slots: list[int]
    num_classes: int
    curve: list[dict[str, float]] = field(default_factory=list)
    results: dict[int, Any] = field(default_factory=dict)
    outcome: TrialOutcome | None = None
    beat: ExitStack = field(default_factory=ExitStack)
    started: float = field(default_factory=time.perf_counter)


def _replicates(one: ClaimedTrial, config: CampaignConfig) -> int:
    """S for a DM search trial (a retry of one included: it carries the search's seed),
    1 for a re-training of a chosen setting with a seed of its own and other roles."""
    attrs = one.trial.user_attrs
    retraining = TrialKey.SOURCE_TRIAL in attrs or TrialKey.CONFIRMATION in attrs
    return config.search.seeds if one.role == ROLE_DM and not retraining else 1


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


#: claim_more(n) -> up to n more claimed trials (none: the population drains)
ClaimMore = Callable[[int], list[ClaimedTrial]]
#: on_outcome(claimed, outcome) as each trial ends
OutcomeHook = Callable[[ClaimedTrial, TrialOutcome], None]


def run_claimed_population(
    claimed: list[ClaimedTrial],
    config: CampaignConfig,
    device: str,
    worker: str,
    stop: threading.Event | None = None,
    on_epoch: EpochHook | None = None,
    claim_more: ClaimMore | None = None,
    on_outcome: OutcomeHook | None = None,
) -> list[tuple[ClaimedTrial, TrialOutcome]]:
    """Train the claimed trials (each with its replicate seeds) together; each trial and
    its outcome, in the order they were claimed. A search trial's objective is the mean
    over its replicates.

    With ``claim_more``, the population keeps up to ``[search] population`` trials
    training: when trials end (pruned, complete) it claims more, which join at their first
    epoch; once ``claim_more`` has none, it drains. Each trial is told (and ``on_outcome`` called)
    as soon as it ends. A stop request fails every unfinished trial and re-queues it;
    any other error fails them all (recording the error) and propagates.
    """
    from dm_tune.population import train_population

    run = _PopulationRun(config, device, worker, on_epoch, on_outcome)
    try:
        members = run.start(claimed)
        if members:
            # the engine's places are members (S per search trial, 1 per other job); the
            # limit that matters is in trials, which `_PopulationRun.refill` keeps
            capacity = max(len(members), config.search.population * config.search.seeds)
            spec = train_spec(config, device, members[0].seed)  # members use their own
            train_population(members, spec, on_epoch=run.epoch_callback(stop),
                             refill=None if claim_more is None else run.refill(claim_more),
                             capacity=capacity, on_ended=run.member_ended)
    except TrialStopped:
        for job in run.jobs:
            if job.outcome is None:
                run.finish(job, end_stopped(job.claimed,
                                            {**job.base, **partial_attrs(job.curve, job.started)}))
    except BaseException as error:
        for job in run.jobs:  # every claimed trial is a job: none is left RUNNING
            if job.outcome is None:
                end_failed(job.claimed, job.base, error)
        raise
    finally:
        for job in run.jobs:
            job.beat.close()
    return run.ended()


class _PopulationRun:
    """The trials of one population run and what happens to them as members end."""

    def __init__(self, config: CampaignConfig, device: str, worker: str,
                 on_epoch: EpochHook | None, on_outcome: OutcomeHook | None) -> None:
        self.config, self.device, self.worker = config, device, worker
        self.on_epoch, self.on_outcome = on_epoch, on_outcome
        self.jobs: list[_Job] = []
        self.members: list[Any] = []  # every member so far: index = engine member index
        self.job_of: dict[int, _Job] = {}
        self.reported = report_epochs(config)

    def start(self, claimed: list[ClaimedTrial]) -> list[Any]:
        """Members of the newly claimed trials (their jobs and heartbeats started).

        Every claimed trial becomes a job before anything that can fail, so that an error
        part-way fails all of them (`run_claimed_population`) instead of leaving some
        RUNNING.
        """
        from dm_tune.population import Member

        pending = [_Job(one, {}, [], 0) for one in claimed]
        self.jobs.extend(pending)
        new = []
        for job in pending:
            one = job.claimed
            data = load_setting_data(self.config, one.setting)
            job.num_classes = data.num_classes
            try:
                loss, loss_params, seed = suggest_job(one, self.config)
            except TrialTakenOver:  # failed as stale before it began: no member slots
                self.finish(job, taken_over(one))
                continue
            seeds = replicate_seeds(seed, _replicates(one, self.config))
            first = len(self.members) + len(new)
            job.slots = list(range(first, first + len(seeds)))
            new.extend(Member(data, loss, loss_params, s) for s in seeds)
            job.base = base_attrs(self.worker, self.device, data, loss, seed)
            if len(seeds) > 1:
                job.base[TrialKey.REPLICATE_SEEDS] = seeds
            trial = one.trial
            job.beat.enter_context(_optuna.heartbeat(trial, on_failure=beat_failed(trial)))
            job.started = time.perf_counter()
            self.job_of.update({slot: job for slot in job.slots})
        # population_size: the trials training together when this one started
        width = self.running()
        for job in pending:
            if job.outcome is None:
                job.base[TrialKey.POPULATION_SIZE] = width
        self.members.extend(new)
        return new

    def running(self) -> int:
        """Trials claimed and not ended."""
        return sum(job.outcome is None for job in self.jobs)

    def refill(self, claim_more: ClaimMore) -> Callable[[int], list[Any]]:
        """The engine's refill: trials for the free places, never more than K running.

        The engine counts members; a search trial brings S, another job 1, so the room
        is counted here in trials. After a claim finds nothing the population drains:
        trials that become claimable later (re-queued elsewhere) are the worker loop's.
        """
        exhausted = False

        def more(free_members: int) -> list[Any]:
            nonlocal exhausted
            room = self.config.search.population - self.running()
            if exhausted or free_members < 1 or room < 1:
                return []
            claimed = claim_more(room)
            if not claimed:
                exhausted = True
            return self.start(claimed)

        return more

    def finish(self, job: _Job, outcome: TrialOutcome) -> None:
        """The trial has ended: stop its heartbeat, tell the hook."""
        job.outcome = outcome
        job.beat.close()
        if self.on_outcome is not None:
            self.on_outcome(job.claimed, outcome)

    def ended(self) -> list[tuple[ClaimedTrial, TrialOutcome]]:
        return [(job.claimed, job.outcome) for job in self.jobs if job.outcome is not None]

    def epoch_callback(self, stop: threading.Event | None) -> Callable:
        def callback(epoch: int, metrics: dict[int, dict[str, float]]) -> list[int]:
            removed: list[int] = []
            for job in self.jobs:
                rows = [metrics[slot] for slot in job.slots if slot in metrics]
                if job.outcome is not None or not rows:
                    continue
                own_epoch = int(rows[0]["epoch"])
                if len(rows) < len(job.slots):  # a replicate diverged: the trial is pruned
                    self.finish(job, end_pruned(job.claimed, {
                        **job.base, **partial_attrs(job.curve, job.started),
                        TrialKey.PRUNED_REASON: f"a replicate's training loss became "
                                                f"non-finite in epoch {own_epoch}"}))
                    removed.extend(slot for slot in job.slots if slot in metrics)
                    continue
                job.curve.append(_mean_metrics(rows))
                if self.on_epoch is not None:
                    self.on_epoch(job.claimed, own_epoch, job.curve[-1])
                if own_epoch not in self.reported:
                    continue
                try:
                    # the pruner sees the mean over the replicates
                    value = float(job.curve[-1]["val_accuracy"])
                    if report_and_prune(job.claimed, value, own_epoch):
                        self.finish(job, end_pruned(
                            job.claimed, {**job.base, **partial_attrs(job.curve, job.started)}))
                except TrialTakenOver:
                    self.finish(job, taken_over(job.claimed))
                if job.outcome is not None:
                    removed.extend(job.slots)
            if stop is not None and stop.is_set():
                raise TrialStopped
            return removed

        return callback

    def member_ended(self, result: Any) -> None:
        """A member completed or diverged: record its trial once all its replicates ended."""
        job = self.job_of[result.index]
        job.results[result.index] = result
        if job.outcome is not None or len(job.results) < len(job.slots):
            return  # pruned by its study's pruner (recorded), or replicates still training
        mine = [job.results[slot] for slot in job.slots]
        if all(r.status == "complete" and r.result is not None for r in mine):
            finished = [r.result for r in mine]
            extra = _replicate_attrs(finished) if len(finished) > 1 else {}
            mean = _mean_result(finished)
            extra.update(collapse_attrs(job.claimed.role, job.num_classes, mean.val_accuracy))
            self.finish(job, end_complete(
                job.claimed, {**job.base, **curve_attrs(job.curve), **extra}, mean))
        else:  # every replicate's loss became non-finite in the same epoch
            reason = next(str(r.reason) for r in mine if r.status != "complete")
            self.finish(job, end_pruned(job.claimed, {
                **job.base, **partial_attrs(job.curve, job.started),
                TrialKey.PRUNED_REASON: reason,
            }))
