"""Small campaign files for tests (written to tmp_path)."""

from __future__ import annotations

from pathlib import Path

TINY = """
[campaign]
name = "{name}"
seed = 0

[data]
dataset = "digits"
val_fraction = 0.125

[training]
epochs = {epochs}
batch_size = 64

[[noise]]
kind = "symmetric"
rates = [0.2, 0.4]

[search]
trials = {trials}
min_epochs = 1
warm_start = "paper"
startup_trials = 2

[baselines]
losses = ["cce"]
"""


def write_tiny(tmp_path: Path, name: str = "tiny", epochs: int = 3, trials: int = 6) -> Path:
    """A 2-setting digits campaign; returns the file path."""
    path = tmp_path / f"{name}.toml"
    path.write_text(TINY.format(name=name, epochs=epochs, trials=trials))
    return path
