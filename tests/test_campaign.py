"""The study driver on a temporary SQLite file: studies, budgets, attrs, objective, resume."""

from __future__ import annotations

import threading

import optuna
import pytest
from optuna.trial import TrialState

from dm_tune import __version__
from dm_tune.campaign import (
    create_campaign,
    create_confirmations,
    data_spec,
    load_setting_data,
    run_worker,
    settings_of,
    train_spec,
)
from dm_tune.config import load_campaign_config
from dm_tune.errors import CampaignError
from dm_tune.storage import open_storage
from dm_tune.training import train_trial
from tests.campaign_files import write_tiny

TRIAL_ATTRS = {"loss", "seed", "test_accuracy", "test_accuracy_at_best_val", "best_val_epoch",
               "noisy_train_accuracy", "memorized_noisy_fraction", "realised_noise_rate",
               "seconds", "device", "worker"}
STUDY_ATTRS = {"campaign", "dataset", "model", "noise_kind", "noise_rate", "budget",
               "config_hash", "label_digest", "dm_tune_version"}


@pytest.fixture
def tiny(tmp_path):
    config = load_campaign_config(write_tiny(tmp_path))
    storage = open_storage(f"sqlite:///{tmp_path / 'c.db'}")
    return config, storage


def _trials(storage, name, states=None):
    return optuna.load_study(study_name=name, storage=storage).get_trials(states=states)


def test_tiny_campaign_fills_exactly_the_expected_studies(tiny):
    config, storage = tiny
    create_campaign(config, storage)
    summary = run_worker(storage, config, "cpu", name="w0")
    names = sorted(s.study_name for s in storage.get_all_studies())
    assert names == ["tiny/symmetric-0.20", "tiny/symmetric-0.20/baselines",
                     "tiny/symmetric-0.40", "tiny/symmetric-0.40/baselines"]
    assert summary.trials == 2 * 6 + 2
    for setting in settings_of(config):
        study = optuna.load_study(study_name=setting.study_name("tiny"), storage=storage)
        assert STUDY_ATTRS <= set(study.user_attrs)
        assert study.user_attrs["noise_rate"] == setting.rate
        assert study.user_attrs["dm_tune_version"] == __version__
        assert study.user_attrs["label_digest"] == load_setting_data(config, setting).label_digest
        trials = study.get_trials()
        counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(counted) == len(trials) == 6
        assert len({t.number for t in trials}) == 6
        for trial in trials:
            assert set(trial.params) == {"emphasis_mode", "emphasis_variance"}
            assert trial.user_attrs["loss"] == "dm"
            assert trial.user_attrs["worker"] == "w0"
        for trial in study.get_trials(states=(TrialState.COMPLETE,)):
            assert TRIAL_ATTRS <= set(trial.user_attrs)
            # the objective is the last reported clean-validation accuracy, not test accuracy
            assert trial.value == trial.intermediate_values[max(trial.intermediate_values)]
        baselines = _trials(storage, setting.study_name("tiny", "baselines"))
        assert [t.user_attrs["loss"] for t in baselines] == ["cce"]
        assert baselines[0].params == {}


def test_objective_equals_a_fresh_run_of_the_same_trial(tiny):
    config, storage = tiny
    create_campaign(config, storage)
    run_worker(storage, config, "cpu", max_trials=1, name="w0")
    setting = settings_of(config)[0]
    (trial,) = [t for t in _trials(storage, setting.study_name("tiny"))
                if t.state == TrialState.COMPLETE]
    # the first trial is the paper's warm-start point, never pruned at the first rung
    assert trial.params == {"emphasis_mode": pytest.approx(1 / 3), "emphasis_variance": 12.0}
    again = train_trial(data_spec(config, setting), train_spec(config, "cpu", 0), "dm",
                        trial.params)
    assert trial.value == again.val_accuracy
    assert trial.user_attrs["test_accuracy"] == again.test_accuracy
    assert trial.user_attrs["realised_noise_rate"] == pytest.approx(0.2, abs=0.04)


def test_interrupt_and_resume_end_with_exactly_the_budget(tiny):
    config, storage = tiny
    create_campaign(config, storage)
    first = run_worker(storage, config, "cpu", max_trials=5, name="w0")
    assert first.trials == 5
    # a stop request mid-trial: the trial is failed and re-queued with the same params
    stop = threading.Event()

    def stop_after_first_epoch(claimed, epoch, metrics):
        stop.set()

    stopped = run_worker(storage, config, "cpu", stop=stop, name="w1",
                         on_epoch=stop_after_first_epoch)
    assert stopped.stopped and stopped.states == {"FAIL": 1}
    create_campaign(config, storage)  # idempotent: queues nothing twice
    run_worker(storage, config, "cpu", name="w2")
    for setting in settings_of(config):
        trials = _trials(storage, setting.study_name("tiny"))
        counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(counted) == 6
        assert len({t.number for t in trials}) == len(trials)
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    failed = [t for s in settings_of(config) for t in _trials(storage, s.study_name("tiny"))
              if t.state == TrialState.FAIL]
    assert len(failed) == 1
    retried = [t for s in settings_of(config) for t in _trials(storage, s.study_name("tiny"))
               if t.system_attrs.get("failed_trial") == failed[0].number]
    assert retried and retried[0].params == failed[0].params


def test_config_hash_guard_refuses_and_writes_nothing(tmp_path, tiny):
    config, storage = tiny
    create_campaign(config, storage)
    changed = load_campaign_config(write_tiny(tmp_path, epochs=4))
    before = len(storage.get_all_studies())
    with pytest.raises(CampaignError, match="another configuration"):
        create_campaign(changed, storage)
    assert len(storage.get_all_studies()) == before


def test_budget_can_grow_between_runs(tmp_path, tiny):
    config, storage = tiny
    create_campaign(config, storage)
    run_worker(storage, config, "cpu", name="w0")
    bigger = load_campaign_config(write_tiny(tmp_path, trials=8))
    create_campaign(bigger, storage)
    run_worker(storage, bigger, "cpu", name="w0")
    for setting in settings_of(bigger):
        assert len(_trials(storage, setting.study_name("tiny"))) == 8


def test_confirmations_rerun_top_settings_with_new_seeds(tiny):
    config, storage = tiny
    create_campaign(config, storage)
    run_worker(storage, config, "cpu", name="w0")
    names = create_confirmations(storage, config, top_k=2, seeds=2)
    assert len(names) == 2
    run_worker(storage, config, "cpu", name="w0")
    for setting in settings_of(config):
        confirm = _trials(storage, setting.study_name("tiny", "confirm"))
        assert len(confirm) == 4
        assert {t.user_attrs["seed"] for t in confirm} == {1000, 1001}
        dm = optuna.load_study(study_name=setting.study_name("tiny"), storage=storage)
        source = {t.number: t.params for t in dm.get_trials()}
        for trial in confirm:
            assert trial.state == TrialState.COMPLETE
            assert trial.params == source[trial.user_attrs["source_trial"]]


def test_a_single_worker_with_a_fixed_sampler_seed_reproduces_the_campaign(tmp_path):
    config = load_campaign_config(write_tiny(tmp_path, trials=8))
    outcomes = []
    for run in range(2):
        storage = open_storage(f"sqlite:///{tmp_path / f'r{run}.db'}")
        create_campaign(config, storage)
        run_worker(storage, config, "cpu", name=f"w{run}", sampler_seed=0)
        study = optuna.load_study(study_name="tiny/symmetric-0.40", storage=storage)
        outcomes.append([(t.params, t.state, t.value) for t in study.get_trials()])
    assert outcomes[0] == outcomes[1]


def test_a_diverging_trial_is_pruned_with_its_reason(tiny):
    from dm_tune.training import NonFiniteLossError

    config, storage = tiny
    create_campaign(config, storage)

    def diverging(data, spec, loss, loss_params, on_epoch=None, progress=None):
        on_epoch(1, {"val_accuracy": 0.5, "test_accuracy": 0.4, "train_loss": 1.0})
        raise NonFiniteLossError("training loss is nan at epoch 2")

    summary = run_worker(storage, config, "cpu", max_trials=1, name="w0", train=diverging)
    assert summary.states == {"PRUNED": 1}
    (trial,) = [t for s in settings_of(config) for t in _trials(storage, s.study_name("tiny"))
                if t.state == TrialState.PRUNED]
    assert "nan" in trial.user_attrs["pruned_reason"]
    assert trial.user_attrs["epochs_run"] == 1
    assert trial.user_attrs["val_accuracy_curve"] == [0.5]


def test_a_stopped_confirmation_is_requeued_with_its_job(tiny):
    config, storage = tiny
    create_campaign(config, storage)
    run_worker(storage, config, "cpu", name="w0")
    create_confirmations(storage, config, top_k=1, seeds=1)
    stop = threading.Event()
    run_worker(storage, config, "cpu", stop=stop, name="w1",
               on_epoch=lambda claimed, epoch, metrics: stop.set())
    confirm = [t for s in settings_of(config)
               for t in _trials(storage, s.study_name("tiny", "confirm"))]
    (stopped,) = [t for t in confirm if t.state == TrialState.FAIL]
    (requeued,) = [t for t in confirm if t.system_attrs.get("failed_trial") == stopped.number]
    assert requeued.state == TrialState.WAITING
    assert requeued.user_attrs["seed"] == 1000
    assert requeued.user_attrs["source_trial"] == stopped.user_attrs["source_trial"]
    assert "stopped" not in requeued.user_attrs  # nothing from the interrupted run
    assert requeued.params == stopped.params
