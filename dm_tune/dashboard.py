"""optuna-dashboard server for a dm-tune storage, on loopback unless explicitly allowed.

The dashboard has no authentication and can change data (notes, trial states, deletes),
so binding to anything but a loopback address needs ``allow_remote=True``.

Example:
    >>> serve_dashboard("sqlite:///dm_tune.db", port=8080)  # doctest: +SKIP
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna_dashboard

from dm_tune.dashboard_view import DashboardView
from dm_tune.errors import DashboardRefused, DMTuneError
from dm_tune.storage import open_storage, redact_url, resolve_storage_url

__all__ = ["DashboardRefused", "exposure", "is_loopback", "serve_dashboard"]

_logger = logging.getLogger(__name__)


class _Server(ThreadingMixIn, WSGIServer):
    """Threaded so the page's parallel API calls do not queue behind each other."""

    daemon_threads = True  # Ctrl-C must not wait for open keep-alive connections


class _Server6(_Server):
    """IPv6 variant: socketserver picks the family from a class attribute."""

    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """Request handler that does not log every request (the page polls every few seconds)."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
        """Drop the access log line."""


def _is_loopback_ip(text: str) -> bool:
    """Return True for a literal loopback address (IPv4-mapped IPv6 included)."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def is_loopback(host: str) -> bool:
    """Return True if ``host`` is or resolves only to loopback addresses (127.0.0.0/8, ::1).

    '' and 0.0.0.0 / :: (all interfaces) are not loopback; a name that does not resolve
    is treated as not loopback, so the caller refuses rather than guesses.
    """
    host = host.strip().strip("[]")
    if not host:
        return False
    try:
        return _is_loopback_ip(host)
    except ValueError:
        pass  # not a literal address: resolve the name
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(_is_loopback_ip(str(a)) for a in addresses)


def _browse_url(host: str, port: int) -> str:
    """Return the URL a user on this machine should open."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"  # all interfaces include loopback
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/dashboard/"


def exposure(host: str, allow_remote: bool, service: str, risk: str) -> tuple[str, str | None]:
    """The bare host to bind, and the warning to show when it is beyond loopback.

    Raises:
        DashboardRefused: a non-loopback ``host`` without ``allow_remote``.
    """
    bare = host.strip().strip("[]")
    if is_loopback(bare):
        return bare, None
    where = bare or "(all interfaces)"
    if not allow_remote:
        raise DashboardRefused(
            f"refusing to serve {service} on {where!r}: it has no authentication and anyone "
            f"who reaches it {risk}; use 127.0.0.1 (with an SSH tunnel) or pass --allow-remote"
        )
    return bare, f"WARNING: {service} on {where!r} without authentication; anyone who " \
                 f"reaches this port {risk}"


def serve_dashboard(
    storage_url: str | None,
    host: str = "127.0.0.1",
    port: int = 8080,
    allow_remote: bool = False,
    quiet: bool = False,
) -> None:
    """Serve optuna-dashboard for ``storage_url`` on ``host:port`` until Ctrl-C.

    ``port=0`` picks a free port (the printed URL shows it).

    Raises:
        DashboardRefused: ``host`` is not loopback and ``allow_remote`` is False.
        StorageError: the storage cannot be opened (a missing SQLite file is not created).
        DMTuneError: the address cannot be bound (e.g. the port is in use).
    """
    host, warning = exposure(host, allow_remote, "the dashboard",
                             "can read and change the studies")
    if warning:
        _logger.warning(warning)
        print(warning, file=sys.stderr, flush=True)  # always shown, even with quiet=True
    url = resolve_storage_url(storage_url)
    # The dashboard never runs trials, so no heartbeat; never create a mistyped SQLite file.
    storage = open_storage(url, heartbeat_interval=None, create=False)
    # role-labelled names and dm-tune's selection on each search study (display only)
    app = optuna_dashboard.wsgi(DashboardView(storage))
    server_class = _Server6 if ":" in host else _Server
    handler = _QuietHandler if quiet else WSGIRequestHandler
    try:
        server = make_server(host, port, app, server_class=server_class, handler_class=handler)
    except OSError as error:  # the port is busy, or not an address of this machine
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()
        raise DMTuneError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    print(
        f"dm-tune dashboard for {redact_url(url)}\n"
        f"open {_browse_url(host, server.server_port)}  (Ctrl-C to stop)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        engine = getattr(storage, "engine", None)  # a grpc:// proxy client has none
        if engine is not None:
            engine.dispose()
