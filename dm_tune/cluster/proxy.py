"""A gRPC storage proxy: one process owns the database connections for many workers.

``serve_proxy`` runs Optuna's gRPC storage proxy (``optuna.storages.run_grpc_proxy_server``'s
servicer) in front of an ``RDBStorage`` whose SQLAlchemy pool is bounded
(``pool_size`` connections, no overflow), and adds a second gRPC service,
``dmtune.Coordination``, for what dm-tune workers otherwise do on the storage's engine:

- ``Lock``: the campaign claim lock. A server-streaming call: the proxy takes the lock
  (per name, one holder at a time inside the proxy, then
  :func:`dm_tune.campaign.locks.campaign_lock` on its own engine: the *same* PostgreSQL
  advisory lock, or ``flock`` for SQLite, that workers opening the database directly
  take, so both kinds of workers exclude each other), answers ``{"held": true}`` and
  keeps it until the client ends the call. A client that dies (``kill -9``, lost node)
  ends the call too: its TCP connection closes, or keepalive pings (every 20 s) fail,
  and the proxy releases the lock, as PostgreSQL does when a session dies.
- ``StateCounts`` / ``Budgets``: the two raw-SQL progress reads of
  :mod:`dm_tune.campaign._optuna`, run in the proxy.
- ``RecordHeartbeat`` / ``StaleTrialIds`` / ``Settings``: Optuna's heartbeat, which
  ``GrpcStorageProxy`` lacks; :class:`ProxyStorage` implements ``BaseHeartbeat`` with
  them, so ``study.optimize``'s heartbeat thread and ``optuna.storages.fail_stale_trials``
  work through the proxy. Interval, grace period and retries are the proxy's settings.

Connections: every storage call borrows from the one pool and the claim locks use one
more, dedicated connection (:mod:`dm_tune.campaign.locks`), so the proxy never opens
more than ``pool_size + 1`` database connections, whatever the number of workers (64
workers behind ``pool_size=8``: at most 9, measured in tests/test_proxy.py and
benchmarks/scale.py). Calls wait for a free pooled connection (up to 120 s) instead of
opening more. Each waiting lock request holds a gRPC server thread, so ``threads`` must
exceed the number of workers plus ``pool_size`` (default 128).

The proxy speaks plain (insecure) gRPC: whoever reaches its port can read and write
trials, though never learn the database password. Bind it to loopback or a private
network (default ``127.0.0.1``).

Run it (``dm-tune storage-proxy``, or ``python -m dm_tune.cluster.proxy`` which reads the
URL from the environment only, never argv):
    DM_TUNE_STORAGE=postgresql+psycopg://... dm-tune storage-proxy --port 50051
and point workers at it with ``--storage grpc://HOST:50051`` (see :func:`open_grpc_storage`;
:func:`dm_tune.storage.open_storage` dispatches ``grpc://`` URLs there). The trial
heartbeat interval and grace period are the proxy's (``--heartbeat``), not the workers'.

Needs ``grpcio`` and ``protobuf>=5.28.1`` (Optuna's ``optional`` extra).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from dm_tune.campaign import _optuna
from dm_tune.errors import StorageError
from dm_tune.storage import GRPC_SCHEME, STORAGE_ENV, open_storage, redact_url, resolve_storage_url

try:
    import grpc
except ImportError as _error:  # grpcio/protobuf missing: fail on use, not on import
    grpc = None
    _IMPORT_ERROR: ImportError | None = _error
else:
    _IMPORT_ERROR = None

__all__ = [
    "GRPC_SCHEME",
    "ProxyServer",
    "ProxyStorage",
    "open_grpc_storage",
    "serve_proxy",
    "start_proxy",
]

SERVICE = "dmtune.Coordination"
DEFAULT_PORT = 50051
DEFAULT_POOL_SIZE = 8
DEFAULT_THREADS = 128
_LOCK_POLL_S = 0.5
_logger = logging.getLogger(__name__)

# Server and client keepalive: a dead client's lock is released within ~30 s even when
# its machine vanished without closing the TCP connection.
_SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", -1),
    # gRPC sets SO_REUSEPORT by default: a second proxy would then share a busy port
    # with the first, and the kernel hand each new connection to either of them
    ("grpc.so_reuseport", 0),
]
# A proxy that restarts is reconnected to within 8 s of listening again (gRPC's default
# backoff grows to 120 s): the longest wait of dm_tune.campaign.retry's backoff.
_CLIENT_OPTIONS = [
    ("grpc.max_reconnect_backoff_ms", 8_000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", -1),
]


def _require_grpc() -> None:
    if _IMPORT_ERROR is not None:
        raise StorageError(
            f"the gRPC storage proxy needs grpcio and protobuf>=5.28.1 ({_IMPORT_ERROR})"
        )


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _loads(data: bytes) -> Any:
    return json.loads(data) if data else {}


# ------------------------------------------------------------------ server side


def _open_rdb(
    url: str | None, pool_size: int, heartbeat_interval: int | None, grace_period: int | None,
    max_retry: int,
) -> optuna.storages.RDBStorage:
    """The proxied database: an RDBStorage whose pool is ``pool_size`` connections."""
    raw = resolve_storage_url(url)
    if raw.startswith(GRPC_SCHEME):
        raise StorageError("the proxy needs a database URL, not another proxy's grpc:// URL")
    return open_storage(raw, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                        max_retry=max_retry, pool_size=pool_size)


class _Coordination:
    """Handlers of the ``dmtune.Coordination`` service (JSON messages)."""

    def __init__(self, rdb: optuna.storages.RDBStorage, storage: Any, max_retry: int) -> None:
        self._rdb = rdb
        self._cached = storage  # the cached wrapper the Optuna servicer also uses
        self._max_retry = max_retry
        self._gates: dict[str, threading.Lock] = {}
        self._gates_guard = threading.Lock()
        self.locks_held = 0  # for tests and logs

    def _gate(self, name: str) -> threading.Lock:
        with self._gates_guard:
            return self._gates.setdefault(name, threading.Lock())

    def _unary(self, fn: Callable[[dict[str, Any]], Any]) -> Callable[..., Any]:
        def handler(request: dict[str, Any], context: Any) -> Any:
            try:
                return fn(request)
            except KeyError as exc:
                context.abort(grpc.StatusCode.NOT_FOUND, f"not found: {exc}")
            except Exception as exc:  # one line back to the worker; details in our log
                _logger.exception("dm-tune proxy: %s failed", fn.__name__)
                context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"[:500])

        return handler

    # --- unary methods
    def settings(self, _request: dict[str, Any]) -> dict[str, Any]:
        return {
            "heartbeat_interval": self._rdb.heartbeat_interval,
            "grace_period": self._rdb.grace_period,
            "max_retry": self._max_retry,
            "backend": self._rdb.engine.url.get_backend_name(),
        }

    def state_counts(self, _request: dict[str, Any]) -> dict[str, dict[str, int]]:
        return _optuna.state_counts(self._rdb.engine)

    def budgets(self, request: dict[str, Any]) -> dict[str, int]:
        return _optuna.budgets(self._rdb.engine, str(request["key"]))

    def record_heartbeat(self, request: dict[str, Any]) -> dict[str, Any]:
        self._cached.record_heartbeat(int(request["trial_id"]))
        return {}

    def stale_trial_ids(self, request: dict[str, Any]) -> list[int]:
        return _optuna.stale_trial_ids(self._cached, int(request["study_id"]))

    def orphan_trial_ids(self, request: dict[str, Any]) -> list[int]:
        return _optuna.orphan_trial_ids(self._rdb.engine, str(request["study_name"]),
                                        float(request["older_than_s"]))

    # --- the lock: held for as long as the client keeps the call open
    def lock(self, request: dict[str, Any], context: Any) -> Iterator[dict[str, Any]]:
        name = str(request["name"])
        gate = self._gate(name)
        # Wait here without a database connection; give up when the client has gone.
        while not gate.acquire(timeout=_LOCK_POLL_S):
            if not context.is_active():
                return
        try:
            from dm_tune.campaign.locks import campaign_lock

            with campaign_lock(self._rdb, name):
                self.locks_held += 1
                try:
                    ended = threading.Event()
                    if not context.add_callback(ended.set):
                        return  # the call already ended
                    yield {"held": True}
                    while not ended.wait(_LOCK_POLL_S):
                        if not context.is_active():
                            break
                finally:
                    self.locks_held -= 1
        finally:
            gate.release()

    def handler(self) -> Any:
        unary = {
            "Settings": self.settings,
            "StateCounts": self.state_counts,
            "Budgets": self.budgets,
            "RecordHeartbeat": self.record_heartbeat,
            "StaleTrialIds": self.stale_trial_ids,
            "OrphanTrialIds": self.orphan_trial_ids,
        }
        methods = {
            name: grpc.unary_unary_rpc_method_handler(
                self._unary(fn), request_deserializer=_loads, response_serializer=_dumps
            )
            for name, fn in unary.items()
        }
        methods["Lock"] = grpc.unary_stream_rpc_method_handler(
            self.lock, request_deserializer=_loads, response_serializer=_dumps
        )
        return grpc.method_handlers_generic_handler(SERVICE, methods)


@dataclass
class ProxyServer:
    """A started proxy: ``url`` is what workers pass as ``--storage``."""

    server: Any
    host: str
    port: int
    rdb: optuna.storages.RDBStorage
    coordination: _Coordination

    @property
    def url(self) -> str:
        return f"{GRPC_SCHEME}{self.host}:{self.port}"

    def wait(self) -> None:
        self.server.wait_for_termination()

    def stop(self, grace: float = 5.0) -> None:
        from dm_tune.campaign.locks import dispose_lock_connection

        self.server.stop(grace).wait()
        dispose_lock_connection(self.rdb.engine)
        self.rdb.engine.dispose()


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on (another proxy, even of another
    database), before gRPC binds: its refusal comes with a log line of its own."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as error:
        raise StorageError(f"cannot listen on {host}:{port}: {error}") from None
    with socket.socket(family, kind, proto) as probe:
        # as gRPC binds (a port in TIME_WAIT after a restart is free), minus SO_REUSEPORT
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise StorageError(f"cannot listen on {host}:{port}: {error.strerror or error} "
                               "(another storage proxy or program listens there)") from None


def start_proxy(
    storage_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    pool_size: int = DEFAULT_POOL_SIZE,
    *,
    threads: int = DEFAULT_THREADS,
    heartbeat_interval: int | None = 60,
    grace_period: int | None = None,
    max_retry: int = 2,
) -> ProxyServer:
    """Start the proxy in background threads and return it (``port=0``: any free port)."""
    _require_grpc()
    if pool_size < 1:
        raise StorageError(f"pool_size must be at least 1, got {pool_size}")
    _check_port_free(host, port)  # before the database is opened (or created)
    rdb = _open_rdb(storage_url, pool_size, heartbeat_interval, grace_period, max_retry)
    # Optuna's advice: serve the cached wrapper (finished trials are read once); ours also
    # takes the params of trials a previous proxy process handed out
    storage = _optuna.proxy_cached_storage(rdb)
    coordination = _Coordination(rdb, storage, max_retry)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dm-tune-proxy")
    # What optuna.storages.run_grpc_proxy_server builds (its make_server), plus keepalive
    # options and the dmtune.Coordination service.
    server = grpc.server(pool, options=_SERVER_OPTIONS)
    _optuna.add_storage_servicer(server, storage)
    server.add_generic_rpc_handlers((coordination.handler(),))
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:  # newer grpcio raise, older return 0
        bound = 0
    if bound == 0:
        rdb.engine.dispose()
        raise StorageError(f"cannot listen on {host}:{port} (in use, or not an address here)")
    server.start()
    _logger.info("dm-tune storage proxy on %s%s:%d for %s (pool %d)", GRPC_SCHEME, host, bound,
                 redact_url(resolve_storage_url(storage_url)), pool_size)
    return ProxyServer(server, host, bound, rdb, coordination)


def serve_proxy(
    storage_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    pool_size: int = DEFAULT_POOL_SIZE,
    **kwargs: Any,
) -> None:
    """Run the proxy until SIGTERM/SIGINT (the blocking form of :func:`start_proxy`)."""
    proxy = start_proxy(storage_url, host, port, pool_size, **kwargs)
    stopping = threading.Event()
    received: list[int] = []

    def stop(signum: int, _frame: Any) -> None:
        received.append(signum)
        stopping.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    print(f"dm-tune proxy: listening on {proxy.url} (pool_size={pool_size})", flush=True)
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        proxy.stop()
        if received:  # why it stopped: a supervisor's log should not need guessing
            print(f"dm-tune proxy: stopped by {signal.Signals(received[0]).name}; "
                  f"{proxy.url} no longer serves the database", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ client side


class ProxyStorage(_optuna.HeartbeatGrpcClient):
    """Optuna's ``GrpcStorageProxy`` plus dm-tune's lock, progress and heartbeat calls.

    Drop-in for a worker's storage: ``campaign_lock(name)``, ``state_counts()`` and
    ``budgets(key)`` replace what the worker does on ``storage.engine`` when it opened
    the database itself, and the heartbeat methods make Optuna's heartbeat work.
    """

    channel_options = tuple(_CLIENT_OPTIONS)

    def __init__(self, *, host: str = "localhost", port: int = DEFAULT_PORT) -> None:
        _require_grpc()
        self._settings: dict[str, Any] | None = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(host=host, port=port)

    def connected(self, channel: Any) -> None:
        def method(name: str) -> Any:
            return channel.unary_unary(f"/{SERVICE}/{name}", request_serializer=_dumps,
                                       response_deserializer=_loads)

        self._settings_rpc = method("Settings")
        self._state_counts_rpc = method("StateCounts")
        self._budgets_rpc = method("Budgets")
        self._heartbeat_rpc = method("RecordHeartbeat")
        self._stale_rpc = method("StaleTrialIds")
        self._orphans_rpc = method("OrphanTrialIds")
        self._lock_rpc = channel.unary_stream(
            f"/{SERVICE}/Lock", request_serializer=_dumps, response_deserializer=_loads)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        for key in [k for k in state if k.endswith("_rpc")]:
            del state[key]
        return state

    @property
    def url(self) -> str:
        host, port = self.address
        return f"{GRPC_SCHEME}{host}:{port}"

    def settings(self) -> dict[str, Any]:
        """The proxy's heartbeat settings and database backend (fetched once)."""
        if self._settings is None:
            self._settings = self._settings_rpc({}, wait_for_ready=True)
        return self._settings

    # --- dm-tune's engine-side operations
    @contextmanager
    def campaign_lock(self, name: str) -> Iterator[None]:
        """Hold the campaign lock ``name`` (in the proxy) for the block."""
        # no wait_for_ready: a proxy that is down fails the call at once (UNAVAILABLE),
        # which the caller's retry waits out within the outage limit
        call = self._lock_rpc({"name": name})
        try:
            reply = next(call)
            if not reply.get("held"):
                raise StorageError(f"the storage proxy did not grant lock {name!r}")
            yield
        finally:
            call.cancel()

    def state_counts(self) -> dict[str, dict[str, int]]:
        return self._state_counts_rpc({})

    def budgets(self, key: str) -> dict[str, int]:
        return self._budgets_rpc({"key": key})

    # --- Optuna's BaseHeartbeat
    def record_heartbeat(self, trial_id: int) -> None:
        self._heartbeat_rpc({"trial_id": trial_id})

    def stale_trial_ids(self, study_id: int) -> list[int]:
        return list(self._stale_rpc({"study_id": study_id}))

    def orphan_trial_ids(self, study_name: str, older_than_s: float) -> list[int]:
        """RUNNING trials that never beat (a claim cut by an outage), found in the proxy."""
        return list(self._orphans_rpc({"study_name": study_name,
                                       "older_than_s": older_than_s}))

    def get_heartbeat_interval(self) -> int | None:
        return self.settings()["heartbeat_interval"]

    def get_heartbeat_stale_trial_callback(
        self,
    ) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        if self.get_heartbeat_interval() is None:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=self.settings()["max_retry"])


_GRPC_URL = re.compile(r"^grpc://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})/?$")


#: seconds a TCP connection to the proxy may take before the URL is refused
PROBE_TIMEOUT_S = 3.0


def _probe(url: str, host: str, port: int) -> None:
    """Refuse at once a proxy that is not there: gRPC's channel would retry a refused
    connection for the whole ``timeout`` (30 s of silence before a one-line refusal)."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return
    except ConnectionRefusedError:
        why = "connection refused (nothing listens there)"
    except socket.gaierror as exc:
        why = f"unknown host ({exc.strerror or exc})"
    except TimeoutError:
        why = f"no answer within {PROBE_TIMEOUT_S:g} s"
    except OSError as exc:
        why = exc.strerror or str(exc)
    raise StorageError(f"cannot reach the storage proxy {url}: {why}; start it with "
                       "`dm-tune storage-proxy` or check the URL")


def open_grpc_storage(url: str, *, timeout: float = 30.0) -> ProxyStorage:
    """Connect to a proxy at ``grpc://HOST:PORT``; wait up to ``timeout`` s for it.

    A port where nothing listens (or a host that does not answer within
    :data:`PROBE_TIMEOUT_S`) is refused at once; a proxy that accepts connections but is
    not serving yet is waited for.

    Raises:
        StorageError: not a grpc:// URL, grpcio missing, or no proxy answering in time.
    """
    _require_grpc()
    match = _GRPC_URL.match(url.strip())
    if not match or not 0 < int(match["port"]) < 65536:
        raise StorageError(f"invalid proxy URL {url!r} (expected grpc://HOST:PORT)")
    host, port = match["host"], int(match["port"])
    _probe(url, host.strip("[]"), port)
    storage = ProxyStorage(host=host, port=port)
    try:
        storage.wait_server_ready(timeout=timeout)
        storage.settings()
    except (ConnectionError, grpc.RpcError) as exc:
        storage.close()
        detail = exc.details() if isinstance(exc, grpc.RpcError) else "no answer"
        raise StorageError(f"cannot reach the storage proxy {url}: {detail} "
                           f"(after {timeout:g} s)") from None
    return storage


# ------------------------------------------------------------------ command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dm_tune.cluster.proxy",
        description=f"gRPC storage proxy for dm-tune workers. The database URL is read from "
        f"${STORAGE_ENV} only (never from the command line, where `ps` would show it).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--pool-size", type=int, default=DEFAULT_POOL_SIZE,
                        help="database connections, at most (default %(default)s)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help="gRPC server threads; more than the number of workers")
    parser.add_argument("--heartbeat", type=int, default=60,
                        help="workers' trial heartbeat interval in seconds")
    parser.add_argument("--grace", type=int, default=None,
                        help="seconds without heartbeat before a trial is failed (2x heartbeat)")
    args = parser.parse_args(argv)
    if not os.environ.get(STORAGE_ENV):
        print(f"dm-tune proxy: set {STORAGE_ENV} to the database URL", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        serve_proxy(None, args.host, args.port, args.pool_size, threads=args.threads,
                    heartbeat_interval=args.heartbeat, grace_period=args.grace)
    except StorageError as exc:
        print(f"dm-tune proxy: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
