"""The benchmark scripts run and print parseable RESULT lines (no timing assertions)."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def parse_results(output: str) -> dict[str, tuple[float, str]]:
    """RESULT <name> <value> target <target> lines -> {name: (value, target)}."""
    results = {}
    for line in output.splitlines():
        if not line.startswith("RESULT "):
            continue
        parts = line.split()
        assert len(parts) == 5 and parts[3] == "target", line
        target = parts[4]
        if target != "-":
            float(target)
        results[parts[1]] = (float(parts[2]), target)
    return results


def _module(name: str):
    """benchmarks/<name>.py imported as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(command: list[str], timeout: int, **env: str) -> str:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_parse_results_rejects_malformed_lines():
    assert parse_results("# x\nRESULT a 1.5 target 2\nRESULT b nan target -\n")["a"] == (1.5, "2")
    with pytest.raises(AssertionError):
        parse_results("RESULT a 1.5\n")


@pytest.mark.slow
def test_gpu_check_cpu_smoke_prints_results(tmp_path):
    out = _run(["bash", "benchmarks/gpu_check.sh", "--cpu-smoke"], timeout=300,
               OUT=str(tmp_path))
    results = parse_results(out)
    names = set(results)
    assert {"epoch_s_resnet20_cce", "epoch_s_resnet20_dm", "dm_cce_epoch_ratio_resnet20",
            "epoch_s_fastnet_cce", "epoch_s_fastnet_dm", "worker_throughput_2v1",
            "population_speedup_resnet20_k2", "population_vs_train_trial_fastnet_k2",
            "population_vs_train_trial_max_val_gap_mlp",
            "population_vs_train_trial_max_val_gap_cnn",
            "population_vs_train_trial_max_val_gap_fastnet", "device_matmul_tflops",
            "training_gflop_per_image_fastnet", "population_tflops_fastnet_k2",
            "population_speedup_bound_resnet20", "population_speedup_bound_fastnet",
            # issue 26's figures: the fused loss against the eager one, the cold set-up and
            # its breakdown, the two ways to fill a device, bf16 vs fp32
            "dm_cce_epoch_ratio_fastnet_eager", "population_setup_seconds_fastnet_k2",
            "population_setup_pack_s_fastnet_k2", "population_setup_first_train_extra_s_fastnet_k2",
            "population_setup_seconds_fastnet_k2_cudnn_off", "population_throughput_2v1",
            "population_setup_seconds_fastnet_k2_grouped",
            "gpu_fill_best_2v1", "population_speedup_vs_bound_fastnet_k2",
            "precision_epoch_s_fastnet_fp32", "precision_epoch_s_fastnet_bf16",
            "precision_val_acc_fastnet_fp32", "precision_val_acc_fastnet_bf16",
            "precision_bf16_speedup_fastnet"} <= names
    # the bound is the device's matmul rate over one member's: the printed figures agree,
    # and each model's K = 2 target is 0.8x its bound (at most K)
    for model in ("resnet20", "fastnet"):
        bound = results["device_matmul_tflops"][0] / results[f"population_tflops_{model}_k1"][0]
        assert results[f"population_speedup_bound_{model}"][0] == pytest.approx(bound, rel=2e-3)
        speedup, target = results[f"population_speedup_{model}_k2"]
        printed_bound = results[f"population_speedup_bound_{model}"][0]
        assert float(target) == pytest.approx(0.8 * min(printed_bound, 2), rel=5e-3)
        ratio = results[f"population_speedup_vs_bound_{model}_k2"][0]
        assert ratio == pytest.approx(speedup / min(printed_bound, 2), rel=5e-3)
    best, _ = results["gpu_fill_best_2v1"]
    assert best == max(results["worker_throughput_2v1"][0],
                       results["population_throughput_2v1"][0])
    gaps = {name: value for name, (value, _) in results.items() if "_gap_" in name}
    # on CPU in float32 a population member and its own train_trial agree to rounding
    assert all(0.0 <= gap <= 0.02 for gap in gaps.values()), gaps
    # differences (first epoch minus a later one, bf16 minus fp32) may be <= 0
    signed = {name for name in names if "_extra_s_" in name or "_minus_" in name}
    assert all(math.isfinite(value) for name, (value, _) in results.items())
    assert all(value > 0 for name, (value, _) in results.items()
               if name not in gaps and name not in signed and "precision_val_acc" not in name)
    # OUT receives the log and the JSON
    assert "RESULT" in (tmp_path / "gpu_check.txt").read_text()
    assert (tmp_path / "gpu_check.json").exists()


def _counted_gflop(model: str) -> float:
    """gpu_check's training GFLOP per image of `model` on CIFAR-shaped inputs."""
    import torch

    from dm_tune.training import TrainSpec

    bench = _module("gpu_check")
    data = bench.synthetic_cifar(32, torch.device("cpu"))
    return bench.training_gflop_per_image(TrainSpec(model=model), data)


def test_gpu_check_counts_training_flops_of_the_mlp_by_hand():
    """2 m n k per matmul: forward and weight gradients of all three layers, input
    gradients of the last two (the images need none); ReLU and the loss add no matmuls."""
    flat = 3 * 32 * 32
    layers = [(flat, 256), (256, 256), (256, 10)]
    per_image = sum(2 * i * o for i, o in layers) * 2 + sum(2 * i * o for i, o in layers[1:])
    assert _counted_gflop("mlp") * 1e9 == pytest.approx(per_image, rel=1e-9)


def test_gpu_check_counts_training_flops_of_fastnet_by_hand():
    """2 Cin Cout 9 H W per 3x3 convolution pass (at the resolution before its pool), three
    passes per layer (forward, input and weight gradients) but two for the stem (the
    images need no gradient): the 4.42 GFLOP an image that bounds fastnet's population."""
    def conv(c_in: int, c_out: int, side: int) -> int:
        return 2 * c_in * c_out * 9 * side * side

    # stem; three blocks: the down conv, then the residual pair after the pool
    forward = conv(3, 64, 32) + conv(64, 256, 32) + 2 * conv(256, 256, 16) \
        + conv(256, 256, 16) + 2 * conv(256, 256, 8) + conv(256, 256, 8) \
        + 2 * conv(256, 256, 4) + 2 * 256 * 10
    per_image = 3 * forward - conv(3, 64, 32)
    gflop = _counted_gflop("fastnet")
    assert gflop * 1e9 == pytest.approx(per_image, rel=1e-9)
    assert round(gflop, 2) == 4.42


def test_gpu_check_refuses_clearly_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "--cpu-smoke" in done.stderr


@pytest.mark.slow
def test_search_efficiency_smoke_prints_results():
    out = _run([sys.executable, "benchmarks/search_efficiency.py", "--quick", "--smoke"],
               timeout=180)
    results = parse_results(out)
    for name in ("search_epochs_fraction_symmetric-0.40", "search_epochs_fraction",
                 "search_epochs_fraction_cold", "selected_test_accuracy_symmetric-0.40"):
        assert name in results
    fraction = results["search_epochs_fraction"][0]
    assert fraction > 0  # inf when the search never matched the grid: still parseable
    assert 0 < results["selected_test_accuracy_symmetric-0.40"][0] <= 1


@pytest.mark.slow
@pytest.mark.postgres
def test_storage_overhead_measures_the_real_worker_on_both_backends():
    out = _run([sys.executable, "benchmarks/storage_overhead.py", "--trials", "3",
                "--epochs", "2"], timeout=300)
    results = parse_results(out)
    for backend in ("sqlite", "postgresql"):
        fraction, target = results[f"storage_overhead_{backend}"]
        assert 0.0 < fraction < 1.0 and target == "0.02"
        assert results[f"storage_ms_per_trial_{backend}"][0] > 0


@pytest.mark.slow
def test_dm_vs_cce_prints_every_figure():
    out = _run([sys.executable, "benchmarks/dm_vs_cce.py", "--epochs", "3"], timeout=300)
    results = parse_results(out)
    for label in ("cce", "dm_mode0.50_var8", "dm_mode0.33_var8"):
        assert 0.0 <= results[f"{label}_test_accuracy"][0] <= 1.0
        assert 0.0 <= results[f"{label}_memorized_noisy_fraction"][0] <= 1.0


@pytest.mark.slow
@pytest.mark.postgres
def test_scale_quick_runs_both_modes_with_exact_budgets():
    from pg import in_ci, unavailable

    try:
        import grpc  # noqa: F401
    except ImportError:
        if in_ci():
            raise
        pytest.skip("the storage proxy needs grpcio")
    if subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"], check=False).returncode != 0:
        unavailable("PostgreSQL is not answering on 127.0.0.1:5432")
    out = _run([sys.executable, "benchmarks/scale.py", "--quick"], timeout=300)
    results = parse_results(out)
    for mode in ("direct", "proxy"):
        assert results[f"scale_{mode}_claims_per_s_8"][0] > 0
        assert results[f"scale_{mode}_lost_or_duplicated_8"][0] == 0
        assert results[f"scale_{mode}_failed_claims_8"][0] >= 0
    assert 1 <= results["scale_proxy_connections_8"][0] <= 9  # pool 8 + the lock connection


@pytest.mark.slow
def test_precision_quick_prints_consistent_figures():
    out = _run([sys.executable, "benchmarks/precision.py", "--quick"], timeout=300,
               PYTHONPATH=str(ROOT))
    results = parse_results(out)
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    assert results["precision_cpu_has_bf16"][0] == float("avx512_bf16" in flags
                                                         or "amx_bf16" in flags)
    for model in ("mlp", "cnn", "resnet20"):
        fp32 = results[f"precision_epoch_s_{model}_fp32"][0]
        bf16 = results[f"precision_epoch_s_{model}_bf16"][0]
        assert fp32 > 0 and bf16 > 0
        assert results[f"precision_bf16_speedup_{model}"][0] == pytest.approx(fp32 / bf16,
                                                                              rel=2e-3)
    verdicts = re.findall(r"^# (\S+): bf16 - fp32 = .*: (within|outside) noise$", out, re.M)
    assert [name for name, _ in verdicts] == ["symmetric0.4", "pairflip0.3"]
    for name, _ in verdicts:
        fp32 = results[f"precision_test_acc_{name}_fp32"][0]
        bf16 = results[f"precision_test_acc_{name}_bf16"][0]
        assert 0 < fp32 <= 1 and 0 < bf16 <= 1
        # the paired mean difference is the difference of the means (same seeds)
        assert results[f"precision_bf16_minus_fp32_{name}"][0] == pytest.approx(
            100 * (bf16 - fp32), abs=0.02)
    assert results["precision_bf16_within_noise"] == (
        float(all(verdict == "within" for _, verdict in verdicts)), "1")
