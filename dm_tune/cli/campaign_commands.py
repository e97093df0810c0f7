"""Commands that write: create, run, worker, launch, confirm; and status, dashboard."""

from __future__ import annotations

import json
import os
import threading
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from dm_tune.cli.app import command, console, print_table, refuse, say, warn
from dm_tune.cli.options import (
    DEFAULT_STORAGE,
    AllowForeignOpt,
    ConfigArg,
    DeviceOpt,
    OutOpt,
    StorageOpt,
    database_location,
    open_campaign,
    prepare_training_process,
    refuse_in_memory,
    resolve_device,
)
from dm_tune.config import CONFIRM_SEEDS, CONFIRM_SETTINGS, MAX_POPULATION
from dm_tune.errors import DMTuneError


def _print_status(store, config, sentences: bool = True, rows=None) -> None:
    from dm_tune.cli.tables import status_table
    from dm_tune.guidelines.status import status_rows

    if rows is None:
        rows = status_rows(store, config)
    print_table(status_table(config.name, rows, sentences))


class StatusFormat(StrEnum):
    """`dm-tune status --format`: the table, or JSON (docs/status-json.md)."""

    table = "table"
    json = "json"


def _workers_failed(codes: dict[str, int], stopped: bool = False) -> None:
    """Exit 1 when a worker failed; after a stop signal, a worker the signal killed while
    it started (before its own handlers) was stopped, not failed."""
    from dm_tune.campaign.launcher import stop_exit

    failed = {label: code for label, code in codes.items()
              if code != 0 and not (stopped and stop_exit(code))}
    if failed:
        raise refuse(f"worker(s) exited non-zero: {failed}", code=1)


@command()
def create(config_path: ConfigArg, storage: StorageOpt = DEFAULT_STORAGE,
           allow_foreign_tables: AllowForeignOpt = False) -> None:
    """Create the campaign's studies (idempotent); run once before starting workers."""
    config, store = open_campaign(config_path, storage,
                                  allow_foreign_tables=allow_foreign_tables)
    from dm_tune.campaign.create import create_campaign  # after the checks: fast refusals

    names = create_campaign(config, store)
    say(f"campaign {config.name}: {len(names)} studies ready in {database_location(storage)}")


@command()
def status(
    config_path: ConfigArg,
    storage: StorageOpt = DEFAULT_STORAGE,
    format: Annotated[StatusFormat, typer.Option(
        "--format", "-f", help="table, or json (a stable shape: docs/status-json.md).")
    ] = StatusFormat.table,
) -> None:
    """Per setting: trial counts, the selected parameters (as export names them), baselines."""
    from dm_tune.cli.cluster_commands import print_slurm_jobs, slurm_tasks
    from dm_tune.guidelines.status import campaign_record, status_document, status_rows

    config, store = open_campaign(config_path, storage, create=False, heartbeat=None,
                                  check_data=False, read_only=True)
    record = campaign_record(store, config)
    if not record.studies:
        raise refuse(f"campaign {config.name!r} has no study in "
                     f"{database_location(storage)}; run `dm-tune create {config_path}` "
                     "first (or give the database it was run in with --storage)")
    if record.hash_differs(config):
        warn(f"dm-tune: warning: {config_path}'s config hash {config.config_hash()} differs "
             f"from the stored one ({', '.join(record.stored_hashes)}): the file changed "
             "since the campaign was created; shown: the stored results")
    rows = status_rows(store, config)
    if format == StatusFormat.json:
        tasks, reason = slurm_tasks(record.slurm_jobs)
        if reason is not None:
            warn(f"dm-tune: Slurm jobs {', '.join(record.slurm_jobs)} unknown: {reason}")
        document = status_document(config, rows, record, database_location(storage), tasks)
        typer.echo(json.dumps(document, indent=2, allow_nan=False))
        return
    _print_status(store, config, rows=rows)
    print_slurm_jobs(config.name, record.slurm_jobs)


@command()
def run(
    config_path: ConfigArg,
    storage: StorageOpt = DEFAULT_STORAGE,
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="Worker processes (CPU).")] = 1,
    device: DeviceOpt = "auto",
    report: Annotated[bool, typer.Option("--report/--no-report",
                                         help="Write the report and export at the end.")] = True,
    out: OutOpt = None,
    confirm: Annotated[bool, typer.Option(
        "--confirm/--no-confirm",
        help="End by re-training the candidates and baselines with new seeds (the "
        "campaign file's \\[confirm] table; GCE's q is tuned first).")] = True,
    allow_foreign_tables: AllowForeignOpt = False,
) -> None:
    """Create what is missing and run the campaign to its budget (resumes an interrupted run).

    Then, unless --no-confirm or `\\[confirm] seeds = 0`, confirm: the surface's argmax and
    the next distinct candidates at every rate, and every baseline, re-trained with new
    seeds; GCE's q gets a small study of its own first.
    """
    if jobs > 1:
        refuse_in_memory(storage, f"--jobs {jobs} starts worker processes that cannot see it")
        if device not in ("auto", "cpu"):
            raise DMTuneError(f"--device {device} is for --jobs 1: --jobs {jobs} starts CPU "
                              "workers (for GPUs: dm-tune launch --gpus)")
    resolved = resolve_device(device) if jobs == 1 else "cpu"
    config, store = open_campaign(config_path, storage, device=resolved,
                                  allow_foreign_tables=allow_foreign_tables)
    from dm_tune.campaign.create import create_campaign  # after the checks: fast refusals
    from dm_tune.campaign.worker import stop_signals

    create_campaign(config, store)
    if jobs == 1:
        from dm_tune.campaign.claims import join_seed
        from dm_tune.campaign.retry import retrying

        prepare_training_process(None, config)
        # one seed for both phases; another `run` of the campaign gets another one
        seed = retrying(lambda: join_seed(store, config), "joining")

    def work(phase_config) -> bool:
        """One pass of the worker(s) until every budget is met; True if stopped."""
        if stop.is_set():  # a signal between the phases: the next one does not start
            return True
        if jobs == 1:
            from dm_tune.cli.views import run_with_progress

            return run_with_progress(store, phase_config, resolved, console, seed)
        from dm_tune.campaign.launcher import plan_slots
        from dm_tune.cli.views import live_launch

        # the confirmation's wider population must reach the worker processes too, split
        # between them: one worker claiming all of it would leave the others idle
        wider = phase_config.search.population
        population = max(config.search.population, -(-wider // jobs))
        codes = live_launch(
            store, phase_config, plan_slots(None, 1, jobs), str(config_path), storage, console,
            population if population != config.search.population else None, stop=stop)
        _workers_failed(codes, stopped=stop.is_set())
        return stop.is_set()

    # SIGTERM/SIGINT are a stop in every phase: during the search, the confirmation, a
    # worker's start, or between them (the workers get it forwarded)
    with stop_signals() as stop:
        stopped = work(config)
        if not stopped and confirm:
            stopped = _confirm_after_search(store, config, work)
    # the outputs end with the same sentences after the recommendations: say them once
    _print_status(store, config, sentences=stopped or not report)
    say(f"database: {database_location(storage)}")
    if stopped:
        say("stopped early: run the same command again to resume")
        return
    if report:
        from dm_tune.cli.guideline_commands import write_run_outputs
        from dm_tune.cli.options import default_report_dir

        write_run_outputs(store, config, out or default_report_dir(storage, config.name))


def _confirm_after_search(store, config, work) -> bool:
    """The confirmation that ends `run` (campaign/confirm_run.py); True if stopped.

    Two passes: the DM candidates, the baselines and GCE's q studies; then GCE with each
    setting's best q. Queueing is exact, so a re-run adds only what is missing.
    """
    from dm_tune.campaign.confirm_run import (
        confirmation_config,
        confirming,
        queue_confirmations,
        queue_tuned_gce,
        tunes_gce,
    )

    if not confirming(config):
        return False
    phase = confirmation_config(config)
    added = queue_confirmations(store, config)
    say(f"confirming with {config.confirm.seeds} new seeds: {added} trial(s) queued"
        + (f", GCE's q searched ({config.confirm.gce_q_trials} per setting)"
           if tunes_gce(config) else ""))
    if work(phase):
        return True
    if tunes_gce(config):
        added = queue_tuned_gce(store, config)
        say(f"confirming GCE at its best q: {added} trial(s) queued")
        return work(phase)
    return False


@command()
def worker(
    config_path: ConfigArg,
    storage: StorageOpt = DEFAULT_STORAGE,
    device: DeviceOpt = "auto",
    max_trials: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many trials.")
    ] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads.")] = None,
    quiet: Annotated[bool, typer.Option(help="No per-trial lines.")] = False,
    heartbeat: Annotated[int, typer.Option(
        min=1, help="Seconds between heartbeats; a trial silent for twice that is failed "
        "and re-queued by another worker.")] = 60,
    population: Annotated[int | None, typer.Option(
        min=1, max=MAX_POPULATION, help="Trials trained at once as one model (overrides the file's "
        "\\[search] population; not part of the campaign's identity).")] = None,
) -> None:
    """Join a created campaign and take trials until every study meets its budget."""
    from dm_tune.campaign.claims import worker_name
    from dm_tune.campaign.launcher import LABEL_ENV
    from dm_tune.campaign.worker import run_worker, stop_signals
    from dm_tune.config import with_population

    resolved = resolve_device(device)
    config, store = open_campaign(config_path, storage, create=False, heartbeat=heartbeat,
                                  device=resolved)
    if population is not None:
        config = with_population(config, population)
    prepare_training_process(threads, config)
    name = os.environ.get(LABEL_ENV, "") or worker_name()

    def on_trial(claimed, outcome) -> None:
        if not quiet:
            shown = f"{outcome.value:.4f}" if outcome.value is not None else "-"
            say(f"[{name}] {claimed.study.study_name} #{claimed.trial.number}: "
                f"{outcome.state.name.lower()} {shown}")

    with stop_signals() as stop:
        summary = run_worker(store, config, resolved, max_trials, stop, name, on_trial)
    if summary.stopped:
        say(f"worker {name}: stopped by signal after {summary.trials} trial(s); "
            "an unfinished trial was re-queued")
    else:
        say(f"worker {name}: done after {summary.trials} trial(s) {summary.states}")


@command()
def launch(
    config_path: ConfigArg,
    storage: StorageOpt = DEFAULT_STORAGE,
    gpus: Annotated[str | None, typer.Option(help="Comma-separated GPU ids, e.g. 0,1,2,3.")] = None,
    per_gpu: Annotated[int, typer.Option("--per-gpu", min=1, help="Workers per GPU.")] = 1,
    cpus: Annotated[int | None, typer.Option(min=1, help="CPU workers (without --gpus).")] = None,
    slurm: Annotated[bool, typer.Option(
        "--slurm", help="Submit the workers as one Slurm job array instead (sbatch); the "
        "storage URL reaches the tasks through the environment only.", rich_help_panel="Slurm",
    )] = False,
    slurm_array: Annotated[int, typer.Option(
        "--slurm-array", min=1, help="Worker tasks in the array.", rich_help_panel="Slurm",
    )] = 1,
    slurm_partition: Annotated[str | None, typer.Option(
        "--slurm-partition", rich_help_panel="Slurm")] = None,
    slurm_gpus_per_task: Annotated[int | None, typer.Option(
        "--slurm-gpus-per-task", min=1, help="GPUs per task (workers then use cuda).",
        rich_help_panel="Slurm")] = None,
    slurm_time: Annotated[str | None, typer.Option(
        "--slurm-time", help="Time limit per task: minutes or [D-]HH:MM:SS (SIGTERM 2 min "
        "before it).", rich_help_panel="Slurm")] = None,
    slurm_extra: Annotated[list[str] | None, typer.Option(
        "--slurm-extra", help="More sbatch options, KEY=VALUE (repeatable), e.g. mem=16G.",
        rich_help_panel="Slurm")] = None,
    slurm_workdir: Annotated[Path | None, typer.Option(
        "--slurm-workdir", help="Batch scripts and logs/ (default ./slurm); on a shared "
        "filesystem.", rich_help_panel="Slurm")] = None,
    worker_heartbeat: Annotated[int, typer.Option(
        "--worker-heartbeat", min=1, help="The Slurm workers' --heartbeat (s).",
        rich_help_panel="Slurm")] = 60,
    allow_foreign_tables: AllowForeignOpt = False,
) -> None:
    """Start one worker process per slot, show progress, forward signals, report failures.

    With --slurm: submit one job array of `dm-tune worker` tasks and print its job id
    (nothing is submitted when every budget is met).
    """
    from dm_tune.campaign.create import create_campaign
    from dm_tune.campaign.launcher import plan_slots
    from dm_tune.cli.views import live_launch

    if slurm:
        if gpus is not None or cpus is not None:
            raise refuse("--slurm takes --slurm-array and --slurm-gpus-per-task, not "
                         "--gpus/--cpus")
        from dm_tune.cli.cluster_commands import launch_slurm

        launch_slurm(config_path, storage, array=slurm_array, partition=slurm_partition,
                     gpus_per_task=slurm_gpus_per_task, time=slurm_time, extra=slurm_extra,
                     worker_heartbeat=worker_heartbeat, workdir=slurm_workdir,
                     allow_foreign_tables=allow_foreign_tables)
        return
    if gpus is not None and cpus is not None:
        raise refuse("give either --gpus or --cpus, not both")
    try:
        gpu_ids = [int(g) for g in gpus.split(",")] if gpus else None
    except ValueError:
        raise refuse(f"--gpus must be comma-separated integers, got {gpus!r}") from None
    if gpu_ids:
        _check_gpus(gpu_ids)  # before open_campaign: a refused launch creates nothing
    refuse_in_memory(storage, "launch starts worker processes that cannot see it")
    config, store = open_campaign(config_path, storage,
                                  allow_foreign_tables=allow_foreign_tables)
    create_campaign(config, store)
    slots = plan_slots(gpu_ids, per_gpu, cpus)
    stop = threading.Event()
    _workers_failed(live_launch(store, config, slots, str(config_path), storage, console,
                                stop=stop), stopped=stop.is_set())
    if stop.is_set():
        say("stopped early: run the same command again to resume")


def _check_gpus(gpu_ids: list[int]) -> None:
    import torch

    count = torch.cuda.device_count()
    missing = [g for g in gpu_ids if g < 0 or g >= count]
    if missing:
        raise DMTuneError(f"--gpus {','.join(map(str, missing))}: this machine has {count} "
                          "CUDA device(s)")


@command()
def confirm(
    config_path: ConfigArg,
    storage: StorageOpt = DEFAULT_STORAGE,
    top_k: Annotated[int, typer.Option(
        "--top-k", min=1, help="DM settings per rate to re-train: the best trials (the "
        "same count as `run`'s confirmation: its argmax and \\[confirm] candidates = "
        f"{CONFIRM_SETTINGS - 1} more).")] = CONFIRM_SETTINGS,
    seeds: Annotated[int, typer.Option(min=1, help="New seeds per setting (as \\[confirm] "
                                       "seeds).")] = CONFIRM_SEEDS,
    device: DeviceOpt = "auto",
) -> None:
    """Retrain each setting's top-k with new seeds; guidelines prefer confirmed results."""
    from dm_tune.campaign.confirm import create_confirmations
    from dm_tune.cli.views import run_with_progress

    resolved = resolve_device(device)
    config, store = open_campaign(config_path, storage, create=False, device=resolved)
    names = create_confirmations(store, config, top_k, seeds)
    say(f"queued confirmation trials in {len(names)} studies")
    prepare_training_process(None, config)
    run_with_progress(store, config, resolved, console)
    _print_status(store, config)


@command()
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
    from dm_tune.cli.options import warn_password_in_argv
    from dm_tune.dashboard import serve_dashboard

    warn_password_in_argv()  # it serves for as long as `ps` can show it
    serve_dashboard(storage, host=host, port=port, allow_remote=allow_remote)

