"""Database faults are weather: workers ride out server restarts and a 20 s outage.

A throw-away PostgreSQL cluster (tests/pgcluster.py) serves a digits campaign to two
real worker processes; the test restarts the server three times mid-trial and stops it
once for 20 s. Every worker must exit 0, every study meet its budget exactly, no trial
be left RUNNING and no job run twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from pgcluster import TempCluster

from tests.campaign_files import write_tiny
from tests.stored import trials_by_study

pytestmark = pytest.mark.postgres


@pytest.fixture
def cluster():
    server = TempCluster()
    server.start()
    yield server
    server.destroy()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dm_tune", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "DM_TUNE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1",
            "DM_TUNE_OUTAGE_LIMIT_S": "120"}


def _running(url: str) -> int:
    storage = optuna.storages.RDBStorage(url)
    try:
        return sum(1 for s in storage.get_all_studies()
                   for t in optuna.load_study(study_name=s.study_name, storage=storage)
                   .get_trials(deepcopy=False) if t.state == TrialState.RUNNING and t.params)
    finally:
        storage.engine.dispose()


def _wait_until(predicate, timeout: float, workers: list[subprocess.Popen] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # the server may be down for a moment
            pass
        time.sleep(0.2)
    ended = [(w.returncode, w.stderr.read()) for w in workers if w.poll() is not None]
    raise AssertionError(f"condition not reached; workers that ended: {ended}")


def test_workers_survive_three_restarts_and_a_20_s_outage(tmp_path: Path, cluster) -> None:
    # enough work that the campaign cannot end before the last outage (a digits trial
    # takes well under a second; three restarts take several)
    budget = 30
    config = write_tiny(tmp_path, name="faults", epochs=25, trials=budget, baselines=())
    created = subprocess.run(_cli("create", str(config), "--storage", cluster.url),
                             capture_output=True, text=True, timeout=180, env=_env())
    assert created.returncode == 0, created.stderr
    workers = [
        subprocess.Popen(_cli("worker", str(config), "--storage", cluster.url, "--device", "cpu",
                              "--heartbeat", "2", "--quiet"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        for _ in range(2)
    ]
    try:
        _wait_until(lambda: _running(cluster.url) >= 2, 120, workers)  # both joined
        for _ in range(3):
            _wait_until(lambda: _running(cluster.url) > 0, 120, workers)
            cluster.restart()  # mid-trial: report, should_prune, heartbeat, attrs all fail
            time.sleep(1.0)
        _wait_until(lambda: _running(cluster.url) > 0, 120, workers)
        cluster.stop()
        time.sleep(20)
        cluster.start()
        outputs = [w.communicate(timeout=600) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    for index, (_, err) in enumerate(outputs):
        print(f"--- worker {index} stderr ---\n{err}")
    assert [w.returncode for w in workers] == [0, 0], outputs
    logs = "".join(err for _, err in outputs)
    assert "Traceback" not in logs
    assert "storage unreachable" in logs  # the outage was seen and said, with its cause
    storage = optuna.storages.RDBStorage(cluster.url)
    for summary in storage.get_all_studies():
        trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(done) == budget, summary.study_name
        assert not [t for t in trials if t.state == TrialState.RUNNING]
        numbers = [t.number for t in trials]
        assert len(numbers) == len(set(numbers))
        # no job ran twice: a re-queued trial's retry replaces it, never adds to the budget
        requeued = [t.system_attrs.get("failed_trial") for t in done
                    if t.system_attrs.get("failed_trial") is not None]
        assert len(requeued) == len(set(requeued))
    storage.engine.dispose()


def test_a_worker_gives_up_after_the_outage_limit_with_one_line(tmp_path: Path, cluster) -> None:
    config = write_tiny(tmp_path, name="gone", epochs=40, trials=4, baselines=())
    created = subprocess.run(_cli("create", str(config), "--storage", cluster.url),
                             capture_output=True, text=True, timeout=180, env=_env())
    assert created.returncode == 0, created.stderr
    worker = subprocess.Popen(
        _cli("worker", str(config), "--storage", cluster.url, "--device", "cpu", "--quiet"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**_env(), "DM_TUNE_OUTAGE_LIMIT_S": "4"},
    )
    _wait_until(lambda: _running(cluster.url) > 0, 120)
    cluster.stop()
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("dm-tune: the database was unreachable for more than 4 s"), err
    assert "Traceback" not in err




def _assert_exact(url: str, budget: int) -> None:
    for name, trials in trials_by_study(url).items():
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(done) == budget, name
        assert not [t for t in trials if t.state == TrialState.RUNNING], name


@pytest.fixture
def small_disk(tmp_path: Path):
    """An 8 MiB tmpfs (root can mount one; in CI this must work, never skip)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        from pg import unavailable

        unavailable(f"cannot mount a tmpfs for the disk-full test: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_is_one_line_and_the_campaign_resumes(tmp_path: Path, small_disk: Path):
    config = write_tiny(tmp_path, name="full", epochs=3, trials=12, baselines=())
    url = f"sqlite:///{small_disk / 'c.db'}"
    created = subprocess.run(_cli("create", str(config), "--storage", url), capture_output=True,
                             text=True, timeout=180, env=_env())
    assert created.returncode == 0, created.stderr
    filler = small_disk / "filler"
    free = os.statvfs(small_disk)
    # room to open the database and claim, not to finish (the WAL grows with every commit)
    filler.write_bytes(b"\0" * max(0, free.f_bavail * free.f_frsize - 160 * 1024))
    full = subprocess.run(_cli("worker", str(config), "--storage", url, "--device", "cpu",
                               "--heartbeat", "1", "--quiet"),
                          capture_output=True, text=True, timeout=300, env=_env())
    assert full.returncode == 2, full.stderr
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("dm-tune: the database's disk is full"), full.stderr
    assert "Traceback" not in full.stderr
    filler.unlink()  # space freed: the same command finishes the campaign exactly
    time.sleep(2.5)  # the dead worker's trial goes stale (2 x heartbeat)
    again = subprocess.run(_cli("worker", str(config), "--storage", url, "--device", "cpu",
                                "--heartbeat", "1", "--quiet"),
                           capture_output=True, text=True, timeout=300, env=_env())
    assert again.returncode == 0, again.stderr
    _assert_exact(url, 12)


def test_sigkill_during_claims_loses_and_duplicates_nothing(tmp_path: Path, cluster) -> None:
    """One-epoch trials make claims a large share of a worker's time; kill -9 lands at
    arbitrary moments, in claims too (the lock dies with the connection, an orphaned
    claim is failed and re-queued after the grace period)."""
    import random

    config = write_tiny(tmp_path, name="kills", epochs=1, trials=16, baselines=())
    created = subprocess.run(_cli("create", str(config), "--storage", cluster.url),
                             capture_output=True, text=True, timeout=180, env=_env())
    assert created.returncode == 0, created.stderr
    rng = random.Random(0)
    for _ in range(6):
        victim = subprocess.Popen(_cli("worker", str(config), "--storage", cluster.url,
                                       "--device", "cpu", "--heartbeat", "1", "--quiet"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=_env())
        _wait_until(lambda p=victim: _running(cluster.url) > 0 or p.poll() is not None, 120)
        time.sleep(rng.uniform(0.0, 1.5))
        victim.kill()
        victim.wait()
    time.sleep(2.5)
    final = subprocess.run(_cli("worker", str(config), "--storage", cluster.url, "--device",
                                "cpu", "--heartbeat", "1", "--quiet"),
                           capture_output=True, text=True, timeout=600, env=_env())
    assert final.returncode == 0, final.stderr
    _assert_exact(cluster.url, 16)
    for trials in trials_by_study(cluster.url).values():
        retried = [t.system_attrs.get("failed_trial") for t in trials
                   if t.system_attrs.get("failed_trial") is not None]
        assert len(retried) == len(set(retried))  # each killed trial re-queued once
