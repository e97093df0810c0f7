"""``dm-tune estimate-noise``: the transition matrix of a label set, by confident learning.

The source is a campaign file (one of its settings), an npz with ``noisy_y`` (real noisy
labels), or a built-in dataset with synthetic noise (``--noise``, ``--rate``). Everything
is checked and trained before the estimate file is written: a refusal writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dm_tune.cli.app import command, say, warn
from dm_tune.cli.options import prepare_training_process
from dm_tune.errors import DMTuneError

if TYPE_CHECKING:
    from dm_tune.data import DataSpec
    from dm_tune.estimate import NoiseEstimate
    from dm_tune.training import TrainSpec

__all__ = ["estimate_noise_cmd", "resolve_source"]


def _from_campaign(path: Path, setting: str | None, seed: int) -> tuple[DataSpec, TrainSpec]:
    from dataclasses import replace

    from dm_tune.campaign.settings import data_spec, settings_of, train_spec
    from dm_tune.config import load_campaign_config
    from dm_tune.estimate_run import OOF_SPEC

    config = load_campaign_config(path)
    settings = settings_of(config)
    names = [s.name for s in settings]
    if setting is None:  # real noisy labels first: that is where the noise is unknown
        chosen = next((s for s in settings if s.kind == "human"), settings[0])
    elif setting in names:
        chosen = settings[names.index(setting)]
    else:
        raise DMTuneError(f"--setting: {path} has no setting {setting!r}; it has "
                          f"{', '.join(names)}")
    spec = replace(data_spec(config, chosen), seed=seed)
    train = replace(train_spec(config, "cpu", seed), epochs=OOF_SPEC.epochs,
                    schedule=OOF_SPEC.schedule, weight_decay=OOF_SPEC.weight_decay)
    return spec, train


def resolve_source(
    source: str, noise: str | None, rate: float | None, setting: str | None, seed: int
) -> tuple[DataSpec, TrainSpec]:
    """The data and the fold models' recipe for CAMPAIGN_OR_DATA (see the command)."""
    from dm_tune.data import DATASETS, DataSpec
    from dm_tune.estimate_run import OOF_SPEC

    synthetic = noise is not None or rate is not None
    if synthetic and (noise is None or rate is None):
        raise DMTuneError("--noise and --rate go together (synthetic noise on the data)")
    if noise == "human":
        raise DMTuneError("--noise: human labels come from the data; omit --noise/--rate")
    path = Path(source)
    if source.endswith(".toml"):
        if synthetic:
            raise DMTuneError("--noise/--rate: a campaign names its own settings "
                              "(choose one with --setting)")
        if not path.is_file():
            raise DMTuneError(f"{source}: campaign file not found")
        return _from_campaign(path, setting, seed)
    if setting is not None:
        raise DMTuneError("--setting applies to a campaign file only")
    if source.endswith(".npz"):
        if not path.is_file():
            raise DMTuneError(f"{source}: npz file not found")
        if not synthetic:
            import numpy as np

            with np.load(path) as arrays:
                if "noisy_y" not in arrays.files:
                    raise DMTuneError(f"{source}: has no noisy_y array (real noisy labels); "
                                      "give --noise and --rate to estimate synthetic noise")
            return DataSpec("npz", root=str(path), noise_kind="human",
                            human_label="noisy_y", seed=seed), OOF_SPEC
        return DataSpec("npz", root=str(path), noise_kind=noise, noise_rate=rate,
                        seed=seed), OOF_SPEC
    if source not in DATASETS:
        raise DMTuneError(f"{source}: not a campaign (.toml), an npz or a built-in dataset "
                          f"({', '.join(sorted(DATASETS))})")
    if not synthetic:
        raise DMTuneError(f"{source}: a built-in dataset needs --noise and --rate")
    return DataSpec(source, noise_kind=noise, noise_rate=rate, seed=seed), OOF_SPEC


def _print(estimate: NoiseEstimate) -> None:
    truth = ""
    if estimate.realised_rate is not None:
        truth = f" (realised {estimate.realised_rate:.3f}"
        truth += f", true {estimate.true_kind} {estimate.true_rate:g})" \
            if estimate.true_kind else ")"
    epochs = estimate.extra.get("epochs")
    trained = f" ({epochs}-epoch fold models: the lower log loss)" if epochs else ""
    say(f"{estimate.source}: {estimate.num_examples} training labels, {estimate.folds} "
        f"folds{trained}")
    say(f"estimated noise rate {estimate.estimated_rate:.3f}{truth}")
    fits = ", ".join(f"{f.kind} {f.rate:.3f} (fit {f.fit:.2f})" for f in estimate.fits)
    say(f"nearest kind: {estimate.nearest_kind} at rate {estimate.nearest_rate:.3f}, fit "
        f"{estimate.fit:.2f} (1 = exactly that kind, 0 = no better than no noise); "
        f"all: {fits}")
    say("estimated T[true, given]:")
    for i, row in enumerate(estimate.transition):
        say(f"  {i:>3} " + " ".join(f"{v:.2f}" for v in row))


@command("estimate-noise")
def estimate_noise_cmd(
    source: Annotated[str, typer.Argument(
        metavar="CAMPAIGN_OR_DATA",
        help="A campaign file (.toml), an npz with noisy_y, or a built-in dataset name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Estimate file to write (JSON).")
                   ] = Path("noise-estimate.json"),
    noise: Annotated[str | None, typer.Option(
        "--noise", help="Synthetic noise kind for a dataset or npz (symmetric, pairflip, "
        "asymmetric).")] = None,
    rate: Annotated[float | None, typer.Option("--rate", help="Synthetic noise rate.")] = None,
    setting: Annotated[str | None, typer.Option(
        "--setting", help="A campaign's setting, e.g. symmetric-0.40 (default: its first "
        "human setting, else its first).")] = None,
    folds: Annotated[int, typer.Option("--folds", min=2, max=20,
                                       help="K for the out-of-fold probabilities.")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Split, noise and fold seed.")] = 0,
) -> None:
    """Estimate the training labels' noise (rate, transition matrix, nearest kind)."""
    from dm_tune.estimate import write_estimate
    from dm_tune.estimate_run import estimate_noise

    spec, train = resolve_source(source, noise, rate, setting, seed)
    prepare_training_process(None)
    if train.model == "mlp":
        import torch

        torch.set_num_threads(1)
    estimate = estimate_noise(spec, folds, train, source=source)
    _print(estimate)
    try:
        write_estimate(estimate, out)
    except OSError as error:
        raise DMTuneError(f"cannot write {out}: {error.strerror or error}") from None
    warn(f"wrote {out}")
