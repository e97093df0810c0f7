"""Reusable pytest fixture: a fresh, uniquely named PostgreSQL database per test.

Use it by importing the fixture into a test module (``from pg import pg_url``) or by
listing ``"pg"`` in a conftest's ``pytest_plugins``. The server is the local one unless
``DM_TUNE_TEST_PG`` names an admin URL (a database that exists, e.g. ``postgres``).
When the server is unreachable the test is skipped locally and FAILS under CI=true,
so CI cannot go green by silently skipping every PostgreSQL test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import NoReturn

import pytest
import sqlalchemy

ADMIN_URL = os.environ.get(
    "DM_TUNE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def in_ci() -> bool:
    """Return True when running under CI (missing services must fail, not skip)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_grpc() -> None:
    """Skip the calling module without grpcio and protobuf (Optuna's optional extra, which
    the proxy needs); in CI they must be installed, so there the import error is raised."""
    try:
        import grpc  # noqa: F401
    except ImportError:
        if in_ci():
            raise
        pytest.skip("the proxy needs grpcio and protobuf (Optuna's optional extra)",
                    allow_module_level=True)


def unavailable(reason: str) -> NoReturn:
    """Skip locally, fail in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: required)", pytrace=False)
    pytest.skip(reason)


def _admin_engine() -> sqlalchemy.Engine:
    """Return an autocommit engine on the admin database (CREATE DATABASE needs autocommit)."""
    return sqlalchemy.create_engine(
        ADMIN_URL,
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 3},
        poolclass=sqlalchemy.pool.NullPool,
    )


def _drop(engine: sqlalchemy.Engine, name: str) -> None:
    """Terminate the database's sessions (workers a test left behind), then drop it."""
    with engine.connect() as conn:
        conn.execute(
            sqlalchemy.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """Yield the URL of a new empty database on the test server; drop it afterwards."""
    engine = _admin_engine()
    name = f"dmtune_test_{uuid.uuid4().hex[:12]}"
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sqlalchemy.exc.OperationalError as exc:
        engine.dispose()
        first = str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__
        unavailable(f"PostgreSQL test server unreachable: {first}")
    url = sqlalchemy.engine.make_url(ADMIN_URL).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        _drop(engine, name)
        engine.dispose()
