"""Races between commands: two `run` processes on one new SQLite file.

Both must create the tables without tripping over each other (one failed with `UNIQUE
constraint failed: alembic_version.version_num`), share the budgets exactly and never
propose the same point (every `run` seeded its samplers with 0).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

from dm_tune.campaign.claims import JOIN_STRIDE, join_seed
from dm_tune.config import load_campaign_config
from dm_tune.storage import open_storage
from tests.campaign_files import write_tiny

REPO = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _env() -> dict[str, str]:
    return {**os.environ, "DM_TUNE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}


def test_two_runs_at_once_on_a_new_sqlite_file_share_it_exactly(tmp_path: Path) -> None:
    budget = 12  # beyond the 5 warm-start points: the samplers propose the rest
    config = write_tiny(tmp_path, name="race", epochs=2, trials=budget, baselines=())
    url = f"sqlite:///{tmp_path / 'race.db'}"
    command = [sys.executable, "-m", "dm_tune", "run", str(config), "--storage", url,
               "--device", "cpu", "--no-report", "--no-confirm"]
    runs = [subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    storage = open_storage(url, heartbeat_interval=None, create=False)
    try:
        summaries = storage.get_all_studies()
        assert len(summaries) == 2
        for summary in summaries:
            trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
            done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
            assert len(done) == budget, summary.study_name
            assert not [t for t in trials if t.state in (TrialState.RUNNING,
                                                         TrialState.WAITING)]
            points = [tuple(sorted(t.params.items())) for t in done]
            assert len(set(points)) == len(points), (summary.study_name, points)
        # the next process to join gets the third seed: each run took one of its own
        assert join_seed(storage, load_campaign_config(config)) == 2 * JOIN_STRIDE
    finally:
        storage.engine.dispose()


def test_processes_that_join_one_campaign_never_propose_the_same_point(tmp_path: Path) -> None:
    """Worker names repeat (`cpu0` of `launch` on two machines) and every `run` used seed
    0: each process that joins now draws its own sampler seed from the database."""
    from dm_tune.campaign import create_campaign, run_worker

    path = write_tiny(tmp_path, name="joins", epochs=1, trials=3, baselines=())
    path.write_text(path.read_text().replace("rates = [0.2, 0.4]", "rates = [0.2]")
                    .replace('warm_start = "paper"', 'warm_start = "none"')
                    .replace("startup_trials = 2", "startup_trials = 10"))
    config = load_campaign_config(path)
    storage = open_storage(f"sqlite:///{tmp_path / 'joins.db'}", heartbeat_interval=None)
    try:
        create_campaign(config, storage)
        for _ in range(3):  # one trial each, as three processes named alike would take
            run_worker(storage, config, "cpu", max_trials=1, name="cpu0")
        (summary,) = storage.get_all_studies()
        trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
        points = [tuple(sorted(t.params.items())) for t in trials]
        assert len(points) == 3 and len(set(points)) == 3, points
    finally:
        storage.engine.dispose()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def test_sigterm_to_run_jobs_2_while_its_workers_start_is_a_stop(tmp_path: Path) -> None:
    """The workers get the forwarded SIGTERM before they installed their handlers (they
    are still importing): they die of it (-15), which was `worker(s) exited non-zero:
    {'cpu0': -15}`, exit 1. A signal is a stop: exit 0, and the same command resumes."""
    import signal
    import time

    budget = 4
    config = write_tiny(tmp_path, name="term", epochs=2, trials=budget, baselines=())
    command = [sys.executable, "-m", "dm_tune", "run", str(config), "--storage",
               f"sqlite:///{tmp_path / 'term.db'}", "--jobs", "2", "--no-report",
               "--no-confirm"]
    run = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(_children(run.pid)) < 2:  # both workers spawned, neither has imported much
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.005)
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert "stopped early: run the same command again to resume" in out
    assert "exited non-zero" not in err and "Traceback" not in err, err
    again = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    storage = open_storage(f"sqlite:///{tmp_path / 'term.db'}", heartbeat_interval=None,
                           create=False)
    try:
        for summary in storage.get_all_studies():
            trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
            done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
            assert len(done) == budget, summary.study_name
            assert not [t for t in trials if t.state in (TrialState.RUNNING,
                                                         TrialState.WAITING)]
    finally:
        storage.engine.dispose()
