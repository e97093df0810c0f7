"""Tests for dm_tune.dashboard: loopback policy, the served API, and a headless browser."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from pg import pg_url, unavailable  # noqa: F401 (pg_url is a pytest fixture)

from dm_tune.dashboard import DashboardRefused, is_loopback, serve_dashboard
from dm_tune.storage import StorageError, open_storage

REPO = Path(__file__).parents[1]
STUDIES = ("digits-quick/symmetric-0.40", "digits-quick/pairflip-0.20")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.1.2.3", False),
        ("192.168.0.1", False),
        ("no-such-host.invalid", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


@pytest.mark.parametrize("host", ["0.0.0.0", "", "10.1.2.3"])
def test_non_loopback_refused(host: str, tmp_path: Path) -> None:
    with pytest.raises(DashboardRefused, match="--allow-remote"):
        serve_dashboard(f"sqlite:///{tmp_path / 'x.db'}", host=host, port=0)
    assert issubclass(DashboardRefused, ValueError)


def test_missing_sqlite_file_not_created(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        serve_dashboard(f"sqlite:///{tmp_path / 'typo.db'}", port=0)
    assert not (tmp_path / "typo.db").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _make_db(url: str) -> None:
    """Create the two studies the dashboard must list."""
    storage = open_storage(url, heartbeat_interval=None)
    for name in STUDIES:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
        study.enqueue_trial({"emphasis_mode": 0.5})
        study.optimize(lambda t: t.suggest_float("emphasis_mode", 0.0, 0.75), n_trials=2)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback test URL)
        return response.read()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Server:
    """A dashboard subprocess and what it printed."""

    def __init__(self, storage_url: str, host: str = "127.0.0.1", allow_remote: bool = False):
        self.port = _free_port()
        self.output = ""
        command = [sys.executable, "-u", "-m", "dm_tune", "dashboard", "--storage", storage_url,
                   "--host", host, "--port", str(self.port)]
        if allow_remote:
            command.append("--allow-remote")
        self.proc = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # a child inherits an ignored SIGINT (and Python then keeps ignoring it): when
            # this test's process ignores it, Ctrl-C would never reach the dashboard
            preexec_fn=_default_sigint,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(f"{self.base}/api/studies")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"dashboard did not start:\n{self.output}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server (Ctrl-C) and collect its output."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        out, err = self.proc.communicate()
        self.output = out + err


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'studies.db'}"
    _make_db(url)
    srv = Server(url)
    yield srv
    srv.stop()


def test_api_lists_studies(server: Server) -> None:
    summaries = json.loads(_get(f"{server.base}/api/studies"))["study_summaries"]
    assert sorted(s["study_name"] for s in summaries) == sorted(STUDIES)


def test_prints_url_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    _make_db(url)
    srv = Server(url)
    srv.stop()
    assert f"http://127.0.0.1:{srv.port}/dashboard/" in srv.output
    assert url in srv.output
    assert srv.proc.returncode == 0, srv.output  # Ctrl-C is a normal exit
    assert "Traceback" not in srv.output


def test_cli_refuses_non_loopback_host_without_allow_remote(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    _make_db(url)
    result = subprocess.run(
        [sys.executable, "-m", "dm_tune", "dashboard", "--storage", url, "--host", "0.0.0.0",
         "--port", str(_free_port())],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert result.returncode == 2
    assert "--allow-remote" in result.stderr and "Traceback" not in result.stderr


def test_allow_remote_warns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    _make_db(url)
    srv = Server(url, host="0.0.0.0", allow_remote=True)
    srv.stop()
    assert "WARNING" in srv.output and "without authentication" in srv.output


@pytest.mark.postgres
def test_postgres_password_never_printed(pg_url: str) -> None:  # noqa: F811
    secret = "Dash{Secret}9"
    url = pg_url.replace("postgres@", f"postgres:{secret}@")  # trust auth ignores it
    _make_db(url)
    srv = Server(url)
    summaries = json.loads(_get(f"{srv.base}/api/studies"))["study_summaries"]
    srv.stop()
    assert len(summaries) == 2
    assert "postgres:***@" in srv.output and secret not in srv.output


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    unavailable("chromium is not installed (apt-get install chromium)")


@pytest.mark.browser
def test_browser_renders_study_list(server: Server, tmp_path: Path) -> None:
    browser = _chromium()
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",  # root in containers; the page is our own loopback server
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",  # let the single-page app fetch and render
        "--dump-dom",
        f"{server.base}/dashboard/",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in STUDIES:
        assert name in result.stdout
