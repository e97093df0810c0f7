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
from optuna.storages import GrpcStorageProxy
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from dm_tune.campaign import liveness

__all__ = [
    "HeartbeatGrpcClient",
    "add_storage_servicer",
    "proxy_cached_storage",
    "budgets",
    "fail_stale_trials",
    "frozen_study_id",
    "frozen_trial",
    "heartbeat",
    "lock_target",
    "record_heartbeat",
    "set_trial_user_attrs",
    "stale_trial_ids",
    "state_counts",
]


def _rdb(storage: optuna.storages.BaseStorage) -> Any:
    # Optuna may wrap the RDB storage in a cache
    return getattr(storage, "_backend", storage)


def lock_target(trial: optuna.Trial) -> Any:
    """What ``locks.campaign_lock`` takes for this trial's database: the storage under
    Optuna's cache (an RDB storage, or the proxy client with its own lock)."""
    return _rdb(trial.storage)


def frozen_study_id(study: Any) -> int:
    """The id of a study as ``storage.get_all_studies()`` returns it (a FrozenStudy keeps
    it private; optuna-dashboard addresses studies by it)."""
    return int(study._study_id)


def frozen_trial(trial: optuna.Trial) -> FrozenTrial:
    """The stored state of a trial this process is running (its value once told)."""
    return trial.storage.get_trial(trial._trial_id)


def record_heartbeat(trial: optuna.Trial) -> None:
    """Beat once for ``trial`` (a trial without any heartbeat is never considered stale)."""
    storage = trial.storage
    if hasattr(storage, "record_heartbeat") and storage.get_heartbeat_interval():
        storage.record_heartbeat(trial._trial_id)


def set_trial_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """Set many trial user attrs in one transaction (one commit instead of one per key).

    A storage without a SQLAlchemy session (the gRPC proxy client) gets one write per key.
    """
    rdb = _rdb(trial.storage)
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
    except ImportError:  # another Optuna layout
        rdb = None
    if getattr(rdb, "scoped_session", None) is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    table = models.TrialUserAttributeModel
    # Two statements in one transaction instead of three round trips per key: replace the
    # keys (a re-queued trial may carry some) and insert them all. Only this worker writes
    # to its RUNNING trial; but another worker may have failed it as heartbeat-stale during
    # an outage, so the state is checked in the same transaction, as Optuna's own writes do.
    with _create_scoped_session(rdb.scoped_session) as session:
        state = session.query(models.TrialModel.state).filter(
            models.TrialModel.trial_id == trial._trial_id).with_for_update().scalar()
        if state is not None and TrialState(state).is_finished():
            raise optuna.exceptions.UpdateFinishedTrialError(
                f"Trial#{trial.number} has already finished ({TrialState(state).name}) and "
                "can not be updated.")
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
            else:
                liveness.touch()  # the k8s liveness file: only after a beat that worked
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


def has_retry(study: optuna.Study, number: int) -> bool:
    """Whether a later trial stands in for trial ``number``'s job: a re-queued copy
    (``failed_trial``) or a retry of the stale-trial callback (``retry_history``)."""
    for other in study.get_trials(deepcopy=False):
        attrs = other.system_attrs
        if other.number != number and (attrs.get("failed_trial") == number
                                       or number in attrs.get("retry_history", ())):
            return True
    return False


__all__ += ["has_retry", "requeue"]


# ------------------------------------------------------------------ the gRPC storage proxy
# dm_tune.cluster.proxy serves Optuna's gRPC storage service and extends its client; the
# parts of that which are Optuna's private modules and methods live here.


def proxy_cached_storage(rdb: optuna.storages.RDBStorage) -> optuna.storages.BaseStorage:
    """What ``optuna.storages.get_storage(rdb)`` returns (Optuna's cached wrapper, which a
    proxy should serve), minus one flaw: its ``set_trial_param`` knows only the trials this
    process created or read, so a restarted proxy refused (NOT_FOUND) the params of a
    trial claimed through the proxy before it; those go to the database directly."""
    from optuna.storages._cached_storage import _CachedStorage

    class _ProxyCache(_CachedStorage):
        def set_trial_param(self, trial_id: int, param_name: str,
                            param_value_internal: float, distribution: Any) -> None:
            with self._lock:
                known = trial_id in self._trial_id_to_study_id_and_number
            if known:
                super().set_trial_param(trial_id, param_name, param_value_internal,
                                        distribution)
            else:
                self._backend.set_trial_param(trial_id, param_name, param_value_internal,
                                              distribution)

    return _ProxyCache(rdb)


def add_storage_servicer(server: Any, storage: optuna.storages.BaseStorage) -> None:
    """Add Optuna's gRPC storage service for ``storage`` to a ``grpc.server``.

    What ``optuna.storages.run_grpc_proxy_server`` does, for a server we build ourselves
    (keepalive options, our own thread pool, a second service).
    """
    from optuna.storages._grpc import servicer
    from optuna.storages._grpc.auto_generated import api_pb2_grpc

    api_pb2_grpc.add_StorageServiceServicer_to_server(
        servicer.OptunaStorageProxyService(storage), server
    )


def stale_trial_ids(storage: optuna.storages.BaseStorage, study_id: int) -> list[int]:
    """Ids of the study's RUNNING trials whose heartbeat is older than the grace period."""
    return list(storage._get_stale_trial_ids(study_id))


class HeartbeatGrpcClient(GrpcStorageProxy, BaseHeartbeat):  # type: ignore[misc]
    """Optuna's ``GrpcStorageProxy`` with channel options, extra RPCs and a heartbeat.

    Subclasses set ``channel_options``, build their own RPC stubs in ``connected(channel)``
    (called on construction and after unpickling) and implement ``stale_trial_ids``,
    ``record_heartbeat``, ``get_heartbeat_interval`` and
    ``get_heartbeat_stale_trial_callback``; ``optuna.storages.fail_stale_trials`` and
    ``study.optimize``'s heartbeat thread then work through the proxy.
    """

    channel_options: tuple[tuple[str, Any], ...] = (("grpc.max_receive_message_length", -1),)

    def _setup(self) -> None:  # GrpcStorageProxy's, with our channel options
        import grpc
        from optuna.storages._grpc.auto_generated import api_pb2_grpc
        from optuna.storages._grpc.client import GrpcClientCache

        self._channel = grpc.insecure_channel(f"{self._host}:{self._port}",
                                              options=list(self.channel_options))
        self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
        self._cache = GrpcClientCache(self._stub)
        self.connected(self._channel)

    @property
    def address(self) -> tuple[str, int]:
        """The proxy's (host, port)."""
        return self._host, self._port

    def connected(self, channel: Any) -> None:
        """Hook: build extra RPC stubs on ``channel``."""

    def stale_trial_ids(self, study_id: int) -> list[int]:
        raise NotImplementedError

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:  # BaseHeartbeat's
        return self.stale_trial_ids(study_id)


# ------------------------------------------------------------------ orphans of an outage


def orphan_trial_ids(
    engine: sqlalchemy.engine.Engine, study_name: str, older_than_s: float
) -> list[int]:
    """RUNNING trials that never got a heartbeat and started over ``older_than_s`` ago.

    A claim cut by a database outage after ``ask`` committed but before the first beat
    leaves such a trial: Optuna's stale check only sees trials that have beaten once, so
    without this it would count as running forever and hold its study below budget.
    """
    query = sqlalchemy.text(
        "SELECT t.trial_id, t.datetime_start FROM trials t "
        "JOIN studies s ON s.study_id = t.study_id "
        "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE s.study_name = :name AND t.state = 'RUNNING' AND h.trial_id IS NULL"
    )
    import datetime

    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)  # Optuna stores naive UTC
    with engine.connect() as connection:
        rows = connection.execute(query, {"name": study_name}).all()
    found = []
    for trial_id, started in rows:
        if isinstance(started, str):  # SQLite returns the text
            started = datetime.datetime.fromisoformat(started)
        if started is not None and (now - started).total_seconds() > older_than_s:
            found.append(trial_id)
    return found


def fail_and_requeue(study: optuna.Study, trial_id: int, keep: tuple[str, ...]) -> None:
    """Fail a RUNNING trial nobody owns and queue its job again (params, job attrs)."""
    storage = study._storage
    frozen = storage.get_trial(trial_id)
    if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
        return
    # a job claimed but killed before its trial suggested anything has no params yet: its
    # queued values are still in Optuna's "fixed_params" (``enqueue_trial``), and a re-queue
    # without them would let the sampler train some other setting under the job's identity
    fixed = {**frozen.system_attrs.get("fixed_params", {}), **frozen.params}
    system_attrs = {"failed_trial": frozen.number}
    if set(fixed) - set(frozen.params):
        system_attrs["fixed_params"] = fixed
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
        user_attrs={k: v for k, v in frozen.user_attrs.items() if k in keep},
        system_attrs=system_attrs,
    ))


def requeue_running(study: optuna.Study, keep: tuple[str, ...]) -> int:
    """:func:`fail_and_requeue` every RUNNING trial of ``study`` (its caller knows they are
    abandoned); the number re-queued."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        fail_and_requeue(study, trial._trial_id, keep)
    return len(running)


__all__ += ["fail_and_requeue", "orphan_trial_ids", "requeue_running"]


def optuna_table_names() -> frozenset[str]:
    """The tables an Optuna RDB storage creates (its models), and alembic's version table."""
    from optuna.storages._rdb import models

    return frozenset(models.BaseModel.metadata.tables) | {"alembic_version"}


__all__ += ["optuna_table_names"]
