"""The only module that touches Optuna's private API or runs SQL on Optuna's tables.

Everything here exists for speed or for a semantics Optuna's public API lacks; each
function falls back to the public API where Optuna's layout may change. Keeping them in
one place means one file to check on an Optuna upgrade.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "budgets",
    "fail_stale_trials",
    "frozen_trial",
    "heartbeat",
    "record_heartbeat",
    "set_trial_user_attrs",
    "state_counts",
]


def _rdb(storage: optuna.storages.BaseStorage) -> Any:
    # Optuna may wrap the RDB storage in a cache
    return getattr(storage, "_backend", storage)


def frozen_trial(trial: optuna.Trial) -> FrozenTrial:
    """The stored state of a trial this process is running (its value once told)."""
    return trial.storage.get_trial(trial._trial_id)


def record_heartbeat(trial: optuna.Trial) -> None:
    """Beat once for ``trial`` (a trial without any heartbeat is never considered stale)."""
    storage = trial.storage
    if hasattr(storage, "record_heartbeat") and storage.get_heartbeat_interval():
        storage.record_heartbeat(trial._trial_id)


def set_trial_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """Set many trial user attrs in one transaction (one commit instead of one per key)."""
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
    except ImportError:  # another Optuna layout: one write per key
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    rdb = _rdb(trial.storage)
    table = models.TrialUserAttributeModel
    # Two statements in one transaction instead of three round trips per key: replace the
    # keys (a re-queued trial may carry some) and insert them all. Only this worker writes
    # to its RUNNING trial, so nothing can interleave.
    with _create_scoped_session(rdb.scoped_session) as session:
        session.query(table).filter(
            table.trial_id == trial._trial_id, table.key.in_(list(attrs))
        ).delete(synchronize_session=False)
        session.add_all([
            table(trial_id=trial._trial_id, key=key, value_json=json.dumps(value))
            for key, value in attrs.items()
        ])


def state_counts(engine: sqlalchemy.engine.Engine) -> dict[str, dict[str, int]]:
    """Trial counts per study name and state name, in one GROUP BY.

    Loading every trial of every study would make each claim cost grow with the campaign.
    """
    query = sqlalchemy.text(
        "SELECT s.study_name, t.state, COUNT(*) FROM trials t "
        "JOIN studies s ON s.study_id = t.study_id GROUP BY s.study_name, t.state"
    )
    counts: dict[str, dict[str, int]] = {}
    with engine.connect() as connection:
        for study_name, state, count in connection.execute(query):
            state_name = state.name if hasattr(state, "name") else str(state)
            counts.setdefault(study_name, {})[state_name] = int(count)
    return counts


def budgets(engine: sqlalchemy.engine.Engine, key: str) -> dict[str, int]:
    """The integer study attr ``key`` of every study that has it, in one query.

    Optuna's get_all_studies builds full summaries: several queries per claim for one number.
    """
    query = sqlalchemy.text(
        "SELECT s.study_name, a.value_json FROM studies s JOIN study_user_attributes a "
        "ON a.study_id = s.study_id WHERE a.key = :key"
    )
    with engine.connect() as connection:
        return {name: int(json.loads(value))
                for name, value in connection.execute(query, {"key": key})}


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the study's heartbeat-stale trials now and re-queue them (retry callback)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


@contextmanager
def heartbeat(trial: optuna.Trial, on_failure: Any = None) -> Iterator[None]:
    """Record heartbeats for ``trial`` while the block runs (ask/tell loops need this).

    ``study.optimize`` beats by itself; ``ask``/``tell`` does not, so a worker must wrap
    each trial in this to be protected by the storage's stale-trial retry callback.
    ``on_failure(exc)`` is told of a failed beat; the next beat retries.
    """
    storage = trial.storage
    interval = (
        storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    )
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial._trial_id)
            except Exception as exc:  # a DB hiccup must not kill the trial; retry next beat
                if on_failure is not None:
                    on_failure(exc)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def requeue(study: optuna.Study, trial: optuna.Trial, keep: tuple[str, ...]) -> None:
    """Add a WAITING copy of a failed trial with its params and the job attrs ``keep``.

    Not the storage's heartbeat retry callback: a stop is no failure of the trial, so it
    must not use up its bounded retries, nor copy the partial results of the run.
    """
    frozen = frozen_trial(trial)
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING,
        params=frozen.params,
        distributions=frozen.distributions,
        user_attrs={k: v for k, v in frozen.user_attrs.items() if k in keep},
        system_attrs={"failed_trial": frozen.number},
    ))


__all__ += ["requeue"]
