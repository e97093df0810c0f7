"""The ``dm-tune`` command line (Typer).

Exit codes: 0 done, 2 bad input or refused, 1 unexpected failure.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from dm_tune.storage import DEFAULT_STORAGE, STORAGE_ENV

app = typer.Typer(
    name="dm-tune",
    help="Tune Derivative Manipulation's emphasis mode and variance per noise type and rate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (CI logs, `make demo | tee`) gets a width that fits the status table.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

ConfigArg = Annotated[
    Path, typer.Argument(help="Campaign file (TOML), e.g. studies/digits-quick.toml")
]
StorageOpt = Annotated[
    str,
    typer.Option("--storage", envvar=STORAGE_ENV, help="SQLAlchemy URL of the trial database."),
]
F = TypeVar("F", bound=Callable[..., Any])


def refuse(message: str) -> typer.Exit:
    """Print one line to stderr and return the exit-2 exception to raise."""
    err_console.print(f"dm-tune: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(2)


def refusals(func: F) -> F:
    """Turn the known bad-input errors into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from dm_tune.campaign import CampaignError
        from dm_tune.config import ConfigError
        from dm_tune.storage import StorageError

        try:
            return func(*args, **kwargs)
        except (ConfigError, CampaignError, StorageError) as error:
            raise refuse(str(error)) from None

    return wrapper  # type: ignore[return-value]


def _set_threads(threads: int | None, config=None) -> None:
    """torch CPU threads: --threads, else $DM_TUNE_TORCH_THREADS, else by model size.

    Tabular models (the digits MLP) take ~0.5 ms per step: a second intra-op thread
    buys nothing and, on a busy machine, stalls every op while it waits to be scheduled
    (measured: 0.57 ms -> 156 ms per step with another process on the other core).
    """
    import torch

    threads = threads or int(os.environ.get("DM_TUNE_TORCH_THREADS", "0") or 0)
    if not threads and config is not None and config.model.name == "mlp":
        threads = 1
    if threads > 0:
        torch.set_num_threads(threads)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise refuse(f"--device {device}: CUDA is not available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise refuse(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
    return device


def _open(config_path: Path, storage_url: str, create: bool = True, heartbeat: int = 60):
    from dm_tune.config import load_campaign_config
    from dm_tune.storage import open_storage

    config = load_campaign_config(config_path)  # validate before touching the database
    storage = open_storage(storage_url, create=create, heartbeat_interval=heartbeat)
    return config, storage


def _database_location(storage_url: str) -> str:
    from dm_tune.storage import redact_url, sqlite_file

    path = sqlite_file(storage_url)
    return str(path.resolve()) if path is not None else redact_url(storage_url)


@app.command()
@refusals
def create(config_path: ConfigArg, storage: StorageOpt = DEFAULT_STORAGE) -> None:
    """Create the campaign's studies (idempotent); run once before starting workers."""
    from dm_tune.campaign import create_campaign

    config, store = _open(config_path, storage)
    names = create_campaign(config, store)
    console.print(f"campaign {config.name}: {len(names)} studies ready in "
                  f"{_database_location(storage)}")


@app.command()
@refusals
def status(config_path: ConfigArg, storage: StorageOpt = DEFAULT_STORAGE) -> None:
    """Per study: trial counts, best clean-validation accuracy and its parameters, baselines."""
    from dm_tune.status import status_table

    config, store = _open(config_path, storage, create=False)
    console.print(status_table(store, config))


@app.command()
@refusals
def run(
    config_path: ConfigArg,
    storage: StorageOpt = DEFAULT_STORAGE,
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="Worker processes (CPU).")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda:N or auto (jobs=1).")] = "auto",
    report: Annotated[bool, typer.Option("--report/--no-report",
                                         help="Write the report and export at the end.")] = True,
    out: Annotated[Path | None, typer.Option(help="Where the report goes "
                                             "(default: next to the database).")] = None,
) -> None:
    """Create what is missing and run the campaign to its budget (resumes an interrupted run)."""
    from dm_tune.campaign import create_campaign
    from dm_tune.status import run_with_progress, status_table

    config, store = _open(config_path, storage)
    create_campaign(config, store)
    if jobs == 1:
        _set_threads(None, config)
        stopped = run_with_progress(store, config, _resolve_device(device), console)
    else:
        from dm_tune.status import live_launch
        from dm_tune.worker import plan_slots

        codes = live_launch(store, config, plan_slots(None, 1, jobs), str(config_path),
                            storage, console)
        failed = {label: code for label, code in codes.items() if code != 0}
        if failed:
            err_console.print(f"dm-tune: workers exited non-zero: {failed}")
            raise typer.Exit(1)
        stopped = False
    console.print(status_table(store, config))
    console.print(f"database: {_database_location(storage)}")
    if stopped:
        console.print("stopped early: run the same command again to resume")
        return
    if report:
        _write_outputs(config, store, storage, out)


def _write_outputs(config, store, storage_url: str, out: Path | None) -> None:
    from dm_tune.cli_guidelines import write_run_outputs

    directory = out or _default_report_dir(storage_url, config.name)
    write_run_outputs(store, config, directory, console)


def _default_report_dir(storage_url: str, campaign: str) -> Path:
    from dm_tune.storage import sqlite_file

    path = sqlite_file(storage_url)
    base = path.resolve().parent if path is not None else Path.cwd()
    return base / "dm_tune_reports" / campaign


@app.command()
@refusals
def worker(
    config_path: ConfigArg,
    storage: StorageOpt = DEFAULT_STORAGE,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    max_trials: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many trials.")
    ] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads.")] = None,
    quiet: Annotated[bool, typer.Option(help="No per-trial lines.")] = False,
    heartbeat: Annotated[int, typer.Option(
        min=1, help="Seconds between heartbeats; a trial silent for twice that is failed "
        "and re-queued by another worker.")] = 60,
) -> None:
    """Join a created campaign and take trials until every study meets its budget."""
    from dm_tune.trials import worker_name
    from dm_tune.worker import install_stop_signals, run_worker

    config, store = _open(config_path, storage, create=False, heartbeat=heartbeat)
    _set_threads(threads, config)
    resolved = _resolve_device(device)
    stop = threading.Event()
    install_stop_signals(stop)
    name = os.environ.get("DM_TUNE_WORKER_LABEL", "") or worker_name()

    def on_trial(claimed, state) -> None:
        if not quiet:
            value = claimed.study._storage.get_trial(claimed.trial._trial_id).value
            shown = f"{value:.4f}" if value is not None else "-"
            console.print(f"[{name}] {claimed.study.study_name} #{claimed.trial.number}: "
                          f"{state.name.lower()} {shown}", highlight=False)

    summary = run_worker(store, config, resolved, max_trials, stop, name, on_trial)
    if summary.stopped:
        console.print(f"worker {name}: stopped by signal after {summary.trials} trial(s); "
                      "an unfinished trial was re-queued", highlight=False)
    else:
        console.print(f"worker {name}: done after {summary.trials} trial(s) {summary.states}",
                      highlight=False)


@app.command()
@refusals
def launch(
    config_path: ConfigArg,
    storage: StorageOpt = DEFAULT_STORAGE,
    gpus: Annotated[str | None, typer.Option(help="Comma-separated GPU ids, e.g. 0,1,2,3.")] = None,
    per_gpu: Annotated[int, typer.Option("--per-gpu", min=1, help="Workers per GPU.")] = 1,
    cpus: Annotated[int | None, typer.Option(min=1, help="CPU workers (without --gpus).")] = None,
) -> None:
    """Start one worker process per slot, show progress, forward signals, report failures."""
    from dm_tune.campaign import create_campaign
    from dm_tune.status import live_launch
    from dm_tune.worker import plan_slots

    if gpus is not None and cpus is not None:
        raise refuse("give either --gpus or --cpus, not both")
    try:
        gpu_ids = [int(g) for g in gpus.split(",")] if gpus else None
    except ValueError:
        raise refuse(f"--gpus must be comma-separated integers, got {gpus!r}") from None
    config, store = _open(config_path, storage)
    create_campaign(config, store)
    slots = plan_slots(gpu_ids, per_gpu, cpus)
    codes = live_launch(store, config, slots, str(config_path), storage, console)
    failed = {label: code for label, code in codes.items() if code != 0}
    if failed:
        err_console.print(f"dm-tune: worker(s) exited non-zero: {failed}")
        raise typer.Exit(1)


@app.command()
@refusals
def dashboard(
    storage: StorageOpt = DEFAULT_STORAGE,
    host: Annotated[
        str, typer.Option(help="Interface to bind (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8080,
    allow_remote: Annotated[bool, typer.Option("--allow-remote",
                                               help="Allow a non-loopback host.")] = False,
) -> None:
    """Serve optuna-dashboard for the campaign database (no authentication: loopback only)."""
    from dm_tune.dashboard import DashboardRefused, serve_dashboard

    try:
        serve_dashboard(storage, host=host, port=port, allow_remote=allow_remote)
    except DashboardRefused as error:
        raise refuse(str(error)) from None


@app.command()
@refusals
def confirm(
    config_path: ConfigArg,
    storage: StorageOpt = DEFAULT_STORAGE,
    top_k: Annotated[int, typer.Option("--top-k", min=1)] = 3,
    seeds: Annotated[int, typer.Option(min=1)] = 3,
    device: Annotated[str, typer.Option(help="cpu, cuda:N or auto.")] = "auto",
) -> None:
    """Retrain each setting's top-k with new seeds; guidelines prefer confirmed results."""
    from dm_tune.campaign import create_confirmations
    from dm_tune.status import run_with_progress, status_table

    config, store = _open(config_path, storage, create=False)
    names = create_confirmations(store, config, top_k, seeds)
    console.print(f"queued confirmation trials in {len(names)} studies")
    _set_threads(None, config)
    run_with_progress(store, config, _resolve_device(device), console)
    console.print(status_table(store, config))


def _register_guideline_commands() -> None:
    from dm_tune import cli_guidelines

    app.command("export")(refusals(cli_guidelines.export_command))
    app.command("recommend")(refusals(cli_guidelines.recommend_command))
    app.command("report")(refusals(cli_guidelines.report_command))


_register_guideline_commands()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
