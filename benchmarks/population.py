"""Throughput and memory of the population engine vs separate trials (digits MLP, DM loss).

Prints `RESULT <name> <value> target <target>` lines:

- `population_trials_per_s_train_trial`: trials/s of `train_trial` run one after another;
- `population_trials_per_s_k<K>`: trials/s of `train_population` with K members;
- `population_speedup_k<K>`: the two ratioed within each round, median over rounds
  (target 1.9 at K = 8); `k1` is the engine's own overhead check (one member);
- `population_peak_mib_per_member_k<K>`: peak resident memory the run adds over the
  process's resident memory before it, / K (each measured in a fresh process; `--quick`:
  the first size only), and `population_peak_mib_train_trial` for one trial.

Every run uses one torch thread and fixed glibc malloc thresholds (the workers' settings);
members are DM with mixed emphasis modes and variances and their own seeds, 40% symmetric
noise, batch 64, cosine schedule.

    python benchmarks/population.py            # full run (~2 min on 2 busy cores)
    python benchmarks/population.py --quick    # smoke test: 2 epochs, one round
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from dm_tune.allocator import keep_freed_memory
from dm_tune.data import DataSpec, TrialData, prepare_data
from dm_tune.population import Member, train_population
from dm_tune.training import TrainSpec, train_trial

SIZES = (8, 16, 32)
TARGET_K8 = 1.9
MODES = (0.0, 1 / 3, 0.5, 0.75)
VARIANCES = (2.0, 8.0, 16.0)


def members(data: TrialData, k: int) -> list[Member]:
    """k DM members over a grid of emphasis modes and variances, seeds 0..k-1."""
    return [
        Member(data, "dm", {"emphasis_mode": MODES[i % len(MODES)],
                            "emphasis_variance": VARIANCES[i % len(VARIANCES)]}, seed=i)
        for i in range(k)
    ]


def digits() -> TrialData:
    """The digits data every run uses (40% symmetric noise)."""
    return prepare_data(DataSpec("digits", noise_kind="symmetric", noise_rate=0.4))


def trials_per_second_separate(data: TrialData, spec: TrainSpec, count: int) -> float:
    """Trials/s of `count` train_trial calls in a row (what a worker does today)."""
    start = time.perf_counter()
    for member in members(data, count):
        train_trial(member.data, TrainSpec(**{**spec.__dict__, "seed": member.seed}),
                    member.loss, member.loss_params, progress=False)
    return count / (time.perf_counter() - start)


def trials_per_second_population(data: TrialData, spec: TrainSpec, k: int) -> float:
    """Trials/s of one population of k members."""
    start = time.perf_counter()
    results = train_population(members(data, k), spec)
    assert all(r.status == "complete" for r in results)
    return k / (time.perf_counter() - start)


class PeakRss:
    """Peak resident set size while the block runs, sampled every millisecond."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.001)

    def __enter__(self) -> PeakRss:
        self.before = self.rss()
        self.peak = self.before
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def memory_child(k: int, epochs: int) -> None:
    """(In a fresh process) print the peak MiB a run of k members (0: train_trial) adds."""
    torch.set_num_threads(1)
    data = digits()
    spec = TrainSpec(epochs=epochs)
    # the first optimiser imports torch._dynamo (~150 MiB): not training memory; a
    # one-element optimiser pays it here without allocating anything model-sized
    param = torch.zeros(1, requires_grad=True)
    param.grad = torch.zeros(1)
    torch.optim.SGD([param], lr=0.1, momentum=0.9, fused=True).step()
    with PeakRss() as meter:
        if k == 0:
            trials_per_second_separate(data, spec, 1)
        else:
            trials_per_second_population(data, spec, k)
    print(json.dumps({"mib": (meter.peak - meter.before) / 2**20}))


def peak_mib(k: int, epochs: int) -> float:
    """Peak MiB added by a run of k members (0: one train_trial), in a fresh process."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(k),
         "--epochs", str(epochs)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])["mib"]


def main() -> None:
    """Measure throughput ratios (interleaved rounds) and memory; print RESULT lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs, one round (smoke)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="population sizes")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    epochs = args.epochs or (2 if args.quick else 20)
    keep_freed_memory()  # glibc's thresholds, as `dm-tune run` and `worker` set them
    if args.memory_child is not None:
        memory_child(args.memory_child, epochs)
        return
    torch.set_num_threads(1)
    rounds = args.rounds or (1 if args.quick else 3)
    sizes = [int(s) for s in args.sizes.split(",")]
    data = digits()
    spec = TrainSpec(epochs=epochs)
    # warm-up: first-call costs (lazy imports, allocator growth) stay out of the figures
    trials_per_second_separate(data, TrainSpec(epochs=1), 1)
    trials_per_second_population(data, TrainSpec(epochs=1), 2)

    separate, population = [], {k: [] for k in (1, *sizes)}
    for _ in range(rounds):  # interleaved: a busy machine slows every variant alike
        separate.append(trials_per_second_separate(data, spec, 2 if args.quick else 4))
        for k in population:
            population[k].append(trials_per_second_population(data, spec, k))
    print(f"RESULT population_trials_per_s_train_trial {statistics.median(separate):.3f} "
          f"target -", flush=True)
    for k, rates in population.items():
        print(f"RESULT population_trials_per_s_k{k} {statistics.median(rates):.3f} target -")
    for k, rates in population.items():
        ratio = statistics.median(r / s for r, s in zip(rates, separate, strict=True))
        target = TARGET_K8 if k == 8 else "-"
        print(f"RESULT population_speedup_k{k} {ratio:.3f} target {target}", flush=True)

    memory_epochs = 1 if args.quick else 3
    print(f"RESULT population_peak_mib_train_trial {peak_mib(0, memory_epochs):.2f} target -",
          flush=True)
    for k in sizes[:1] if args.quick else (1, *sizes):  # a fresh process each
        per_member = peak_mib(k, memory_epochs) / k
        print(f"RESULT population_peak_mib_per_member_k{k} {per_member:.2f} target -",
              flush=True)


if __name__ == "__main__":
    main()
