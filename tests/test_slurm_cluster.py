"""dm_tune.cluster.slurm against a real Slurm cluster (scripts/slurm_cluster.sh start).

Most cluster tests submit tiny Python one-liners: they check what the module promises (a
job array, the storage URL reaching every task through the environment only, squeue
listing, scancel mid-run). The campaign tests submit real `dm-tune worker` arrays on a
tiny digits campaign in a fresh PostgreSQL database and check exact budgets, also after
an `scancel` mid-run and a resubmission with `dm-tune launch --slurm`. Without `sinfo`
(or PostgreSQL) they are skipped locally and FAIL under CI=true (a CI machine must run
`scripts/slurm_cluster.sh start`). The script-rendering tests need no cluster.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from campaign_files import write_tiny
from pg import pg_url, unavailable  # noqa: F401 (pg_url is a pytest fixture)

from dm_tune.cluster import slurm
from dm_tune.cluster.slurm import SlurmError

REPO = Path(__file__).resolve().parents[1]
SECRET = "S3cr3t-pw-" + uuid.uuid4().hex[:8]
URL = f"postgresql+psycopg://dmtune:{SECRET}@db.invalid:5432/dmtune"


@pytest.fixture
def cluster() -> None:
    reason = slurm.slurm_unavailable_reason()
    if reason is not None:
        unavailable(f"{reason}; start the one-node cluster with scripts/slurm_cluster.sh start")


def _campaign() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _job_state(job_id: str) -> str:
    out = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True
    ).stdout
    return next(w.split("=", 1)[1] for w in out.split() if w.startswith("JobState="))


# ------------------------------------------------------------------ no cluster needed


def test_script_holds_worker_command_and_no_secret(tmp_path: Path) -> None:
    text = slurm.render_script(
        name="dm-tune-demo", array_size=4, workdir=tmp_path, partition="gpu",
        gpus_per_task=1, time=dt.timedelta(hours=12), max_parallel=2,
        extra={"cpus-per-task": "4", "comment": "two words"},
        command=["/venv/bin/python", "-m", "dm_tune", "worker", "/s/c.toml", "--quiet"],
    )
    lines = text.splitlines()
    for expected in [
        "#SBATCH --job-name=dm-tune-demo", "#SBATCH --array=0-3%2", "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-task=1", "#SBATCH --time=0-12:00:00", "#SBATCH --cpus-per-task=4",
        '#SBATCH --comment="two words"', "#SBATCH --signal=B:TERM@120",
        "exec /venv/bin/python -m dm_tune worker /s/c.toml --quiet",
    ]:
        assert expected in lines
    assert "DM_TUNE_STORAGE" in text and "://" not in text


@pytest.mark.parametrize("extra", [{"job-name": "x"}, {"export": "NONE"}, {"bad key": "1"},
                                   {"mem": "1G\nrm -rf /"}])
def test_extra_options_are_checked(tmp_path: Path, extra: dict[str, str]) -> None:
    with pytest.raises(SlurmError):
        slurm.render_script(name="n", array_size=1, workdir=tmp_path, command=["true"],
                            extra=extra)


def test_time_formats() -> None:
    assert slurm._format_time(90) == "90"
    assert slurm._format_time(dt.timedelta(days=1, minutes=5)) == "1-00:05:00"
    assert slurm._format_time("2-03:00:00") == "2-03:00:00"
    with pytest.raises(SlurmError):
        slurm._format_time("tomorrow")


def test_refuses_without_storage_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DM_TUNE_STORAGE", raising=False)
    with pytest.raises(SlurmError, match="DM_TUNE_STORAGE"):
        slurm.submit_worker_array(tmp_path / "c.toml", 2, workdir=tmp_path, campaign="c",
                                  command=["true"])


def test_refuses_secret_in_script(tmp_path: Path) -> None:
    """A password smuggled into an option or the command is caught before sbatch runs."""
    with pytest.raises(SlurmError, match="batch script"):
        slurm.submit_worker_array(
            tmp_path / "c.toml", 1, workdir=tmp_path, campaign="c",
            env={"DM_TUNE_STORAGE": URL}, extra={"comment": SECRET}, command=["true"],
        )
    with pytest.raises(SlurmError, match="batch script"):
        slurm.submit_worker_array(
            tmp_path / "c.toml", 1, workdir=tmp_path, campaign="c",
            env={"DM_TUNE_STORAGE": URL}, command=["dm-tune", "worker", "--storage", URL],
        )
    assert not list(tmp_path.glob("*.sbatch"))  # nothing written


def test_default_command_is_the_worker(tmp_path: Path) -> None:
    command = slurm._worker_command(tmp_path / "c.toml", "/py", "cuda", [])
    assert command == ["/py", "-m", "dm_tune", "worker", str(tmp_path / "c.toml"), "--quiet",
                       "--device", "cuda"]


# ------------------------------------------------------------------ real cluster

# Each task records a digest of DM_TUNE_STORAGE (proving the exact value arrived without
# writing it anywhere), its worker label and its pid, then sleeps argv[2] seconds.
TASK = (
    "import hashlib, os, sys, time\n"
    "url = os.environ.get('DM_TUNE_STORAGE', '')\n"
    "task = os.environ['SLURM_ARRAY_TASK_ID']\n"
    "line = ' '.join([hashlib.sha256(url.encode()).hexdigest(),"
    " os.environ.get('DM_TUNE_WORKER_LABEL', '-'), str(os.getpid())])\n"
    "open(os.path.join(sys.argv[1], 'task-' + task), 'w').write(line)\n"
    "time.sleep(float(sys.argv[2]))\n"
)


def _submit(tmp_path: Path, campaign: str, sleep_s: float) -> list[str]:
    return slurm.submit_worker_array(
        tmp_path / "unused.toml", 2, workdir=tmp_path, campaign=campaign,
        env={"DM_TUNE_STORAGE": URL}, time=5,
        command=[sys.executable, "-c", TASK, str(tmp_path), str(sleep_s)],
    )


def test_array_gets_storage_url_through_environment_only(cluster: None, tmp_path: Path) -> None:
    campaign = _campaign()
    ids = _submit(tmp_path, campaign, 0)
    array_id = ids[0].split("_")[0]
    assert ids == [f"{array_id}_0", f"{array_id}_1"]
    try:
        done = _wait(lambda: all((tmp_path / f"task-{i}").exists() for i in (0, 1))
                     and not slurm.running_jobs(ids), 120, "both array tasks to finish")
        assert done
    finally:
        slurm.cancel(ids)
    digest = hashlib.sha256(URL.encode()).hexdigest()
    for task in (0, 1):
        got_digest, label, _pid = (tmp_path / f"task-{task}").read_text().split()
        assert got_digest == digest, "DM_TUNE_STORAGE did not reach the task intact"
        assert label == f"slurm-{array_id}_{task}"
        assert _job_state(f"{array_id}_{task}") == "COMPLETED"
    # Neither the script on disk, nor the script Slurm stored, nor the logs hold a secret.
    scripts = list(tmp_path.glob(f"dm-tune-{campaign}-*.sbatch"))
    assert len(scripts) == 1
    stored = subprocess.run(["scontrol", "write", "batch_script", array_id, "-"],
                            capture_output=True, text=True, check=True).stdout
    assert "#SBATCH --array=0-1" in stored
    logs = list((tmp_path / "logs").glob("*.out"))
    assert len(logs) == 2 and all(f"dm-tune-{campaign}-{array_id}_" in p.name for p in logs)
    for text in [scripts[0].read_text(), stored, *(p.read_text() for p in logs)]:
        assert SECRET not in text and "db.invalid" not in text


def test_running_jobs_and_cancel_mid_run(cluster: None, tmp_path: Path) -> None:
    campaign = _campaign()
    ids = _submit(tmp_path, campaign, 300)
    array_id = ids[0].split("_")[0]
    try:
        _wait(lambda: all((tmp_path / f"task-{i}").exists() for i in (0, 1)), 120,
              "both tasks to start")
        jobs = slurm.running_jobs(slurm.job_name(campaign))
        assert sorted(jobs) == [(ids[0], "RUNNING"), (ids[1], "RUNNING")]
        assert sorted(slurm.running_jobs([array_id])) == sorted(jobs)  # the array id: all
        assert slurm.running_jobs([ids[1]]) == [(ids[1], "RUNNING")]
        assert slurm.running_jobs(slurm.job_name(campaign) + "-other") == []
        pids = [int((tmp_path / f"task-{i}").read_text().split()[2]) for i in (0, 1)]
        slurm.cancel(ids)
        _wait(lambda: not slurm.running_jobs(slurm.job_name(campaign)), 60,
              "the cancelled tasks to leave the queue")
    finally:
        slurm.cancel(ids)
    assert [_job_state(i) for i in ids] == ["CANCELLED", "CANCELLED"]

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

    _wait(lambda: all(gone(p) for p in pids), 30, "the tasks' processes to end")
    slurm.cancel(ids)  # cancelling finished jobs again is no error


def test_cluster_script_start_is_idempotent(cluster: None) -> None:
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    if "DM_TUNE_SLURM_MARKER" not in (conf.read_text() if conf.exists() else ""):
        pytest.skip(f"{conf} was not written by scripts/slurm_cluster.sh (a real cluster)")
    script = REPO / "scripts" / "slurm_cluster.sh"
    for command, expected in [("start", "already running"), ("status", "cluster: up")]:
        result = subprocess.run(["bash", str(script), command], capture_output=True, text=True,
                                timeout=60, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout + result.stderr


# ------------------------------------------------------------------ real campaigns


def _cli(*args: str, storage: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``dm-tune ARGS`` with the storage URL in the environment only."""
    env = {**os.environ, "DM_TUNE_STORAGE": storage}
    return subprocess.run([sys.executable, "-m", "dm_tune", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _record(config_path: Path, storage: str, ids: list[str]) -> None:
    """Record the array in the campaign's studies, as `launch --slurm` does."""
    from dm_tune.cli.cluster_commands import record_slurm_job
    from dm_tune.config import load_campaign_config
    from dm_tune.storage import open_storage

    store = open_storage(storage, heartbeat_interval=None, create=False)
    try:
        record_slurm_job(store, load_campaign_config(config_path), ids[0].split("_")[0])
    finally:
        store.engine.dispose()


def _progress(config_path: Path, storage: str) -> list:
    from dm_tune.campaign.progress import campaign_progress
    from dm_tune.config import load_campaign_config
    from dm_tune.storage import open_storage

    store = open_storage(storage, heartbeat_interval=None, create=False)
    try:
        return campaign_progress(store, load_campaign_config(config_path))
    finally:
        store.engine.dispose()


def _assert_exact_budgets(config_path: Path, storage: str) -> None:
    progress = _progress(config_path, storage)
    assert len(progress) == 4  # 2 settings x (DM, baselines)
    for p in progress:
        assert p.done == p.budget, (p.study_name, p.counts, p.budget)  # COMPLETE + PRUNED
        assert p.running == 0 and p.waiting == 0, (p.study_name, p.counts)


def _array_id(stdout: str) -> str:
    words = stdout.split()
    return words[words.index("job") + 1]


@pytest.mark.slow
@pytest.mark.postgres
def test_worker_array_meets_budgets_exactly(
    cluster: None, pg_url: str, tmp_path: Path  # noqa: F811
) -> None:
    """A 2-task array of `dm-tune worker` finishes a campaign with exact budgets."""
    name = f"sl{uuid.uuid4().hex[:8]}"
    config = write_tiny(tmp_path, name=name, epochs=3, trials=6)
    created = _cli("create", str(config), storage=pg_url)
    assert created.returncode == 0, created.stderr
    ids = slurm.submit_worker_array(config, 2, workdir=tmp_path / "slurm", time=10,
                                    env={"DM_TUNE_STORAGE": pg_url},
                                    worker_args=["--heartbeat", "1"])
    _record(config, pg_url, ids)  # as `launch --slurm` does: status asks about these only
    try:
        status = _cli("status", str(config), storage=pg_url)
        assert status.returncode == 0, status.stderr
        if slurm.running_jobs(ids):  # still queued or running: status lists them
            assert f"Slurm tasks of dm-tune-{name}:" in status.stdout
        _wait(lambda: not slurm.running_jobs(ids), 300, "the worker array to finish")
    finally:
        slurm.cancel(ids)
    assert [_job_state(i) for i in ids] == ["COMPLETED", "COMPLETED"]
    _assert_exact_budgets(config, pg_url)
    logs = sorted((tmp_path / "slurm" / "logs").glob("*.out"))
    assert len(logs) == 2
    for log in logs:
        text = log.read_text()
        assert "done after" in text, text[-2000:]
        assert pg_url not in text
    assert "Slurm tasks" not in _cli("status", str(config), storage=pg_url).stdout


@pytest.mark.slow
@pytest.mark.postgres
def test_cancelled_array_resubmitted_with_launch_finishes_exactly(
    cluster: None, pg_url: str, tmp_path: Path  # noqa: F811
) -> None:
    """scancel mid-run, then `dm-tune launch --slurm` again: exact budgets, none RUNNING."""
    name = f"sl{uuid.uuid4().hex[:8]}"
    config = write_tiny(tmp_path, name=name, epochs=30, trials=10)
    workdir = tmp_path / "slurm"
    launch = ["launch", str(config), "--slurm", "--slurm-array", "2", "--slurm-time", "10",
              "--worker-heartbeat", "1", "--slurm-workdir", str(workdir)]
    first = _cli(*launch, storage=pg_url)
    assert first.returncode == 0, first.stderr
    array_id = _array_id(first.stdout)
    ids = [f"{array_id}_0", f"{array_id}_1"]
    try:
        def mid_run() -> bool:
            progress = _progress(config, pg_url)
            return sum(p.done for p in progress) >= 2 and any(p.running for p in progress)

        _wait(mid_run, 240, "both workers to be mid-campaign")
        slurm.cancel(ids)
        _wait(lambda: not slurm.running_jobs(ids), 60, "the cancelled tasks to leave the queue")
    finally:
        slurm.cancel(ids)
    assert set(_job_state(i) for i in ids) == {"CANCELLED"}
    progress = _progress(config, pg_url)
    assert any(p.done < p.budget for p in progress), "finished before the cancel: test moot"
    assert "Slurm tasks" not in _cli("status", str(config), storage=pg_url).stdout

    second = _cli(*launch, storage=pg_url)
    assert second.returncode == 0, second.stderr
    assert "submitted Slurm job" in second.stdout
    array_id = _array_id(second.stdout)
    ids = [f"{array_id}_0", f"{array_id}_1"]
    try:
        _wait(lambda: not slurm.running_jobs(ids), 300, "the resubmitted array to finish")
    finally:
        slurm.cancel(ids)
    _assert_exact_budgets(config, pg_url)
    third = _cli(*launch, storage=pg_url)
    assert third.returncode == 0, third.stderr
    assert "nothing submitted" in third.stdout and "submitted Slurm job" not in third.stdout
    for text in [*(p.read_text() for p in workdir.glob("*.sbatch")),
                 *(p.read_text() for p in (workdir / "logs").glob("*.out"))]:
        assert pg_url not in text
