"""Tests for docker-compose.yml, docker/Dockerfile and docker/entrypoint.sh (no Docker daemon)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # a dependency of optuna
from pg import unavailable

REPO = Path(__file__).parents[1]
ENV_EXAMPLE = REPO / "docker" / ".env.example"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
VENV_BIN = str(Path(sys.executable).parent)


def _compose() -> list[str]:
    """Return the compose command: Debian's docker-compose (v1) or the docker v2 plugin."""
    if path := shutil.which("docker-compose"):
        return [path]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    unavailable("docker-compose is not installed (apt-get install docker-compose)")


def _env_without_password() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("POSTGRES_PASSWORD", None)
    env.pop("CAMPAIGN", None)
    return env


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The compose file as docker-compose resolves it with the example env file."""
    cmd = [*_compose(), "--env-file", str(ENV_EXAMPLE), "-f", str(REPO / "docker-compose.yml")]
    result = subprocess.run(
        [*cmd, "config"], capture_output=True, text=True, cwd=REPO, env=_env_without_password()
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _host_ips(service: dict[str, Any]) -> list[str]:
    """Return the host IP of every published port (v1 strings and v2 mappings)."""
    ips = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ips.append(port.get("host_ip", ""))
        else:
            parts = str(port).split(":")
            ips.append(parts[0] if len(parts) == 3 else "")
    return ips


def test_services_present(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {"postgres", "create", "worker", "dashboard"}


def test_published_ports_are_loopback_only(config: dict[str, Any]) -> None:
    published = {name: _host_ips(svc) for name, svc in config["services"].items()}
    assert published["postgres"] == ["127.0.0.1"]
    assert published["dashboard"] == ["127.0.0.1"]
    assert all(ip == "127.0.0.1" for ips in published.values() for ip in ips)


def test_postgres_healthcheck_and_volume(config: dict[str, Any]) -> None:
    pg = config["services"]["postgres"]
    assert pg["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert any(
        str(v).startswith("pgdata:") or (isinstance(v, dict) and v.get("source") == "pgdata")
        for v in pg["volumes"]
    )
    assert "pgdata" in config["volumes"]


def test_worker_reserves_a_gpu_and_waits_for_create(config: dict[str, Any]) -> None:
    worker = config["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert int(device["count"]) == 1
    assert worker["depends_on"]["create"]["condition"] == "service_completed_successfully"
    assert config["services"]["create"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    command = worker["command"]
    assert command[0] == "worker" and command[command.index("--device") + 1] == "cuda:0"
    studies = [v for v in worker["volumes"] if "/studies" in str(v)]
    assert studies and all(
        str(v).endswith(":ro") or (isinstance(v, dict) and v.get("read_only")) for v in studies
    )


def test_storage_url_from_env_file(config: dict[str, Any]) -> None:
    url = config["services"]["worker"]["environment"]["DM_TUNE_STORAGE"]
    assert url == "postgresql+psycopg://dmtune:change-me@postgres:5432/dmtune"
    assert "create" in config["services"]["create"]["command"]


def test_no_password_in_compose_file_and_env_required() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    assert "change-me" not in text
    result = subprocess.run(
        [*_compose(), "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_env_without_password(),
    )
    assert result.returncode != 0
    assert "docker/.env" in result.stderr + result.stdout


def test_dockerfile_non_root_with_entrypoint() -> None:
    text = (REPO / "docker" / "Dockerfile").read_text()
    assert "pytorch/pytorch:" in text
    users = [ln.split()[1] for ln in text.splitlines() if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["/usr/local/bin/dm-tune-entrypoint"]' in text
    assert "--no-deps" in text


def _fake_dm_tune(tmp_path: Path) -> dict[str, str]:
    """Return an env whose PATH has a `dm-tune` that echoes its arguments, then the venv."""
    fake = tmp_path / "bin" / "dm-tune"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "dm-tune called with: $*"\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake.parent}:{VENV_BIN}:{os.environ['PATH']}")
    env.pop("DM_TUNE_STORAGE", None)
    return env


def test_entrypoint_execs_dm_tune_with_arguments(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(ENTRYPOINT), "status", "--storage", "sqlite:///x.db"],
        capture_output=True,
        text=True,
        env=_fake_dm_tune(tmp_path),
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "dm-tune called with: status --storage sqlite:///x.db"


@pytest.mark.postgres
def test_entrypoint_waits_for_postgres(tmp_path: Path) -> None:
    env = _fake_dm_tune(tmp_path)
    env["DM_TUNE_STORAGE"] = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ok = subprocess.run(
        ["bash", str(ENTRYPOINT), "create"], capture_output=True, text=True, env=env, timeout=60
    )
    if ok.returncode != 0 and "Connection refused" in ok.stderr:
        unavailable("PostgreSQL test server unreachable")
    assert ok.returncode == 0, ok.stderr
    assert "dm-tune called with: create" in ok.stdout

    env["DM_TUNE_DB_WAIT"] = "1"
    gone = subprocess.run(
        ["bash", str(ENTRYPOINT), "worker", "--storage=postgresql://u:Hidden9@127.0.0.1:1/db"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert gone.returncode != 0
    assert "giving up waiting for the database" in gone.stderr
    assert "Hidden9" not in gone.stderr + gone.stdout
    assert "dm-tune called" not in gone.stdout


def test_entrypoint_help_runs_real_cli() -> None:
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", str(ENTRYPOINT), "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "dashboard" in result.stdout
