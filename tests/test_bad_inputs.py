"""Hostile but fair inputs: each is a clean refusal that writes nothing.

Every case runs the real CLI (``python -m dm_tune ...``) in a fresh folder and asserts:
exit code 2, exactly one stderr line, starting ``dm-tune: `` and naming what is wrong,
no traceback, and a working folder whose files (names and bytes, databases included)
are unchanged. PostgreSQL cases also count the database's tables and studies.

Read-only files: tests run as root, which ``chmod`` does not stop, so a read-only file
or folder is made immutable (``chattr +i``; as another user, ``chmod a-w``). Where
neither works the case is skipped locally and fails under CI=true (tests/pg.py).

Decisions these cases pin down (documented where the code refuses):

- ``--storage ""`` is refused; an empty ``$DM_TUNE_STORAGE`` counts as unset (default).
- an npz's class count is ``num_classes`` / ``len(class_names)`` when declared (both must
  agree), else the largest label + 1; labels beyond it, fewer than 2 classes, or a class
  without a single example are refused.
- ``status`` reads a read-only SQLite file through a read-only connection; ``create``,
  ``run``, ``worker`` and ``launch`` refuse it (and a folder SQLite cannot add -wal/-shm to).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy
from pg import pg_url, unavailable  # noqa: F401 (pg_url is a pytest fixture)

BASE = """\
[campaign]
name = "bad"
seed = 0

[data]
dataset = "digits"
val_fraction = 0.125

[model]
name = "mlp"

[training]
epochs = 1
batch_size = 64

[[noise]]
kind = "symmetric"
rates = [0.2]

[search]
trials = 1
min_epochs = 1
warm_start = "none"
startup_trials = 1

[baselines]
losses = ["cce"]
"""
NPZ = BASE.replace('dataset = "digits"', 'dataset = "npz"\nroot = "data.npz"')
SECRET = "pw-Never-Show-9f2c"
DB = "sqlite:///c.db"


def edit(*pairs: str, base: str = BASE) -> str:
    """BASE with each (old, new) pair replaced; old must occur."""
    text = base
    for old, new in zip(pairs[::2], pairs[1::2], strict=True):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


# ------------------------------------------------------------------------- the harness


@dataclass(frozen=True)
class Case:
    """One refused command: its arguments, the words its one line must hold, its files."""

    args: tuple[str, ...]
    words: tuple[str, ...]
    campaign: str | bytes | None = BASE  # written to c.toml (None: no campaign file)
    files: Callable[[Path], None] | None = None  # writes more inputs into the folder
    read_only: tuple[str, ...] = ()  # paths made immutable for the run
    env: dict[str, str] = field(default_factory=dict)
    secret: str | None = None  # a text that must appear nowhere


def dm_tune(args: tuple[str, ...] | list[str], cwd: Path, env: dict[str, str] | None = None,
            timeout: int = 180) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, in ``cwd``, without an inherited $DM_TUNE_STORAGE."""
    base = {k: v for k, v in os.environ.items() if k != "DM_TUNE_STORAGE"}
    return subprocess.run([sys.executable, "-m", "dm_tune", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout, env={**base, **(env or {})})


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder``: relative name -> sha256 of its bytes."""
    found = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        found[name] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def assert_refused(result: subprocess.CompletedProcess[str], words: tuple[str, ...],
                   secret: str | None = None) -> str:
    """Exit 2, one `dm-tune: ` line on stderr holding ``words``, no traceback; the line."""
    shown = f"exit {result.returncode}\nstderr:\n{result.stderr}\nstdout:\n{result.stdout}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stderr + result.stdout, shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dm-tune: "), shown
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    if secret is not None:
        assert secret not in result.stderr + result.stdout, shown
    return lines[0]


def _chattr(flag: str, path: Path) -> subprocess.CompletedProcess[str] | None:
    if shutil.which("chattr") is None:
        return None
    return subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)


@contextmanager
def read_only(paths: list[Path]) -> Iterator[None]:
    """Make ``paths`` unwritable even for root (chattr +i); always undone afterwards."""
    done: list[Path] = []
    modes = {p: p.stat().st_mode for p in paths}
    try:
        for path in paths:
            if os.geteuid() != 0:
                path.chmod(modes[path] & ~0o222)
            else:
                result = _chattr("+i", path)
                if result is None or result.returncode != 0:
                    why = "chattr is not installed" if result is None else result.stderr.strip()
                    unavailable(f"cannot make {path} read-only as root: {why}")
            done.append(path)
            if os.access(path, os.W_OK):
                unavailable(f"{path} is still writable after chattr +i / chmod a-w")
        yield
    finally:
        for path in reversed(done):
            if os.geteuid() == 0:
                _chattr("-i", path)
            path.chmod(modes[path])


def run_case(case: Case, folder: Path, replace: dict[str, str] | None = None) -> str:
    """Write the case's inputs, run it, check the refusal and that nothing changed."""
    if isinstance(case.campaign, bytes):
        (folder / "c.toml").write_bytes(case.campaign)
    elif case.campaign is not None:
        (folder / "c.toml").write_text(case.campaign)
    if case.files is not None:
        case.files(folder)
    args = [a.format(**(replace or {})) for a in case.args]
    with read_only([folder / p for p in case.read_only]):
        before = snapshot(folder)
        result = dm_tune(args, folder, case.env)
        after = snapshot(folder)
    line = assert_refused(result, case.words, case.secret)
    assert after == before, f"the folder changed: {line}"
    return line


# ------------------------------------------------------------------------ input files


def npz(**arrays: np.ndarray) -> Callable[[Path], None]:
    """Write data.npz: 120 examples of 4 classes, 6 features, replaced by ``arrays``."""

    def write(folder: Path) -> None:
        rng = np.random.default_rng(0)
        y = np.arange(120) % 4
        x = (rng.normal(size=(120, 6)) + 3.0 * np.eye(4, 6)[y]).astype(np.float32)
        np.savez(folder / "data.npz", **{"x": x, "y": y, **arrays})

    return write


def _features(**cells: float) -> np.ndarray:
    """The npz's default features with cells "r<row>c<col>" set."""
    rng = np.random.default_rng(0)
    y = np.arange(120) % 4
    x = (rng.normal(size=(120, 6)) + 3.0 * np.eye(4, 6)[y]).astype(np.float64)
    for key, value in cells.items():
        row, col = key[1:].split("c")
        x[int(row), int(col)] = value
    return x


def raw_file(name: str, data: bytes) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / name).write_bytes(data)

    return write


def truncate(name: str, size: int) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / name).write_bytes((folder / name).read_bytes()[:size])

    return write


def many(*writers: Callable[[Path], None]) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        for writer in writers:
            writer(folder)

    return write


#: a valid export (schema dm-tune/recommendations v1) the export cases spoil
POINT = {"noise_rate": 0.2, "emphasis_mode": 0.4, "emphasis_mode_low": 0.3,
         "emphasis_mode_high": 0.5, "emphasis_variance": 12.0, "emphasis_variance_low": 8.0,
         "emphasis_variance_high": 16.0, "n_trials": 10, "k": 5}
GOOD_EXPORT = {
    "schema": "dm-tune/recommendations", "schema_version": 1,
    "provenance": {"campaign": "bad", "config_hash": "0" * 16, "dataset": "digits",
                   "model": "mlp"},
    "settings": [{"noise_kind": "symmetric", "noise_rate": 0.2, "selected": None, "top_k": [],
                  "baselines": {}, "trial_counts": {"COMPLETE": 10}}],
    "trends": {"symmetric": [POINT, {**POINT, "noise_rate": 0.4}]},
}


def export(**changes: object) -> Callable[[Path], None]:
    """Write e.json: GOOD_EXPORT with top-level ``changes`` (a value of ... drops the key)."""
    data = {k: v for k, v in {**GOOD_EXPORT, **changes}.items() if v is not ...}
    return raw_file("e.json", json.dumps(data).encode())


def recommend(*extra: str) -> tuple[str, ...]:
    return ("recommend", "--from", "e.json", "--noise", "symmetric", "--rate", "0.3", *extra)


def empty_sqlite(folder: Path) -> None:
    (folder / "c.db").write_bytes(b"")


@pytest.fixture(scope="module")
def created_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file in which the BASE campaign is created (copied into a case's folder)."""
    from dm_tune.campaign.create import create_campaign
    from dm_tune.config import load_campaign_config
    from dm_tune.storage import open_storage

    folder = tmp_path_factory.mktemp("created")
    (folder / "c.toml").write_text(BASE)
    storage = open_storage(f"sqlite:///{folder / 'c.db'}")
    create_campaign(load_campaign_config(folder / "c.toml"), storage)
    storage.engine.dispose()
    assert not (folder / "c.db-wal").exists()
    return folder / "c.db"


def with_db(source: Path, to: str = "c.db") -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / to).parent.mkdir(exist_ok=True)
        shutil.copyfile(source, folder / to)

    return write


# ------------------------------------------------------------------------------ cases

CAMPAIGN_CASES = [
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("c.toml", "model.name",
                 "transformer"), edit('name = "mlp"', 'name = "transformer"')),
                 id="model-name-typo"),
    pytest.param(Case(("run", "c.toml", "--storage", DB, "--device", "cpu"),
                      ("model.params", "bogus"),
                      edit('name = "mlp"', 'name = "mlp"\nparams = {bogus = 3}')),
                 id="model-params-unknown-key"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("model.params", "-5"),
                      edit('name = "mlp"', 'name = "mlp"\nparams = {hidden = [-5]}')),
                 id="model-params-negative-width"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("c.toml", "not UTF-8", "0xff",
                      "line 2"), BASE.encode().replace(b'"bad"', b'"b\xffd"')),
                 id="campaign-non-utf8-byte"),
    pytest.param(Case(("run", "c.toml", "--storage", DB), ("not UTF-8", "0xe9"),
                      b"# caf\xe9 (latin-1)\n" + BASE.encode()),
                 id="campaign-latin1-comment"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("not valid TOML",),
                      BASE.replace("[search]", "[search")), id="campaign-not-toml"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("c.toml", "campaign"), ""),
                 id="campaign-empty-file"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("search.trails", "unknown key"),
                      edit("[search]\n", "[search]\ntrails = 3\n")),
                 id="campaign-unknown-key"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("emphasis_variance", ">= 0"),
                      edit("[search]\n", "[search]\nemphasis_variance = [-4.0, 12.0]\n")),
                 id="search-negative-variance-range"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("emphasis_variance", "low < high"),
                      edit("[search]\n", "[search]\nemphasis_variance = [5.0, 5.0]\n")),
                 id="search-empty-variance-range"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("emphasis_mode", "[0, 1)"),
                      edit("[search]\n", "[search]\nemphasis_mode = [0.0, 1.5]\n")),
                 id="search-mode-range-beyond-1"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("grid_modes",),
                      edit("[search]\n", '[search]\nsampler = "grid"\ngrid_modes = []\n')),
                 id="search-grid-empty-modes"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("grid_modes", "[0, 1)"),
                      edit("[search]\n", '[search]\nsampler = "grid"\ngrid_modes = [1.5]\n')),
                 id="search-grid-mode-beyond-1"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("warm_start", "outside"),
                      edit('warm_start = "none"', "warm_start = [[0.95, 10.0]]")),
                 id="search-warm-start-outside-range"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("warm_start",),
                      edit('warm_start = "none"', "warm_start = [[0.5]]")),
                 id="search-warm-start-not-a-pair"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("noise.0.rates.0",),
                      edit("rates = [0.2]", "rates = [1.2]")), id="noise-rate-above-1"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("2 decimals",),
                      edit("rates = [0.2]", "rates = [0.123]")), id="noise-rate-3-decimals"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("noise.rates", "0.95"),
                      edit("rates = [0.2]", "rates = [0.95]")),
                 id="noise-rate-beyond-bound"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("noise.0.kind",),
                      edit('kind = "symmetric"', 'kind = "gaussian"')),
                 id="noise-unknown-kind"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("human",),
                      edit('kind = "symmetric"\nrates = [0.2]',
                           'kind = "human"\nlabels = ["worse_label"]')),
                 id="noise-human-on-digits"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("training.epochs",),
                      edit("\nepochs = 1", "\nepochs = 0")), id="training-zero-epochs"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("training.augment", "image"),
                      edit("batch_size = 64", "batch_size = 64\naugment = true")),
                 id="training-augment-tabular"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("baselines", "focal"),
                      edit('losses = ["cce"]', 'losses = ["cce", "focal"]')),
                 id="baselines-unknown-loss"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("campaign.name",),
                      edit('name = "bad"', 'name = "../bad"')), id="campaign-name-path"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("val_fraction",),
                      edit("val_fraction = 0.125", "val_fraction = 0.001")),
                 id="data-val-fraction-below-one-per-class"),
    pytest.param(Case(("create", "missing.toml", "--storage", DB), ("missing.toml",
                      "not found"), None), id="campaign-file-missing"),
    pytest.param(Case(("create", "sub", "--storage", DB), ("sub", "cannot read"), None,
                      files=lambda f: (f / "sub").mkdir()), id="campaign-file-is-a-folder"),
]

NPZ_CASES = [
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("data.npz", "NaN or inf",
                      "row 5"), NPZ, npz(x=_features(r5c2=np.nan))), id="npz-nan-feature"),
    pytest.param(Case(("run", "c.toml", "--storage", DB, "--device", "cpu"),
                      ("data.npz", "NaN or inf", "row 7"), NPZ, npz(x=_features(r7c1=np.inf))),
                 id="npz-inf-feature"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("data.npz", "NaN or inf",
                      "row 9"), NPZ, npz(x=_features(r9c0=1e300))),
                 id="npz-float64-beyond-float32"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("data.npz", "NaN or inf",
                      "row 3"), NPZ,
                      npz(x=np.where(np.arange(120)[:, None, None, None] == 3, np.nan,
                                     np.ones((120, 4, 4, 3), np.float32)))),
                 id="npz-nan-image-pixel"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("data.npz", "x_test",
                      "NaN or inf"), NPZ,
                      npz(x_test=np.full((8, 6), np.nan, np.float32), y_test=np.arange(8) % 4)),
                 id="npz-nan-in-x-test"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("data.npz", "every label is "
                      "class 0"), NPZ, npz(y=np.zeros(120, np.int64))),
                 id="npz-single-class-0"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("labels must lie in [0, 3)",
                      "class_names"), NPZ, npz(class_names=np.array(["a", "b", "c"]))),
                 id="npz-labels-beyond-class-names"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("num_classes is 5",
                      "class_names has 4"), NPZ,
                      npz(num_classes=np.array(5), class_names=np.array(list("abcd")))),
                 id="npz-num-classes-disagrees"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("class(es) 4", "num_classes"),
                      NPZ, npz(num_classes=np.array(5))), id="npz-declared-class-unseen"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("class(es) 2", "0..K-1"), NPZ,
                      npz(y=np.where(np.arange(120) % 4 == 2, 1, np.arange(120) % 4))),
                 id="npz-label-gap"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("class 4", "at least 2 per "
                      "class"), NPZ, npz(y=np.r_[np.arange(119) % 4, 4])),
                 id="npz-class-with-one-example"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("data.npz", "not an .npz"), NPZ,
                      raw_file("data.npz", b"x,y\n1,2\n")), id="npz-is-text"),
    pytest.param(Case(("create", "c.toml", "--storage", DB), ("data.npz", "not an .npz"), NPZ,
                      many(npz(), truncate("data.npz", 300))), id="npz-truncated"),
]

STORAGE_CASES = [
    pytest.param(Case(("create", "c.toml", "--storage", ""), ("--storage", "empty storage URL")),
                 id="storage-empty-option"),
    pytest.param(Case(("status", "c.toml", "--storage", "   "), ("--storage", "empty")),
                 id="storage-blank-option"),
    pytest.param(Case(("create", "c.toml"), ("--storage", "empty"), env={"DM_TUNE_STORAGE":
                      " "}), id="storage-blank-env"),
    pytest.param(Case(("create", "c.toml", "--storage", f"mysql://u:{SECRET}@h/db"),
                      ("unsupported storage backend", "mysql", "***"), secret=SECRET),
                 id="storage-unsupported-backend"),
    pytest.param(Case(("create", "c.toml", "--storage", "c.db"), ("invalid storage URL",
                      "sqlite:///")), id="storage-path-not-url"),
    pytest.param(Case(("create", "c.toml", "--storage", "sqlite:///nodir/c.db"),
                      ("directory", "nodir")), id="storage-sqlite-missing-folder"),
    pytest.param(Case(("status", "c.toml", "--storage", DB), ("c.db", "does not exist")),
                 id="status-sqlite-missing-file"),
    pytest.param(Case(("worker", "c.toml", "--storage", DB, "--device", "cpu"),
                      ("no Optuna studies", "dm-tune create"), files=empty_sqlite),
                 id="worker-sqlite-empty-file"),
    pytest.param(Case(("status", "c.toml", "--storage", DB), ("no Optuna studies",),
                      files=empty_sqlite), id="status-sqlite-empty-file"),
    pytest.param(Case(("worker", "c.toml", "--storage", "sqlite:///:memory:", "--device", "cpu"),
                      ("in-memory", "no campaign to join")), id="worker-in-memory"),
    pytest.param(Case(("status", "c.toml", "--storage", "sqlite://"), ("in-memory",)),
                 id="status-in-memory"),
    pytest.param(Case(("run", "c.toml", "--storage", "sqlite:///:memory:", "--jobs", "2"),
                      ("in-memory", "--jobs 2")), id="run-jobs-2-in-memory"),
    pytest.param(Case(("launch", "c.toml", "--storage", "sqlite:///:memory:", "--cpus", "2"),
                      ("in-memory", "launch")), id="launch-in-memory"),
    pytest.param(Case(("create", "c.toml", "--storage",
                       f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/db"),
                      ("cannot open storage", "***"), secret=SECRET),
                 id="storage-postgres-unreachable"),
    pytest.param(Case(("create", "c.toml", "--storage", "postgresql://u:p@ss@127.0.0.1/db"),
                      ("'@'", "%40"), secret="p@ss"), id="storage-password-with-at"),
    pytest.param(Case(("create", "c.toml", "--storage", "postgresql://u@127.0.0.1:port/db"),
                      ("invalid storage URL",)), id="storage-bad-port"),
]

CLI_CASES = [
    pytest.param(Case(("run", "c.toml", "--bogus"), ("No such option: --bogus",
                      "dm-tune run --help")), id="cli-unknown-option"),
    pytest.param(Case(("create",), ("Missing argument",)), id="cli-missing-argument"),
    pytest.param(Case(("crate", "c.toml"), ("No such command",)), id="cli-unknown-command"),
    pytest.param(Case(("run", "c.toml", "--jobs", "0"), ("--jobs",)), id="cli-jobs-zero"),
    pytest.param(Case(("run", "c.toml", "--jobs", "two"), ("--jobs", "integer")),
                 id="cli-jobs-not-a-number"),
    pytest.param(Case(("run", "c.toml", "--storage", DB, "--device", "tpu"),
                      ("--device", "tpu")), id="cli-device-unknown"),
    pytest.param(Case(("run", "c.toml", "--storage", DB, "--jobs", "2", "--device", "cuda:0"),
                      ("--device cuda:0", "--jobs 1")), id="cli-run-jobs-2-cuda"),
    pytest.param(Case(("dashboard", "--storage", DB, "--host", "0.0.0.0"), ("--allow-remote",)),
                 id="cli-dashboard-remote-host"),
    pytest.param(Case(("dashboard", "--storage", DB, "--port", "70000"), ("--port",)),
                 id="cli-dashboard-port-range"),
    pytest.param(Case(("worker", "c.toml", "--storage", DB, "--heartbeat", "0"),
                      ("--heartbeat",)), id="cli-worker-heartbeat-zero"),
]

EXPORT_CASES = [
    pytest.param(Case(recommend(), ("e.json", "not a JSON export"), None,
                      raw_file("e.json", b"{not json")), id="export-not-json"),
    pytest.param(Case(recommend(), ("e.json", "not a JSON export"), None,
                      raw_file("e.json", b"\x89PNG\r\n\x1a\n\xff\x00")), id="export-binary"),
    pytest.param(Case(recommend(), ("e.json", "not a JSON export"), None,
                      raw_file("e.json", b"")), id="export-empty-file"),
    pytest.param(Case(recommend(), ("e.json", "dm-tune/recommendations"), None,
                      raw_file("e.json", b"[1, 2]")), id="export-json-list"),
    pytest.param(Case(recommend(), ("not a dm-tune/recommendations export",), None,
                      export(schema="optuna/study")), id="export-wrong-schema"),
    pytest.param(Case(recommend(), ("schema_version 99", "upgrade dm-tune"), None,
                      export(schema_version=99)), id="export-newer-schema-version"),
    pytest.param(Case(recommend(), ("integer schema_version",), None,
                      export(schema_version="1")), id="export-version-string"),
    pytest.param(Case(recommend(), ("malformed", "trends"), None, export(trends=[])),
                 id="export-trends-not-object"),
    pytest.param(Case(recommend(), ("malformed", "fields"), None,
                      export(trends={"symmetric": [{"noise_rate": 0.2}]})),
                 id="export-trend-point-missing-fields"),
    pytest.param(Case(recommend(), ("non-finite number (NaN)", "not a dm-tune export"), None,
                      export(trends={"symmetric": [{**POINT, "emphasis_mode": float("nan")}]})),
                 id="export-trend-nan"),
    pytest.param(Case(recommend(), ("malformed", "not sorted"), None,
                      export(trends={"symmetric": [{**POINT, "noise_rate": 0.4}, POINT]})),
                 id="export-trend-unsorted"),
    pytest.param(Case(recommend(), ("malformed", "no points"), None,
                      export(trends={"symmetric": []})), id="export-trend-empty"),
    pytest.param(Case(recommend(), ("malformed", "settings"), None, export(settings={})),
                 id="export-settings-not-list"),
    pytest.param(Case(recommend(), ("malformed", "provenance"), None, export(provenance=...)),
                 id="export-no-provenance"),
    pytest.param(Case(recommend(), ("e.json",), None), id="export-file-missing"),
    pytest.param(Case(recommend(), ("e.json",), None, lambda f: (f / "e.json").mkdir()),
                 id="export-path-is-a-folder"),
    pytest.param(Case(("recommend", "--from", "e.json", "--noise", "pairflip", "--rate", "0.3"),
                      ("pairflip", "symmetric"), None, export()), id="export-unknown-kind"),
    pytest.param(Case(recommend()[:-1] + ("1.5",), ("[0, 1)",), None, export()),
                 id="recommend-rate-beyond-1"),
]


@pytest.mark.parametrize("case", CAMPAIGN_CASES + NPZ_CASES + STORAGE_CASES + CLI_CASES +
                         EXPORT_CASES)
def test_refused_and_nothing_written(case: Case, tmp_path: Path) -> None:
    run_case(case, tmp_path)


def test_there_are_enough_cases() -> None:
    assert len(CAMPAIGN_CASES + NPZ_CASES + STORAGE_CASES + CLI_CASES + EXPORT_CASES) >= 60


def test_the_valid_export_is_accepted(tmp_path: Path) -> None:
    """The export cases spoil a file that is otherwise accepted."""
    export()(tmp_path)
    result = dm_tune(recommend(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "emphasis_mode" in result.stdout and not result.stderr


# --------------------------------------------------------------- cases needing a GPU check


def test_cuda_device_refused_before_anything_is_created(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda:0 is valid here")
    for args in (("run", "c.toml", "--storage", DB, "--device", "cuda:0"),
                 ("worker", "c.toml", "--storage", DB, "--device", "cuda:1")):
        run_case(Case(args, ("--device", "CUDA is not available")), tmp_path)


def test_launch_on_missing_gpus_refused_before_anything_is_created(tmp_path: Path) -> None:
    import torch

    gpu = str(max(7, torch.cuda.device_count()))
    run_case(Case(("launch", "c.toml", "--storage", DB, "--gpus", gpu), (f"--gpus {gpu}",
                  "CUDA device(s)")), tmp_path)


# ------------------------------------------------------------------ read-only databases


READ_ONLY_CASES = [
    pytest.param(("create", "c.toml", "--storage", "sqlite:///ro/c.db"), ("ro/c.db",),
                 ("ro/c.db", "read-only"), id="create-read-only-file"),
    pytest.param(("run", "c.toml", "--storage", "sqlite:///ro/c.db", "--device", "cpu"),
                 ("ro/c.db",), ("ro/c.db", "read-only"), id="run-read-only-file"),
    pytest.param(("worker", "c.toml", "--storage", "sqlite:///ro/c.db", "--device", "cpu"),
                 ("ro/c.db",), ("ro/c.db", "read-only"), id="worker-read-only-file"),
    pytest.param(("create", "c.toml", "--storage", "sqlite:///ro/c.db"), ("ro",),
                 ("folder", "not writable", "c.db-wal"), id="create-read-only-folder"),
    pytest.param(("create", "c.toml", "--storage", "sqlite:///ro/new.db"), ("ro",),
                 ("ro/new.db", "not writable"), id="create-new-db-in-read-only-folder"),
]


@pytest.mark.parametrize(("args", "frozen", "words"), READ_ONLY_CASES)
def test_read_only_sqlite_refused(args: tuple[str, ...], frozen: tuple[str, ...],
                                  words: tuple[str, ...], created_db: Path,
                                  tmp_path: Path) -> None:
    run_case(Case(args, words, files=with_db(created_db, "ro/c.db"), read_only=frozen),
             tmp_path)


@pytest.mark.parametrize("frozen", [("ro/c.db",), ("ro/c.db", "ro")], ids=["file", "folder"])
def test_status_reads_a_read_only_database(frozen: tuple[str, ...], created_db: Path,
                                           tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(BASE)
    with_db(created_db, "ro/c.db")(tmp_path)
    with read_only([tmp_path / p for p in frozen]):
        before = snapshot(tmp_path)
        result = dm_tune(("status", "c.toml", "--storage", "sqlite:///ro/c.db"), tmp_path)
        after = snapshot(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "symmetric-0.20" in result.stdout and "Traceback" not in result.stderr
    assert after == before  # no -wal, -shm or lock file next to a read-only database


def test_outputs_to_an_unwritable_folder_warn_and_exit_0(tmp_path: Path) -> None:
    """`run` promises that its outputs step never fails a finished campaign."""
    (tmp_path / "c.toml").write_text(BASE)
    (tmp_path / "ro").mkdir()
    with read_only([tmp_path / "ro"]):
        result = dm_tune(("run", "c.toml", "--storage", DB, "--device", "cpu", "--out",
                          "ro/reports"), tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    # "note:" lines say which kinds had too few trials for the surface: not about outputs
    lines = [line for line in result.stderr.splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("warning: cannot write the outputs to "
                                                   "ro/reports"), result.stderr
    assert not (tmp_path / "ro" / "reports").exists()


# ------------------------------------------------------------------------- PostgreSQL


def pg_counts(url: str) -> tuple[int, int]:
    """(tables in the public schema, rows of Optuna's studies table) of a database."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            tables = conn.exec_driver_sql(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
            ).scalar_one()
            studies = 0
            if sqlalchemy.inspect(conn).has_table("studies"):
                studies = conn.exec_driver_sql("SELECT count(*) FROM studies").scalar_one()
    finally:
        engine.dispose()
    return int(tables), int(studies)


PG_CASES = [
    pytest.param(Case(("worker", "c.toml", "--storage", "{pg}", "--device", "cpu"),
                      ("no Optuna studies", "***", "dm-tune create"), secret=SECRET),
                 id="pg-worker-before-create"),
    pytest.param(Case(("status", "c.toml", "--storage", "{pg}"), ("no Optuna studies",),
                      secret=SECRET), id="pg-status-before-create"),
    pytest.param(Case(("create", "c.toml", "--storage", "{pg}"), ("model.name",),
                      edit('name = "mlp"', 'name = "transformer"'), secret=SECRET),
                 id="pg-create-bad-model"),
    pytest.param(Case(("run", "c.toml", "--storage", "{pg}", "--device", "cpu"),
                      ("data.npz", "NaN or inf"), NPZ, npz(x=_features(r1c1=np.nan)),
                      secret=SECRET), id="pg-run-nan-npz"),
    pytest.param(Case(("create", "c.toml", "--storage", "{pg}_missing"),
                      ("cannot open storage", "does not exist"), secret=SECRET),
                 id="pg-database-missing"),
]


@pytest.mark.postgres
@pytest.mark.parametrize("case", PG_CASES)
def test_postgres_refused_and_nothing_created(case: Case, pg_url: str,  # noqa: F811
                                              tmp_path: Path) -> None:
    url = pg_url.replace("postgres@", f"postgres:{SECRET}@")  # trust auth ignores it
    before = pg_counts(pg_url)
    run_case(case, tmp_path, {"pg": url})
    assert pg_counts(pg_url) == before == (0, 0)
