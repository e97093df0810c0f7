"""The house rules, checked on the source: module sizes, one home for Optuna's private API,
no global state changed at import."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dm_tune"
PRIVATE_HOME = PACKAGE / "campaign" / "_optuna.py"
# Optuna's private storage modules, its private attributes, and its cached-storage wrapper.
PRIVATE = re.compile(
    r"optuna\.storages\._|\._storage\b|\._trial_id\b|\._study_id\b|(?<![A-Za-z0-9])_backend\b"
)


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_600_lines() -> None:
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in _modules()}
    assert len(sizes) > 30  # the walk found the subpackages
    assert {name: n for name, n in sizes.items() if n > 600} == {}


def test_only_the_optuna_module_touches_optunas_private_api() -> None:
    offenders = {
        str(p.relative_to(PACKAGE)): PRIVATE.findall(p.read_text())
        for p in _modules() if p != PRIVATE_HOME
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    assert PRIVATE.search(PRIVATE_HOME.read_text())  # the pattern does match real uses


def test_the_pattern_catches_each_private_name() -> None:
    for text in ("from optuna.storages._rdb import models", "study._storage.get_trial(1)",
                 "trial._trial_id", "s._study_id", "getattr(storage, '_backend', s)"):
        assert PRIVATE.search(text.replace("'", "")) or PRIVATE.search(text), text
    assert not PRIVATE.search("url.get_backend_name()")


def test_importing_changes_no_global_state() -> None:
    # third-party libraries first: what they do at import is theirs, not ours
    probe = (
        "import logging, warnings, signal\n"
        "import optuna, torch, sqlalchemy, typer, rich, plotly.graph_objects, plotly.subplots\n"
        "import plotly.tools, scipy.special, sklearn, optuna_dashboard\n"
        "before = (logging.getLogger('optuna').level, len(warnings.filters),"
        " signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))\n"
        "import dm_tune.campaign.worker, dm_tune.campaign.run_trial, dm_tune.guidelines\n"
        "import dm_tune.cli, dm_tune.report, dm_tune.dashboard, dm_tune.campaign.launcher\n"
        "after = (logging.getLogger('optuna').level, len(warnings.filters),"
        " signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))\n"
        "assert before == after, (before, after)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_stop_signals_restores_the_previous_handlers() -> None:
    import signal

    from dm_tune.campaign.worker import stop_signals

    def mine(signum, frame):  # a library caller's own handler
        return None

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with stop_signals() as stop:
            assert signal.getsignal(signal.SIGTERM) is not mine
            signal.raise_signal(signal.SIGTERM)
            assert stop.is_set()
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
