"""Cluster commands: ``storage-proxy``; and ``launch --slurm``'s and ``status``'s Slurm parts.

``launch --slurm`` (options on :func:`dm_tune.cli.campaign_commands.launch`) calls
:func:`launch_slurm`; ``status`` calls :func:`print_slurm_jobs`.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from dm_tune.cli.app import command, say, warn
from dm_tune.cli.options import DEFAULT_STORAGE, StorageOpt
from dm_tune.errors import DMTuneError

__all__ = ["launch_slurm", "parse_extra", "print_slurm_jobs", "record_slurm_job", "slurm_tasks",
           "storage_proxy"]


def parse_extra(pairs: list[str] | None) -> dict[str, str | None]:
    """``--slurm-extra KEY=VALUE`` (or a bare ``KEY`` flag) -> sbatch long options."""
    extra: dict[str, str | None] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip().removeprefix("--")
        if not key:
            raise DMTuneError(f"--slurm-extra {pair!r}: expected KEY=VALUE, e.g. mem=16G")
        extra[key] = value if sep else None
    return extra


def _every_budget_met(progress: list) -> bool:
    return bool(progress) and all(p.remaining == 0 and p.waiting == 0 for p in progress)


def launch_slurm(
    config_path: Path,
    storage_url: str,
    *,
    array: int,
    partition: str | None = None,
    gpus_per_task: int | None = None,
    time: str | None = None,
    extra: list[str] | None = None,
    worker_heartbeat: int = 60,
    workdir: Path | None = None,
    allow_foreign_tables: bool = False,
) -> list[str]:
    """Create what is missing, then submit one job array of ``array`` workers.

    Nothing is submitted when every study's budget is met (or taken by running trials)
    and nothing waits. Heartbeat-stale trials (workers that died, e.g. a job killed by
    ``scancel``) are failed and re-queued first, so that they count as work to do.
    The storage URL reaches the tasks through sbatch's environment only. Returns the
    task ids (empty: nothing submitted).
    """
    from dm_tune.campaign.claims import StudyCache, fail_stale_everywhere
    from dm_tune.campaign.create import create_campaign
    from dm_tune.campaign.progress import campaign_progress
    from dm_tune.cli.options import open_campaign
    from dm_tune.cluster import slurm

    options = parse_extra(extra)  # refuse bad options before touching the database
    # Slurm's tools and controller before anything is created or written: without them
    # the studies would exist and no worker ever come
    reason = slurm.slurm_unavailable_reason()
    if reason is not None:
        raise slurm.SlurmError(f"launch --slurm: {reason}; nothing was created or submitted")
    config, store = open_campaign(config_path, storage_url, heartbeat=worker_heartbeat,
                                  allow_foreign_tables=allow_foreign_tables)
    create_campaign(config, store)
    fail_stale_everywhere(store, config, StudyCache(store, config, 0))
    progress = campaign_progress(store, config)
    if _every_budget_met(progress):
        running = sum(p.running for p in progress)
        say(f"campaign {config.name}: every study's budget is met"
            + (f" or taken by {running} running trial(s)" if running else "")
            + "; nothing submitted")
        return []
    ids = slurm.submit_worker_array(
        config_path, array, partition=partition, gpus_per_task=gpus_per_task, time=time,
        extra=options, workdir=workdir, env={slurm.STORAGE_ENV: storage_url},
        campaign=config.name, worker_args=["--heartbeat", str(worker_heartbeat)],
    )
    array_id = ids[0].split("_")[0]
    record_slurm_job(store, config, array_id)
    say(f"submitted Slurm job {array_id} ({len(ids)} worker task(s), "
        f"{slurm.job_name(config.name)}) for campaign {config.name}")
    return ids


#: seconds `status` waits for squeue: a cluster whose controller is down answers only
#: after its MessageTimeout (10 s by default), and status is a glance, not a wait: a
#: live controller answers in milliseconds, so 1 s keeps status under 2 s either way
STATUS_SLURM_TIMEOUT_S = 1.0


def slurm_tasks(job_ids: Sequence[str]) -> tuple[list[tuple[str, str]] | None, str | None]:
    """The queued and running tasks of the recorded job arrays, and why they are unknown.

    No recorded job: Slurm is not asked at all (``([], None)``); no squeue here (a
    machine off the cluster): ``(None, None)``, nothing to warn about; squeue failing or
    slower than :data:`STATUS_SLURM_TIMEOUT_S`: ``(None, reason)``.
    """
    if not job_ids:
        return [], None
    from dm_tune.cluster import slurm

    if shutil.which("squeue") is None:
        return None, None
    try:
        return slurm.running_jobs(list(job_ids), timeout=STATUS_SLURM_TIMEOUT_S), None
    except slurm.SlurmError as error:
        return None, str(error)


def print_slurm_jobs(campaign: str, job_ids: Sequence[str] = ()) -> list[tuple[str, str]] | None:
    """One line listing the queued and running tasks of the campaign's recorded Slurm job
    arrays (``launch --slurm`` records them); nothing, and no call to Slurm, for a
    campaign without one or on a machine without squeue. A Slurm that does not answer is
    one warning line, never a failure of ``status``. Returns the tasks (None: unknown)."""
    from dm_tune.cluster import slurm

    tasks, reason = slurm_tasks(job_ids)
    if reason is not None:
        warn(f"dm-tune: Slurm jobs {', '.join(job_ids)} unknown: {reason}")
    elif tasks:
        shown = ", ".join(f"{job_id} {state.lower()}" for job_id, state in tasks)
        say(f"Slurm tasks of {slurm.job_name(campaign)}: {shown}")
    return tasks


def record_slurm_job(store, config, array_id: str) -> None:
    """Add a submitted array's id to the campaign's DM studies (StudyKey.SLURM_JOBS):
    `status` asks Slurm about the recorded arrays only. ``launch --slurm`` calls it;
    call it after submitting with :func:`dm_tune.cluster.slurm.submit_worker_array`."""
    from dm_tune.campaign.progress import campaign_progress
    from dm_tune.campaign.records import ROLE_DM, StudyKey

    for item in campaign_progress(store, config):
        if item.role != ROLE_DM:
            continue
        study_id = store.get_study_id_from_name(item.study_name)
        jobs = list(store.get_study_user_attrs(study_id).get(StudyKey.SLURM_JOBS) or [])
        if array_id not in jobs:
            store.set_study_user_attr(study_id, StudyKey.SLURM_JOBS, [*jobs, array_id])


@command("storage-proxy")
def storage_proxy(
    storage: StorageOpt = DEFAULT_STORAGE,
    host: Annotated[str, typer.Option(help="Interface to bind (loopback by default).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 50051,
    pool_size: Annotated[int, typer.Option(
        "--pool-size", min=1, help="Database connections for storage calls, at most (the "
        "claim lock takes one more).")] = 8,
    threads: Annotated[int, typer.Option(
        min=4, help="gRPC server threads: more than workers + pool size.")] = 128,
    heartbeat: Annotated[int, typer.Option(
        min=1, help="Trial heartbeat interval of the workers behind the proxy (s).")] = 60,
    grace: Annotated[int | None, typer.Option(
        min=1, help="Seconds without heartbeat before a trial is failed (default 2x).")] = None,
    allow_remote: Annotated[bool, typer.Option(
        "--allow-remote", help="Allow a non-loopback host.")] = False,
) -> None:
    """Serve the trial database to many workers over gRPC with a bounded connection pool.

    Workers use --storage grpc://HOST:PORT. The proxy has no authentication: anyone who
    reaches the port can change trials (never learn the database password).
    """
    from dm_tune.cluster.proxy import serve_proxy
    from dm_tune.dashboard import exposure

    bare, warning = exposure(host, allow_remote, "the storage proxy",
                             "can read and change trials (never the database password)")
    if warning:
        warn(warning)
    from dm_tune.cli.options import warn_password_in_argv

    warn_password_in_argv()  # it serves for as long as `ps` can show it
    serve_proxy(storage, bare, port, pool_size, threads=threads, heartbeat_interval=heartbeat,
                grace_period=grace)
