"""Cluster parts that need neither Slurm nor PostgreSQL: `launch --slurm`'s refusals and
its "nothing to submit", `status` without Slurm, `storage-proxy`'s host rule, the
storage dispatch on grpc:// URLs, and the worker's liveness file (DM_TUNE_HEARTBEAT_FILE).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from campaign_files import write_tiny
from typer.testing import CliRunner

from dm_tune.campaign import _optuna, liveness
from dm_tune.cli import app
from dm_tune.cli.cluster_commands import parse_extra, print_slurm_jobs
from dm_tune.errors import DMTuneError, StorageError
from dm_tune.training import TrialResult

runner = CliRunner()


def _stub_train(data, spec, loss="dm", loss_params=None, on_epoch=None, progress=None):
    if on_epoch is not None:
        on_epoch(1, {"val_accuracy": 0.5, "test_accuracy": 0.5, "train_loss": 1.0})
    return TrialResult([0.5], [0.5], 0.5, 0.5, 1, 0.5, 0.5, 0.0, 0.0, 0.2, 1, 0.01, "cpu")


def _finished_campaign(tmp_path: Path) -> tuple[Path, str]:
    """A tiny campaign run to its budgets with a stub trial (SQLite)."""
    from dm_tune.campaign.create import create_campaign
    from dm_tune.campaign.worker import run_worker
    from dm_tune.config import load_campaign_config
    from dm_tune.storage import open_storage

    config_path = write_tiny(tmp_path, name="done", epochs=1, trials=2)
    url = f"sqlite:///{tmp_path / 'done.db'}"
    storage = open_storage(url)
    config = load_campaign_config(config_path)
    create_campaign(config, storage)
    summary = run_worker(storage, config, "cpu", name="t", poll_seconds=0.05, train=_stub_train)
    assert not summary.stopped and summary.trials == 6  # 2 x (2 DM + 1 baseline)
    storage.engine.dispose()
    return config_path, url


# ------------------------------------------------------------------ launch --slurm, status


def test_parse_extra() -> None:
    assert parse_extra(["mem=16G", "--cpus-per-task=4", "exclusive", "comment=a=b"]) == {
        "mem": "16G", "cpus-per-task": "4", "exclusive": None, "comment": "a=b"}
    assert parse_extra(None) == {}
    with pytest.raises(DMTuneError, match="KEY=VALUE"):
        parse_extra(["=1"])


def test_launch_slurm_refuses_local_slot_options(tmp_path: Path) -> None:
    config = write_tiny(tmp_path)
    result = runner.invoke(app, ["launch", str(config), "--slurm", "--cpus", "2",
                                 "--storage", f"sqlite:///{tmp_path / 'x.db'}"])
    assert result.exit_code == 2
    assert "--slurm-array" in result.output


def test_launch_slurm_submits_nothing_when_every_budget_is_met(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, url = _finished_campaign(tmp_path)
    submitted = []
    monkeypatch.setattr("dm_tune.cluster.slurm.slurm_unavailable_reason", lambda: None)
    monkeypatch.setattr("dm_tune.cluster.slurm.submit_worker_array",
                        lambda *a, **k: submitted.append((a, k)) or ["1_0"])
    result = runner.invoke(app, ["launch", str(config), "--slurm", "--slurm-array", "4",
                                 "--storage", url])
    assert result.exit_code == 0, result.output
    assert "every study's budget is met; nothing submitted" in result.output
    assert submitted == []


def test_launch_slurm_hands_the_url_to_the_environment_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_tiny(tmp_path, name="todo", epochs=1, trials=2)
    url = f"sqlite:///{tmp_path / 'todo.db'}"
    calls = []

    def fake_submit(config_path, array_size, **kwargs):
        calls.append((config_path, array_size, kwargs))
        return ["77_0", "77_1"]

    monkeypatch.setattr("dm_tune.cluster.slurm.slurm_unavailable_reason", lambda: None)
    monkeypatch.setattr("dm_tune.cluster.slurm.submit_worker_array", fake_submit)
    result = runner.invoke(app, [
        "launch", str(config), "--slurm", "--slurm-array", "2", "--slurm-partition", "gpu",
        "--slurm-gpus-per-task", "1", "--slurm-time", "1:00:00", "--slurm-extra", "mem=4G",
        "--worker-heartbeat", "5", "--storage", url])
    assert result.exit_code == 0, result.output
    assert "submitted Slurm job 77 (2 worker task(s)" in result.output
    (_path, size, kwargs), = calls
    assert size == 2 and kwargs["partition"] == "gpu" and kwargs["gpus_per_task"] == 1
    assert kwargs["time"] == "1:00:00" and kwargs["extra"] == {"mem": "4G"}
    assert kwargs["env"] == {"DM_TUNE_STORAGE": url}
    assert kwargs["worker_args"] == ["--heartbeat", "5"] and kwargs["campaign"] == "todo"
    assert url not in str(kwargs["worker_args"])


def test_status_never_fails_for_slurm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from dm_tune.cluster import slurm

    asked = []

    def broken(*args, **kwargs):
        asked.append(args)
        raise slurm.SlurmError("squeue failed: slurm_load_jobs error: Unable to contact")

    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(slurm, "running_jobs", broken)
    assert print_slurm_jobs("c") == []  # no recorded job: Slurm is not asked at all
    assert asked == []
    assert print_slurm_jobs("c", ["9"]) is None  # a warning, no exception
    monkeypatch.setattr("shutil.which", lambda name: None)  # no squeue at all
    assert print_slurm_jobs("c", ["9"]) is None
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(slurm, "running_jobs", lambda ids, timeout: [("9_0", "RUNNING")])
    assert print_slurm_jobs("c", ["9"]) == [("9_0", "RUNNING")]
    out = capsys.readouterr()
    assert out.out == "Slurm tasks of dm-tune-c: 9_0 running\n"
    assert out.err == ("dm-tune: Slurm jobs 9 unknown: squeue failed: slurm_load_jobs error: "
                       "Unable to contact\n")  # none without squeue: off the cluster


# ------------------------------------------------------------------ storage-proxy, grpc://


def test_storage_proxy_refuses_a_remote_host_without_allow_remote(tmp_path: Path) -> None:
    result = runner.invoke(app, ["storage-proxy", "--host", "0.0.0.0",
                                 "--storage", f"sqlite:///{tmp_path / 'p.db'}"])
    assert result.exit_code == 2
    assert "--allow-remote" in result.output


def test_grpc_urls_go_to_the_proxy_client() -> None:
    pytest.importorskip("grpc")
    from dm_tune.storage import check_connection, open_storage

    started = time.monotonic()
    with pytest.raises(StorageError, match="invalid proxy URL"):
        open_storage("grpc://no-port")
    with pytest.raises(StorageError, match="invalid proxy URL"):
        check_connection("grpc://no-port")
    assert time.monotonic() - started < 5


# ------------------------------------------------------------------ liveness file


def test_liveness_touch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "beat"
    monkeypatch.delenv(liveness.HEARTBEAT_FILE_ENV, raising=False)
    liveness.touch()
    assert not path.exists()
    monkeypatch.setenv(liveness.HEARTBEAT_FILE_ENV, str(path))
    liveness.touch()
    assert path.exists()
    os.utime(path, (0, 0))
    liveness.touch()
    assert path.stat().st_mtime > time.time() - 60
    monkeypatch.setattr(liveness, "_failed", threading.Event())
    monkeypatch.setenv(liveness.HEARTBEAT_FILE_ENV, str(tmp_path / "missing" / "beat"))
    with caplog.at_level(logging.WARNING, logger="dm_tune.campaign.liveness"):
        liveness.touch()
        liveness.touch()
    assert len([r for r in caplog.records if "liveness file" in r.getMessage()]) == 1


class _Storage:
    def __init__(self, fail: bool) -> None:
        self.fail, self.beats = fail, 0

    def get_heartbeat_interval(self) -> int:
        return 1

    def record_heartbeat(self, trial_id: int) -> None:
        self.beats += 1
        if self.fail:
            raise ConnectionError("database unreachable")


@pytest.mark.parametrize("fail", [False, True])
def test_heartbeat_touches_the_file_only_after_a_beat_that_worked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: bool
) -> None:
    path = tmp_path / "beat"
    monkeypatch.setenv(liveness.HEARTBEAT_FILE_ENV, str(path))
    storage = _Storage(fail)
    trial = SimpleNamespace(storage=storage, _trial_id=1, number=0)
    failures = []
    with _optuna.heartbeat(trial, on_failure=failures.append):
        deadline = time.monotonic() + 10
        while storage.beats == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert storage.beats >= 1
    assert path.exists() is (not fail)
    assert bool(failures) is fail


def test_worker_touches_the_file_when_it_joins_and_each_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dm_tune.campaign.create import create_campaign
    from dm_tune.campaign.worker import run_worker
    from dm_tune.config import load_campaign_config
    from dm_tune.storage import open_storage

    path = tmp_path / "beat"
    monkeypatch.setenv(liveness.HEARTBEAT_FILE_ENV, str(path))
    touches = []
    real_touch = liveness.touch
    monkeypatch.setattr(liveness, "touch", lambda: touches.append(1) or real_touch())
    config_path = write_tiny(tmp_path, name="live", epochs=1, trials=2)
    storage = open_storage(f"sqlite:///{tmp_path / 'live.db'}")
    config = load_campaign_config(config_path)
    create_campaign(config, storage)
    summary = run_worker(storage, config, "cpu", name="t", max_trials=2, train=_stub_train)
    assert summary.trials == 2
    assert path.exists()
    assert len(touches) >= 3  # joined, then one per loop pass (and per successful beat)
