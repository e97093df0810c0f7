"""A throw-away PostgreSQL cluster a test controls: start, stop, restart on its own port.

Fault tests restart the server under running workers; they must never touch the shared
server on 5432. The cluster is created with the Debian server binaries (``initdb``,
``pg_ctl``) as the ``postgres`` user in a temporary folder, trust auth on loopback.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from pg import unavailable

__all__ = ["TempCluster", "free_port"]


def free_port() -> int:
    """A TCP port on loopback nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


class TempCluster:
    """initdb + pg_ctl in a temporary folder, run as ``postgres`` (root may not run them)."""

    def __init__(self) -> None:
        bindir = _bindir()
        if bindir is None or shutil.which("runuser") is None:
            unavailable("PostgreSQL server binaries (initdb, pg_ctl) or runuser are missing")
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="dm-tune-pg-"))
        self.data = self.root / "data"
        shutil.chown(self.root, "postgres", "postgres")
        os.chmod(self.root, 0o700)
        self._as_postgres("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                          "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, tool: str, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bindir / tool), *args],
                       check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.root} -c fsync=off")
        self._as_postgres("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                          str(self.root / "log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)
