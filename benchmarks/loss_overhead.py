"""Median ratio of one DM training step to one CCE step on CPU (interleaved to cancel drift).

Prints ``RESULT loss_overhead_<model> <ratio> target <target>`` per model:
the digits MLP (64-256-256-10, batch 64) and the small CNN on 32x32 inputs (batch 64).

    .venv/bin/python benchmarks/loss_overhead.py [--rounds 60] [--steps 20] [--explain]
    .venv/bin/python benchmarks/loss_overhead.py --loss-only --rounds 15  # the loss alone
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

import dm_tune.losses as dm_losses
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


class _CrossEntropyInFunction(torch.autograd.Function):
    """Plain cross-entropy behind a Python autograd.Function: the cost of the mechanism."""

    @staticmethod
    def forward(ctx, logits, targets):
        ctx.save_for_backward(logits, targets)
        return F.cross_entropy(logits, targets)

    @staticmethod
    def backward(ctx, grad_output):
        logits, targets = ctx.saved_tensors
        grad = torch.softmax(logits, dim=1).scatter_add_(
            1, targets.unsqueeze(1), torch.full_like(logits[:, :1], -1.0)
        )
        return grad.mul_(grad_output / len(targets)), None


def _composite_dm(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """DM composed from differentiable ops (no custom Function), mode 1/2, variance 8."""
    index = targets.unsqueeze(1)
    others = logits.scatter(1, index, float("-inf"))
    top = others.detach().amax(1, keepdim=True)
    total = (others - top).exp().sum(1, keepdim=True)
    margin = (total.log() + top - logits.gather(1, index)).squeeze(1)
    with torch.no_grad():
        log_one_minus_p = F.logsigmoid(margin)
        neg_log_p = margin - log_one_minus_p
        emphasis = torch.exp(torch.add(log_one_minus_p, neg_log_p, alpha=-1.0))
        weights = torch.softmax(8.0 * emphasis, 0)
        coefficients = torch.sigmoid(log_one_minus_p + math.log(2 / 1e-6)) * weights * 0.5
        value = torch.dot(weights, neg_log_p)
    surrogate = torch.dot(coefficients, margin)
    return surrogate + (value - surrogate.detach())


def _fused_dm():
    """DM with its terms compiled (`losses.FUSED_DM = "always"`, CUDA's default) on CPU."""
    dm = get_loss("dm", emphasis_mode=0.5, emphasis_variance=8.0)

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        before, dm_losses.FUSED_DM = dm_losses.FUSED_DM, "always"
        try:
            return dm(logits, targets)
        finally:
            dm_losses.FUSED_DM = before

    return loss


def _losses(explain: bool) -> dict:
    losses = {"cce": get_loss("cce"),
              "dm": get_loss("dm", emphasis_mode=0.5, emphasis_variance=8.0)}
    if explain:
        losses["cce_in_function"] = _CrossEntropyInFunction.apply
        losses["dm_composite"] = _composite_dm
        losses["dm_fused"] = _fused_dm()
    return losses


def measure(model_name: str, rounds: int, steps: int, explain: bool = False) -> dict[str, float]:
    """Median over rounds of (variant step time / CCE step time), order alternating."""
    gen = torch.Generator().manual_seed(0)
    if model_name == "mlp":
        shape, classes = (64,), 10
    else:
        shape, classes = (3, 32, 32), 10
    x = torch.randn(64, *shape, generator=gen)
    y = torch.randint(0, classes, (64,), generator=gen)
    timers = {}
    for loss_name, loss_fn in _losses(explain).items():
        torch.manual_seed(0)
        model = build_model(model_name, shape, classes)
        optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        timers[loss_name] = _step_timer(model, loss_fn, x, y, optimiser)
    for timer in timers.values():  # warm-up
        timer(steps)
    ratios: dict[str, list[float]] = {name: [] for name in timers if name != "cce"}
    cce_times = []
    names = list(timers)
    for round_index in range(rounds):
        order = names if round_index % 2 else names[::-1]
        times = {name: timers[name](steps) for name in order}
        for name in ratios:
            ratios[name].append(times[name] / times["cce"])
        cce_times.append(times["cce"])
    print(f"# {model_name}: median CCE step {statistics.median(cce_times) * 1e3:.3f} ms")
    return {name: statistics.median(values) for name, values in ratios.items()}


def loss_only(rounds: int) -> None:
    """Microseconds of the loss alone (forward + backward on fixed logits), interleaved:
    CCE, DM (eager) and DM compiled, at three batch x class shapes."""
    gen = torch.Generator().manual_seed(0)
    variants = {"cce": get_loss("cce"),
                "dm": get_loss("dm", emphasis_mode=0.5, emphasis_variance=8.0),
                "dm_fused": _fused_dm()}
    for batch, classes in ((64, 10), (512, 10), (128, 100)):
        z = torch.randn(batch, classes, generator=gen)
        y = torch.randint(0, classes, (batch,), generator=gen)

        def run(loss, steps: int = 100, z=z, y=y) -> float:
            start = time.perf_counter()
            for _ in range(steps):
                loss(z.clone().requires_grad_(), y).backward()
            return (time.perf_counter() - start) / steps * 1e6

        for loss in variants.values():  # warm-up (and the compile)
            run(loss, 20)
            run(loss, 20)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(rounds):
            for name in list(variants) if r % 2 else list(variants)[::-1]:
                times[name].append(run(variants[name]))
        median = {name: statistics.median(values) for name, values in times.items()}
        for name, value in median.items():
            print(f"RESULT loss_only_us_{name}_{batch}x{classes} {value:.1f} target -")
        print(f"RESULT loss_only_dm_cce_ratio_{batch}x{classes} "
              f"{median['dm'] / median['cce']:.3f} target -", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--flush-denormal", action="store_true")
    parser.add_argument("--explain", action="store_true",
                        help="also time CCE inside a Python autograd.Function, a DM "
                        "composed of differentiable ops (why DM is one Function) and DM "
                        "with its terms compiled (CUDA's default, here on CPU)")
    parser.add_argument("--loss-only", action="store_true",
                        help="time the loss alone (forward + backward) instead of steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.loss_only:
        loss_only(args.rounds)
        return
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    for model_name in args.models.split(","):
        ratios = measure(model_name, args.rounds, args.steps, args.explain)
        print(f"RESULT loss_overhead_{model_name} {ratios.pop('dm'):.3f} "
              f"target {TARGETS[model_name]}")
        for name, ratio in ratios.items():
            print(f"RESULT loss_overhead_{model_name}_{name} {ratio:.3f} target -")


if __name__ == "__main__":
    main()
