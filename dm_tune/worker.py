"""The worker loop, its signals, and launching one worker process per GPU or CPU slot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

import optuna
from optuna.trial import TrialState

from dm_tune.campaign import DigestMismatchError, campaign_progress, check_campaign
from dm_tune.config import CampaignConfig
from dm_tune.trials import (
    ClaimedTrial,
    StudyCache,
    claim_trial,
    fail_stale_everywhere,
    run_claimed_trial,
    seed_of,
    worker_name,
)

__all__ = ["WorkerSummary", "install_stop_signals", "launch_workers", "run_worker"]

IDLE_POLL_S = 2.0


@dataclass
class WorkerSummary:
    """What one worker did."""

    worker: str
    states: dict[str, int] = field(default_factory=dict)
    stopped: bool = False

    @property
    def trials(self) -> int:
        return sum(self.states.values())


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT end the current trial cleanly at its next epoch, then the loop."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_worker(
    storage: optuna.storages.RDBStorage,
    config: CampaignConfig,
    device: str = "cpu",
    max_trials: int | None = None,
    stop: threading.Event | None = None,
    name: str | None = None,
    on_trial: Callable[[ClaimedTrial, TrialState], None] | None = None,
    on_epoch: Callable[[ClaimedTrial, int, dict[str, float]], None] | None = None,
    poll_seconds: float = IDLE_POLL_S,
    sampler_seed: int | None = None,
) -> WorkerSummary:
    """Take trials until every study meets its budget, ``max_trials`` or a stop request.

    ``sampler_seed`` seeds the samplers (with the campaign seed); by default it derives
    from the worker's name, so that parallel workers propose different trials. A single
    worker given a fixed seed reproduces a campaign exactly on CPU.

    Raises:
        DigestMismatchError: this machine's labels differ from the studies' (exit 2).
    """
    stop = stop or threading.Event()
    name = name or worker_name()
    check_campaign(storage, config, require_created=True)  # refuse other labels up front
    cache = StudyCache(storage, config, seed_of(name) if sampler_seed is None else sampler_seed)
    summary = WorkerSummary(name)
    while not stop.is_set() and (max_trials is None or summary.trials < max_trials):
        claimed = claim_trial(storage, config, cache)
        if claimed is None:
            if not any(p.running for p in campaign_progress(storage, config)):
                break  # every budget met (or exhausted by failures): nothing left to wait for
            # Trials still run elsewhere: if their worker died, they go stale and come back.
            fail_stale_everywhere(storage, config, cache)
            stop.wait(poll_seconds)
            continue
        state = run_claimed_trial(claimed, config, device, name, stop, on_epoch)
        summary.states[state.name] = summary.states.get(state.name, 0) + 1
        if on_trial is not None:
            on_trial(claimed, state)
    summary.stopped = stop.is_set()
    return summary


# ----------------------------------------------------------------------------- launching


@dataclass
class Slot:
    """One worker process to start: its device and environment."""

    label: str
    device: str
    env: dict[str, str]


def plan_slots(gpus: Sequence[int] | None, per_gpu: int, cpus: int | None) -> list[Slot]:
    """One slot per GPU x per_gpu (CUDA_VISIBLE_DEVICES each) or per CPU worker."""
    if gpus:
        return [
            Slot(f"gpu{gpu}.{k}", "cuda:0", {"CUDA_VISIBLE_DEVICES": str(gpu)})
            for gpu in gpus for k in range(per_gpu)
        ]
    count = cpus or 1
    threads = max(1, (os.cpu_count() or 1) // count)
    env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads),
           "DM_TUNE_TORCH_THREADS": str(threads)}
    return [Slot(f"cpu{k}", "cpu", dict(env)) for k in range(count)]


def worker_command(config_path: str, storage_url: str, device: str) -> list[str]:
    """The command line that starts one worker (the current interpreter's dm-tune)."""
    return [sys.executable, "-m", "dm_tune", "worker", str(config_path), "--storage",
            storage_url, "--device", device, "--quiet"]


def launch_workers(
    slots: Sequence[Slot],
    config_path: str,
    storage_url: str,
    on_poll: Callable[[dict[str, int | None]], None] | None = None,
    poll_seconds: float = 1.0,
) -> dict[str, int]:
    """Start one process per slot, forward SIGTERM/SIGINT, wait; return exit codes."""
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for slot in slots:
        env = {**os.environ, **slot.env, "DM_TUNE_WORKER_LABEL": slot.label}
        processes[slot.label] = subprocess.Popen(
            worker_command(config_path, storage_url, slot.device), env=env
        )

    def forward(signum: int, frame: FrameType | None) -> None:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while any(p.poll() is None for p in processes.values()):
            if on_poll is not None:
                on_poll({label: p.poll() for label, p in processes.items()})
            time.sleep(poll_seconds)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    codes = {label: int(p.returncode) for label, p in processes.items()}
    if on_poll is not None:
        on_poll(dict(codes))
    return codes


__all__ += ["DigestMismatchError", "Slot", "plan_slots", "worker_command"]
