"""GPU check: epoch time, DM/CCE ratio, population set-up and speed-up, how to fill a GPU,
bf16 vs fp32.

Synthetic CIFAR-shaped data (random uint8 images 3x32x32, normalised, 10 classes, made on
the device: no download), trained through ``dm_tune.training.train_trial`` (data resident
on the GPU, on-device crop/flip, bf16 autocast, channels_last, cudnn.benchmark;
``--compile`` adds torch.compile). Sections, in the order of ``--sections`` (default
population, setup, agreement, epoch, throughput, precision, grouped):

1. population: per model (ResNet-20, fastnet) train_trial's epochs/s, then populations of
   K = 1 and K = 16 (``[search] population = K``), each in a fresh process
   (benchmarks/gpu_probe.py: cold caches, as a worker starts) with the breakdown of its
   set-up + first epoch; each model's training FLOPs per image (``FlopCounterMode`` on
   meta tensors), the TFLOP/s each K reaches, the device's dense matmul rate (bf16
   8192^3 on a GPU) and their quotient for K = 1: ``population_speedup_bound_<model>``,
   the most any layout of K members could gain over one. The target is per model:
   ``population_speedup_<model>_k16 >= 0.8 x min(bound, 16)``
   (``population_speedup_vs_bound_<model>_k16 >= 0.8``);
2. setup: fastnet at K = 16 cold as the engine runs it (wide convolutions as K dense
   ones, cuDNN's autotuning on): ``population_setup_seconds_fastnet_k16`` (target 15 s;
   the H200 run before the fixes took 172 s) with its parts (context + data, packing, the
   first training epoch's and first evaluation's extra time over later ones: autotuning
   of new shapes); then with autotuning off (``_cudnn_off``, 2 epochs). The last section,
   grouped, runs it with the grouped convolutions of before (``_grouped``, 2 epochs);
3. agreement: 4 population members (MLP, CNN, fastnet, learnable synthetic data; one leaves
   after epoch 1 and a fifth joins) against the same seeds trained one by one: the
   largest validation-accuracy difference (rounding and cuDNN's non-determinism only);
4. epoch: per model (ResNet-32 at batch 128, fastnet at batch 512) and loss (CCE, DM, and
   DM with the eager loss, ``losses.FUSED_DM = "never"``) the median seconds per epoch
   (epoch 1 dropped) and peak memory; ``dm_cce_epoch_ratio_<model>`` (target 1.05);
5. throughput: P fastnet trials on one GPU as P processes (``launch --per-gpu P``) and as
   one process's population of P, each against one trial alone; ``gpu_fill_best_<P>v1``,
   the better of the two (target 1.0), and which to choose;
6. precision: fastnet under fp32 and bf16 (``[training] precision``), 5 seeds each on
   learnable images: epoch time and validation accuracy.

Prints ``RESULT <name> <value> target <target>`` lines; ``--out FILE`` also writes them
as JSON. Default size: 10,000 training images, 4 epochs. ``--cpu-smoke`` runs a tiny
version on CPU (128 images, tiny models, 2 epochs, K = 2, 2 processes) so CI can check
that every section works before a GPU session.

    bash benchmarks/gpu_check.sh              # on a GPU machine (planned: < 8 min, H200)
    bash benchmarks/gpu_check.sh --cpu-smoke  # anywhere (~1-2 min on 2 loaded cores)
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

import dm_tune.losses as losses
import dm_tune.population.layers as layers
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
        # "dm_eager": DM's loss with losses.FUSED_DM = "never" (the eager ops, as before
        # the fused loss): what the compiled loss saves on this device
        for loss in ("cce", "dm", "dm_eager"):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            fused = losses.FUSED_DM
            losses.FUSED_DM = "never" if loss == "dm_eager" else fused
            try:
                ends = timed_trial(data, spec, loss.removesuffix("_eager"))
            finally:
                losses.FUSED_DM = fused
            sync(device)
            deltas = [b - a for a, b in zip(ends, ends[1:], strict=False)]
            seconds[loss] = statistics.median(deltas) if deltas else math.nan
            result(f"epoch_s_{model}_{loss}", seconds[loss])
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / 2**30
                result(f"peak_mem_gib_{model}_{loss}", peak)
        result(f"dm_cce_epoch_ratio_{model}", seconds["dm"] / seconds["cce"], 1.05)
        result(f"dm_cce_epoch_ratio_{model}_eager", seconds["dm_eager"] / seconds["cce"])
    del data


def child(args: argparse.Namespace) -> None:
    """One throughput worker: data on the device, wait at the barrier, train, report."""
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    data = synthetic_cifar(args.images, device, seed=args.child_id)
    spec = model_spec("fastnet", args, device)
    # compile DM's loss for both batch shapes before the barrier (on CUDA it compiles on
    # first use): the workers then start their timed epochs together
    for rows in {spec.batch_size, len(data.y_train) % spec.batch_size or spec.batch_size}:
        logits = torch.randn(rows, data.num_classes, device=device, requires_grad=True)
        losses.dm_loss(logits, data.y_train[:rows], **DM_PARAMS).backward()
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
    """Two ways to put P fastnet trials on one device, against one trial alone: P worker
    processes (``launch --per-gpu P``) and one process training them as a population
    (``--per-gpu 1`` with ``[search] population = P``); the better of the two is what a
    launch that picks its layout gets (target: never below one trial alone)."""
    if "fastnet" not in args.models:
        return
    one = throughput(args, 1)
    many = throughput(args, args.workers)
    processes = many / one
    result(f"worker_throughput_{args.workers}v1", processes, 1.0)
    alone = population_probe(args, "fastnet", 1)
    together = population_probe(args, "fastnet", args.workers)
    members = (args.workers / together["median_epoch_s"]) / (1 / alone["median_epoch_s"])
    result(f"population_throughput_{args.workers}v1", members, 1.0)
    best = max(processes, members)
    result(f"gpu_fill_best_{args.workers}v1", best, 1.0)
    choice = ("--per-gpu 1 (one trial per GPU)" if best < 1.0 else
              f"--per-gpu {args.workers}" if processes >= members else
              f"--per-gpu 1 with [search] population = {args.workers}")
    print(f"# fastnet on this device: {args.workers} processes {processes:.2f}x, a population "
          f"of {args.workers} {members:.2f}x one trial alone: use {choice}", flush=True)


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
    # fastnet: its blocks run as dense convolutions per member on CUDA (PackedConv2d);
    # the smoke run forces that path on CPU too, at width 8
    split = layers.SPLIT_CONVS
    for model, model_data in (("mlp", flat), ("cnn", data), ("fastnet", data)):
        params = {"width": 8} if model == "fastnet" and args.cpu_smoke else {}
        layers.SPLIT_CONVS = "always" if model == "fastnet" and args.cpu_smoke else split
        spec = TrainSpec(model=model, model_params=params, epochs=3, batch_size=64, lr=0.02,
                         schedule="cosine", device=str(device), augment=False)
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
    layers.SPLIT_CONVS = split
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


PROBES: dict[tuple[str, int, str, str], dict] = {}


def population_probe(args: argparse.Namespace, model: str, k: int,
                     benchmark: str = "on", epochs: int | None = None,
                     split: str = "auto") -> dict:
    """benchmarks/gpu_probe.py in a fresh process (cold caches, as a worker starts): one
    population of k members with the time breakdown; NaNs if it fails or times out."""
    key = (model, k, benchmark, split)
    if key in PROBES:
        return PROBES[key]
    epochs = epochs or args.epochs
    command = [sys.executable, str(Path(__file__).with_name("gpu_probe.py")), "--model", model,
               "--k", str(k), "--images", str(args.images), "--epochs", str(epochs),
               "--device", args.device, "--cudnn-benchmark", benchmark, "--split-convs", split]
    if args.cpu_smoke:
        command.append("--cpu-smoke")
    nan = {"cuda_init_s": math.nan, "pack_s": math.nan, "setup_plus_epoch1_s": math.nan,
           "end_s": math.nan, "first_train_extra_s": math.nan, "first_eval_extra_s": math.nan,
           "median_epoch_s": math.nan}
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=args.probe_timeout)
    except subprocess.TimeoutExpired:
        print(f"# population {model} K={k} cudnn.benchmark {benchmark} convs {split}: over "
              f"{args.probe_timeout} s, stopped (NaN figures)", flush=True)
        PROBES[key] = nan
        return nan
    if done.returncode != 0:
        print(f"# population {model} K={k}: the probe failed ({done.returncode}):\n"
              f"{done.stderr[-2000:]}", flush=True)
        PROBES[key] = nan
        return nan
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"# population {model} K={k} cudnn.benchmark {benchmark}, convs {split}: context + "
          f"data "
          f"{probe['cuda_init_s']:.1f} s; set-up + epoch 1 {probe['setup_plus_epoch1_s']:.1f} s"
          f" = packing {probe['pack_s']:.1f} s + first training epoch "
          f"{probe['train_epoch_s'][0]:.1f} s (of it {probe['first_train_extra_s']:.1f} s over"
          f" a later epoch: autotuning, first-use) + first evaluation {probe['eval_s'][0]:.1f} s"
          f" ({probe['first_eval_extra_s']:.1f} s over a later one); median epoch "
          f"{probe['median_epoch_s']:.2f} s; end {probe['end_s']:.1f} s", flush=True)
    PROBES[key] = probe
    return probe


def population_figures(args: argparse.Namespace, device: torch.device) -> None:
    """Trial-epochs/s of K packed members vs one member and vs train_trial alone, each
    population in a fresh process (`population_probe`: where its set-up goes), and the
    target restated per model: at least 0.8x the model's printed bound (at most K)."""
    data = synthetic_cifar(args.images, device)
    peak = matmul_tflops(device)
    result("device_matmul_tflops", peak)
    for model in args.population_models.split(","):
        spec = replace(model_spec(model, args, device), compile=False)
        alone = [b - a for a, b in pairwise(timed_trial(data, spec, "dm"))]
        alone_rate = 1 / statistics.median(alone) if alone else math.nan
        result(f"train_trial_epochs_per_s_{model}", alone_rate)
        rates = {}
        for k in sorted({1, *args.population_ks}):
            probe = population_probe(args, model, k)
            rates[k] = k / probe["median_epoch_s"]
            result(f"population_trial_epochs_per_s_{model}_k{k}", rates[k])
            result(f"population_setup_plus_epoch1_s_{model}_k{k}", probe["setup_plus_epoch1_s"])
        # training FLOPs only (the epoch's evaluation adds ~10%): the rates are a little low
        # and the bound a little generous
        gflop = training_gflop_per_image(spec, data)
        result(f"training_gflop_per_image_{model}", gflop)
        images = len(data.y_train)
        tflops = {k: rate * images * gflop / 1e3 for k, rate in rates.items()}
        for k, value in tflops.items():
            result(f"population_tflops_{model}_k{k}", value)
        bound = peak / tflops[1]
        result(f"population_speedup_bound_{model}", bound)
        for k in args.population_ks:
            target = 0.8 * min(bound, k)  # K members gain at most K
            speedup = rates[k] / rates[1]
            result(f"population_speedup_{model}_k{k}", speedup, f"{target:.3g}")
            result(f"population_speedup_vs_bound_{model}_k{k}", speedup / min(bound, k), 0.8)
            result(f"population_vs_train_trial_{model}_k{k}", rates[k] / alone_rate)
    del data


def setup_figures(args: argparse.Namespace) -> None:
    """Set-up + first epoch of a K = 16 fastnet population (the 172 s of the H200 run),
    cold, as the engine runs it (wide convolutions split into dense ones, cuDNN's
    autotuning on) with the breakdown; then with autotuning off, and with the grouped
    convolutions of before in the last section (`grouped_figures`)."""
    k = max(args.population_ks)
    model = "fastnet"
    on = population_probe(args, model, k, "on")
    off = population_probe(args, model, k, "off", epochs=2)  # 2: its worst case is short
    target = 15 if not args.cpu_smoke else "-"
    result(f"population_setup_seconds_{model}_k{k}", on["setup_plus_epoch1_s"], target)
    for name in ("cuda_init_s", "pack_s", "first_train_extra_s", "first_eval_extra_s",
                 "median_epoch_s"):
        result(f"population_setup_{name}_{model}_k{k}", on[name])
    result(f"population_setup_seconds_{model}_k{k}_cudnn_off", off["setup_plus_epoch1_s"])
    result(f"population_median_epoch_s_{model}_k{k}_cudnn_off", off["median_epoch_s"])


def grouped_figures(args: argparse.Namespace) -> None:
    """The K = 16 fastnet population with the grouped convolutions of before (the last
    section: with the 172 s set-up it measured, it takes 3 minutes)."""
    k = max(args.population_ks)
    grouped = population_probe(args, "fastnet", k, "on", epochs=2, split="never")
    result(f"population_setup_seconds_fastnet_k{k}_grouped", grouped["setup_plus_epoch1_s"])
    result(f"population_median_epoch_s_fastnet_k{k}_grouped", grouped["median_epoch_s"])


def precision_figures(args: argparse.Namespace, device: torch.device) -> None:
    """fastnet under fp32 and bf16 (`[training] precision`): epoch time and clean
    validation accuracy on learnable images, the same seeds (5; 2 in the smoke run)."""
    data = learnable_images(256 if args.cpu_smoke else args.images, device, seed=2)
    seeds = range(2 if args.cpu_smoke else 5)
    spec = model_spec("fastnet", args, device)
    accuracy: dict[str, list[float]] = {}
    epoch_s: dict[str, float] = {}
    for precision in ("fp32", "bf16"):
        accuracy[precision], times = [], []
        for seed in seeds:
            ends: list[float] = []
            trained = train_trial(data, replace(spec, seed=seed, precision=precision),
                                  loss="dm", loss_params=DM_PARAMS, progress=False,
                                  on_epoch=lambda epoch, metrics, ends=ends:
                                  ends.append(time.time()))
            sync(device)
            times += [b - a for a, b in pairwise(ends)]
            accuracy[precision].append(trained.val_accuracy)
        epoch_s[precision] = statistics.median(times)
        result(f"precision_epoch_s_fastnet_{precision}", epoch_s[precision])
        result(f"precision_val_acc_fastnet_{precision}", statistics.mean(accuracy[precision]))
    diffs = [b - f for b, f in zip(accuracy["bf16"], accuracy["fp32"], strict=True)]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5
    print(f"# fastnet bf16 - fp32 validation accuracy: {100 * statistics.mean(diffs):+.2f} "
          f"points, paired standard error {100 * se:.2f} points ({len(diffs)} seeds)",
          flush=True)
    result("precision_bf16_minus_fp32_fastnet", 100 * statistics.mean(diffs))
    result("precision_bf16_speedup_fastnet", epoch_s["fp32"] / epoch_s["bf16"])
    del data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny run on CPU (CI)")
    parser.add_argument("--images", type=int, default=None, help="train images (10,000)")
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
    parser.add_argument("--sections",
                        default="population,setup,agreement,epoch,throughput,precision,"
                        "grouped",
                        help="comma-separated sections, run in this order")
    parser.add_argument("--probe-timeout", type=int, default=None,
                        help="seconds one population probe may take (200; smoke 120)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-id", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--nprocs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--barrier", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    smoke = args.cpu_smoke
    # 10,000 images: the recorded H200 runs' size (benchmarks/results/), whose sections
    # then fit in 8 minutes even with the 172 s set-up they measured
    args.images = args.images or (128 if smoke else 10_000)
    args.epochs = args.epochs or (2 if smoke else 4)
    args.workers = args.workers or (2 if smoke else 4)
    args.population_ks = [int(k) for k in (args.population or ("2" if smoke else "16")).split(",")]
    args.models = (args.models or ("resnet20,fastnet" if smoke else "resnet32,fastnet")).split(",")
    if args.device is None:
        args.device = "cpu" if smoke else "cuda"
    args.probe_timeout = args.probe_timeout or (120 if smoke else 200)
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
        "setup": lambda: setup_figures(args),
        "throughput": lambda: worker_throughput(args),
        "precision": lambda: precision_figures(args, device),
        "grouped": lambda: grouped_figures(args),
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
