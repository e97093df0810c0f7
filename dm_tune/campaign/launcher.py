"""Launching one worker process per GPU or CPU slot on this machine.

The storage URL reaches each worker through its environment (``DM_TUNE_STORAGE``),
never its command line: any local user can read another's argv with ``ps``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

from dm_tune.storage import STORAGE_ENV

__all__ = ["Slot", "launch_workers", "plan_slots", "stop_exit", "worker_command", "worker_env"]

LABEL_ENV = "DM_TUNE_WORKER_LABEL"
THREADS_ENV = "DM_TUNE_TORCH_THREADS"


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
           THREADS_ENV: str(threads)}
    return [Slot(f"cpu{k}", "cpu", dict(env)) for k in range(count)]


def worker_command(config_path: str, device: str, population: int | None = None) -> list[str]:
    """The command line that starts one worker (the current interpreter's dm-tune);
    ``population`` overrides the file's ``[search] population``."""
    extra = [] if population is None else ["--population", str(population)]
    return [sys.executable, "-m", "dm_tune", "worker", str(config_path), "--device", device,
            "--quiet", *extra]


def stop_exit(code: int) -> bool:
    """Whether a worker's exit code is what a stop signal does to a worker that had not
    installed its handlers yet (killed by SIGTERM or SIGINT, or Python's 130)."""
    return code in (-signal.SIGTERM, -signal.SIGINT, 130)


def worker_env(slot: Slot, storage_url: str) -> dict[str, str]:
    """The worker's environment: this one, the slot's, its label and the storage URL."""
    return {**os.environ, **slot.env, LABEL_ENV: slot.label, STORAGE_ENV: storage_url}


def launch_workers(
    slots: Sequence[Slot],
    config_path: str,
    storage_url: str,
    on_poll: Callable[[dict[str, int | None]], None] | None = None,
    poll_seconds: float = 1.0,
    population: int | None = None,
    stop: threading.Event | None = None,
) -> dict[str, int]:
    """Start one process per slot, forward SIGTERM/SIGINT, wait; return exit codes.

    A signal sets ``stop`` (the caller's stop request, which also holds a signal that
    came before the workers started: then none is started, ``{}``). A worker that the
    forwarded signal killed before it could install its own handlers (still starting)
    exits -15, -2 or 130: :func:`stop_exit` tells those from failures.
    """
    stop = stop if stop is not None else threading.Event()
    if stop.is_set():
        return {}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    forwarded: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        stop.set()
        forwarded.append(signum)
        for process in list(processes.values()):
            if process.poll() is None:
                process.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for slot in slots:
            if stop.is_set():
                break  # a stop while starting them: start no more
            processes[slot.label] = subprocess.Popen(
                worker_command(config_path, slot.device, population),
                env=worker_env(slot, storage_url))
        while any(p.poll() is None for p in processes.values()):
            if stop.is_set() and not forwarded:  # set before our handler was installed
                forward(signal.SIGTERM, None)
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
