"""The storage password never reaches a worker's command line (``ps`` shows it to anyone).

The launcher hands the storage URL to its workers through the environment
(``DM_TUNE_STORAGE``), which only the same user and root can read. These tests start a
real ``run --jobs 2`` and ``launch --cpus 2`` against a PostgreSQL role with a password
and read ``/proc/<pid>/cmdline`` of every worker while it runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy
from pg import ADMIN_URL, _admin_engine, _drop, unavailable

from dm_tune.campaign.launcher import plan_slots, worker_command, worker_env
from dm_tune.storage import STORAGE_ENV

PASSWORD = f"Pw{uuid.uuid4().hex[:10]}x"
CAMPAIGN = """\
[campaign]
name = "secrets"

[data]
dataset = "digits"
val_fraction = 0.125

[training]
epochs = 30
batch_size = 64

[[noise]]
kind = "symmetric"
rates = [0.2, 0.4]

[search]
trials = 40
min_epochs = 30
warm_start = "none"
startup_trials = 1

[baselines]
losses = ["cce"]
"""


def test_worker_command_never_holds_the_storage_url() -> None:
    url = f"postgresql+psycopg://dm:{PASSWORD}@db.example:5432/dm"
    for slot in plan_slots(None, 1, 2) + plan_slots([0, 1], 2, None):
        command = worker_command("studies/c.toml", slot.device)
        text = " ".join(command)
        assert "://" not in text and PASSWORD not in text and "--storage" not in command
        assert worker_env(slot, url)[STORAGE_ENV] == url  # the URL goes this way only


@pytest.fixture
def password_url() -> Iterator[str]:
    """A new role with a password and a database it owns; both dropped afterwards."""
    engine = _admin_engine()
    name = f"dmtune_secret_{uuid.uuid4().hex[:10]}"
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{PASSWORD}'")
    except sqlalchemy.exc.OperationalError as exc:
        engine.dispose()
        unavailable(f"PostgreSQL test server unreachable: {str(exc.orig).splitlines()[0]}")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}" OWNER "{name}"')
        admin = sqlalchemy.engine.make_url(ADMIN_URL)
        url = admin.set(username=name, password=PASSWORD, database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        _drop(engine, name)
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{name}"')
        engine.dispose()


def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc/*/stat)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


def _cmdline(pid: int) -> str | None:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None


@pytest.mark.postgres
@pytest.mark.parametrize("command", [("run", "--jobs", "2", "--no-report"),
                                     ("launch", "--cpus", "2")], ids=["run-jobs-2", "launch"])
def test_no_password_in_any_worker_command_line(command: tuple[str, ...], password_url: str,
                                                tmp_path: Path) -> None:
    assert PASSWORD in password_url
    (tmp_path / "c.toml").write_text(CAMPAIGN)
    env = {k: v for k, v in os.environ.items() if k != STORAGE_ENV}
    log = tmp_path / "output.log"
    with log.open("w") as output:
        parent = subprocess.Popen(
            [sys.executable, "-m", "dm_tune", command[0], "c.toml", "--storage", password_url,
             *command[1:]],
            cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the test can always end it
        )
    seen: dict[int, str] = {}
    environs: dict[int, list[bytes]] = {}
    control = False
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and parent.poll() is None:
            # the control: this very method finds the password where the user put it
            control = control or PASSWORD in (_cmdline(parent.pid) or "")
            for pid in _children(parent.pid):
                line = _cmdline(pid)
                if line:
                    seen[pid] = line
                if line and " worker " in line and pid not in environs:
                    try:
                        environs[pid] = (Path("/proc") / str(pid) / "environ").read_bytes(
                        ).split(b"\0")
                    except OSError:
                        pass
            if len(environs) >= 2:
                break
            time.sleep(0.2)
        assert control, f"never saw the password in /proc/{parent.pid}/cmdline"
        workers = {pid: line for pid, line in seen.items() if " worker " in line}
        assert len(workers) >= 2, f"saw no 2 workers: {seen}; exit {parent.poll()}"
        for pid, line in seen.items():
            for secret in (PASSWORD, quote(PASSWORD), password_url):
                assert secret not in line, f"pid {pid}: {line}"
        for environ in environs.values():  # the URL reached them through their environment
            assert f"{STORAGE_ENV}={password_url}".encode() in environ
    finally:
        if parent.poll() is None:
            parent.send_signal(signal.SIGTERM)  # the launcher forwards it to its workers
            try:
                parent.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(parent.pid, signal.SIGKILL)
                parent.wait(timeout=30)
    text = log.read_text()
    assert PASSWORD not in text, text
