"""The worker loop: claim, run, repeat until every study meets its budget or a stop."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType

import optuna

from dm_tune.campaign import liveness
from dm_tune.campaign.claims import (
    ClaimedTrial,
    StudyCache,
    claim_trial,
    fail_stale_everywhere,
    join_seed,
    worker_name,
)
from dm_tune.campaign.create import check_campaign
from dm_tune.campaign.progress import campaign_progress
from dm_tune.campaign.retry import retrying
from dm_tune.campaign.run_trial import EpochHook, TrainFn, TrialOutcome, run_claimed_trial
from dm_tune.config import CampaignConfig
from dm_tune.training import train_trial

__all__ = ["WorkerSummary", "run_worker", "stop_signals"]

IDLE_POLL_S = 2.0
TrialHook = Callable[[ClaimedTrial, TrialOutcome], None]


@dataclass
class WorkerSummary:
    """What one worker did, and where its time went (benchmarks read the timings)."""

    worker: str
    states: dict[str, int] = field(default_factory=dict)
    stopped: bool = False
    claim_seconds: list[float] = field(default_factory=list)
    trial_seconds: list[float] = field(default_factory=list)
    idle_seconds: float = 0.0
    in_flight: int = 0  # claimed by a population run and not ended yet

    @property
    def trials(self) -> int:
        return sum(self.states.values())


@contextmanager
def stop_signals(stop: threading.Event | None = None) -> Iterator[threading.Event]:
    """SIGTERM and SIGINT set ``stop`` (the trial ends at its next epoch) while the block runs.

    A second Ctrl-C raises KeyboardInterrupt at once. The previous handlers come back on
    exit, so a library caller's own handlers survive a worker run.
    """
    stop = stop or threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def run_worker(
    storage: optuna.storages.RDBStorage,
    config: CampaignConfig,
    device: str = "cpu",
    max_trials: int | None = None,
    stop: threading.Event | None = None,
    name: str | None = None,
    on_trial: TrialHook | None = None,
    on_epoch: EpochHook | None = None,
    poll_seconds: float = IDLE_POLL_S,
    sampler_seed: int | None = None,
    train: TrainFn = train_trial,
) -> WorkerSummary:
    """Take trials until every study meets its budget, ``max_trials`` or a stop request.

    ``sampler_seed`` seeds the samplers (with the campaign seed); by default it is
    :func:`~dm_tune.campaign.claims.join_seed`: 0 for the campaign's first process, a
    seed of its own for every other, so that processes never propose the same trials
    (names repeat: ``cpu0`` on two machines). A single worker given a fixed seed
    reproduces a campaign exactly on CPU.

    Storage calls ride out database outages (:mod:`dm_tune.campaign.retry`): the trial
    in flight continues once the database is back.

    ``train`` replaces ``train_trial`` for one trial at a time (benchmarks, tests); a
    population (``[search] population`` or ``seeds`` above 1) trains through
    :func:`dm_tune.population.train_population`, so a ``train`` hook is refused there.

    Raises:
        ValueError: a ``train`` hook with a population configuration.
        DigestMismatchError: this machine's labels differ from the studies' (exit 2).
        StorageOutage: the database stayed unreachable past the outage limit (exit 2).
    """
    if train is not train_trial and _as_population(config):
        raise ValueError("run_worker: a train= hook applies to one trial at a time; this "
                         "campaign trains populations ([search] population or seeds > 1)")
    stop = stop or threading.Event()
    name = name or worker_name()
    # refuse other labels up front (through an outage: workers may start during one)
    retrying(lambda: check_campaign(storage, config, require_created=True), "joining")
    liveness.touch()  # joined ($DM_TUNE_HEARTBEAT_FILE, for a k8s probe); again each pass
    if sampler_seed is None:
        sampler_seed = retrying(lambda: join_seed(storage, config), "joining")
    cache = StudyCache(storage, config, sampler_seed)
    summary = WorkerSummary(name)

    def ended(claimed: ClaimedTrial, outcome: TrialOutcome) -> None:
        if _as_population(config):
            summary.in_flight -= 1
        summary.states[outcome.state.name] = summary.states.get(outcome.state.name, 0) + 1
        if on_trial is not None:
            on_trial(claimed, outcome)

    def claim_more(k: int) -> list[ClaimedTrial]:
        """More trials for a running population (none once a stop is asked for)."""
        if stop.is_set():
            return []
        return retrying(lambda: _claim_population(storage, config, cache, max_trials,
                                                  summary, k), "claiming trials")

    while not stop.is_set() and (max_trials is None or summary.trials < max_trials):
        liveness.touch()
        started = time.perf_counter()
        if _as_population(config):
            batch = retrying(lambda: _claim_population(storage, config, cache, max_trials,
                                                       summary), "claiming trials")
            claimed = batch[0] if batch else None
        else:
            claimed = retrying(lambda: claim_trial(storage, config, cache), "claiming a trial")
        if claimed is None:
            summary.idle_seconds += time.perf_counter() - started
            progress = retrying(lambda: campaign_progress(storage, config), "reading progress")
            if not any(p.running for p in progress):
                break  # every budget met (or exhausted by failures): nothing left to wait for
            # Trials still run elsewhere: if their worker died, they go stale and come back.
            retrying(lambda: fail_stale_everywhere(storage, config, cache),
                     "failing stale trials")
            stop.wait(poll_seconds)
            continue
        summary.claim_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        if _as_population(config):
            from dm_tune.campaign.population_run import run_claimed_population

            # trials are counted (and on_trial called) as each one ends
            run_claimed_population(batch, config, device, name, stop, on_epoch,
                                   claim_more=claim_more, on_outcome=ended)
        else:
            ended(claimed, run_claimed_trial(claimed, config, device, name, stop, on_epoch,
                                             train))
        summary.trial_seconds.append(time.perf_counter() - started)
    summary.stopped = stop.is_set()
    return summary


def _as_population(config: CampaignConfig) -> bool:
    """Population path: K > 1 trials at once, or S > 1 replicate seeds per trial."""
    return config.search.population > 1 or config.search.seeds > 1


def _claim_population(
    storage: optuna.storages.RDBStorage,
    config: CampaignConfig,
    cache: StudyCache,
    max_trials: int | None,
    summary: WorkerSummary,
    k: int | None = None,
) -> list[ClaimedTrial]:
    """Up to ``k`` (default ``[search] population``) trials, never past ``max_trials``
    (counting the trials this worker has claimed and not yet ended)."""
    from dm_tune.campaign.population_run import claim_trials

    k = config.search.population if k is None else k
    if max_trials is not None:
        k = min(k, max_trials - summary.trials - summary.in_flight)
    if k < 1:
        return []
    claimed = claim_trials(storage, config, cache, k)
    summary.in_flight += len(claimed)
    return claimed
