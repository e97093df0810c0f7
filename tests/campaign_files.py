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
losses = {losses}

[confirm]
{confirm}
"""


def write_tiny(
    tmp_path: Path,
    name: str = "tiny",
    epochs: int = 3,
    trials: int = 6,
    baselines: tuple[str, ...] = ("cce",),
    confirm: dict[str, int] | None = None,
) -> Path:
    """A 2-setting digits campaign (symmetric 0.2 and 0.4); returns the file path.

    ``[confirm] seeds = 0`` unless ``confirm`` says otherwise: tests that count trials
    after `run` are not about the confirmation that ends it.
    """
    path = tmp_path / f"{name}.toml"
    losses = "[" + ", ".join(f'"{loss}"' for loss in baselines) + "]"
    keys = {"seeds": 0, **(confirm or {})}
    table = "\n".join(f"{key} = {value}" for key, value in keys.items())
    path.write_text(TINY.format(name=name, epochs=epochs, trials=trials, losses=losses,
                                confirm=table))
    return path
