"""Run a campaign's workers as one Slurm job array, with plain ``sbatch``.

Every array task runs ``python -m dm_tune worker CONFIG --quiet --device ...``. The
storage URL (which holds the database password) reaches the tasks only through the
environment: ``sbatch --export=ALL`` is run with ``DM_TUNE_STORAGE`` set in *its*
environment, Slurm hands that environment to each task, and the worker CLI reads the
variable. The URL is never written into the batch script, never passed on a command
line (``ps`` shows argv to every user), and :func:`submit_worker_array` refuses to
submit if it finds it there. Slurm itself keeps the job's environment in slurmctld's
state directory (readable by the Slurm user only) and, on clusters that set
``AccountingStoreFlags=job_env``, in the accounting database.

Jobs are named ``dm-tune-<campaign>`` so :func:`running_jobs` can find a campaign's
tasks with ``squeue``; :func:`cancel` ends them with ``scancel`` (SIGTERM, then SIGKILL
after the cluster's KillWait: the worker re-queues the trial it was running).

Why not submitit: submitit submits *pickled Python callables* and collects their
results; it needs submitit importable on the nodes and a shared folder for the pickles,
and it polls job states with ``sacct``, which a cluster without accounting (such as
``scripts/slurm_cluster.sh``'s) cannot answer. A dm-tune worker is a CLI process that
talks to the database, not a function returning a value, so one generated batch script
with an ``#SBATCH --array`` line does the whole job, keeps what lands on disk under our
control (no pickled arguments carrying the URL) and needs only Slurm's client tools.

Example:
    >>> ids = submit_worker_array("studies/c.toml", 8, gpus_per_task=1, time="12:00:00",
    ...                           env={"DM_TUNE_STORAGE": url})  # doctest: +SKIP
    >>> running_jobs(job_name("c"))  # doctest: +SKIP
    [('123_0', 'RUNNING'), ('123_1', 'RUNNING'), ('123_2', 'PENDING'), ...]
"""

from __future__ import annotations

import datetime as _dt
import getpass
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from dm_tune.errors import DMTuneError

__all__ = [
    "JOB_NAME_PREFIX",
    "STORAGE_ENV",
    "SlurmError",
    "cancel",
    "job_name",
    "render_script",
    "running_jobs",
    "slurm_unavailable_reason",
    "submit_worker_array",
]

STORAGE_ENV = "DM_TUNE_STORAGE"  # same name as dm_tune.storage.STORAGE_ENV (read by the CLI)
JOB_NAME_PREFIX = "dm-tune-"
_COMMAND_TIMEOUT_S = 60
_OPTION_KEY = re.compile(r"^[a-z][a-z0-9-]*$")
_TIME = re.compile(r"^(\d+-)?\d+(:\d+){0,2}$|^(UNLIMITED|INFINITE)$", re.I)
# Options this module sets itself; `extra` may not override them.
_OWN_OPTIONS = {"job-name", "array", "output", "error", "chdir", "export", "parsable", "wrap"}
# Environment variables whose values must never appear in a script or on a command line.
_SECRET_KEY = re.compile(r"STORAGE|PASSWORD|PASSWD|SECRET|TOKEN|_KEY$|URL$", re.I)


class SlurmError(DMTuneError):
    """Slurm refused or is unreachable; the message is one line (never holds a secret)."""


def job_name(campaign: str) -> str:
    """The Slurm job name of a campaign's workers."""
    return f"{JOB_NAME_PREFIX}{campaign}"


def slurm_unavailable_reason() -> str | None:
    """Why Slurm cannot be used from here (None when ``sinfo`` answers)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm's client tools (sinfo, sbatch) are not installed"
    try:
        result = subprocess.run(
            ["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
            timeout=_COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 60 s"
    if result.returncode != 0:
        return f"sinfo failed: {_first_line(result.stderr)}"
    return None


# ------------------------------------------------------------------ script generation


def _format_time(time: str | int | float | _dt.timedelta | None) -> str | None:
    """Slurm's --time: minutes (int), a timedelta, or Slurm's own [D-]HH:MM:SS text."""
    if time is None:
        return None
    if isinstance(time, _dt.timedelta):
        seconds = int(time.total_seconds())
        if seconds <= 0:
            raise SlurmError(f"time must be positive, got {time}")
        days, rest = divmod(seconds, 86_400)
        hours, rest = divmod(rest, 3600)
        minutes, secs = divmod(rest, 60)
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    if isinstance(time, int | float) and not isinstance(time, bool):
        if time <= 0:
            raise SlurmError(f"time must be positive, got {time} minutes")
        return str(max(1, round(time)))
    text = str(time).strip()
    if not _TIME.match(text):
        raise SlurmError(f"time {text!r} is not a Slurm time ([D-]HH:MM:SS, minutes or UNLIMITED)")
    return text


def _option_line(key: str, value: str | int | None) -> str:
    """One ``#SBATCH --key=value`` line (``value`` None: a flag)."""
    if not _OPTION_KEY.match(key):
        raise SlurmError(f"sbatch option {key!r} is not a long option name (e.g. cpus-per-task)")
    if value is None:
        return f"#SBATCH --{key}"
    text = str(value)
    if any(c in text for c in "\n\r\0"):
        raise SlurmError(f"sbatch option --{key}: the value holds a line break")
    if any(c.isspace() for c in text):
        if '"' in text:
            raise SlurmError(f"sbatch option --{key}: a value with spaces cannot hold '\"'")
        text = f'"{text}"'  # sbatch splits #SBATCH lines on blanks unless quoted
    return f"#SBATCH --{key}={text}"


def _worker_command(
    config_path: Path, python: str, device: str, extra_args: Sequence[str]
) -> list[str]:
    return [python, "-m", "dm_tune", "worker", str(config_path), "--quiet",
            "--device", device, *extra_args]


def render_script(
    *,
    name: str,
    array_size: int,
    command: Sequence[str],
    workdir: Path,
    partition: str | None = None,
    gpus_per_task: int | None = None,
    time: str | int | float | _dt.timedelta | None = None,
    max_parallel: int | None = None,
    extra: Mapping[str, str | int | None] | None = None,
) -> str:
    """The batch script of a job array whose every task ``exec``s ``command``.

    The script holds no secret: it only checks that ``DM_TUNE_STORAGE`` arrived.
    """
    if array_size < 1:
        raise SlurmError(f"array_size must be at least 1, got {array_size}")
    array = f"0-{array_size - 1}" + (f"%{max_parallel}" if max_parallel else "")
    options: list[tuple[str, str | int | None]] = [
        ("job-name", name),
        ("array", array),
        ("ntasks", 1),
        ("output", str(workdir / "logs" / "%x-%A_%a.out")),
        ("chdir", str(workdir)),
    ]
    if partition:
        options.append(("partition", partition))
    if gpus_per_task:
        options.append(("gpus-per-task", gpus_per_task))
    slurm_time = _format_time(time)
    if slurm_time is not None:
        options.append(("time", slurm_time))
        # SIGTERM to the worker (the batch shell execs it) 2 min before the time limit:
        # it stops after re-queueing its trial instead of being killed mid-trial.
        options.append(("signal", "B:TERM@120"))
    for key, value in (extra or {}).items():
        key = key.removeprefix("--")
        if key in _OWN_OPTIONS:
            raise SlurmError(f"sbatch option --{key} is set by dm-tune; it cannot be in extra")
        options.append((key, value))
    written = f"{_dt.datetime.now():%Y-%m-%d %H:%M:%S}"
    lines = ["#!/bin/bash", f"# dm-tune worker array, written {written}"]
    lines += [_option_line(key, value) for key, value in options]
    lines += [
        "",
        "# The storage URL comes from the environment sbatch exported; it is never written here.",
        f'if [ -z "${{{STORAGE_ENV}:-}}" ]; then',
        f'  echo "dm-tune: {STORAGE_ENV} is not set in the job environment '
        '(submit with sbatch --export=ALL)" >&2',
        "  exit 2",
        "fi",
        # One label per task: it names the worker on its trials and seeds its sampler.
        'export DM_TUNE_WORKER_LABEL="slurm-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
        "exec " + shlex.join(command),
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ secrets


def _secret_values(env: Mapping[str, str]) -> list[str]:
    """Values that must not appear in the script or argv: URLs, passwords, tokens."""
    found: set[str] = set()
    for key, value in env.items():
        if not value or not _SECRET_KEY.search(key):
            continue
        if key == STORAGE_ENV or "://" in value:
            found.add(value)
            password = _url_password(value)
            if password:
                found.add(password)
        elif len(value) >= 4:
            found.add(value)
    return sorted(found, key=len, reverse=True)


def _url_password(url: str) -> str | None:
    match = re.match(r"^[A-Za-z][\w+.-]*://[^:/@?#]*:(?P<pw>.*)@[^@]*$", url, re.S)
    if match and match["pw"]:
        return match["pw"]
    query = re.search(r"(?i)[?&]password=([^&#]+)", url)
    return query.group(1) if query else None


def _check_no_secret(texts: Iterable[str], secrets: Sequence[str], where: str) -> None:
    for text in texts:
        for secret in secrets:
            if len(secret) >= 4 and secret in text:
                raise SlurmError(
                    f"refusing to submit: a secret from the environment (storage URL or "
                    f"password) would appear in the {where}"
                )


# ------------------------------------------------------------------ Slurm commands


def _first_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[0] if lines else "no message"


def _run(argv: Sequence[str], env: Mapping[str, str] | None = None,
         timeout: float = _COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        raise SlurmError(f"{argv[0]} not found: Slurm's client tools are not installed here")
    # its own process group: at the timeout, a wrapper script's children (which would
    # hold the pipes open and keep this waiting) are killed with it
    process = subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(env) if env is not None else None, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.communicate()
        raise SlurmError(f"{argv[0]} did not answer within {timeout:g} s") from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _campaign_name(config_path: Path) -> str:
    from dm_tune.config import load_campaign_config  # validates the file before submitting

    return load_campaign_config(config_path).name


def submit_worker_array(
    config_path: str | os.PathLike[str],
    array_size: int,
    partition: str | None = None,
    gpus_per_task: int | None = None,
    time: str | int | float | _dt.timedelta | None = None,
    extra: Mapping[str, str | int | None] | None = None,
    workdir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    campaign: str | None = None,
    device: str | None = None,
    max_parallel: int | None = None,
    python: str | None = None,
    worker_args: Sequence[str] = (),
    command: Sequence[str] | None = None,
) -> list[str]:
    """Submit one job array of ``array_size`` dm-tune workers; return the task ids.

    Args:
        config_path: the campaign file; it must be readable at the same path on the nodes.
        array_size: number of workers (array tasks ``0..array_size-1``).
        partition, gpus_per_task, time: ``--partition``, ``--gpus-per-task``, ``--time``
            (minutes, a timedelta or ``[D-]HH:MM:SS``; the worker gets SIGTERM 2 min before).
        extra: more sbatch long options, e.g. ``{"cpus-per-task": "4", "mem": "16G"}``.
        workdir: where the batch script and ``logs/`` go, and the tasks' working directory
            (default ``./slurm``); it must be on a filesystem the nodes share.
        env: variables to add to the tasks' environment, typically
            ``{"DM_TUNE_STORAGE": url}``; the URL may also come from this process's own
            environment. It is handed to sbatch through its environment only.
        campaign: job name suffix (default: the campaign name read from ``config_path``).
        device: the worker's ``--device`` (default ``cuda`` with GPUs, else ``cpu``).
        max_parallel: at most this many tasks run at once (``--array=0-N%K``).
        python: interpreter on the nodes (default: this one, ``sys.executable``).
        worker_args: more ``dm-tune worker`` options (e.g. ``["--heartbeat", "30"]``).
        command: run this argv in each task instead of the worker (tests, tools).

    Returns:
        One id per task, ``"<array job id>_<task>"``, as squeue and scancel spell them.

    Raises:
        SlurmError: no storage URL in the environment, a secret in the script or argv,
            bad options, or sbatch refused the job.
    """
    config = Path(config_path).resolve()
    base = Path(workdir) if workdir is not None else Path.cwd() / "slurm"
    base = base.resolve()
    job_env = {**os.environ, **(env or {})}
    if not job_env.get(STORAGE_ENV):
        raise SlurmError(
            f"{STORAGE_ENV} is neither in env nor in this process's environment: the workers "
            "would fall back to a local SQLite file on each node"
        )
    name = job_name(campaign if campaign is not None else _campaign_name(config))
    if command is None:
        chosen = device or ("cuda" if gpus_per_task else "cpu")
        command = _worker_command(config, python or sys.executable, chosen, worker_args)
    script_text = render_script(
        name=name, array_size=array_size, command=command, workdir=base, partition=partition,
        gpus_per_task=gpus_per_task, time=time, max_parallel=max_parallel, extra=extra,
    )
    stamp = f"{_dt.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
    script_path = base / f"{name}-{stamp}.sbatch"
    argv = ["sbatch", "--parsable", "--export=ALL", str(script_path)]
    secrets = _secret_values(job_env)
    _check_no_secret([script_text], secrets, "batch script")
    _check_no_secret(argv, secrets, "sbatch command line")

    (base / "logs").mkdir(parents=True, exist_ok=True)
    tmp = script_path.with_suffix(".tmp")
    tmp.write_text(script_text, encoding="utf-8")
    tmp.chmod(0o644)
    tmp.replace(script_path)

    result = _run(argv, env=job_env)
    if result.returncode != 0:
        raise SlurmError(f"sbatch refused the job array: {_first_line(result.stderr)}")
    array_id = result.stdout.strip().split(";")[0]
    if not array_id.isdigit():
        raise SlurmError(f"could not read a job id from sbatch's answer {result.stdout.strip()!r}")
    return [f"{array_id}_{task}" for task in range(array_size)]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def running_jobs(
    name_prefix_or_ids: str | Iterable[str], *, all_users: bool = False,
    timeout: float = _COMMAND_TIMEOUT_S,
) -> list[tuple[str, str]]:
    """The queued and running tasks ``(job id, state)`` of a campaign or of given jobs.

    Args:
        name_prefix_or_ids: a job-name prefix (``job_name(campaign)``) or job ids; an
            array's id (``"123"``) stands for all its tasks.
        all_users: include other users' jobs (default: this user's only).
        timeout: seconds squeue may take (a cluster without a controller answers only
            after its MessageTimeout, 10 s by default).

    Returns:
        One ``("123_4", "RUNNING")`` pair per array task (pending ones included), in
        squeue's order; finished jobs are not listed.
    """
    argv = ["squeue", "-h", "-r", "-o", "%i|%F|%j|%T"]
    if not all_users:
        argv += ["-u", _user()]
    result = _run(argv, timeout=timeout)
    if result.returncode != 0:
        raise SlurmError(f"squeue failed: {_first_line(result.stderr)}")
    if isinstance(name_prefix_or_ids, str):
        prefix, wanted = name_prefix_or_ids, None
    else:
        prefix, wanted = None, {str(i) for i in name_prefix_or_ids}
    jobs = []
    for line in result.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4:
            continue
        job_id, array_id, name, state = parts
        if prefix is not None and not name.startswith(prefix):
            continue
        if wanted is not None and job_id not in wanted and array_id not in wanted:
            continue
        jobs.append((job_id, state))
    return jobs


def cancel(job_ids: Iterable[str], *, signal: str | None = None) -> None:
    """``scancel`` the jobs (array ids or task ids); jobs already gone are no error."""
    ids = [str(i) for i in job_ids]
    if not ids:
        return
    for job_id in ids:
        if not re.fullmatch(r"\d+(_\d+)?", job_id):
            raise SlurmError(f"{job_id!r} is not a Slurm job id")
    argv = ["scancel", *(["--signal", signal] if signal else []), *ids]
    result = _run(argv)
    if result.returncode != 0:
        message = _first_line(result.stderr)
        # Finished (and already purged) jobs: nothing left to cancel.
        if "Invalid job id" not in message and "already completing" not in message:
            raise SlurmError(f"scancel failed: {message}")
