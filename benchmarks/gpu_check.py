"""GPU check: epoch time, DM/CCE ratio, peak memory and per-GPU worker throughput.

Synthetic CIFAR-shaped data (50,000 random uint8 images 3x32x32, normalised, 10 classes,
made on the device: no download), trained through ``dm_tune.training.train_trial``
(data resident on the GPU, on-device crop/flip, bf16 autocast, channels_last,
cudnn.benchmark; ``--compile`` adds torch.compile):

1. per model (ResNet-32 at batch 128, fastnet at batch 512) and loss (CCE, DM): the median
   seconds per epoch (epoch 1, the warm-up, dropped) and torch.cuda.max_memory_allocated;
2. DM / CCE epoch-time ratio per model;
3. P worker processes (default 4) each training fastnet at once on the same GPU vs one
   alone: aggregate epochs per second ratio (what ``dm-tune launch --per-gpu P`` buys);
4. the population engine (``[search] population = K``): ResNet-20 and fastnet trained as
   K = 16 members of one packed model vs K = 1, trial-epochs per second ratio (target 8);
   with each model's training FLOPs per image (``FlopCounterMode`` on meta tensors), the
   TFLOP/s each K reaches, the device's dense matmul rate (bf16 8192^3 on a GPU, the dtype
   autocast trains in) and their quotient for K = 1: ``population_speedup_bound_<model>``,
   an estimate of the most any layout of K members could gain over one (convolutions
   done as dense matrix products do not outrun the device's matmul rate by much);
5. the population engine's agreement with ``train_trial`` on the device: 4 members (MLP
   and CNN, learnable synthetic data, no augmentation; one leaves after epoch 1 and a
   fifth joins in its place) against the same seeds trained one by one; the largest
   validation-accuracy difference (rounding and cuDNN's non-determinism only, so a few
   examples at most).

Sections run in the order of ``--sections`` (default: population, agreement, epoch,
throughput: the population figures first, since they are the newest code).

Prints ``RESULT <name> <value> target <target>`` lines; ``--out FILE`` also writes them
as JSON. ``--cpu-smoke`` runs a tiny version on CPU (128 images, tiny models, 2
epochs, 2 processes) so CI can check that the script works.

    bash benchmarks/gpu_check.sh              # on a GPU machine (< 8 min on one H200)
    bash benchmarks/gpu_check.sh --cpu-smoke  # anywhere (< 60 s)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import torch

from dm_tune.data import TrialData
from dm_tune.models import MODELS, build_model
from dm_tune.training import NonFiniteLossError, TrainSpec, train_trial

DM_PARAMS = {"emphasis_mode": 1 / 3, "emphasis_variance": 8.0}
RESULTS: list[dict] = []


def result(name: str, value: float, target: str | float = "-") -> None:
    """Print one RESULT line and keep it for --out."""
    RESULTS.append({"name": name, "value": value, "target": target})
    print(f"RESULT {name} {value:.4g} target {target}", flush=True)


def synthetic_cifar(n: int, device: torch.device, seed: int = 0) -> TrialData:
    """n random uint8 3x32x32 images, normalised per channel as data.py does; 10 classes."""
    gen = torch.Generator(device=device).manual_seed(seed)
    n_val, n_test = max(n // 10, 16), max(n // 5, 16)

    def images(count: int) -> torch.Tensor:
        raw = torch.randint(0, 256, (count, 3, 32, 32), generator=gen, device=device,
                            dtype=torch.uint8)
        return raw.float().div_(255.0).sub_(0.5).div_(0.29)

    def labels(count: int) -> torch.Tensor:
        return torch.randint(0, 10, (count,), generator=gen, device=device)

    y = labels(n)
    return TrialData(
        x_train=images(n), y_train=y, y_train_true=y.clone(), x_val=images(n_val),
        y_val=labels(n_val), x_test=images(n_test), y_test=labels(n_test), num_classes=10,
        input_shape=(3, 32, 32), realised_noise_rate=0.0, label_digest="synthetic",
        is_image=True,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_trial(data: TrialData, spec: TrainSpec, loss: str) -> list[float]:
    """Wall-clock times (time.time) at the end of every epoch of one trial."""
    ends: list[float] = []
    params = DM_PARAMS if loss == "dm" else None
    try:
        train_trial(data, spec, loss=loss, loss_params=params, progress=False,
                    on_epoch=lambda epoch, metrics: ends.append(time.time()))
    except NonFiniteLossError as error:  # random labels, high lr: timing is still valid
        print(f"# {spec.model}/{loss}: {error} (epoch times so far kept)", flush=True)
    return ends


def model_spec(model: str, args: argparse.Namespace, device: torch.device) -> TrainSpec:
    """Training settings of each model (batch 128 for ResNet, 512 for fastnet)."""
    params: dict = {}
    if model == "fastnet" and args.cpu_smoke:
        params = {"width": 8}
    batch = 512 if model == "fastnet" else 128
    if args.cpu_smoke:
        batch = 64
    return TrainSpec(model=model, model_params=params, epochs=args.epochs, batch_size=batch,
                     lr=0.02, schedule="cosine", device=str(device), augment=True,
                     compile=args.compile)


def epoch_figures(args: argparse.Namespace, device: torch.device) -> None:
    """Epoch time, DM/CCE ratio and peak memory per model."""
    data = synthetic_cifar(args.images, device)
    for model in args.models:
        if model not in MODELS:
            raise SystemExit(f"gpu_check: model {model!r} is not registered in dm_tune.models "
                             f"(have {', '.join(sorted(MODELS))})")
        spec = model_spec(model, args, device)
        seconds = {}
        for loss in ("cce", "dm"):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            ends = timed_trial(data, spec, loss)
            sync(device)
            deltas = [b - a for a, b in zip(ends, ends[1:], strict=False)]
            seconds[loss] = statistics.median(deltas) if deltas else math.nan
            result(f"epoch_s_{model}_{loss}", seconds[loss])
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / 2**30
                result(f"peak_mem_gib_{model}_{loss}", peak)
        result(f"dm_cce_epoch_ratio_{model}", seconds["dm"] / seconds["cce"], 1.05)
    del data


def child(args: argparse.Namespace) -> None:
    """One throughput worker: data on the device, wait at the barrier, train, report."""
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    data = synthetic_cifar(args.images, device, seed=args.child_id)
    spec = model_spec("fastnet", args, device)
    barrier = Path(args.barrier)
    (barrier / f"ready-{args.child_id}").touch()
    deadline = time.time() + 300
    while len(list(barrier.glob("ready-*"))) < args.nprocs and time.time() < deadline:
        time.sleep(0.02)
    ends = timed_trial(data, spec, "dm")
    (barrier / f"done-{args.child_id}.json").write_text(json.dumps(ends))


def throughput(args: argparse.Namespace, nprocs: int) -> float:
    """Aggregate epochs/s of nprocs concurrent fastnet workers (epoch 1 excluded)."""
    epochs = args.epochs if args.cpu_smoke else max(args.epochs, 6)  # >= 5 timed on GPU
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as barrier:
        base = [sys.executable, __file__, "--child", "--barrier", barrier, "--nprocs",
                str(nprocs), "--images", str(args.images), "--epochs", str(epochs),
                "--device", args.device]
        if args.cpu_smoke:
            base.append("--cpu-smoke")
        if args.compile:
            base.append("--compile")
        procs = [subprocess.Popen([*base, "--child-id", str(k)]) for k in range(nprocs)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise SystemExit(f"gpu_check: throughput workers exited with {codes}")
        runs = [json.loads((Path(barrier) / f"done-{k}.json").read_text())
                for k in range(nprocs)]
    if any(len(r) < 2 for r in runs):
        raise SystemExit("gpu_check: a throughput worker finished fewer than 2 epochs")
    start, end = min(r[0] for r in runs), max(r[-1] for r in runs)
    timed = sum(len(r) - 1 for r in runs)
    rate = timed / (end - start)
    print(f"# {nprocs} fastnet worker(s): {timed} timed epochs in {end - start:.2f} s "
          f"= {rate:.2f} epochs/s", flush=True)
    return rate


def learnable_images(n: int, device: torch.device, seed: int = 0) -> TrialData:
    """n images whose class is a fixed random pattern plus noise: accuracy means something."""
    gen = torch.Generator(device=device).manual_seed(seed)
    patterns = torch.randn(10, 3, 32, 32, generator=gen, device=device)

    def split(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (count,), generator=gen, device=device)
        noise = torch.randn(count, 3, 32, 32, generator=gen, device=device)
        return patterns[y] * 0.5 + noise, y

    x_train, y_train = split(n)
    x_val, y_val = split(max(n // 5, 16))
    x_test, y_test = split(max(n // 5, 16))
    return TrialData(
        x_train=x_train, y_train=y_train, y_train_true=y_train.clone(), x_val=x_val,
        y_val=y_val, x_test=x_test, y_test=y_test, num_classes=10, input_shape=(3, 32, 32),
        realised_noise_rate=0.0, label_digest="synthetic", is_image=True,
    )


def worker_throughput(args: argparse.Namespace) -> None:
    """P fastnet workers on one device vs one alone."""
    if "fastnet" not in args.models:
        return
    one = throughput(args, 1)
    many = throughput(args, args.workers)
    result(f"worker_throughput_{args.workers}v1", many / one, 2.0)


def _once(member):
    """A refill that gives `member` the first time it is asked, then nothing."""
    given = []

    def refill(free: int) -> list:
        if given:
            return []
        given.append(member)
        return [member]

    return refill


def population_agreement(args: argparse.Namespace, device: torch.device) -> None:
    """Largest |val accuracy| gap between a population member and its own train_trial."""
    from dm_tune.population import Member, train_population

    n = 256 if args.cpu_smoke else 4000
    data = learnable_images(n, device, seed=1)
    flat = replace(data, x_train=data.x_train.flatten(1), x_val=data.x_val.flatten(1),
                   x_test=data.x_test.flatten(1), input_shape=(3 * 32 * 32,), is_image=False)
    for model, model_data in (("mlp", flat), ("cnn", data)):
        spec = TrainSpec(model=model, epochs=3, batch_size=64, lr=0.02, schedule="cosine",
                         device=str(device), augment=False)
        members = [Member(model_data, "dm", DM_PARAMS, seed) for seed in range(3)]
        members.append(Member(model_data, "cce", {}, 7))
        # member 0 leaves after epoch 1 and a late one joins in its place: compaction,
        # a join and two cohorts at two learning rates (the fused SGD through views)
        late = Member(model_data, "dm", DM_PARAMS, 11)
        together = train_population(members, spec, refill=_once(late),
                                    on_epoch=lambda epoch, metrics: [0] if epoch == 1 else None)
        gaps = []
        for member, res in zip([*members, late], together, strict=True):
            if res.status != "complete":
                continue  # the pruned member 0
            alone = train_trial(model_data, replace(spec, seed=member.seed), member.loss,
                                member.loss_params or None, progress=False)
            gaps.append(abs(alone.val_accuracy - res.val_accuracy_per_epoch[-1]))
            print(f"# agreement {model} seed {member.seed} {member.loss}"
                  f"{' (joined late)' if member is late else ''}: alone "
                  f"{alone.val_accuracy:.4f}, in population {res.val_accuracy_per_epoch[-1]:.4f}",
                  flush=True)
        result(f"population_vs_train_trial_max_val_gap_{model}", max(gaps), 0.02)
    del data, flat


def training_gflop_per_image(spec: TrainSpec, data: TrialData) -> float:
    """Forward + backward GFLOP of one training image through the spec's model, counted by
    torch's FlopCounterMode on meta tensors (no arithmetic runs)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(spec.model, data.input_shape, data.num_classes,
                        **spec.model_params).to("meta")
    batch = 2  # batch norm in train mode needs more than one value per channel
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(batch, *data.input_shape, device="meta")).sum().backward()
    return counter.get_total_flops() / batch / 1e9


def matmul_tflops(device: torch.device) -> float:
    """The device's dense matmul rate in TFLOP/s: bf16 8192^3 on CUDA, fp32 512^3 on CPU."""
    size, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (512, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    repeats = 100 if device.type == "cuda" else 5  # ~0.1 s of a GPU's time: steady clocks
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e12


def population_figures(args: argparse.Namespace, device: torch.device) -> None:
    """Trial-epochs/s of K packed members vs one member and vs train_trial alone.

    Also prints where a population's wall time goes: set-up plus the first epoch (model
    packing, cuDNN autotuning), the median epoch, and the end (final evaluation).
    """
    from dm_tune.population import Member, train_population

    data = synthetic_cifar(args.images, device)
    target = 8.0 if not args.cpu_smoke else "-"
    peak = matmul_tflops(device)
    result("device_matmul_tflops", peak)
    for model in args.population_models.split(","):
        spec = replace(model_spec(model, args, device), compile=False)
        alone = [b - a for a, b in pairwise(timed_trial(data, spec, "dm"))]
        alone_rate = 1 / statistics.median(alone) if alone else math.nan
        result(f"train_trial_epochs_per_s_{model}", alone_rate)
        rates = {}
        for k in sorted({1, *args.population_ks}):
            members = [Member(data, "dm", DM_PARAMS, seed) for seed in range(k)]
            ends: list[float] = []
            started = time.time()
            train_population(members, spec,
                             on_epoch=lambda epoch, metrics, ends=ends: ends.append(time.time()))
            sync(device)
            finished = time.time()
            deltas = [b - a for a, b in pairwise(ends)]
            rates[k] = k / statistics.median(deltas) if deltas else math.nan
            print(f"# population {model} K={k}: set-up + epoch 1 {ends[0] - started:.1f} s, "
                  f"median epoch {statistics.median(deltas) if deltas else math.nan:.2f} s, "
                  f"end {finished - ends[-1]:.1f} s", flush=True)
            result(f"population_trial_epochs_per_s_{model}_k{k}", rates[k])
        for k in args.population_ks:
            result(f"population_speedup_{model}_k{k}", rates[k] / rates[1], target)
            result(f"population_vs_train_trial_{model}_k{k}", rates[k] / alone_rate, target)
        # training FLOPs only (the epoch's evaluation adds ~10%): the rates are a little low
        # and the bound a little generous
        gflop = training_gflop_per_image(spec, data)
        result(f"training_gflop_per_image_{model}", gflop)
        images = len(data.y_train)
        tflops = {k: rate * images * gflop / 1e3 for k, rate in rates.items()}
        for k, value in tflops.items():
            result(f"population_tflops_{model}_k{k}", value)
        result(f"population_speedup_bound_{model}", peak / tflops[1])
    del data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny run on CPU (CI)")
    parser.add_argument("--images", type=int, default=None, help="train images (50,000)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (4)")
    parser.add_argument("--workers", type=int, default=None, help="processes per GPU (4)")
    parser.add_argument("--models", default=None, help="comma-separated (resnet32,fastnet)")
    parser.add_argument("--compile", action="store_true", help="TrainSpec.compile=True")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--device", default=None)
    parser.add_argument("--population", default=None,
                        help="comma-separated member counts K compared with K = 1 (16)")
    parser.add_argument("--population-models", default="resnet20,fastnet",
                        help="models of the population section (resnet20,fastnet)")
    parser.add_argument("--sections", default="population,agreement,epoch,throughput",
                        help="comma-separated sections, run in this order")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-id", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--nprocs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--barrier", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    smoke = args.cpu_smoke
    args.images = args.images or (128 if smoke else 50_000)
    args.epochs = args.epochs or (2 if smoke else 4)
    args.workers = args.workers or (2 if smoke else 4)
    args.population_ks = [int(k) for k in (args.population or ("2" if smoke else "16")).split(",")]
    args.models = (args.models or ("resnet20,fastnet" if smoke else "resnet32,fastnet")).split(",")
    if args.device is None:
        args.device = "cpu" if smoke else "cuda"
    if args.child:
        child(args)
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available (torch "
              f"{torch.__version__}); use --cpu-smoke on a machine without a GPU",
              file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"# device {name or device}, torch {torch.__version__}, images {args.images}, "
          f"epochs {args.epochs}, models {','.join(args.models)}, compile {args.compile}, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    started = time.time()
    sections = {
        "population": lambda: population_figures(args, device),
        "agreement": lambda: population_agreement(args, device),
        "epoch": lambda: epoch_figures(args, device),
        "throughput": lambda: worker_throughput(args),
    }
    for name in args.sections.split(","):
        if name not in sections:
            raise SystemExit(f"gpu_check: unknown section {name!r} (have {', '.join(sections)})")
        section_start = time.time()
        sections[name]()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"# section {name} took {time.time() - section_start:.1f} s", flush=True)
    print(f"# gpu_check took {time.time() - started:.1f} s", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"device": str(name), "torch": torch.__version__,
                                              "results": RESULTS}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
