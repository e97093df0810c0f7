"""A throw-away PostgreSQL database on the local server, for the benchmarks.

The tests have their own fixture (tests/pg.py), which skips locally and fails in CI.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def database_url(name: str) -> str:
    """The SQLAlchemy URL of a database on the local server."""
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def ensure_postgres() -> None:
    """Start the local cluster if it does not answer (as the brief's command does)."""
    ready = ["pg_isready", "-q", "-h", "127.0.0.1"]
    if subprocess.run(ready, check=False).returncode == 0:
        return
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions:
        raise RuntimeError("PostgreSQL is not running and no cluster is configured")
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
                   check=False)
    for _ in range(30):
        if subprocess.run(ready, check=False).returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError("PostgreSQL did not come up on 127.0.0.1:5432")


def create_database(prefix: str = "dmtune_bench") -> str:
    """Create an empty, uniquely named database; return its name."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    """Drop a database made by create_database, ending its sessions first."""
    import psycopg

    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
