"""Database faults are weather: retry a worker's storage calls through an outage.

A PostgreSQL restart, a failover or a dropped connection surfaces as a driver
``OperationalError`` (often wrapped in Optuna's ``StorageInternalError``). Every storage
call a worker makes in a trial's life (claim, report, should_prune, attrs, tell,
re-queue) goes through :func:`retrying`: it waits with bounded exponential backoff,
logs one line when an outage starts (with the driver's own reason) and one when it
ends, and gives up with :class:`StorageOutage` (exit 2) only after the outage limit.
Connections come back by themselves: the engine's ``pool_pre_ping`` replaces dead ones.

Behind the gRPC storage proxy (``grpc://``) the proxy is part of the weather: a proxy
that is down or restarting (gRPC ``UNAVAILABLE``), or one that answers that *its*
database connection failed, is an outage like the database's; the channel reconnects
by itself once the proxy listens again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from dm_tune.errors import StorageError

__all__ = [
    "OUTAGE_LIMIT_ENV", "StorageFull", "StorageOutage", "cause_of", "is_disk_full",
    "is_restarting", "is_transient", "note_outage",
    "outage_limit", "retrying",
]

T = TypeVar("T")
OUTAGE_LIMIT_ENV = "DM_TUNE_OUTAGE_LIMIT_S"
DEFAULT_OUTAGE_LIMIT_S = 300.0
_FIRST_WAIT_S, _MAX_WAIT_S = 0.25, 8.0
_logger = logging.getLogger("dm_tune.storage")
# Messages of connection-level failures (psycopg, SQLAlchemy) that a reconnect can cure.
_TRANSIENT_TEXT = (
    "the database system is shutting down", "the database system is starting up",
    "the database system is in recovery mode", "server closed the connection",
    "connection refused", "could not connect", "connection to server", "terminating connection",
    "connection is closed", "connection already closed", "ssl syscall", "broken pipe",
    "connection reset", "consuming input failed", "no connection to the server",
    "connection timeout expired", "the connection is lost", "adminshutdown",
)
_outage_lock = threading.Lock()
_outage_started: list[float] = []


class StorageOutage(StorageError):
    """The database stayed unreachable for longer than the outage limit."""


class StorageFull(StorageError):
    """The database's disk is full: nothing more can be written until space is freed."""


_FULL_TEXT = ("database or disk is full", "no space left on device", "could not extend file",
              "disk full")


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` says the database's disk (or quota) is full."""
    return any(marker in str(item).lower() for item in _chain(error) for marker in _FULL_TEXT)


def outage_limit() -> float:
    """Seconds a worker waits out one outage ($DM_TUNE_OUTAGE_LIMIT_S, default 300)."""
    try:
        return float(os.environ.get(OUTAGE_LIMIT_ENV, "") or DEFAULT_OUTAGE_LIMIT_S)
    except ValueError:
        return DEFAULT_OUTAGE_LIMIT_S


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    stack = [error]
    while stack:
        current = stack.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        stack.extend([getattr(current, "orig", None), current.__cause__, current.__context__])
    return seen


def _grpc_status(error: BaseException) -> tuple[str, str] | None:
    """(status code name, details) of a gRPC call's error; None for anything else."""
    code, details = getattr(error, "code", None), getattr(error, "details", None)
    if not (callable(code) and callable(details)) or type(error).__module__.split(".")[0] != "grpc":
        return None
    try:
        status, text = code(), details()
    except Exception:  # noqa: BLE001 - a gRPC error that cannot describe itself
        return None
    return getattr(status, "name", str(status)), str(text or "")


def _grpc_transient(status: tuple[str, str]) -> bool:
    """The proxy is down or restarting (UNAVAILABLE), or it reports a lost connection to
    its own database (its handlers' errors arrive as UNKNOWN or INTERNAL with the text)."""
    name, details = status
    if name == "UNAVAILABLE":
        return True
    return name in ("UNKNOWN", "INTERNAL") and any(
        marker in details.lower() for marker in _TRANSIENT_TEXT)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is a lost or refused database (or storage proxy) connection."""
    import sqlalchemy

    for item in _chain(error):
        status = _grpc_status(item)
        if status is not None and _grpc_transient(status):
            return True
        if isinstance(item, sqlalchemy.exc.DBAPIError) and item.connection_invalidated:
            return True
        if isinstance(item, sqlalchemy.exc.DisconnectionError | sqlalchemy.exc.TimeoutError):
            return True
        if type(item).__name__ in ("OperationalError", "InterfaceError", "AdminShutdown"):
            text = str(item).lower()
            if any(marker in text for marker in _TRANSIENT_TEXT):
                return True
    return False


def cause_of(error: BaseException) -> str:
    """The driver's first message line (the true cause, not a wrapper's)."""
    for item in _chain(error):
        status = _grpc_status(item)
        if status is not None:
            details = " ".join(status[1].split())[:300]
            return f"storage proxy: {status[0]}" + (f": {details}" if details else "")
    innermost = _chain(error)[-1] if _chain(error) else error
    for item in _chain(error):
        if type(item).__module__.startswith("psycopg"):
            innermost = item
            break
    lines = [line.strip() for line in str(innermost).splitlines() if line.strip()]
    return lines[0] if lines else type(innermost).__name__


def note_outage(what: str, error: BaseException) -> None:
    """Log the start of an outage once (later failures of the same outage stay quiet)."""
    with _outage_lock:
        if not _outage_started:
            _outage_started.append(time.monotonic())
            _logger.warning("storage unreachable during %s: %s; retrying for up to %.0f s",
                            what, cause_of(error), outage_limit())


def _outage_ends() -> None:
    with _outage_lock:
        if _outage_started:
            _logger.warning("storage reachable again after %.1f s",
                            time.monotonic() - _outage_started.pop())


_RESTARTING_TEXT = (
    "the database system is shutting down", "the database system is starting up",
    "the database system is in recovery mode", "terminating connection due to administrator",
)


def is_restarting(error: BaseException) -> bool:
    """Whether a server answered that it is going down or coming up (so it exists: worth
    waiting for, unlike a refused connection to a mistyped host at start-up)."""
    return any(marker in str(item).lower() for item in _chain(error)
               for marker in _RESTARTING_TEXT)


def retrying(call: Callable[[], T], what: str, limit: float | None = None,
             accept: Callable[[BaseException], T | None] | None = None,
             transient: Callable[[BaseException], bool] | None = None) -> T:
    """``call()``, retried through transient storage errors for up to ``limit`` seconds.

    ``accept(error)`` may turn an error of a retried call into its result (a ``tell``
    whose first attempt did commit raises "already finished" the second time).

    Raises:
        StorageOutage: the outage lasted longer than ``limit`` (default: outage_limit()).
    """
    limit = outage_limit() if limit is None else limit
    started, wait, retried = time.monotonic(), _FIRST_WAIT_S, False
    while True:
        try:
            value = call()
        except Exception as error:
            if is_disk_full(error):
                raise StorageFull(f"the database's disk is full ({cause_of(error)}, during "
                                  f"{what}): free space and run the same command again; "
                                  "the unfinished trial is retried") from None
            if retried and accept is not None:
                accepted = accept(error)
                if accepted is not None:
                    _outage_ends()
                    return accepted
            if not (transient or is_transient)(error):
                raise
            note_outage(what, error)
            if time.monotonic() - started + wait > limit:
                raise StorageOutage(f"the database was unreachable for more than {limit:.0f} s "
                                    f"(during {what}): {cause_of(error)}") from None
            time.sleep(wait)
            wait, retried = min(2 * wait, _MAX_WAIT_S), True
            continue
        if retried or _outage_started:  # the heartbeat thread may have noted the outage
            _outage_ends()
        return value
