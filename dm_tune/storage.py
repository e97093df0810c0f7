"""Storage URLs -> Optuna RDBStorage with heartbeats, pool settings and password redaction.

Supported backends are SQLite (one machine; WAL journal and a 60 s busy timeout so
several local workers can share a file) and PostgreSQL via psycopg 3 (many machines).
Other SQLAlchemy dialects (MySQL, ...) are refused: the engine settings, the heartbeat
and retry behaviour below are only tested on these two. ``grpc://HOST:PORT`` opens a
client of dm-tune's storage proxy (:mod:`dm_tune.cluster.proxy`, ``dm-tune
storage-proxy``), which owns the database connections for many workers.

Connection budget (PostgreSQL): a process that opens the database itself holds up to
``pool_size`` connections for storage calls plus one for the campaign claim lock
(:mod:`dm_tune.campaign.locks`); a dm-tune worker uses two of its pool at a time (its
main thread and its heartbeat thread), so about 3 in all. N workers therefore need
``N * (pool + 1) <= max_connections - reserve`` (``superuser_reserved_connections``,
the dashboard, your own psql). Behind the proxy the server sees at most the proxy's
``pool_size`` + 1 (its lock connection), whatever the number of workers.

Example:
    >>> storage = open_storage("sqlite:///dm_tune.db")  # doctest: +SKIP
    >>> optuna.create_study(storage=storage, study_name="demo")  # doctest: +SKIP
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
import sqlalchemy
from sqlalchemy.engine import URL, make_url

from dm_tune.errors import StorageError

__all__ = [
    "DEFAULT_STORAGE",
    "STORAGE_ENV",
    "SUPPORTED_BACKENDS",
    "StorageError",
    "check_connection",
    "check_storage_url",
    "has_password",
    "open_storage",
    "read_only_sqlite_url",
    "redact_url",
    "resolve_storage_url",
    "table_names",
]

DEFAULT_STORAGE = "sqlite:///dm_tune.db"
GRPC_SCHEME = "grpc://"
STORAGE_ENV = "DM_TUNE_STORAGE"
SUPPORTED_BACKENDS = ("sqlite", "postgresql")
SQLITE_BUSY_TIMEOUT_S = 60
PG_CONNECT_TIMEOUT_S = 5
POOL_TIMEOUT_S = 120  # a call waits this long for a free pooled connection (bounded pool)
_PG_EXAMPLE = "postgresql+psycopg://user:password@host:5432/dbname"
# advisory lock key of table creation: the first 8 bytes of sha256(b"dm-tune/schema")
_SCHEMA_KEY = int.from_bytes(hashlib.sha256(b"dm-tune/schema").digest()[:8], "big",
                             signed=True)

_logger = logging.getLogger(__name__)

# user:password@ in the authority part. The password is matched greedily up to the *last*
# '@' so that an unescaped '@' inside a password is still masked completely.
_AUTH_WITH_SCHEME = re.compile(
    r"^(?P<head>[A-Za-z][\w+.-]*://[^:/@?#]*:)(?P<pw>.*)@(?P<tail>[^@]*)$", re.S
)
_AUTH_NO_SCHEME = re.compile(r"^(?P<head>[^:/@?#]*:)(?P<pw>.*)@(?P<tail>[^@]*)$", re.S)
_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pwd|secret|sslpassword)=)[^&#]*")
# Aliases people paste from Heroku-style URLs or psql; psycopg 3 is the driver we ship.
_DRIVER_ALIASES = {"postgres": "postgresql+psycopg", "postgresql": "postgresql+psycopg"}




def resolve_storage_url(url: str | None) -> str:
    """Return the storage URL to use: the argument, else $DM_TUNE_STORAGE, else the default."""
    if url:
        return url
    return os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def redact_url(url: str | URL) -> str:
    """Return ``url`` with its password (and password-like query values) replaced by ***.

    Works on plain strings, so URLs SQLAlchemy cannot parse are masked as well.
    """
    text = url.render_as_string(hide_password=False) if isinstance(url, URL) else str(url)
    match = (_AUTH_WITH_SCHEME if "://" in text else _AUTH_NO_SCHEME).match(text)
    if match:
        text = f"{match['head']}***@{match['tail']}"
    return _QUERY_SECRET.sub(r"\1***", text)


def _secrets(raw: str, parsed: URL | None) -> list[str]:
    """Return the password spellings that must never appear in a message."""
    found = []
    match = (_AUTH_WITH_SCHEME if "://" in raw else _AUTH_NO_SCHEME).match(raw)
    if match and match["pw"]:
        found.append(match["pw"])
    if parsed is not None and parsed.password:
        found.append(str(parsed.password))
    # Longest first so a secret that contains another one is removed whole.
    return sorted({s for s in found if s}, key=len, reverse=True)


def has_password(url: str) -> bool:
    """Whether a storage URL carries a password (user:password@ or a password query)."""
    try:
        parsed: URL | None = make_url(url)
    except Exception:  # noqa: BLE001 - an unparsable URL may still hold one
        parsed = None
    return bool(_secrets(url, parsed)) or bool(_QUERY_SECRET.search(url))


def _first_line(exc: BaseException, secrets: list[str]) -> str:
    """Return the driver's first message line (not SQLAlchemy's wrapper), secrets removed."""
    inner = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    line = lines[0] if lines else type(inner).__name__
    for secret in secrets:
        line = line.replace(secret, "***")
    return line


def _parse(raw: str) -> URL:
    """Parse and normalise a storage URL or raise StorageError."""
    try:
        url = make_url(raw)
    except Exception as exc:  # ArgumentError, ValueError (bad port), ...: all mean "bad URL"
        hint = "" if "://" in raw else f" (expected e.g. {DEFAULT_STORAGE} or {_PG_EXAMPLE})"
        reason = _first_line(exc, _secrets(raw, None))
        raise StorageError(f"invalid storage URL {redact_url(raw)!r}: {reason}{hint}") from None
    # SQLAlchemy ends the password at the first '@' and makes the rest part of the host,
    # which would then appear in driver messages: demand the URL-encoded form instead.
    if url.password is not None and "@" in (url.host or ""):
        raise StorageError(
            f"invalid storage URL {redact_url(raw)!r}: the password contains '@'; "
            "URL-encode it as %40"
        )
    url = url.set(drivername=_DRIVER_ALIASES.get(url.drivername, url.drivername))
    if url.get_backend_name() not in SUPPORTED_BACKENDS:
        raise StorageError(
            f"unsupported storage backend {url.get_backend_name()!r} in {redact_url(raw)!r} "
            f"(supported: {', '.join(SUPPORTED_BACKENDS)})"
        )
    return url


def _sqlite_path(url: URL) -> Path | None:
    """Return the database file of a SQLite URL, or None for an in-memory database."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None  # in-memory, or a SQLite URI whose mode we leave to the user
    return Path(database)


def sqlite_file(url: str | URL | None) -> Path | None:
    """The database file of a SQLite storage URL; None for in-memory SQLite or another backend."""
    parsed = url if isinstance(url, URL) else make_url(resolve_storage_url(url))
    if parsed.get_backend_name() != "sqlite":
        return None
    return _sqlite_path(parsed)


def _check_sqlite_file(url: URL, raw: str, create: bool) -> None:
    """Refuse a missing SQLite file when create=False and a missing directory always."""
    path = _sqlite_path(url)
    if path is None:
        return
    try:  # a symlink loop "does not exist" to exists(), and resolve() raises RuntimeError
        path.resolve()
    except (RuntimeError, OSError) as error:
        reason = "a symlink loop" if isinstance(error, RuntimeError) else error.strerror
        raise StorageError(f"SQLite database {str(path)!r} cannot be opened: {reason} "
                           f"({redact_url(raw)})") from None
    if path.exists():
        return
    if not create:
        raise StorageError(f"SQLite database {str(path)!r} does not exist ({redact_url(raw)})")
    if not path.parent.exists():
        # Never mkdir: a missing directory is far more often a typo than a wish.
        raise StorageError(
            f"directory {str(path.parent)!r} of SQLite database {str(path)!r} does not exist"
        )


def _require_optuna_tables(url: URL, raw: str) -> None:
    """Refuse a database without Optuna's ``studies`` table (nothing created there yet);
    a short-lived engine looks, so that nothing is created by looking."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      **_engine_kwargs(url))
    try:
        present = sqlalchemy.inspect(engine).has_table("studies")
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = _first_line(exc, _secrets(raw, url))
        raise StorageError(f"cannot open storage {redact_url(raw)}: {reason}") from None
    finally:
        engine.dispose()
    if not present:
        raise StorageError(f"storage {redact_url(raw)} holds no Optuna studies (no 'studies' "
                           "table): create the campaign first (dm-tune create)")


def _engine_kwargs(url: URL, pool_size: int | None = None) -> dict[str, Any]:
    """Return create_engine keyword arguments tuned for the backend.

    ``pool_size``: at most that many pooled connections (no overflow); None keeps
    SQLAlchemy's default (5, plus 10 overflow), of which a worker uses 2.
    """
    bounded: dict[str, Any] = {}
    if pool_size is not None:
        if pool_size < 1:
            raise StorageError(f"pool_size must be at least 1, got {pool_size}")
        bounded = {"pool_size": pool_size, "max_overflow": 0, "pool_timeout": POOL_TIMEOUT_S}
    if url.get_backend_name() == "sqlite":
        # Workers on one machine write concurrently; wait for the lock instead of failing.
        if bounded:
            bounded["poolclass"] = sqlalchemy.pool.QueuePool
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}, **bounded}
    return {
        **bounded,
        # Trials run for minutes; the server or a proxy may drop idle pooled connections.
        "pool_pre_ping": True,
        # Fail fast on an unreachable host rather than hanging a worker for minutes.
        "connect_args": {"connect_timeout": PG_CONNECT_TIMEOUT_S},
    }


def schema_lock_file(database: Path) -> Path:
    """The file whose ``flock`` serialises creating Optuna's tables in a SQLite file."""
    return database.with_name(f"{database.name}.schema.lock")


@contextmanager
def _schema_lock(url: URL) -> Iterator[None]:
    """Hold a lock while RDBStorage creates Optuna's tables and stamps their version, so
    that two commands opening one new database at once do not both create them (one
    failed with ``UNIQUE constraint failed: alembic_version.version_num``).

    SQLite: ``flock`` on :func:`schema_lock_file`; PostgreSQL: a session advisory lock
    on a connection of its own. Where the lock cannot be had (an unwritable folder, a
    server that refuses the connection) nothing is locked: opening reports the cause.
    """
    if url.get_backend_name() == "sqlite":
        path = _sqlite_path(url)
        if path is None:
            yield
            return
        try:
            fd = os.open(schema_lock_file(path), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock
        return
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      **_engine_kwargs(url))
    try:
        connection = engine.connect()
    except sqlalchemy.exc.SQLAlchemyError:
        engine.dispose()
        yield
        return
    try:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _SCHEMA_KEY})
        yield
    finally:
        connection.close()  # ends the session, and with it the advisory lock
        engine.dispose()


def _sqlite_connection_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection SQLite settings (journal_mode is per file, synchronous per connection)."""
    cursor = dbapi_connection.cursor()
    # In WAL mode NORMAL never corrupts the file and loses nothing on a process crash (only
    # the last commits on power loss), and makes each commit (one per trial.report) ~5x
    # cheaper than FULL: measured 4.6 -> 0.8 ms per report.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _tune_sqlite(storage: optuna.storages.RDBStorage, url: URL) -> None:
    """Switch a SQLite file to WAL so readers (dashboard) never block writers (workers)."""
    if url.get_backend_name() != "sqlite" or _sqlite_path(url) is None:
        return
    try:
        with storage.engine.connect() as conn:
            # The journal mode is stored in the file, so once is enough for every process.
            mode = conn.exec_driver_sql("PRAGMA journal_mode=WAL").scalar()
    except sqlalchemy.exc.OperationalError as exc:
        # WAL is an optimisation; a read-only file or a network filesystem may refuse it.
        _logger.debug("could not enable SQLite WAL: %s", _first_line(exc, []))
        return
    if str(mode).lower() == "wal":
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_connection_pragmas)
        storage.engine.dispose()  # reopen pooled connections with the pragma


def _heartbeat_kwargs(
    heartbeat_interval: int | None, grace_period: int | None, max_retry: int
) -> dict[str, Any]:
    """Return RDBStorage's heartbeat arguments (none when heartbeats are disabled)."""
    if heartbeat_interval is None:
        return {}
    return {
        "heartbeat_interval": heartbeat_interval,
        "grace_period": grace_period or 2 * heartbeat_interval,
        # Optuna >= 4.9 name; RetryFailedTrialCallback/failed_trial_callback are deprecated.
        "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=max_retry
        ),
    }


def open_storage(
    url: str | None,
    *,
    heartbeat_interval: int | None = 60,
    grace_period: int | None = None,
    max_retry: int = 2,
    create: bool = True,
    pool_size: int | None = None,
) -> optuna.storages.RDBStorage:
    """Open an Optuna RDBStorage for ``url`` (None: $DM_TUNE_STORAGE or the default).

    ``grpc://HOST:PORT`` returns a client of a running storage proxy instead
    (:func:`dm_tune.cluster.proxy.open_grpc_storage`); the heartbeat settings are then
    the proxy's, and the other arguments are ignored.

    A running trial that has not sent a heartbeat for ``grace_period`` seconds (default
    2 x ``heartbeat_interval``) is failed by the next worker that asks for a trial and
    re-queued as a WAITING trial with the same params, at most ``max_retry`` times
    (0: fail without retry). ``heartbeat_interval=None`` disables all of that.
    ``create=False`` refuses to create a SQLite file that does not exist. ``pool_size``
    bounds the connections of the storage's pool (see the connection budget above).

    Raises:
        StorageError: bad URL, unsupported backend, missing file, unreachable server.
    """
    raw = resolve_storage_url(url)
    if raw.startswith(GRPC_SCHEME):
        from dm_tune.cluster.proxy import open_grpc_storage

        return open_grpc_storage(raw)
    if not create:  # a reader (export, report, status, dashboard) of a file it cannot write
        given = _parse(raw)
        if given.get_backend_name() == "sqlite":
            _check_sqlite_file(given, raw, create)
            raw = read_only_sqlite_url(raw)
    parsed = _parse(raw)
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_file(parsed, raw, create)
    if not create:  # RDBStorage would create Optuna's tables in an empty database
        _require_optuna_tables(parsed, raw)
    full = parsed.render_as_string(hide_password=False)
    # RDBStorage runs str.format() on the URL (schema version template): escape braces so
    # that a literal brace can never break the format call.
    full = full.replace("{", "{{").replace("}", "}}")
    try:
        with warnings.catch_warnings(), (_schema_lock(parsed) if create else nullcontext()):
            # Heartbeats are "experimental" in Optuna since 2.9; the warnings are noise to users.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                full,
                engine_kwargs=_engine_kwargs(parsed, pool_size),
                **_heartbeat_kwargs(heartbeat_interval, grace_period, max_retry),
            )
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        # Optuna wraps driver errors in StorageInternalError; the driver's line is in __cause__.
        cause = exc.__cause__ or exc
        reason = _first_line(cause, _secrets(raw, parsed))
        raise StorageError(f"cannot open storage {redact_url(raw)}: {reason}") from None
    except (RuntimeError, ImportError) as exc:  # schema too new/old, missing driver
        raise StorageError(
            f"cannot open storage {redact_url(raw)}: {_first_line(exc, _secrets(raw, parsed))}"
        ) from None
    _tune_sqlite(storage, parsed)
    return storage


def _writable(path: Path) -> bool:
    # os.access also answers for root: an immutable file (chattr +i) is not writable.
    return os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0))


def read_only_sqlite_url(url: str) -> str:
    """The URL itself, or for a SQLite file (or its folder) that cannot be written, a
    read-only SQLite URI: ``mode=ro`` when a -wal file holds commits, else ``immutable=1``
    (SQLite then needs no -shm file, which an unwritable folder could not hold)."""
    try:
        path = sqlite_file(url)
    except Exception:  # noqa: BLE001 - a bad URL is open_storage's to report
        return url
    if path is None or not path.is_file():
        return url
    path = path.resolve()
    if _writable(path) and _writable(path.parent):
        return url
    wal = path.with_name(f"{path.name}-wal")
    mode = "mode=ro" if wal.is_file() and wal.stat().st_size > 0 else "immutable=1"
    return f"sqlite:///file:{quote(str(path))}?{mode}&uri=true"


def check_storage_url(url: str | None, create: bool = True) -> None:
    """Refuse what :func:`open_storage` would refuse without connecting: a malformed URL,
    an unsupported backend, a missing SQLite folder (or file, when ``create=False``).
    Cheap, so a command can say so before it spends time on the data."""
    raw = resolve_storage_url(url)
    if raw.startswith(GRPC_SCHEME):
        return
    parsed = _parse(raw)
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_file(parsed, raw, create)


def table_names(url: str | None) -> list[str]:
    """The tables of the database behind ``url`` (its default schema); [] for a missing
    SQLite file, an in-memory database, the proxy, or one that cannot be read (opening it
    then reports why). Creates nothing."""
    raw = resolve_storage_url(url)
    if raw.startswith(GRPC_SCHEME):
        return []
    try:
        parsed = _parse(raw)
    except StorageError:
        return []
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_path(parsed)
        if path is None or not path.is_file():
            return []
    engine = sqlalchemy.create_engine(parsed, poolclass=sqlalchemy.pool.NullPool,
                                      **_engine_kwargs(parsed))
    try:
        return list(sqlalchemy.inspect(engine).get_table_names())
    except sqlalchemy.exc.SQLAlchemyError:
        return []
    finally:
        engine.dispose()


def check_connection(url: str | None) -> None:
    """Connect to the database behind ``url`` and run ``SELECT 1``; never creates anything.

    Raises:
        StorageError: the URL is bad, the SQLite file is missing or the server unreachable.
    """
    raw = resolve_storage_url(url)
    if raw.startswith(GRPC_SCHEME):  # the proxy answers (and reaches its database)
        from dm_tune.cluster.proxy import open_grpc_storage

        open_grpc_storage(raw).close()
        return
    parsed = _parse(raw)
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_file(parsed, raw, create=False)
    engine = sqlalchemy.create_engine(parsed, **_engine_kwargs(parsed))
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StorageError(
            f"cannot connect to {redact_url(raw)}: {_first_line(exc, _secrets(raw, parsed))}"
        ) from None
    finally:
        engine.dispose()
