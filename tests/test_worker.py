"""Distributed workers on the real PostgreSQL server: shared budgets, crashes, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from pg import pg_url  # noqa: F401 (a pytest fixture)

from dm_tune.campaign.launcher import plan_slots
from tests.campaign_files import write_tiny

pytestmark = pytest.mark.postgres

def _campaign(tmp_path: Path, epochs: int = 3, trials: int = 12) -> Path:
    return write_tiny(tmp_path, name="dist", epochs=epochs, trials=trials, baselines=())


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dm_tune", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "DM_TUNE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _create(config: Path, url: str) -> None:
    result = subprocess.run(_cli("create", str(config), "--storage", url), capture_output=True,
                            text=True, timeout=120, env=_env())
    assert result.returncode == 0, result.stderr


def _worker(config: Path, url: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        _cli("worker", str(config), "--storage", url, "--device", "cpu", "--threads", "1",
             *extra),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )


def _all_trials(url: str) -> dict[str, list[optuna.trial.FrozenTrial]]:
    storage = optuna.storages.RDBStorage(url)
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage).get_trials()
            for s in storage.get_all_studies()}


def _counted(trials) -> list:
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def _wait_for_running(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # mid-trial: claimed and its parameters sampled (training under way)
            if any(t.state == TrialState.RUNNING and t.params
                   for ts in _all_trials(url).values() for t in ts):
                return
        except Exception:  # tables may not exist yet
            pass
        time.sleep(0.2)
    raise AssertionError("no trial started running")


def test_three_workers_share_the_budget_exactly(tmp_path, pg_url):  # noqa: F811
    config = _campaign(tmp_path)
    _create(config, pg_url)
    workers = [_worker(config, pg_url) for _ in range(3)]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], outputs
    trials = _all_trials(pg_url)
    assert sorted(trials) == ["dist/symmetric-0.20", "dist/symmetric-0.40"]
    assert sum(len(_counted(ts)) for ts in trials.values()) == 24
    for study_trials in trials.values():
        assert len(_counted(study_trials)) == 12
        numbers = [t.number for t in study_trials]
        assert len(numbers) == len(set(numbers))
        assert not [t for t in study_trials if t.state != TrialState.COMPLETE and
                    t.state != TrialState.PRUNED]
        for trial in study_trials:
            assert {"loss", "seed", "worker", "device", "seconds"} <= set(trial.user_attrs)
    # all three took part (the budget was shared, not run by whoever came first)
    workers_seen = {t.user_attrs["worker"] for ts in trials.values() for t in ts}
    assert len(workers_seen) == 3


def test_killed_worker_trial_is_retried_and_budget_still_exact(tmp_path, pg_url):  # noqa: F811
    config = _campaign(tmp_path, epochs=60, trials=4)
    _create(config, pg_url)
    victim = _worker(config, pg_url, "--heartbeat", "1")
    _wait_for_running(pg_url)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    survivor = _worker(config, pg_url, "--heartbeat", "1")
    out, err = survivor.communicate(timeout=600)
    assert survivor.returncode == 0, err
    trials = _all_trials(pg_url)
    everything = [t for ts in trials.values() for t in ts]
    failed = [t for t in everything if t.state == TrialState.FAIL]
    assert len(failed) == 1
    retries = [t for t in everything if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retries) == 1 and retries[0].params == failed[0].params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    for study_trials in trials.values():
        assert len(_counted(study_trials)) == 4
    assert not [t for t in everything if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_sigterm_stops_within_an_epoch_with_exit_zero(tmp_path, pg_url):  # noqa: F811
    config = _campaign(tmp_path, epochs=2000, trials=2)
    _create(config, pg_url)
    worker = _worker(config, pg_url)
    _wait_for_running(pg_url)
    time.sleep(0.5)
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=60)
    elapsed = time.monotonic() - sent
    assert worker.returncode == 0, err
    assert "stopped by signal" in out
    assert elapsed < 15  # one digits epoch is ~20 ms; the rest is interpreter shutdown
    everything = [t for ts in _all_trials(pg_url).values() for t in ts]
    stopped = [t for t in everything if t.state == TrialState.FAIL]
    assert len(stopped) == 1 and stopped[0].user_attrs.get("stopped")
    assert 0 < stopped[0].user_attrs["epochs_run"] < 2000
    requeued = [t for t in everything if t.state == TrialState.WAITING
                and t.system_attrs.get("failed_trial") == stopped[0].number]
    assert len(requeued) == 1 and requeued[0].params == stopped[0].params
    assert not [t for t in everything if t.state == TrialState.RUNNING]


def test_worker_with_other_labels_refuses_with_exit_2(tmp_path, pg_url):  # noqa: F811
    config = _campaign(tmp_path)
    _create(config, pg_url)
    # Another machine created the study from other data: its stored digest differs.
    storage = optuna.storages.RDBStorage(pg_url)
    study = optuna.load_study(study_name="dist/symmetric-0.40", storage=storage)
    study.set_user_attr("label_digest", "0" * 64)
    worker = _worker(config, pg_url)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 2
    assert "noisy labels" in err and "Traceback" not in err
    # nothing was trained: only the warm-start trials queued by `create` exist
    states = {t.state for ts in _all_trials(pg_url).values() for t in ts}
    assert states == {TrialState.WAITING}


def test_launch_plans_one_slot_per_gpu_and_splits_cpu_threads():
    slots = plan_slots([0, 1], per_gpu=2, cpus=None)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "0", "1", "1"]
    assert {s.device for s in slots} == {"cuda:0"}
    cpu = plan_slots(None, 1, 2)
    assert len(cpu) == 2 and all(s.device == "cpu" for s in cpu)
    assert all(s.env["CUDA_VISIBLE_DEVICES"] == "" for s in cpu)


def test_launch_runs_cpu_workers_to_the_budget(tmp_path, pg_url):  # noqa: F811
    config = _campaign(tmp_path, trials=3)
    result = subprocess.run(_cli("launch", str(config), "--storage", pg_url, "--cpus", "2"),
                            capture_output=True, text=True, timeout=600, env=_env())
    assert result.returncode == 0, result.stderr
    trials = _all_trials(pg_url)
    assert all(len(_counted(ts)) == 3 for ts in trials.values())
    assert len({t.user_attrs["worker"] for ts in trials.values() for t in ts}) >= 1
