"""dm_tune.cluster.proxy: Optuna through grpc://, bounded connections, the claim lock.

The proxy runs as `dm-tune storage-proxy` (the database URL in its environment) on a
loopback port, in front of a fresh PostgreSQL database (tests/pg.py: skipped locally,
failed under CI=true when the server is unreachable).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from pg import ADMIN_URL, pg_url, require_grpc  # noqa: F401 (pg_url is a pytest fixture)

from dm_tune.cluster.proxy import ProxyStorage, open_grpc_storage
from dm_tune.errors import StorageError
from tests.processes import stop_gracefully, wait_for_line

require_grpc()

pytestmark = [pytest.mark.postgres,
              pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")]

REPO = Path(__file__).resolve().parents[1]
POOL_SIZE = 8
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connections(database: str) -> int:
    """Server connections open to ``database`` (counted from the admin database)."""
    engine = sqlalchemy.create_engine(ADMIN_URL, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(
                sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"),
                {"d": database},
            ).scalar_one()
    finally:
        engine.dispose()


def _advisory_key(name: str) -> int:
    # dm_tune.campaign.locks._key: the key direct workers lock
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _try_lock_directly(url: str, name: str) -> bool:
    """Can a worker that opened the database itself take the claim lock right now?"""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            key = _advisory_key(name)
            got = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"),
                               {"k": key}).scalar_one()
            if got:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            return bool(got)
    finally:
        engine.dispose()


@pytest.fixture
def proxy(pg_url: str) -> Iterator[str]:  # noqa: F811
    """A proxy subprocess (pool of 8, 1 s heartbeat, 2 s grace); yields its grpc:// URL."""
    port = _free_port()
    env = {**os.environ, "DM_TUNE_STORAGE": pg_url, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "dm_tune", "storage-proxy", "--port", str(port),
         "--pool-size", str(POOL_SIZE), "--heartbeat", "1", "--grace", "2"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_line(process, "listening on grpc://127.0.0.1:")  # once it serves
        assert pg_url not in " ".join(process.args)  # the URL came through the environment
        yield f"grpc://127.0.0.1:{port}"
    finally:
        stop_gracefully(process)


def test_study_round_trip_through_grpc(proxy: str, pg_url: str) -> None:  # noqa: F811
    storage = open_grpc_storage(proxy)
    study = optuna.create_study(storage=storage, study_name="round-trip", direction="maximize")
    for _ in range(5):
        trial = study.ask()
        x = trial.suggest_float("x", -1.0, 1.0)
        study.tell(trial, -(x**2))
    study.set_user_attr("budget", 12)
    assert len(study.trials) == 5 and study.best_value <= 0
    assert storage.state_counts() == {"round-trip": {"COMPLETE": 5}}
    assert storage.budgets("budget") == {"round-trip": 12}
    # the same trials, read without the proxy
    direct = optuna.load_study(study_name="round-trip", storage=pg_url)
    assert [t.params for t in direct.trials] == [t.params for t in study.trials]
    storage.close()


def test_bad_and_unreachable_proxy_urls() -> None:
    for url in ["grpc://", "grpc://host", "grpc://host:99999", "http://host:1"]:
        with pytest.raises(StorageError, match="invalid proxy URL"):
            open_grpc_storage(url, timeout=1)
    started = time.monotonic()
    with pytest.raises(StorageError, match="cannot reach"):
        open_grpc_storage(f"grpc://127.0.0.1:{_free_port()}", timeout=1)
    assert time.monotonic() - started < 10


def test_64_workers_cost_at_most_pool_size_connections(
    proxy: str, pg_url: str  # noqa: F811
) -> None:
    """64 clients claim trials under the lock at once; the proxy uses <= 8 + 1 (the lock)."""
    database = sqlalchemy.engine.make_url(pg_url).database
    optuna.create_study(storage=open_grpc_storage(proxy), study_name="budget")
    workers, claims_each = 64, 2
    inside, most_inside, errors = [0], [0], []
    guard = threading.Lock()
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _connections(database))
            time.sleep(0.02)

    def worker() -> None:
        try:
            storage = open_grpc_storage(proxy)
            study = optuna.load_study(study_name="budget", storage=storage)
            for _ in range(claims_each):
                with storage.campaign_lock("budget-claims"):
                    with guard:
                        inside[0] += 1
                        most_inside[0] = max(most_inside[0], inside[0])
                    counts = storage.state_counts().get("budget", {})
                    trial = study.ask()
                    with guard:
                        inside[0] -= 1
                trial.suggest_int("n", 0, 100)
                study.tell(trial, float(sum(counts.values())))
            storage.close()
        except Exception as exc:  # reported below
            errors.append(exc)

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    stop.set()
    sampler.join()
    assert not errors, errors[:3]
    trials = optuna.load_study(study_name="budget", storage=pg_url).trials
    assert len(trials) == workers * claims_each
    assert most_inside[0] == 1, "two clients held the claim lock at once"
    assert 1 <= peak[0] <= POOL_SIZE + 1, f"{peak[0]} server connections for {workers} workers"


def test_lock_excludes_direct_workers_and_dies_with_its_client(
    proxy: str, pg_url: str  # noqa: F811
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from dm_tune.cluster.proxy import open_grpc_storage\n"
         "storage = open_grpc_storage(sys.argv[1])\n"
         "with storage.campaign_lock('shared-claims'):\n"
         "    print('held', flush=True)\n"
         "    time.sleep(600)\n", proxy],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        # the proxy holds the same PostgreSQL advisory lock direct workers take
        assert not _try_lock_directly(pg_url, "shared-claims")
        assert _try_lock_directly(pg_url, "another-campaign")
        holder.kill()  # no clean release: the proxy must notice the dead client
        holder.wait()
        deadline = time.monotonic() + 30
        while not _try_lock_directly(pg_url, "shared-claims"):
            assert time.monotonic() < deadline, "lock still held 30 s after its client died"
            time.sleep(0.2)
        storage = open_grpc_storage(proxy)
        with storage.campaign_lock("shared-claims"):
            assert not _try_lock_directly(pg_url, "shared-claims")
        storage.close()
    finally:
        holder.kill()
        holder.wait()


def test_heartbeat_and_stale_trials_through_the_proxy(proxy: str) -> None:
    storage = open_grpc_storage(proxy)
    assert isinstance(storage, ProxyStorage)
    assert storage.get_heartbeat_interval() == 1
    study = optuna.create_study(storage=storage, study_name="stale")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        storage.record_heartbeat(trial._trial_id)
        time.sleep(3.5)  # grace period 2 s
        optuna.storages.fail_stale_trials(study)
    states = [t.state for t in study.get_trials()]
    # failed, and re-queued with the same params by the retry callback
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]
    assert study.get_trials()[1].params == trial.params
    storage.close()


def test_workers_through_the_proxy_finish_a_campaign_exactly(
    proxy: str, pg_url: str, tmp_path: Path  # noqa: F811
) -> None:
    """`dm-tune create/worker/status --storage grpc://...`, plus one direct worker on the
    same database: exact budgets (both kinds of workers take the one advisory lock)."""
    from campaign_files import write_tiny

    from dm_tune.campaign.progress import campaign_progress
    from dm_tune.config import load_campaign_config
    from dm_tune.storage import open_storage

    config = write_tiny(tmp_path, name="proxied", epochs=3, trials=8)

    def cli(*args: str, storage: str) -> subprocess.Popen:
        env = {**os.environ, "DM_TUNE_STORAGE": storage}
        return subprocess.Popen([sys.executable, "-m", "dm_tune", *args], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    created = cli("create", str(config), storage=proxy)
    assert created.wait(timeout=120) == 0, created.stdout.read()
    worker = ["worker", str(config), "--device", "cpu", "--quiet"]
    # every worker of a campaign must beat as often as the others' grace period expects:
    # the proxied ones beat at the proxy's 1 s, so the direct one gets --heartbeat 1 too
    workers = [cli(*worker, "--storage", proxy, storage=proxy),  # a grpc:// URL: no secret
               cli(*worker, "--storage", proxy, storage=proxy),
               cli(*worker, "--heartbeat", "1", storage=pg_url)]
    for process in workers:
        assert process.wait(timeout=300) == 0, process.stdout.read()
        assert "done after" in process.stdout.read()
    status = cli("status", str(config), storage=proxy)
    assert status.wait(timeout=120) == 0
    assert "symmetric-0.40" in status.stdout.read()
    store = open_storage(pg_url, heartbeat_interval=None, create=False)
    try:
        progress = campaign_progress(store, load_campaign_config(config))
    finally:
        store.engine.dispose()
    assert len(progress) == 4
    for p in progress:
        assert p.done == p.budget and p.running == 0 and p.waiting == 0, (p.study_name, p.counts)
