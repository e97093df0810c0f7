"""Median ratio of one DM training step to one CCE step on CPU (interleaved to cancel drift).

Prints ``RESULT loss_overhead_<model> <ratio> target <target>`` per model:
the digits MLP (64-256-256-10, batch 64) and the small CNN on 32x32 inputs (batch 64).

    .venv/bin/python benchmarks/loss_overhead.py [--rounds 60] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dm_tune.losses import get_loss
from dm_tune.models import build_model

TARGETS = {"mlp": 1.10, "cnn": 1.02}


def _step_timer(model, loss_fn, x, y, optimiser):
    def run(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            optimiser.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            optimiser.step()
        return (time.perf_counter() - start) / steps

    return run


def measure(model_name: str, rounds: int, steps: int) -> float:
    """Median over rounds of (DM step time / CCE step time), alternating which goes first."""
    gen = torch.Generator().manual_seed(0)
    if model_name == "mlp":
        shape, classes = (64,), 10
    else:
        shape, classes = (3, 32, 32), 10
    x = torch.randn(64, *shape, generator=gen)
    y = torch.randint(0, classes, (64,), generator=gen)
    timers = {}
    dm_params = {"emphasis_mode": 0.5, "emphasis_variance": 8.0}
    for loss_name, params in (("cce", {}), ("dm", dm_params)):
        torch.manual_seed(0)
        model = build_model(model_name, shape, classes)
        optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        timers[loss_name] = _step_timer(model, get_loss(loss_name, **params), x, y, optimiser)
    for timer in timers.values():  # warm-up
        timer(steps)
    ratios, cce_times = [], []
    for round_index in range(rounds):
        order = ("dm", "cce") if round_index % 2 else ("cce", "dm")
        times = {name: timers[name](steps) for name in order}
        ratios.append(times["dm"] / times["cce"])
        cce_times.append(times["cce"])
    print(f"# {model_name}: median CCE step {statistics.median(cce_times) * 1e3:.3f} ms")
    return statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--flush-denormal", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    for model_name in args.models.split(","):
        ratio = measure(model_name, args.rounds, args.steps)
        print(f"RESULT loss_overhead_{model_name} {ratio:.3f} target {TARGETS[model_name]}")


if __name__ == "__main__":
    main()
