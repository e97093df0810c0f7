"""Cross-process mutual exclusion for claiming trials, on the campaign's own database.

Optuna's ``study.ask`` creates a trial whenever no WAITING one exists, so two workers
that both see "one trial left" would both create one and overshoot the budget. Claims
therefore run under a lock that lives where the trials live:

- PostgreSQL: a session advisory lock on a dedicated connection (one per storage engine,
  outside its pool: a process holds at most ``pool_size + 1`` connections); the server
  releases it when the connection dies, so a ``kill -9``-ed worker never leaves it held.
- SQLite: ``flock`` on a file next to the database; the kernel releases it on exit.
- Through the gRPC storage proxy (``grpc://``, :mod:`dm_tune.cluster.proxy`): the
  storage has a ``campaign_lock(name)`` method, and the lock is held *in the proxy*,
  which runs this very function on its own engine: the same advisory lock, same key.
  Budgets therefore stay exact whatever mix of proxied and direct workers claims: every
  claim (count, then ``ask``) of every worker runs while that one PostgreSQL lock is
  held, and a proxied worker's count and ``ask`` reach the database only after its lock
  call was granted. The proxy releases the lock when the worker ends the call or its
  connection dies (TCP close or failed keepalive pings), as PostgreSQL does for a
  direct worker's session.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy

from dm_tune.storage import sqlite_file

__all__ = ["campaign_lock", "dispose_lock_connection"]

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()
_lock_engines: weakref.WeakKeyDictionary[sqlalchemy.engine.Engine, sqlalchemy.engine.Engine] = (
    weakref.WeakKeyDictionary()
)
_LOCK_CONNECT_TIMEOUT_S = 5


def _key(name: str) -> int:
    # advisory locks take a signed 64-bit key
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _thread_lock(name: str) -> threading.Lock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(name, threading.Lock())


def _lock_engine(engine: sqlalchemy.engine.Engine) -> sqlalchemy.engine.Engine:
    """One connection, kept open, for the advisory locks taken through ``engine``."""
    with _thread_locks_guard:
        lock_engine = _lock_engines.get(engine)
        if lock_engine is None:
            lock_engine = sqlalchemy.create_engine(
                engine.url, pool_size=1, max_overflow=0, pool_timeout=None,
                pool_pre_ping=True, connect_args={"connect_timeout": _LOCK_CONNECT_TIMEOUT_S},
            )
            _lock_engines[engine] = lock_engine
        return lock_engine


def dispose_lock_connection(engine: sqlalchemy.engine.Engine) -> None:
    """Close the lock connection kept for ``engine`` (with ``engine.dispose()``)."""
    with _thread_locks_guard:
        lock_engine = _lock_engines.pop(engine, None)
    if lock_engine is not None:
        lock_engine.dispose()


@contextmanager
def _postgres_lock(engine: sqlalchemy.engine.Engine, name: str) -> Iterator[None]:
    with _lock_engine(engine).connect() as connection:
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
def campaign_lock(storage: Any, name: str) -> Iterator[None]:
    """Hold an exclusive lock named ``name`` across every process using this database.

    ``storage``: a storage with a ``campaign_lock(name)`` method (the proxy client) takes
    the lock through it; any other storage through its ``.engine``; or an engine.
    """
    proxied = getattr(storage, "campaign_lock", None)
    if callable(proxied):
        with proxied(name):
            yield
        return
    engine = storage if isinstance(storage, sqlalchemy.engine.Engine) else storage.engine
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
