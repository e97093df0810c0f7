"""The whole campaign is validated at load: a refused file writes nothing anywhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.campaign_files import write_tiny


def _run(tmp_path: Path, config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dm_tune", "run", str(config), "--storage",
         f"sqlite:///{tmp_path / 'c.db'}", "--device", "cpu", *extra],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )


def _with(config: Path, old: str, new: str) -> Path:
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))
    return config


@pytest.mark.parametrize(
    ("old", "new", "key", "detail"),
    [
        ("[training]", '[model]\nname = "transformer"\n\n[training]', "model.name",
         "transformer"),
        ("[training]", '[model]\nname = "mlp"\nparams = {bogus = 3}\n\n[training]',
         "model.params", "bogus"),
        ("[training]", '[model]\nname = "mlp"\nparams = {hidden = [-5]}\n\n[training]',
         "model.params", "-5"),
        ("[training]", '[model]\nname = "cnn"\n\n[training]', "model.params", "cnn"),
        ("batch_size = 64", "batch_size = 64\naugment = true", "training.augment", "image"),
        ('losses = ["cce"]', 'losses = ["cce", "focal"]', "baselines", "focal"),
        ('dataset = "digits"', 'dataset = "digitz"', "data", "digitz"),
        ("rates = [0.2, 0.4]", "rates = [0.2, 0.95]", "noise.rates", "0.95"),
    ],
)
def test_a_bad_campaign_is_refused_before_anything_is_written(tmp_path, old, new, key, detail):
    config = _with(write_tiny(tmp_path), old, new)
    result = _run(tmp_path, config)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0] and key in lines[0] and detail in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [config.name]  # no database file


def test_a_refused_device_writes_nothing(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = write_tiny(tmp_path)
    result = _run(tmp_path, config, "--device", "cuda:0")
    assert result.returncode == 2 and "CUDA is not available" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [config.name]
