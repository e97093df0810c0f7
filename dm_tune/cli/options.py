"""Option types and the small decisions every command shares (device, threads, folders).

Storage URLs: ``--storage ""`` is refused (a typo or an unset shell variable, never a
wish for the default); an empty ``$DM_TUNE_STORAGE`` counts as unset and means the
default, as for every other option's variable. An in-memory SQLite database exists only
inside one process, so commands that join a campaign or start workers refuse it.
"""

from __future__ import annotations

import os
from enum import StrEnum
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
    "AllowForeignOpt",
    "DeviceOpt",
    "Method",
    "MethodOpt",
    "OutOpt",
    "StorageOpt",
    "database_location",
    "default_report_dir",
    "in_memory_storage",
    "open_campaign",
    "prepare_training_process",
    "refuse_in_memory",
    "resolve_device",
    "warn_password_in_argv",
]

ConfigArg = Annotated[
    Path, typer.Argument(help="Campaign file (TOML), e.g. studies/digits-quick.toml")
]


#: set while a command's --storage URL holds a password typed on its command line
_password_in_argv: list[bool] = []


def _storage_given(ctx: typer.Context, param: typer.CallbackParam, value: str) -> str:
    """Refuse an empty URL given explicitly (an empty $DM_TUNE_STORAGE means the default);
    note a password given on the command line (:func:`warn_password_in_argv` says so)."""
    if not value.strip():
        raise typer.BadParameter(f"empty storage URL; omit --storage for the default "
                                 f"({DEFAULT_STORAGE}) or give one")
    source = ctx.get_parameter_source(param.name) if param.name else None
    if getattr(source, "name", "") == "COMMANDLINE":
        from dm_tune.storage import has_password

        _password_in_argv[:] = [has_password(value)]
    return value


def warn_password_in_argv() -> None:
    """Once per command, when its --storage URL holds a password given on the command
    line: any local user can read it in `ps` while the command runs. Said once the
    storage is open (a refused command says only why it is refused)."""
    if not any(_password_in_argv):
        return
    _password_in_argv.clear()
    from dm_tune.cli.app import warn

    warn(f"dm-tune: warning: the --storage URL holds a password, which any local user can "
         f"read in `ps` while this command runs; set {STORAGE_ENV} instead")


StorageOpt = Annotated[
    str,
    typer.Option("--storage", envvar=STORAGE_ENV, show_envvar=True, callback=_storage_given,
                 help="SQLAlchemy URL of the trial database (an empty "
                 f"${STORAGE_ENV} means the default)."),
]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]


class Method(StrEnum):
    """How the guideline is fitted (guidelines.results.METHODS)."""

    surface = "surface"
    top_k = "top-k"


MethodOpt = Annotated[
    Method,
    typer.Option("--method", help="surface: a Gaussian-process response surface per noise "
                 "kind (top-k for a kind with too few trials, said so); top-k: the "
                 "rank-weighted best trials per rate with a bootstrap band."),
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Report folder (default: dm_tune_reports/<campaign> "
                 "next to a SQLite database, else in the current folder)."),
]
THREADS_ENV = "DM_TUNE_TORCH_THREADS"


AllowForeignOpt = Annotated[
    bool,
    typer.Option("--allow-foreign-tables",
                 help="Add the campaign's tables to a database that holds other "
                 "applications' tables too (refused without this flag)."),
]


def open_campaign(
    config_path: Path, storage_url: str, create: bool = True, heartbeat: int | None = 60,
    check_data: bool = True, read_only: bool = False, allow_foreign_tables: bool = False,
    device: str | None = None,
) -> tuple[CampaignConfig, optuna.storages.RDBStorage]:
    """Validate the campaign file (and its data), then open the storage: nothing is written
    for a campaign that would be refused.

    ``create=False`` (join a created campaign) refuses an in-memory database, which starts
    empty in every process. A SQLite file or folder that cannot be written is refused
    unless ``read_only`` (``status``), which reads it through a read-only connection.
    With ``create``, a database that holds tables that are not Optuna's (another
    application's) is refused unless ``allow_foreign_tables``. With ``device`` (the
    commands that train here), trials that cannot fit its memory are refused too.
    """
    from dm_tune.config import load_campaign_config
    from dm_tune.storage import check_storage_url, open_storage

    config = load_campaign_config(config_path)
    # the storage checks that cost nothing come before the data's (seconds to minutes)
    check_storage_url(storage_url, create=create)
    if not create:
        refuse_in_memory(storage_url, "there is no campaign to join")
    if read_only:
        storage_url = _read_only_sqlite_url(storage_url)
    else:
        _check_sqlite_writable(storage_url)
    if create and not allow_foreign_tables:
        _refuse_foreign_tables(storage_url)
    if check_data:
        from dm_tune.campaign.validate import checked_settings

        for _ in checked_settings(config, device):
            pass
    from dm_tune.campaign.retry import is_restarting, retrying

    # a server restarting while workers start is waited for; a refused connection is not
    storage = retrying(lambda: open_storage(storage_url, create=create,
                                            heartbeat_interval=heartbeat),
                       "opening the storage", transient=is_restarting)
    warn_password_in_argv()
    return config, storage


def _refuse_foreign_tables(storage_url: str) -> None:
    """Refuse a database with tables that neither Optuna nor dm-tune made, where Optuna's
    would be added beside another application's without a word (once they are there,
    added with --allow-foreign-tables, the database is a campaign's: no more refusals)."""
    from dm_tune.campaign._optuna import optuna_table_names
    from dm_tune.storage import table_names

    present = set(table_names(storage_url))
    foreign = sorted(present - optuna_table_names())
    if foreign and "studies" not in present:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                          else "")
        raise DMTuneError(f"{database_location(storage_url)} holds tables that are not "
                          f"Optuna's ({shown}): it belongs to another application; use "
                          "another database, or --allow-foreign-tables to add the "
                          "campaign's tables beside them")


def _local_sqlite_file(storage_url: str) -> Path | None:
    """The SQLite file of the URL; None for another backend, in-memory, or a bad URL
    (open_storage then says what is wrong with it)."""
    from dm_tune.storage import sqlite_file

    try:
        return sqlite_file(storage_url)
    except Exception:  # noqa: BLE001 - a bad URL is open_storage's to report
        return None


def _writable(path: Path) -> bool:
    # os.access also answers for root: an immutable file (chattr +i) is not writable.
    return os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0))


def _check_sqlite_writable(storage_url: str) -> None:
    """Refuse a read-only SQLite file, or a folder where SQLite cannot add its -wal and
    -shm files (nor dm-tune its claim locks), before anything tries to write."""
    path = _local_sqlite_file(storage_url)
    if path is None or not path.parent.is_dir():
        return  # a missing folder: open_storage refuses it
    path = path.resolve()
    if path.exists() and not _writable(path):
        raise DMTuneError(f"SQLite database {str(path)!r} is read-only: this command writes "
                          "trials to it (`dm-tune status` can still read it)")
    if not _writable(path.parent):
        what = "of SQLite database" if path.exists() else "for new SQLite database"
        raise DMTuneError(f"folder {str(path.parent)!r} {what} {str(path)!r} is not "
                          f"writable: SQLite adds {path.name}-wal and {path.name}-shm, and "
                          "dm-tune its lock files, next to the database")


def _read_only_sqlite_url(storage_url: str) -> str:
    """:func:`dm_tune.storage.read_only_sqlite_url`, for a URL the checks above accept."""
    from dm_tune.storage import read_only_sqlite_url

    return read_only_sqlite_url(storage_url)


def in_memory_storage(storage_url: str) -> bool:
    """True for an in-memory SQLite URL (``sqlite://``, ``sqlite:///:memory:``, ...)."""
    from sqlalchemy.engine import make_url

    from dm_tune.storage import resolve_storage_url

    try:
        url = make_url(resolve_storage_url(storage_url))
    except Exception:  # noqa: BLE001 - a bad URL is open_storage's to report
        return False
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    return (database in ("", ":memory:") or database.startswith("file::memory:")
            or "mode=memory" in database or url.query.get("mode") == "memory")


def refuse_in_memory(storage_url: str, why: str) -> None:
    """Raise DMTuneError for an in-memory database, which no other process can see."""
    if in_memory_storage(storage_url):
        from dm_tune.storage import redact_url

        raise DMTuneError(f"{redact_url(storage_url)} is an in-memory database, which lives "
                          f"and dies with one process: {why}; use a SQLite file "
                          f"(e.g. {DEFAULT_STORAGE}) or PostgreSQL")


def prepare_training_process(threads: int | None, config: CampaignConfig | None = None) -> None:
    """A training process's CPU settings: torch threads (--threads, else
    $DM_TUNE_TORCH_THREADS, else by model size) and glibc malloc's thresholds.

    Tabular models (the digits MLP) take ~0.5 ms per step: a second intra-op thread
    buys nothing and, on a busy machine, stalls every op while it waits to be scheduled
    (measured: 0.57 ms -> 156 ms per step with another process on the other core).
    The allocator keeps a step's freed tensors for the next step (dm_tune/allocator.py).
    """
    import torch

    from dm_tune.allocator import keep_freed_memory

    keep_freed_memory()

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
