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
    for name in ("POSTGRES_PASSWORD", "CAMPAIGN", "POSTGRES_PORT"):
        env.pop(name, None)
    return env


def _resolved(env_file: Path) -> dict[str, Any]:
    """The compose file as docker-compose resolves it with ``env_file``."""
    cmd = [*_compose(), "--env-file", str(env_file), "-f", str(REPO / "docker-compose.yml")]
    result = subprocess.run(
        [*cmd, "config"], capture_output=True, text=True, cwd=REPO, env=_env_without_password()
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The compose file as docker-compose resolves it with the example env file."""
    return _resolved(ENV_EXAMPLE)


def _published(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host IP, host port, container port) of every published port (v1 strings such as
    '127.0.0.1:55432:5432/tcp' and v2 mappings)."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), str(port.get("published", "")),
                        str(port.get("target", ""))))
        else:
            parts = str(port).split("/")[0].split(":")
            parts = ["", *parts] if len(parts) == 2 else parts
            out.append((parts[0], parts[1], parts[2]))
    return out


def _host_ips(service: dict[str, Any]) -> list[str]:
    """Return the host IP of every published port."""
    return [ip for ip, _, _ in _published(service)]


def test_postgres_port_is_a_setting_that_avoids_5432(tmp_path: Path) -> None:
    """Published on 127.0.0.1:55432 by default (a local server on 5432 would collide),
    on POSTGRES_PORT when set; inside the network the workers still use postgres:5432."""
    example = ENV_EXAMPLE.read_text()
    without = tmp_path / "no-port.env"
    without.write_text("\n".join(ln for ln in example.splitlines()
                                 if not ln.startswith("POSTGRES_PORT=")))
    assert _published(_resolved(without)["services"]["postgres"]) == [
        ("127.0.0.1", "55432", "5432")]
    chosen = tmp_path / "port.env"
    chosen.write_text(example + "\nPOSTGRES_PORT=6543\n")
    config = _resolved(chosen)
    assert _published(config["services"]["postgres"]) == [("127.0.0.1", "6543", "5432")]
    assert "@postgres:5432/" in config["services"]["worker"]["environment"]["DM_TUNE_STORAGE"]
    assert "POSTGRES_PORT=55432" in example


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


def test_worker_claims_one_gpu_of_all_and_waits_for_create(config: dict[str, Any]) -> None:
    """Every replica sees all GPUs and its entrypoint claims one through a lock file in a
    volume that the replicas share (test_entrypoint_gives_each_replica_its_own_gpu)."""
    worker = config["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == "all"
    assert worker["environment"]["DM_TUNE_GPU_SLOTS"] == "/gpu-slots"
    assert any(str(v).startswith("gpu-slots:/gpu-slots") for v in worker["volumes"])
    assert "gpu-slots" in config["volumes"]
    assert "DM_TUNE_GPU_SLOTS" not in config["services"]["dashboard"]["environment"]
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
    for name in ("DM_TUNE_STORAGE", "POSTGRES_PASSWORD", "DM_TUNE_GPU_SLOTS",
                 "CUDA_VISIBLE_DEVICES"):
        env.pop(name, None)
    return env


CHECK = REPO / "docker" / "check-password.sh"


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("change-me", "still the example 'change-me'"),
        ("", "is empty"),
        ("p@ss:word", "must be URL-safe"),
        ("a/b?c#d", "must be URL-safe"),
        ("50%off", "must be URL-safe"),
    ],
)
def test_password_check_refuses_example_and_unsafe(password: str, message: str,
                                                   tmp_path: Path) -> None:
    env = dict(_fake_dm_tune(tmp_path), POSTGRES_PASSWORD=password)
    checked = subprocess.run(["bash", str(CHECK), "echo", "started"], capture_output=True,
                             text=True, env=env, timeout=30)
    assert checked.returncode == 2 and checked.stdout == ""
    assert checked.stderr.count("\n") == 1 and message in checked.stderr
    assert "letters, digits and . _ ~ -" in checked.stderr
    # dm-tune's entrypoint refuses too, before waiting for a database or running anything
    refused = subprocess.run(["bash", str(ENTRYPOINT), "create"], capture_output=True,
                             text=True, env=env, timeout=30)
    assert refused.returncode == 2 and "dm-tune called" not in refused.stdout
    assert message in refused.stderr


def test_password_check_passes_a_good_password_on(tmp_path: Path) -> None:
    env = dict(_fake_dm_tune(tmp_path), POSTGRES_PASSWORD="Ab3.x_y~z-9f0c21d")
    checked = subprocess.run(["bash", str(CHECK), "echo", "started"], capture_output=True,
                             text=True, env=env, timeout=30)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "started\n", "")
    ran = subprocess.run(["bash", str(ENTRYPOINT), "status"], capture_output=True, text=True,
                         env=env, timeout=30)
    assert ran.returncode == 0 and ran.stdout == "dm-tune called with: status\n"


def test_postgres_checks_the_password_before_initialising(config: dict[str, Any]) -> None:
    pg = config["services"]["postgres"]
    assert pg["entrypoint"] == ["bash", "/usr/local/bin/dm-tune-check-password",
                                "docker-entrypoint.sh"]
    assert pg["command"] == ["postgres"]
    assert any(str(v).endswith("docker/check-password.sh:/usr/local/bin/dm-tune-check-password:ro")
               for v in pg["volumes"])
    for name in ("create", "worker", "dashboard"):  # dm-tune's entrypoint checks it too
        assert config["services"][name]["environment"]["POSTGRES_PASSWORD"] == "change-me"
    text = (REPO / "docker" / "Dockerfile").read_text()
    assert "COPY docker/check-password.sh /usr/local/bin/dm-tune-check-password" in text


def _replica(env: dict[str, str]) -> subprocess.Popen:
    """One worker replica: the entrypoint, then the fake `dm-tune` (holding the lock)."""
    return subprocess.Popen(["bash", str(ENTRYPOINT), "worker"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _started(proc: subprocess.Popen) -> str:
    return proc.stdout.readline().strip()


def test_entrypoint_gives_each_replica_its_own_gpu(tmp_path: Path) -> None:
    env = _fake_dm_tune(tmp_path)
    release = tmp_path / "release"
    fake = tmp_path / "bin" / "dm-tune"
    # prints its GPU, then runs until `release` exists, holding the entrypoint's lock
    fake.write_text('#!/bin/sh\n[ "$CUDA_DEVICE_ORDER" = PCI_BUS_ID ] || exit 3\n'
                    'echo "gpu=$CUDA_VISIBLE_DEVICES"\n'
                    f'while [ ! -e {release} ]; do sleep 0.05; done\n')
    env.update(DM_TUNE_GPU_SLOTS=str(tmp_path / "slots"), DM_TUNE_GPU_COUNT="2")
    first, second = _replica(env), None
    try:
        assert _started(first) == "gpu=0"
        second = _replica(env)
        assert _started(second) == "gpu=1"
        third = subprocess.run(["bash", str(ENTRYPOINT), "worker"], capture_output=True,
                               text=True, env=env, timeout=30)
        assert third.returncode == 0 and third.stdout == ""
        assert "all 2 GPUs are taken by other replicas" in third.stderr
        first.kill()  # a crashed replica's GPU is free again for its restart
        first.wait(timeout=10)
        # its last `sleep 0.05` child inherited the lock, as a worker's children would
        free = ["flock", "-w", "5", str(tmp_path / "slots" / "gpu-0.lock"), "true"]
        assert subprocess.run(free, timeout=30).returncode == 0
        again = _replica(env)
        assert _started(again) == "gpu=0"
        assert "this replica uses GPU 0 of 2" in again.stderr.readline()
    finally:
        release.touch()
        for proc in (first, second):
            if proc is not None:
                proc.wait(timeout=10)
    assert again.wait(timeout=10) == 0


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
