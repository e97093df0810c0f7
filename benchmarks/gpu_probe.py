"""One population of K members trained in a fresh process, with where its time goes.

gpu_check.py runs this as a child process so every measurement starts cold, as a worker
does: no cuDNN autotuning results, no compiled kernels, no cached allocations from an
earlier section. Prints one JSON object on its last line:

- ``cuda_init_s``: the device's context and the synthetic data on it;
- ``pack_s``: building the K members with train_trial's code and packing them (add);
- ``setup_plus_epoch1_s``: from calling train_population to the end of epoch 1 (what a
  user waits before the first result), and ``end_s`` after the last epoch;
- ``train_epoch_s`` / ``eval_s``: each epoch's training and evaluation seconds (the first
  of each pays cuDNN's autotuning of its new shapes: ``first_train_extra_s`` and
  ``first_eval_extra_s`` are the first minus the median of the others);
- ``median_epoch_s``: the median epoch-to-epoch time after the first.

``--split-convs never`` packs every convolution as one grouped convolution (the layout
before `PackedConv2d` split wide members), ``--cudnn-benchmark off`` turns autotuning off.

    python benchmarks/gpu_probe.py --model fastnet --k 16 --images 10000 --epochs 3
    python benchmarks/gpu_probe.py --model fastnet --k 2 --device cpu --cpu-smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace

import torch

# run as a script: benchmarks/ is sys.path[0]
from gpu_check import DM_PARAMS, model_spec, synthetic_cifar

import dm_tune.population.engine as engine
import dm_tune.population.layers as layers
from dm_tune.population import Member, train_population
from dm_tune.training import cuda_process_settings


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_methods(device: torch.device) -> dict[str, list[float]]:
    """Wrap the population's add / epoch / accuracies with synchronised timers."""
    spent: dict[str, list[float]] = {"add": [], "epoch": [], "accuracies": []}
    for name in spent:
        real = getattr(engine._Population, name)

        def timed(self, *args, _real=real, _name=name, **kwargs):
            sync(device)
            started = time.perf_counter()
            out = _real(self, *args, **kwargs)
            if _name == "epoch":
                out.tolist()  # the epoch's work is queued until its losses are read
            sync(device)
            spent[_name].append(time.perf_counter() - started)
            return out

        setattr(engine._Population, name, timed)
    return spent


def probe(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    started = time.perf_counter()
    cuda_process_settings(device)  # what train_population does first, so a flag set below stays
    if args.cudnn_benchmark == "off":
        torch.backends.cudnn.benchmark = False
    layers.SPLIT_CONVS = args.split_convs
    data = synthetic_cifar(args.images, device)
    sync(device)
    cuda_init = time.perf_counter() - started
    spec = replace(model_spec(args.model, args, device), compile=False)
    if args.precision:
        spec = replace(spec, precision=args.precision)
    spent = timed_methods(device)
    ends: list[float] = []
    members = [Member(data, "dm", DM_PARAMS, seed) for seed in range(args.k)]
    started = time.perf_counter()
    train_population(members, spec,
                     on_epoch=lambda epoch, metrics: ends.append(time.perf_counter()))
    sync(device)
    finished = time.perf_counter()

    def extra(times: list[float]) -> float:
        return times[0] - statistics.median(times[1:]) if len(times) > 1 else float("nan")

    deltas = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    return {
        "model": args.model, "k": args.k, "cudnn_benchmark": args.cudnn_benchmark,
        "split_convs": args.split_convs,
        "cuda_init_s": cuda_init, "pack_s": sum(spent["add"]),
        "setup_plus_epoch1_s": ends[0] - started, "end_s": finished - ends[-1],
        "train_epoch_s": spent["epoch"], "eval_s": spent["accuracies"],
        "first_train_extra_s": extra(spent["epoch"]),
        "first_eval_extra_s": extra(spent["accuracies"]),
        "median_epoch_s": statistics.median(deltas) if deltas else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fastnet")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cudnn-benchmark", choices=("on", "off"), default="on")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None)
    parser.add_argument("--split-convs", choices=("auto", "always", "never"), default="auto",
                        help="dm_tune.population.layers.SPLIT_CONVS (never: grouped convs)")
    parser.add_argument("--cpu-smoke", action="store_true")
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    print(json.dumps(probe(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
