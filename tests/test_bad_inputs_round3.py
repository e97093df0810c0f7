"""More hostile inputs (issue 25): each is a clean refusal that writes nothing.

The harness is tests/test_bad_inputs.py's: the real CLI in a fresh folder, exit 2, one
``dm-tune: `` line on stderr naming the fault, no traceback, and every file of the folder
(names and bytes; a symlink by its target) the same before and after.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pg import pg_url  # noqa: F401 (pg_url is a pytest fixture)

from tests.test_bad_inputs import (
    BASE,
    DB,
    NPZ,
    Case,
    assert_refused,
    created_db,  # noqa: F401 (a pytest fixture)
    dm_tune,
    edit,
    export,
    npz,
    recommend,
    with_db,
)


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: name -> sha256 of its bytes, "dir", or its link."""
    found = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            found[name] = f"link:{os.readlink(path)}"
        else:
            found[name] = "dir" if path.is_dir() else hashlib.sha256(
                path.read_bytes()).hexdigest()
    return found


def run_case(case: Case, folder: Path, **replace: str) -> str:
    """Write the case's inputs, run it, check the refusal and that nothing changed."""
    if case.campaign is not None:
        (folder / "c.toml").write_text(case.campaign)
    if case.files is not None:
        case.files(folder)
    args = [a.format(**replace) for a in case.args]
    env = {k: v.format(folder=folder) for k, v in case.env.items()}
    before = snapshot(folder)
    result = dm_tune(args, folder, env)
    after = snapshot(folder)
    line = assert_refused(result, case.words, case.secret)
    assert after == before, f"the folder changed: {line}"
    return line


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def symlink_loop(folder: Path) -> None:
    (folder / "a.db").symlink_to("b.db")
    (folder / "b.db").symlink_to("a.db")


def foreign_sqlite(folder: Path) -> None:
    """c.db of another application: one table of its own, no Optuna table."""
    with sqlite3.connect(folder / "c.db") as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        connection.execute("INSERT INTO invoices (total) VALUES (9.5)")
    connection.close()


def fake_slurm(sinfo_exit: int) -> Callable[[Path], None]:
    """bin/ with an sbatch and an sinfo that cannot reach the controller."""

    def write(folder: Path) -> None:
        (folder / "bin").mkdir()
        for tool, text in (("sinfo", "slurm_load_partitions: Unable to contact slurm "
                                     "controller (connect failure)"),
                           ("sbatch", "sbatch: error: Batch job submission failed")):
            script = folder / "bin" / tool
            script.write_text(f"#!/bin/sh\necho '{text}' >&2\nexit {sinfo_exit}\n")
            script.chmod(0o755)

    return write


def _x(rows: int = 120, *shape: int) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(rows, *shape)).astype(np.float32)


NO_SLURM_PATH = {"PATH": "/nonexistent-bin"}
RUN = ("run", "c.toml", "--storage", DB, "--device", "cpu")
SHAPE_CASES = [  # refused when the campaign is checked: no database appears
    pytest.param(Case(RUN, ("x_test", "5 feature(s) per example but x has 6"), NPZ,
                      npz(x_test=_x(40, 5), y_test=np.arange(40) % 4)),
                 id="npz-test-features-of-another-width"),
    pytest.param(Case(RUN, ("x:", "hold no value"), NPZ, npz(x=_x(120, 0))),
                 id="npz-no-feature-at-all"),
    pytest.param(Case(RUN, ("x:", "got shape (120,)"), NPZ, npz(x=_x(120))),
                 id="npz-features-1d"),
    pytest.param(Case(RUN, ("x:", "got shape (120, 2, 2, 2, 2)"), NPZ, npz(x=_x(120, 2, 2, 2, 2))),
                 id="npz-features-5d"),
    pytest.param(Case(RUN, ("x_test", "empty"), NPZ,
                      npz(x_test=_x(0, 6), y_test=np.zeros(0, dtype=np.int64))),
                 id="npz-empty-test-split"),
    pytest.param(Case(RUN, ("x_test", "images of shape (3, 16, 16)", "(3, 8, 8)"),
                      NPZ.replace('name = "mlp"', 'name = "cnn"'),
                      npz(x=_x(120, 3, 8, 8), x_test=_x(40, 3, 16, 16),
                          y_test=np.arange(40) % 4)),
                 id="npz-test-images-of-another-size"),
    pytest.param(Case(RUN, ("x_test", "images of shape"), NPZ.replace('name = "mlp"',
                                                                     'name = "cnn"'),
                      npz(x=_x(120, 3, 8, 8), x_test=_x(40, 3, 64), y_test=np.arange(40) % 4)),
                 id="npz-test-images-of-another-rank"),
]
CASES = [
    pytest.param(Case(("status", "/dev/zero", "--storage", DB), ("/dev/zero", "larger than 1 MiB"),
                      campaign=None), id="campaign-file-dev-zero"),
    pytest.param(Case(("create", "c.toml", "--storage", "sqlite:///a.db"),
                      ("a.db", "symlink loop"), files=symlink_loop), id="sqlite-symlink-loop"),
    pytest.param(Case(("status", "c.toml", "--storage", "sqlite:///a.db"),
                      ("a.db", "symlink loop"), files=symlink_loop),
                 id="sqlite-symlink-loop-status"),
    pytest.param(Case(("run", "c.toml", "--storage", DB, "--device", "cpu"),
                      ("c.db", "not Optuna's", "invoices", "--allow-foreign-tables"),
                      files=foreign_sqlite), id="sqlite-of-another-application-run"),
    pytest.param(Case(("create", "c.toml", "--storage", DB),
                      ("not Optuna's", "invoices"), files=foreign_sqlite),
                 id="sqlite-of-another-application-create"),
    pytest.param(Case(("launch", "c.toml", "--slurm", "--storage", DB),
                      ("launch --slurm", "not installed", "nothing was created"),
                      env=NO_SLURM_PATH), id="launch-slurm-without-slurm"),
    pytest.param(Case(("launch", "c.toml", "--slurm", "--storage", DB),
                      ("launch --slurm", "sinfo failed", "Unable to contact"),
                      files=fake_slurm(1), env={"PATH": "{folder}/bin"}),
                 id="launch-slurm-controller-unreachable"),
]


@pytest.mark.parametrize("case", CASES + SHAPE_CASES)
def test_refused_and_nothing_written(case: Case, tmp_path: Path) -> None:
    run_case(case, tmp_path)


@pytest.mark.parametrize("command", ["dashboard", "storage-proxy"])
def test_a_busy_port_is_refused(command: str, busy_port: int, tmp_path: Path,
                                created_db: Path) -> None:  # noqa: F811
    case = Case((command, "--storage", DB, "--port", "{port}"),
                ("cannot listen on 127.0.0.1:", "in use"), files=with_db(created_db))
    run_case(case, tmp_path, port=str(busy_port))


def _to_dev_full(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DM_TUNE_STORAGE"}
    with open("/dev/full", "w") as full:
        return subprocess.run([sys.executable, "-m", "dm_tune", *args], cwd=cwd, env=env,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=180)


@pytest.fixture(scope="module")
def finished_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file with the BASE campaign run to its budget (export has results)."""
    folder = tmp_path_factory.mktemp("finished")
    (folder / "c.toml").write_text(BASE)
    done = dm_tune(("run", "c.toml", "--storage", DB, "--device", "cpu", "--no-report",
                    "--no-confirm"), folder, timeout=300)
    assert done.returncode == 0, done.stderr
    return folder / "c.db"


@pytest.mark.parametrize("args", [("status", "c.toml", "--storage", DB),
                                  ("export", "c.toml", "--storage", DB),
                                  recommend()], ids=["status", "export", "recommend"])
def test_stdout_that_is_dev_full_is_one_line(args: tuple[str, ...], finished_db: Path,
                                             tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(BASE)
    with_db(finished_db)(tmp_path)
    export()(tmp_path)
    result = _to_dev_full(list(args), tmp_path)
    result.stdout = ""
    # export's note on the surface (1 trial) is its own line, before the refusal
    result.stderr = "".join(line for line in result.stderr.splitlines(keepends=True)
                            if not line.startswith("note: "))
    assert_refused(result, ("cannot write to standard output", "No space left on device"))


def test_foreign_tables_are_kept_when_the_user_allows_them(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(BASE)
    foreign_sqlite(tmp_path)
    allowed = dm_tune(("create", "c.toml", "--storage", DB, "--allow-foreign-tables"),
                      tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    again = dm_tune(("create", "c.toml", "--storage", DB), tmp_path)  # a campaign's now
    assert again.returncode == 0, again.stderr
    with sqlite3.connect(tmp_path / "c.db") as connection:
        assert connection.execute("SELECT total FROM invoices").fetchall() == [(9.5,)]
        assert connection.execute("SELECT COUNT(*) FROM studies").fetchone()[0] == 2
    connection.close()


@pytest.mark.postgres
def test_a_password_on_the_command_line_is_warned_about_once(
    pg_url: str, tmp_path: Path  # noqa: F811
) -> None:
    """The local server trusts every login, so any password opens it: the URL works, and
    the password is in this process's argv for `ps` to show."""
    password = "Pw-in-argv-7c1e"
    with_password = pg_url.replace("postgres@", f"postgres:{password}@", 1)
    assert password in with_password
    (tmp_path / "c.toml").write_text(BASE)
    created = dm_tune(("create", "c.toml"), tmp_path, {"DM_TUNE_STORAGE": with_password})
    assert created.returncode == 0, created.stderr
    assert created.stderr == ""  # from the environment: nothing to warn about
    status = dm_tune(("status", "c.toml", "--storage", with_password), tmp_path)
    assert status.returncode == 0, status.stderr
    lines = status.stderr.splitlines()
    assert len(lines) == 1, status.stderr
    assert "password" in lines[0] and "`ps`" in lines[0] and "DM_TUNE_STORAGE" in lines[0]
    assert password not in status.stderr + status.stdout


def test_a_model_that_cannot_fit_this_machine_is_refused_with_the_figure(tmp_path: Path) -> None:
    """Two hidden layers of 300,000: 9e10 parameters, about 1.3 TiB to train; refused
    when the campaign is checked (the model is built on the meta device), nothing written."""
    wide = edit('name = "mlp"', 'name = "mlp"\nparams = {hidden = [300000, 300000]}')
    line = run_case(Case(RUN, ("model", "parameters", "one trial needs at least",
                               "GiB", "available"), wide), tmp_path)
    assert "90,0" in line  # the parameter count, as counted


def test_a_population_that_cannot_fit_is_refused_though_one_trial_fits(tmp_path: Path) -> None:
    """A width whose one trial takes about an eighth of the free memory: a population of
    64 needs eight times what is free (a margin for other processes' changes)."""
    from dm_tune.campaign.validate import BYTES_PER_PARAMETER, available_memory

    free, _ = available_memory("cpu")
    if free is None:
        pytest.skip("this machine's free memory cannot be read")
    width = int((free / BYTES_PER_PARAMETER / 8) ** 0.5)
    model = f'name = "mlp"\nparams = {{hidden = [{width}, {width}]}}'
    population = edit('name = "mlp"', model, "[search]\n", "[search]\npopulation = 64\n")
    run_case(Case(RUN, ("a population of 64 trials needs at least", "available"),
                  population), tmp_path)


@pytest.mark.parametrize("frozen", [("ro/c.db",), ("ro/c.db", "ro")], ids=["file", "folder"])
@pytest.mark.parametrize("command", ["export", "report"])
def test_export_and_report_read_a_read_only_database(command: str, frozen: tuple[str, ...],
                                                     finished_db: Path, tmp_path: Path) -> None:
    """They failed with `attempt to write a readonly database` (status worked): readers
    now open a SQLite file they cannot write through a read-only connection."""
    from tests.test_bad_inputs import read_only

    (tmp_path / "c.toml").write_text(BASE)
    with_db(finished_db, "ro/c.db")(tmp_path)
    out = tmp_path / "out"
    args = [command, "c.toml", "--storage", "sqlite:///ro/c.db", "--out",
            str(out / "e.json" if command == "export" else out)]
    if command == "report":
        args.append("--no-png")
    out.mkdir()
    with read_only([tmp_path / p for p in frozen]):
        before = snapshot(tmp_path / "ro")
        result = dm_tune(args, tmp_path)
        after = snapshot(tmp_path / "ro")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and after == before
    written = out / "e.json" if command == "export" else out / "report.html"
    assert written.is_file() and written.stat().st_size > 0


def test_export_warns_once_about_a_password_on_the_command_line(
    pg_url: str, tmp_path: Path  # noqa: F811
) -> None:
    from tests.fake_campaign import build_campaign, campaign_file

    build_campaign(pg_url)
    password = "Pw-in-argv-e4f2"
    with_password = pg_url.replace("postgres@", f"postgres:{password}@", 1)
    (tmp_path / "c.toml").write_text(campaign_file("fake"))
    done = dm_tune(("export", "c.toml", "--storage", with_password, "--method", "top-k"),
                   tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "password" in lines[0] and "DM_TUNE_STORAGE" in lines[0]
    assert password not in done.stderr + done.stdout
    assert '"schema": "dm-tune/recommendations"' in done.stdout
