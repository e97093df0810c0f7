"""A worker whose trial another worker failed as heartbeat-stale drops it and goes on.

During a database outage longer than the grace period, a worker's heartbeats stop; the
first worker to reach the database again fails its trial as stale and queues the retry.
The first worker must then neither crash ("Cannot tell a FAIL trial", exit 2 in CI) nor
write its results onto the failed trial, and the budget must stay exact.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from dm_tune.campaign import _optuna, create_campaign, run_worker
from dm_tune.campaign.settings import settings_of
from dm_tune.config import load_campaign_config
from dm_tune.storage import open_storage
from dm_tune.training import TrialResult
from tests.campaign_files import write_tiny
from tests.test_population_worker import _with_population

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _reap_running(storage: optuna.storages.RDBStorage, study_name: str,
                  number: int | None = None) -> int:
    """Let a running trial go stale and fail it as another worker's claim would."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if number is None or t.number == number][0]
    storage.record_heartbeat(running._trial_id)  # Optuna only reaps trials that have beaten
    time.sleep(2.1)  # past the 1 s grace period (SQLite's clock has 1 s steps)
    _optuna.fail_stale_trials(study)
    assert study.get_trials(deepcopy=False)[running.number].state == TrialState.FAIL
    return running.number


def _stub_train(data, spec, loss="dm", loss_params=None, on_epoch=None, progress=None):
    on_epoch(1, {"val_accuracy": 0.5, "test_accuracy": 0.5, "train_loss": 1.0})
    return TrialResult([0.5], [0.5], 0.5, 0.5, 1, 0.5, 0.5, 0.0, 0.0, 0.2, 1, 0.01, "cpu")


def _campaign(tmp_path, monkeypatch, population: int = 1):
    """A tiny campaign (1 s grace period) served to a worker whose heartbeats cannot beat
    (it lost the database); its config, storage and first study's name."""
    path = write_tiny(tmp_path, epochs=1, trials=2, baselines=())
    config = load_campaign_config(_with_population(path, population) if population > 1
                                  else path)
    storage = open_storage(f"sqlite:///{tmp_path / 'c.db'}", heartbeat_interval=1,
                           grace_period=1)
    create_campaign(config, storage)
    monkeypatch.setattr(_optuna, "heartbeat", lambda trial, on_failure=None:
                        contextlib.nullcontext())
    return config, storage, settings_of(config)[0].study_name(config.campaign.name)


def _finished_per_study(storage, config) -> list[list[optuna.trial.FrozenTrial]]:
    """Each DM study's trials, after every budget was asserted exact."""
    studies = []
    for setting in settings_of(config):
        trials = optuna.load_study(study_name=setting.study_name(config.campaign.name),
                                   storage=storage).trials
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(finished) == config.search.trials  # the budget stays exact
        studies.append(trials)
    return studies


@pytest.mark.parametrize("population", [1, 2])
def test_a_trial_reaped_during_an_outage_is_dropped_and_retried(tmp_path, monkeypatch, caplog,
                                                               population):
    config, storage, study_name = _campaign(tmp_path, monkeypatch, population)
    reaped: list[int] = []

    def outage(claimed, epoch, metrics):  # before the epoch's report to the pruner
        if not reaped and claimed.study.study_name == study_name:
            reaped.append(_reap_running(storage, study_name, claimed.trial.number))

    # one trial at a time: a stub trains; a population trains its (real, 1-epoch) members
    train = {"train": _stub_train} if population == 1 else {}
    with caplog.at_level(logging.WARNING, logger="dm_tune"):
        first = run_worker(storage, config, "cpu", name="w0", max_trials=population,
                           on_epoch=outage, **train)
    # no exception: the worker goes on; a population's other member ends normally
    assert first.states["FAIL"] == 1 and sum(first.states.values()) == population
    assert "failed as heartbeat-stale by another worker" in caplog.text
    study = optuna.load_study(study_name=study_name, storage=storage)
    failed = study.trials[reaped[0]]
    assert failed.state == TrialState.FAIL
    assert "test_accuracy" not in failed.user_attrs  # nothing written onto the failed trial
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed.number]
    assert retry.params == failed.params

    run_worker(storage, config, "cpu", name="w1", **train)
    _finished_per_study(storage, config)


def test_a_result_recorded_after_the_reap_is_dropped(tmp_path, monkeypatch, caplog):
    config, storage, study_name = _campaign(tmp_path, monkeypatch)
    reaped: list[int] = []

    def train(data, spec, loss="dm", loss_params=None, on_epoch=None, progress=None):
        result = _stub_train(data, spec, loss, loss_params, on_epoch, progress)
        if not reaped:  # the outage comes after the last report, before the record
            reaped.append(_reap_running(storage, study_name))
        return result

    with caplog.at_level(logging.WARNING, logger="dm_tune"):
        first = run_worker(storage, config, "cpu", name="w0", max_trials=1, train=train)
    assert first.states == {"FAIL": 1}
    failed = optuna.load_study(study_name=study_name, storage=storage).trials[reaped[0]]
    assert failed.state == TrialState.FAIL and "test_accuracy" not in failed.user_attrs


def _claim(storage, study_name: str):
    from dm_tune.campaign.claims import ClaimedTrial

    study = optuna.load_study(study_name=study_name, storage=storage)
    with warnings.catch_warnings():  # ask/tell with heartbeats, as the worker does
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        trial = study.ask()
    return ClaimedTrial(study, trial, None, "dm", "dm-tune/tiny")


def _copies(storage, study_name: str, number: int) -> list[optuna.trial.FrozenTrial]:
    trials = optuna.load_study(study_name=study_name, storage=storage).trials
    return [t for t in trials if t.number != number and t.state == TrialState.WAITING
            and (t.system_attrs.get("failed_trial") == number
                 or number in t.system_attrs.get("retry_history", ()))]


@pytest.mark.parametrize("max_retry", [2, 0])
def test_a_stop_or_error_told_after_the_reap_queues_the_job_once(tmp_path, max_retry):
    from dm_tune.campaign import run_trial

    storage = open_storage(f"sqlite:///{tmp_path / 'c.db'}", heartbeat_interval=1,
                           grace_period=1, max_retry=max_retry)
    optuna.create_study(study_name="s", storage=storage)
    claimed = _claim(storage, "s")
    _reap_running(storage, "s", claimed.trial.number)
    # the sweep queued its retry (or none, its retries used up); a FAIL tell now meets
    # "Cannot tell a FAIL trial" on its first attempt: FAIL all the same, no crash
    run_trial._tell(claimed, state=TrialState.FAIL)
    run_trial._requeue(claimed)
    run_trial._requeue(claimed)  # a retried re-queue whose first attempt committed
    assert len(_copies(storage, "s", claimed.trial.number)) == 1


def test_a_taken_over_job_is_queued_when_the_sweep_queued_none(tmp_path):
    from dm_tune.campaign import run_trial

    storage = open_storage(f"sqlite:///{tmp_path / 'c.db'}", heartbeat_interval=1,
                           grace_period=1, max_retry=0)
    optuna.create_study(study_name="s", storage=storage)
    claimed = _claim(storage, "s")
    _reap_running(storage, "s", claimed.trial.number)
    assert _copies(storage, "s", claimed.trial.number) == []  # the sweep gave up on it
    outcome = run_trial.end_pruned(claimed, {"loss": "dm"})
    assert outcome.state == TrialState.FAIL
    # a queued-only study (baselines, confirmations) would lose the job without it
    assert len(_copies(storage, "s", claimed.trial.number)) == 1


@pytest.mark.parametrize("population", [1, 2])
def test_a_trial_reaped_before_its_params_are_suggested_is_dropped(tmp_path, monkeypatch,
                                                                  population):
    from dm_tune.campaign import run_trial

    config, storage, _ = _campaign(tmp_path, monkeypatch, population)
    reaped: list[int] = []
    suggest = run_trial.loss_of

    def outage_first(claimed, config):  # the claim is made, then the outage
        if not reaped:
            reaped.append(_reap_running(storage, claimed.study.study_name,
                                        claimed.trial.number))
        return suggest(claimed, config)

    monkeypatch.setattr(run_trial, "loss_of", outage_first)
    train = {"train": _stub_train} if population == 1 else {}
    summary = run_worker(storage, config, "cpu", name="w0", max_trials=population, **train)
    assert summary.states["FAIL"] == 1 and sum(summary.states.values()) == population
    run_worker(storage, config, "cpu", name="w1", **train)
    for trials in _finished_per_study(storage, config):
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_a_trial_reaped_between_report_and_should_prune_is_taken_over(tmp_path):
    """Hyperband's should_prune writes the trial's rung: a trial failed as stale right
    after its report must end as taken over, not as UpdateFinishedTrialError (exit 1;
    seen through the storage proxy, tests/test_proxy_faults.py)."""
    from dm_tune.campaign.claims import StudyCache, claim_trial
    from dm_tune.campaign.run_trial import TrialTakenOver, report_and_prune

    config = load_campaign_config(write_tiny(tmp_path, epochs=3, trials=2, baselines=()))
    storage = open_storage(f"sqlite:///{tmp_path / 'c.db'}", heartbeat_interval=1,
                           grace_period=1)
    create_campaign(config, storage)
    claimed = claim_trial(storage, config, StudyCache(storage, config, 0))
    assert config.search.pruner == "hyperband" and claimed.role == "dm"
    trial, report = claimed.trial, claimed.trial.report

    def report_then_reaped(value: float, step: int) -> None:
        report(value, step)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # the sweep's write

    trial.report = report_then_reaped
    with pytest.raises(TrialTakenOver):
        report_and_prune(claimed, 0.5, 1)
    assert storage.get_trial(trial._trial_id).state == TrialState.FAIL
