"""The benchmark scripts run and print parseable RESULT lines (no timing assertions)."""

from __future__ import annotations

import math
import os
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
    out = _run(["bash", "benchmarks/gpu_check.sh", "--cpu-smoke"], timeout=180,
               OUT=str(tmp_path))
    results = parse_results(out)
    names = set(results)
    assert {"epoch_s_resnet20_cce", "epoch_s_resnet20_dm", "dm_cce_epoch_ratio_resnet20",
            "epoch_s_fastnet_cce", "epoch_s_fastnet_dm", "worker_throughput_2v1"} <= names
    assert all(value > 0 and math.isfinite(value) for value, _ in results.values())
    # OUT receives the log and the JSON
    assert "RESULT" in (tmp_path / "gpu_check.txt").read_text()
    assert (tmp_path / "gpu_check.json").exists()


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


# -------------------------------------------- fastnet and the GPU path of gpu_check.py


def test_fastnet_shapes_widths_and_options():
    import torch

    from dm_tune.models import build_model

    model = build_model("fastnet", (3, 32, 32), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs][:2] == [64, 256]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    small = build_model("fastnet", (3, 32, 32), 100, width=[4, 8, 8, 16], residual=False)
    assert small(torch.randn(3, 3, 32, 32)).shape == (3, 100)
    assert len([m for m in small.modules() if isinstance(m, torch.nn.Conv2d)]) == 4
    with pytest.raises(ValueError, match="fastnet"):
        build_model("fastnet", (64,), 10)
    with pytest.raises(ValueError, match="8x8"):
        build_model("fastnet", (3, 4, 4), 10)
    with pytest.raises(ValueError, match="width"):
        build_model("fastnet", (3, 32, 32), 10, width=[8, 8])


def test_fastnet_fits_a_tiny_synthetic_batch():
    import torch

    from dm_tune.models import build_model

    torch.manual_seed(0)
    model = build_model("fastnet", (3, 16, 16), 10, width=4)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def _tiny_images(n: int = 32):
    import torch

    from dm_tune.data import TrialData

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 16, 16, generator=gen), torch.arange(n) % 4
    return TrialData(x_train=x, y_train=y, y_train_true=y, x_val=x[:8], y_val=y[:8],
                     x_test=x[:8], y_test=y[:8], num_classes=4, input_shape=(3, 16, 16),
                     realised_noise_rate=0.0, label_digest="t", is_image=True)


def test_train_trial_compile_option_wraps_the_training_forward(monkeypatch):
    import torch

    from dm_tune.training import TrainSpec, train_trial

    compiled = []

    def fake_compile(model, *args, **kwargs):
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    spec = TrainSpec(model="fastnet", model_params={"width": 4}, epochs=1, batch_size=16)
    train_trial(_tiny_images(), spec, loss="cce", progress=False)
    assert compiled == []
    result = train_trial(_tiny_images(), TrainSpec(**{**spec.__dict__, "compile": True}),
                         loss="dm", loss_params={"emphasis_mode": 0.5,
                                                 "emphasis_variance": 8.0}, progress=False)
    assert len(compiled) == 1 and result.epochs_run == 1


def test_device_layout_is_channels_last_on_cuda_only():
    import torch

    from dm_tune.training import device_layout

    data = _tiny_images()
    assert device_layout(data, torch.device("cpu")) is data
    moved = device_layout(data, torch.device("cuda"))  # the layout step only: no transfer
    for x in (moved.x_train, moved.x_val, moved.x_test):
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert x.shape[1:] == (3, 16, 16)
    assert torch.equal(moved.x_train, data.x_train)


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
