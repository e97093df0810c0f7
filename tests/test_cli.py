"""The dm-tune CLI: commands listed, bad input refused with exit code 2 and one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.campaign_files import write_tiny

COMMANDS = ("run", "create", "status", "worker", "launch", "dashboard", "confirm", "export",
            "recommend", "report", "estimate-noise")


def dm_tune(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300):
    """Run the CLI as a user would; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "dm_tune", *args], capture_output=True, text=True,
        cwd=cwd, timeout=timeout, env={**os.environ, "DM_TUNE_STORAGE": "", **(env or {})},
    )


def _assert_refused(result, needle: str) -> None:
    assert result.returncode == 2, result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]


def test_help_lists_every_command():
    result = dm_tune("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[campaign\nname='x'", "not valid TOML"),
        ("[campaign]\nname='x'\nbogus=1\n[[noise]]\nkind='symmetric'\nrates=[0.2]",
         "campaign.bogus: unknown key"),
        ("[campaign]\nname='x'\n[[noise]]\nkind='symmetric'\nrates=[1.5]", "noise.0.rates.0"),
        # valid TOML and schema, but above (C-1)/C... caught at creation with the data
        ("[campaign]\nname='x'\n[[noise]]\nkind='pairflip'\nrates=[0.6]", "below 0.5"),
    ],
)
@pytest.mark.parametrize("command", ["create", "run"])
def test_bad_campaign_file_is_refused_and_writes_nothing(tmp_path, text, needle, command):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    db = tmp_path / "bad.db"
    result = dm_tune(command, str(path), "--storage", f"sqlite:///{db}")
    _assert_refused(result, needle)
    if db.exists():  # opening the storage may create the file, but never a study
        assert optuna.storages.RDBStorage(f"sqlite:///{db}").get_all_studies() == []


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("not a url", "storage"),
        ("mysql+nodriver://u@h/db", "mysql"),
        ("postgresql+psycopg://postgres:s3cret@127.0.0.1:1/none", "cannot open storage"),
    ],
)
def test_bad_storage_url_is_refused_with_the_password_hidden(tmp_path, url, needle):
    config = write_tiny(tmp_path)
    result = dm_tune("create", str(config), "--storage", url)
    _assert_refused(result, needle)
    assert "s3cret" not in result.stderr + result.stdout


def test_storage_from_environment(tmp_path):
    config = write_tiny(tmp_path)
    db = tmp_path / "env.db"
    result = dm_tune("create", str(config), env={"DM_TUNE_STORAGE": f"sqlite:///{db}"})
    assert result.returncode == 0, result.stderr
    assert len(optuna.storages.RDBStorage(f"sqlite:///{db}").get_all_studies()) == 4


def test_config_hash_guard_through_the_cli(tmp_path):
    db = f"sqlite:///{tmp_path / 'c.db'}"
    assert dm_tune("create", str(write_tiny(tmp_path, epochs=3)), "--storage", db).returncode == 0
    result = dm_tune("run", str(write_tiny(tmp_path, epochs=5)), "--storage", db)
    _assert_refused(result, "another configuration")


def test_status_of_a_missing_database_is_refused_and_not_created(tmp_path):
    config = write_tiny(tmp_path)
    db = tmp_path / "missing.db"
    result = dm_tune("status", str(config), "--storage", f"sqlite:///{db}")
    _assert_refused(result, "does not exist")
    assert not db.exists()


def test_status_imports_neither_torch_nor_sklearn(tmp_path):
    # status is a read of the database: torch and scikit-learn were 2 s of its 3
    config = write_tiny(tmp_path)
    db = f"sqlite:///{tmp_path / 'c.db'}"
    assert dm_tune("create", str(config), "--storage", db).returncode == 0
    code = ("import sys\nfrom dm_tune.cli import main\n"
            f"sys.argv = ['dm-tune', 'status', {str(config)!r}, '--storage', {db!r}]\n"
            "try:\n    main()\nexcept SystemExit as stop:\n    assert not stop.code, stop.code\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'sklearn', "
            "'scipy'}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "DM_TUNE_STORAGE": ""}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "symmetric-0.20" in result.stdout
    assert result.stdout.splitlines()[-1] == "[]"


def test_worker_without_created_campaign_is_refused(tmp_path):
    config = write_tiny(tmp_path)
    db = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.storages.RDBStorage(db)  # an empty but valid database
    _assert_refused(dm_tune("worker", str(config), "--storage", db, "--device", "cpu"),
                    "dm-tune create")


def test_run_then_status_then_resume_adds_nothing(tmp_path):
    config = write_tiny(tmp_path, epochs=2, trials=3)
    db = f"sqlite:///{tmp_path / 'c.db'}"
    first = dm_tune("run", str(config), "--storage", db, "--no-report", "--device", "cpu")
    assert first.returncode == 0, first.stderr
    assert "symmetric-0.20" in first.stdout and "database:" in first.stdout
    storage = optuna.storages.RDBStorage(db)
    counts = {s.study_name: len(optuna.load_study(study_name=s.study_name, storage=storage)
                                .get_trials()) for s in storage.get_all_studies()}
    assert counts == {"tiny/symmetric-0.20": 3, "tiny/symmetric-0.40": 3,
                      "tiny/symmetric-0.20/baselines": 1, "tiny/symmetric-0.40/baselines": 1}
    again = dm_tune("run", str(config), "--storage", db, "--no-report", "--device", "cpu")
    assert again.returncode == 0
    status = dm_tune("status", str(config), "--storage", db)
    assert status.returncode == 0
    assert "3/3" in status.stdout
    assert sum(len(optuna.load_study(study_name=s.study_name, storage=storage).get_trials())
               for s in storage.get_all_studies()) == 8


def test_run_with_two_jobs_shares_a_sqlite_campaign_exactly(tmp_path):
    # two worker processes on one SQLite file: the flock-based claim keeps budgets exact
    config = write_tiny(tmp_path, epochs=3, trials=6)
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    result = dm_tune("run", str(config), "--storage", db, "--jobs", "2", "--no-report")
    assert result.returncode == 0, result.stderr
    storage = optuna.storages.RDBStorage(db)
    for summary in storage.get_all_studies():
        trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
        expected = 1 if summary.study_name.endswith("baselines") else 6
        assert len(trials) == expected
        assert len({t.number for t in trials}) == expected
        assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    workers = {t.user_attrs["worker"] for s in storage.get_all_studies()
               for t in optuna.load_study(study_name=s.study_name, storage=storage).get_trials()}
    assert workers and workers <= {"cpu0", "cpu1"}  # both usually share; timing decides
