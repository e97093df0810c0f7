"""Option types and the small decisions every command shares (device, threads, folders)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dm_tune.errors import DMTuneError
from dm_tune.storage import DEFAULT_STORAGE, STORAGE_ENV

if TYPE_CHECKING:
    import optuna

    from dm_tune.config import CampaignConfig

__all__ = [
    "DEFAULT_STORAGE",
    "ConfigArg",
    "DeviceOpt",
    "OutOpt",
    "StorageOpt",
    "database_location",
    "default_report_dir",
    "open_campaign",
    "resolve_device",
    "set_threads",
]

ConfigArg = Annotated[
    Path, typer.Argument(help="Campaign file (TOML), e.g. studies/digits-quick.toml")
]
StorageOpt = Annotated[
    str,
    typer.Option("--storage", envvar=STORAGE_ENV, show_envvar=True,
                 help="SQLAlchemy URL of the trial database."),
]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Report folder (default: dm_tune_reports/<campaign> "
                 "next to a SQLite database, else in the current folder)."),
]
THREADS_ENV = "DM_TUNE_TORCH_THREADS"


def open_campaign(
    config_path: Path, storage_url: str, create: bool = True, heartbeat: int | None = 60,
    check_data: bool = True,
) -> tuple[CampaignConfig, optuna.storages.RDBStorage]:
    """Validate the campaign file (and its data), then open the storage: nothing is written
    for a campaign that would be refused."""
    from dm_tune.config import load_campaign_config
    from dm_tune.storage import open_storage

    config = load_campaign_config(config_path)
    if check_data:
        from dm_tune.campaign.validate import checked_settings

        for _ in checked_settings(config):
            pass
    storage = open_storage(storage_url, create=create, heartbeat_interval=heartbeat)
    return config, storage


def set_threads(threads: int | None, config: CampaignConfig | None = None) -> None:
    """torch CPU threads: --threads, else $DM_TUNE_TORCH_THREADS, else by model size.

    Tabular models (the digits MLP) take ~0.5 ms per step: a second intra-op thread
    buys nothing and, on a busy machine, stalls every op while it waits to be scheduled
    (measured: 0.57 ms -> 156 ms per step with another process on the other core).
    """
    import torch

    threads = threads or int(os.environ.get(THREADS_ENV, "0") or 0)
    if not threads and config is not None and config.model.name == "mlp":
        threads = 1
    if threads > 0:
        torch.set_num_threads(threads)


def resolve_device(device: str) -> str:
    """cpu, cuda[:N] or auto -> a torch device string; refuse CUDA where there is none."""
    if device != "auto" and device != "cpu" and not device.startswith("cuda"):
        raise DMTuneError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise DMTuneError(f"--device {device}: CUDA is not available on this machine")
    return device


def database_location(storage_url: str) -> str:
    """The SQLite file's absolute path, or the redacted server URL."""
    from dm_tune.storage import redact_url, sqlite_file

    path = sqlite_file(storage_url)
    return str(path.resolve()) if path is not None else redact_url(storage_url)


def default_report_dir(storage_url: str, campaign: str) -> Path:
    """The one default report folder: next to a SQLite database, else the current folder."""
    from dm_tune.storage import sqlite_file

    path = sqlite_file(storage_url)
    base = path.resolve().parent if path is not None else Path.cwd()
    return base / "dm_tune_reports" / campaign.replace("/", "_")
