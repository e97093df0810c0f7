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


def _wait_until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # the server may be down for a moment
            pass
        time.sleep(0.2)
    raise AssertionError("condition not reached")


def test_workers_survive_three_restarts_and_a_20_s_outage(tmp_path: Path, cluster) -> None:
    config = write_tiny(tmp_path, name="faults", epochs=25, trials=6, baselines=())
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
        for _ in range(3):
            _wait_until(lambda: _running(cluster.url) > 0, 120)
            cluster.restart()  # mid-trial: report, should_prune, heartbeat, attrs all fail
            time.sleep(1.0)
        _wait_until(lambda: _running(cluster.url) > 0, 120)
        cluster.stop()
        time.sleep(20)
        cluster.start()
        outputs = [w.communicate(timeout=600) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert [w.returncode for w in workers] == [0, 0], outputs
    logs = "".join(err for _, err in outputs)
    assert "Traceback" not in logs
    assert "storage unreachable" in logs  # the outage was seen and said, with its cause
    storage = optuna.storages.RDBStorage(cluster.url)
    for summary in storage.get_all_studies():
        trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(done) == 6, summary.study_name
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
