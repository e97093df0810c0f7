"""`[training] precision`: parsed and refused, the autocast it runs under, what is recorded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dm_tune.campaign.settings import train_spec
from dm_tune.config import ConfigError, load_campaign_config, parse_campaign_config
from dm_tune.data import DataSpec, TrialData, prepare_data
from dm_tune.population import Member, train_population
from dm_tune.population.layers import StackedLinear
from dm_tune.training import TrainSpec, resolved_precision, train_autocast, train_trial

BASE = {"campaign": {"name": "x"}, "noise": [{"kind": "symmetric", "rates": [0.2]}]}
DM = {"emphasis_mode": 0.5, "emphasis_variance": 8.0}


@pytest.fixture(scope="module")
def digits() -> TrialData:
    return prepare_data(DataSpec("digits", noise_kind="symmetric", noise_rate=0.2))


def test_precision_is_parsed_and_reaches_the_trial_spec():
    for value in ("fp32", "bf16"):
        config = parse_campaign_config({**BASE, "training": {"precision": value}})
        assert config.training.precision == value
        assert train_spec(config, "cpu", 3).precision == value
    assert parse_campaign_config(BASE).training.precision is None


def test_a_bad_precision_is_refused_naming_the_key_and_the_choices(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[campaign]\nname='x'\n[training]\nprecision='fp16'\n"
                    "[[noise]]\nkind='symmetric'\nrates=[0.2]\n")
    with pytest.raises(ConfigError) as info:
        load_campaign_config(path)
    assert str(info.value) == f"{path}: training.precision: Input should be 'fp32' or 'bf16'"


def test_an_unset_precision_keeps_the_campaign_identity_a_set_one_changes_it():
    # the hash of BASE before the option existed (computed on main at c37a217)
    assert parse_campaign_config(BASE).config_hash() == "80709cea0e38a627"
    fp32 = parse_campaign_config({**BASE, "training": {"precision": "fp32"}})
    bf16 = parse_campaign_config({**BASE, "training": {"precision": "bf16"}})
    assert len({fp32.config_hash(), bf16.config_hash(), "80709cea0e38a627"}) == 3


def test_train_spec_refuses_an_unknown_precision(digits):
    with pytest.raises(ValueError, match=r"precision: unknown 'fp16'; expected one of "
                                         r"\('fp32', 'bf16'\)"):
        train_trial(digits, TrainSpec(epochs=1, precision="fp16"), loss="cce", progress=False)


def test_the_default_precision_is_the_devices():
    assert resolved_precision(TrainSpec(), torch.device("cpu")) == "fp32"
    assert resolved_precision(TrainSpec(), torch.device("cuda")) == "bf16"
    assert resolved_precision(TrainSpec(precision="fp32"), torch.device("cuda")) == "fp32"
    assert resolved_precision(TrainSpec(precision="bf16"), torch.device("cpu")) == "bf16"
    # the pre-option meaning of train_autocast(device, True): bf16 on CUDA only
    with train_autocast(torch.device("cpu"), True):
        assert not torch.is_autocast_enabled("cpu")
    with train_autocast(torch.device("cpu"), "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def _record_linear_dtypes(model: nn.Module, seen: list[torch.dtype]) -> None:
    for module in model.modules():
        if isinstance(module, nn.Linear | StackedLinear):
            module.register_forward_hook(lambda m, i, out: seen.append(out.dtype))


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16),
                                                  ("fp32", torch.float32)])
def test_a_cpu_trial_trains_its_matmuls_in_the_precision(digits, monkeypatch, precision, dtype):
    import dm_tune.training as training

    seen: list[torch.dtype] = []
    build = training._build

    def spied(*args):
        model = build(*args)
        _record_linear_dtypes(model, seen)
        return model

    monkeypatch.setattr(training, "_build", spied)
    result = train_trial(digits, TrainSpec(epochs=1, precision=precision), loss="dm",
                         loss_params=DM, progress=False)
    # every training step's and every evaluation's layer outputs: 20 steps x 3 layers ...
    assert len(seen) > 60 and set(seen) == {dtype}
    assert result.precision == precision
    assert result.user_attrs()["precision"] == precision


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16),
                                                  ("fp32", torch.float32)])
def test_a_cpu_population_trains_in_the_precision(digits, monkeypatch, precision, dtype):
    from dm_tune.population import layers

    seen: list[torch.dtype] = []
    pack = layers.PopulationModel.from_models.__func__

    def spied(cls, models):
        model = pack(cls, models)
        _record_linear_dtypes(model, seen)
        return model

    monkeypatch.setattr(layers.PopulationModel, "from_models", classmethod(spied))
    members = [Member(digits, "dm", DM, seed) for seed in range(2)]
    results = train_population(members, TrainSpec(epochs=1, precision=precision))
    assert len(seen) > 60 and set(seen) == {dtype}
    assert [r.result.user_attrs()["precision"] for r in results] == [precision] * 2


def test_the_cli_refuses_a_bad_precision_with_exit_2_and_writes_nothing(tmp_path):
    import os
    import subprocess
    import sys

    path = tmp_path / "bad.toml"
    path.write_text("[campaign]\nname='x'\n[training]\nprecision='fp16'\n"
                    "[[noise]]\nkind='symmetric'\nrates=[0.2]\n")
    database = tmp_path / "campaign.db"
    done = subprocess.run([sys.executable, "-m", "dm_tune", "create", str(path), "--storage",
                           f"sqlite:///{database}"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "NO_COLOR": "1"}, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"dm-tune: {path}: training.precision: Input should be "
                                   "'fp32' or 'bf16'")
    assert not database.exists()


@pytest.mark.parametrize("population", [1, 2])
def test_campaign_trials_record_the_precision_they_trained_in(tmp_path, population):
    import optuna
    from optuna.trial import TrialState

    from dm_tune.campaign.create import create_campaign
    from dm_tune.campaign.worker import run_worker
    from dm_tune.config import with_population
    from dm_tune.storage import open_storage
    from tests.campaign_files import write_tiny

    path = write_tiny(tmp_path, epochs=2, trials=2)
    path.write_text(path.read_text().replace("batch_size = 64",
                                             'batch_size = 64\nprecision = "bf16"'))
    config = with_population(load_campaign_config(path), population)
    storage = open_storage(f"sqlite:///{tmp_path / 'c.db'}")
    create_campaign(config, storage)
    run_worker(storage, config, "cpu", max_trials=2, name="w0")
    done = [t for s in storage.get_all_studies()
            for t in optuna.load_study(study_name=s.study_name, storage=storage)
            .get_trials(states=(TrialState.COMPLETE,))]
    assert done and {t.user_attrs["precision"] for t in done} == {"bf16"}


def test_cudnn_benchmark_is_set_once_per_process_and_never_flipped_back(monkeypatch):
    import dm_tune.training as training

    monkeypatch.setattr(training, "_CUDA_SET_UP", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    training.cuda_process_settings(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False  # CPU work leaves it alone
    training.cuda_process_settings(torch.device("cuda", 0))
    assert torch.backends.cudnn.benchmark is True
    torch.backends.cudnn.benchmark = False  # a caller that wants it off keeps it off
    training.cuda_process_settings(torch.device("cuda", 0))
    assert torch.backends.cudnn.benchmark is False
