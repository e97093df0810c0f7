"""The storage proxy as a fault domain: a killed proxy is an outage, a busy port a refusal.

Two population workers reach a fresh PostgreSQL database (tests/pg.py) through a real
`dm-tune storage-proxy`; the test kills the proxy with SIGKILL mid-run and starts it
again on the same port 10 s later. Both workers must ride the outage out (one log line
with the cause, exit 0), every study meet its budget exactly and no trial be left
RUNNING or WAITING. A second proxy on the first one's port must refuse it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from pg import pg_url, require_grpc  # noqa: F401 (pg_url is a pytest fixture)

from tests.campaign_files import write_tiny
from tests.processes import stop_gracefully, wait_for_line
from tests.stored import trials_by_study

require_grpc()

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "DM_TUNE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1", "DM_TUNE_OUTAGE_LIMIT_S": "120", **extra}


def _start_proxy(database: str, port: int, heartbeat: int = 2) -> subprocess.Popen:
    """`dm-tune storage-proxy` on ``port``, returned once it says it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dm_tune", "storage-proxy", "--port", str(port),
         "--heartbeat", str(heartbeat)],
        cwd=REPO, env=_env(DM_TUNE_STORAGE=database), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    wait_for_line(process, "listening on grpc://")
    return process




def _running(url: str) -> int:
    return sum(t.state == TrialState.RUNNING for ts in trials_by_study(url).values() for t in ts)


def test_workers_ride_out_a_killed_proxy_and_finish_exactly(
    pg_url: str, tmp_path: Path  # noqa: F811
) -> None:
    budget = 8
    plain = write_tiny(tmp_path, name="proxyfault", epochs=12, trials=budget, baselines=())
    config = plain.with_name("proxyfault-k2.toml")
    config.write_text(plain.read_text().replace("[search]\n", "[search]\npopulation = 2\n"))
    port = _free_port()
    url = f"grpc://127.0.0.1:{port}"
    proxy = _start_proxy(pg_url, port)
    workers: list[subprocess.Popen] = []
    try:
        created = subprocess.run([sys.executable, "-m", "dm_tune", "create", str(config)],
                                 cwd=REPO, env=_env(DM_TUNE_STORAGE=url),
                                 capture_output=True, text=True, timeout=180)
        assert created.returncode == 0, created.stderr
        workers = [subprocess.Popen(
            [sys.executable, "-m", "dm_tune", "worker", str(config), "--device", "cpu",
             "--quiet"], cwd=REPO, env=_env(DM_TUNE_STORAGE=url),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        deadline = time.monotonic() + 180
        while _running(pg_url) < 2:  # both workers train (population members are trials)
            assert time.monotonic() < deadline and all(w.poll() is None for w in workers)
            time.sleep(0.2)
        proxy.kill()  # SIGKILL: no goodbye to the workers, locks and calls cut mid-flight
        proxy.wait()
        time.sleep(10)
        assert all(w.poll() is None for w in workers), "a worker died with the proxy"
        proxy = _start_proxy(pg_url, port)
        outputs = [w.communicate(timeout=400) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        stop_gracefully(proxy)
    logs = "".join(err for _, err in outputs)
    print(logs)  # shown when an assertion fails
    assert [w.returncode for w in workers] == [0, 0], logs
    assert "Traceback" not in logs
    assert "storage unreachable" in logs and "storage proxy: UNAVAILABLE" in logs, logs
    assert "storage reachable again" in logs
    for name, trials in trials_by_study(pg_url).items():
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(done) == budget, name
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        retried = [t.system_attrs["failed_trial"] for t in done if "failed_trial" in
                   t.system_attrs]
        assert len(retried) == len(set(retried)), name  # each cut trial queued once


def test_a_second_proxy_refuses_a_busy_port_and_writes_nothing(
    pg_url: str, tmp_path: Path  # noqa: F811
) -> None:
    port = _free_port()
    first = _start_proxy(pg_url, port)
    other = tmp_path / "other.db"
    try:
        second = subprocess.run(
            [sys.executable, "-m", "dm_tune", "storage-proxy", "--port", str(port)],
            cwd=REPO, env=_env(DM_TUNE_STORAGE=f"sqlite:///{other}"), capture_output=True,
            text=True, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"dm-tune: cannot listen on 127.0.0.1:{port}"), second.stderr
        assert "listening" not in second.stdout
        assert list(tmp_path.iterdir()) == []  # the other database was not even created
        from dm_tune.cluster.proxy import open_grpc_storage

        for _ in range(3):  # the port is still the first proxy's alone: PostgreSQL answers
            client = open_grpc_storage(f"grpc://127.0.0.1:{port}")
            try:
                assert client.settings()["backend"] == "postgresql"
            finally:
                client.close()
    finally:
        stop_gracefully(first)


def test_a_restarted_proxy_takes_the_params_of_a_trial_asked_before(
    pg_url: str  # noqa: F811
) -> None:
    """Optuna's cached storage in the proxy knows only trials its own process saw: the
    restarted proxy answered NOT_FOUND (a KeyError, exit 1 in the worker) when a queued
    trial claimed before the restart wrote its fixed params (seen in the fault test)."""
    from dm_tune.cluster.proxy import open_grpc_storage, start_proxy

    first = start_proxy(pg_url, port=0, heartbeat_interval=None)
    port = first.port
    client = open_grpc_storage(f"grpc://127.0.0.1:{port}")
    try:
        study = optuna.create_study(study_name="restart", storage=client)
        study.enqueue_trial({"x": 0.5})  # a warm-start point: suggesting reads no trials
        trial = study.ask()  # through the first proxy
        first.stop()
        second = start_proxy(pg_url, port=port, heartbeat_interval=None)
        try:
            assert trial.suggest_float("x", 0.0, 1.0) == 0.5  # through the second one
            stored = optuna.storages.RDBStorage(pg_url)
            try:
                assert list(stored.get_trial(trial._trial_id).params) == ["x"]
            finally:
                stored.engine.dispose()
        finally:
            second.stop()
    finally:
        client.close()
