"""Tests for dm_tune.storage: URLs, redaction, errors, heartbeats, PostgreSQL round trips."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from pg import pg_url  # noqa: F401 (pytest fixture)

from dm_tune.campaign._optuna import fail_stale_trials, heartbeat, record_heartbeat
from dm_tune.storage import (
    DEFAULT_STORAGE,
    STORAGE_ENV,
    StorageError,
    check_connection,
    open_storage,
    redact_url,
    resolve_storage_url,
)

SECRET = "S3cr{et}Pw"  # braces: Optuna str.format()s the URL, this must not break it
UNREACHABLE = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:1/test"


@pytest.fixture(autouse=True)
def _optuna_logs_to_caplog():
    """Let caplog see Optuna's records (Optuna's logger does not propagate by default)."""
    optuna.logging.enable_propagation()
    yield
    optuna.logging.disable_propagation()


def test_resolve_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert resolve_storage_url(None) == DEFAULT_STORAGE
    monkeypatch.setenv(STORAGE_ENV, "sqlite:///env.db")
    assert resolve_storage_url(None) == "sqlite:///env.db"
    assert resolve_storage_url("sqlite:///arg.db") == "sqlite:///arg.db"
    monkeypatch.setenv(STORAGE_ENV, "")
    assert resolve_storage_url(None) == DEFAULT_STORAGE


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg://u:pw@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),  # unescaped '@'
        ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:///dm_tune.db", "sqlite:///dm_tune.db"),
        (
            "postgresql://h/db?password=pw&sslmode=require",
            "postgresql://h/db?password=***&sslmode=require",
        ),
        ("u:pw@host:notaport", "u:***@host:notaport"),  # unparseable: still masked
        ("mysql://u:pw@h:bad/db", "mysql://u:***@h:bad/db"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_unparseable_url_is_storage_error() -> None:
    with pytest.raises(StorageError, match="invalid storage URL") as info:
        open_storage("dm_tune.db")
    assert "sqlite:///" in str(info.value)  # the hint shows the expected form
    with pytest.raises(StorageError, match="invalid storage URL") as info:
        open_storage(f"postgresql://u:{SECRET}@h:port/db")
    assert SECRET not in str(info.value)


def test_unsupported_backend_refused() -> None:
    with pytest.raises(StorageError, match="unsupported storage backend 'mysql'") as info:
        open_storage(f"mysql://u:{SECRET}@h/db")
    assert SECRET not in str(info.value)


def test_unescaped_at_in_password_refused() -> None:
    with pytest.raises(StorageError, match="%40") as info:
        open_storage("postgresql://u:hunter@2@127.0.0.1:1/db")
    assert "hunter" not in str(info.value) and "2@127" not in str(info.value)


def test_unreachable_postgres_fast_and_redacted(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    start = time.monotonic()
    with pytest.raises(StorageError, match="Connection refused") as info:
        open_storage(UNREACHABLE)
    assert time.monotonic() - start < 5
    with pytest.raises(StorageError):
        check_connection(UNREACHABLE)
    message = str(info.value)
    assert "\n" not in message
    assert "postgres:***@127.0.0.1:1" in message
    out, err = capfd.readouterr()
    for text in (message, caplog.text, out, err):
        assert SECRET not in text


def test_sqlite_create_false_refuses_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(StorageError, match="does not exist"):
        open_storage(f"sqlite:///{path}", create=False)
    with pytest.raises(StorageError, match="does not exist"):
        check_connection(f"sqlite:///{path}")
    assert not path.exists()


def test_sqlite_missing_directory_not_created(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="directory"):
        open_storage(f"sqlite:///{tmp_path / 'nodir' / 'x.db'}")
    assert not (tmp_path / "nodir").exists()


def test_sqlite_created_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    storage = open_storage(f"sqlite:///{path}")
    assert path.exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with storage.engine.connect() as conn:  # 1 = NORMAL: cheap commits, safe with WAL
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
    check_connection(f"sqlite:///{path}")
    open_storage(f"sqlite:///{path}", create=False)  # existing file: fine


def test_heartbeat_configured(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'h.db'}", max_retry=3)
    assert storage.heartbeat_interval == 60
    assert storage.grace_period == 120
    callback = storage.heartbeat_stale_trial_callback
    assert isinstance(callback, optuna.storages.RetryHeartbeatStaleTrialCallback)
    assert callback._max_retry == 3
    storage = open_storage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=5, grace_period=7)
    assert (storage.heartbeat_interval, storage.grace_period) == (5, 7)
    storage = open_storage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=None)
    assert storage.heartbeat_interval is None and storage.heartbeat_stale_trial_callback is None


def test_no_experimental_warnings(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    open_storage(f"sqlite:///{tmp_path / 'w.db'}")
    assert not [w for w in recwarn if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_ask_tell_heartbeat_context_retries_stale_trial(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'a.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    x = trial.suggest_float("x", 0.0, 1.0)
    with heartbeat(trial):
        time.sleep(0.05)
    # The "worker" stops beating without telling; after the grace period it is stale.
    time.sleep(2.2)
    fail_stale_trials(study)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]
    assert study.ask().params == {"x": x}


def _study_names(url: str) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(open_storage(url, create=False))]


@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_postgres_round_trip(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    caplog.set_level(logging.DEBUG)
    url = pg_url.replace("postgres@", f"postgres:{SECRET}@")  # trust auth ignores it
    storage = open_storage(url)
    study = optuna.create_study(
        storage=storage, study_name="c/symmetric-0.40", direction="maximize"
    )
    study.set_user_attr("campaign", "c")
    trial = study.ask()
    mode = trial.suggest_float("emphasis_mode", 0.0, 0.75)
    trial.report(0.5, step=1)
    trial.set_user_attr("test_accuracy", 0.9)
    study.tell(trial, 0.8)
    check_connection(url)

    again = optuna.load_study(
        study_name="c/symmetric-0.40", storage=open_storage(url, create=False)
    )
    (frozen,) = again.trials
    assert frozen.params == {"emphasis_mode": mode}
    assert frozen.value == 0.8 and frozen.intermediate_values == {1: 0.5}
    assert frozen.user_attrs == {"test_accuracy": 0.9}
    assert again.user_attrs == {"campaign": "c"}
    assert _study_names(url) == ["c/symmetric-0.40"]
    assert SECRET not in caplog.text


_DYING_WORKER = textwrap.dedent(
    """
    import os, signal, sys, optuna
    from dm_tune.storage import open_storage
    storage = open_storage(sys.argv[1], heartbeat_interval=1, grace_period=1)
    study = optuna.load_study(study_name="s", storage=storage)
    def objective(trial):
        trial.suggest_float("emphasis_variance", 0.0, 24.0)
        trial.suggest_categorical("emphasis_mode", [0.0, 0.5])
        os.kill(os.getpid(), signal.SIGKILL)  # the worker dies mid-trial
    study.optimize(objective, n_trials=1)
    """
)


@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_postgres_stale_trial_failed_and_requeued(pg_url: str) -> None:  # noqa: F811
    storage = open_storage(pg_url, heartbeat_interval=1, grace_period=1, max_retry=1)
    study = optuna.create_study(storage=storage, study_name="s")
    proc = subprocess.run(
        [sys.executable, "-c", _DYING_WORKER, pg_url], cwd=Path(__file__).parents[1], timeout=60
    )
    assert proc.returncode == -9
    (dead,) = study.trials
    assert dead.state == optuna.trial.TrialState.RUNNING  # nobody told the storage
    time.sleep(2.2)  # > grace period since the last heartbeat

    fail_stale_trials(study)
    first, retry = study.get_trials(deepcopy=False)
    assert first.state == optuna.trial.TrialState.FAIL
    assert retry.state == optuna.trial.TrialState.WAITING
    assert retry.params == dead.params
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0

    # The next worker picks the re-queued params first; max_retry=1 then stops retrying.
    trial = study.ask()
    assert trial.params == dead.params
    record_heartbeat(trial)
    time.sleep(2.2)
    fail_stale_trials(study)
    assert [t.state.name for t in study.get_trials(deepcopy=False)] == ["FAIL", "FAIL"]
