"""Cross-process mutual exclusion for claiming trials, on the campaign's own database.

Optuna's ``study.ask`` creates a trial whenever no WAITING one exists, so two workers
that both see "one trial left" would both create one and overshoot the budget. Claims
therefore run under a lock that lives where the trials live:

- PostgreSQL: a session advisory lock on a dedicated connection; the server releases it
  when the connection dies, so a ``kill -9``-ed worker never leaves it held.
- SQLite: ``flock`` on a file next to the database; the kernel releases it on exit.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy

from dm_tune.storage import sqlite_file

__all__ = ["campaign_lock"]

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def _key(name: str) -> int:
    # advisory locks take a signed 64-bit key
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _thread_lock(name: str) -> threading.Lock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(name, threading.Lock())


@contextmanager
def _postgres_lock(engine: sqlalchemy.engine.Engine, name: str) -> Iterator[None]:
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _key(name)})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(
                sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _key(name)}
            )
            connection.commit()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def campaign_lock(engine: sqlalchemy.engine.Engine, name: str) -> Iterator[None]:
    """Hold an exclusive lock named ``name`` across every process using this database."""
    database_file = sqlite_file(engine.url)
    with _thread_lock(name):
        if engine.url.get_backend_name() == "postgresql":
            with _postgres_lock(engine, name):
                yield
        elif database_file is not None:
            digest = hashlib.sha256(name.encode()).hexdigest()[:12]
            with _file_lock(Path(f"{database_file}.{digest}.lock")):
                yield
        else:
            yield  # an in-memory database lives in one process: the thread lock suffices
