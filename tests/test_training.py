"""One trial end to end (dm_tune.training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import write_npz

from dm_tune.data import DataSpec, TrialData, prepare_data
from dm_tune.training import (
    NonFiniteLossError,
    TrainSpec,
    TrialResult,
    _lr_per_step,
    noise_fit_fractions,
    train_trial,
)

USER_ATTRS = {
    "test_accuracy",
    "test_accuracy_at_best_val",
    "best_val_epoch",
    "noisy_train_accuracy",
    "memorized_noisy_fraction",
    "corrected_noisy_fraction",
    "realised_noise_rate",
    "seconds",
    "device",
    "precision",
    "epochs_run",
}


@pytest.fixture(scope="module")
def clean() -> TrialData:
    return prepare_data(DataSpec("digits", val_fraction=0.125))


@pytest.fixture(scope="module")
def noisy() -> TrialData:
    return prepare_data(
        DataSpec("digits", val_fraction=0.125, noise_kind="symmetric", noise_rate=0.4)
    )


def test_digits_mlp_learns_clean_labels(clean: TrialData) -> None:
    result = train_trial(clean, TrainSpec(epochs=15), loss="cce", progress=False)
    assert result.val_accuracy > 0.9 and result.test_accuracy > 0.9
    assert result.epochs_run == 15 and len(result.val_accuracy_per_epoch) == 15
    assert result.realised_noise_rate == 0.0
    # clean labels: nothing corrupted, the fractions are 0.0, not NaN
    assert result.memorized_noisy_fraction == 0.0 and result.corrected_noisy_fraction == 0.0
    assert result.noisy_train_accuracy > 0.95
    assert result.seconds < 30


def test_same_seed_same_curves_other_seed_differs(noisy: TrialData) -> None:
    runs = [
        train_trial(noisy, TrainSpec(epochs=4, seed=s), loss="cce", progress=False)
        for s in (3, 3, 4)
    ]
    assert runs[0].val_accuracy_per_epoch == runs[1].val_accuracy_per_epoch
    assert runs[0].test_accuracy_per_epoch == runs[1].test_accuracy_per_epoch
    assert runs[0].train_loss_per_epoch == runs[1].train_loss_per_epoch
    assert runs[0].train_loss_per_epoch != runs[2].train_loss_per_epoch


def test_train_trial_leaves_the_global_rng_alone(clean: TrialData) -> None:
    state = torch.get_rng_state()
    train_trial(clean, TrainSpec(epochs=1), loss="cce", progress=False)
    assert torch.equal(state, torch.get_rng_state())


def test_dm_loss_by_name_and_a_data_spec() -> None:
    result = train_trial(
        DataSpec("digits", noise_kind="symmetric", noise_rate=0.2),
        TrainSpec(epochs=3, schedule="step"),
        loss="dm",
        loss_params={"emphasis_mode": 1 / 3, "emphasis_variance": 8.0},
        progress=False,
    )
    assert 0.15 < result.realised_noise_rate < 0.25
    assert 0.0 <= result.memorized_noisy_fraction + result.corrected_noisy_fraction <= 1.0


def test_on_epoch_gets_metrics_and_its_exceptions_propagate(clean: TrialData) -> None:
    seen: list[tuple[int, dict]] = []

    class Stop(Exception):
        pass

    def on_epoch(epoch: int, metrics: dict) -> None:
        seen.append((epoch, metrics))
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train_trial(clean, TrainSpec(epochs=10), loss="cce", on_epoch=on_epoch, progress=False)
    assert [e for e, _ in seen] == [1, 2]
    assert {"val_accuracy", "test_accuracy", "train_loss"} <= set(seen[0][1])


def test_non_finite_loss_raises_with_the_epoch(clean: TrialData) -> None:
    def nan_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return logits.sum() * float("nan")

    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        train_trial(clean, TrainSpec(epochs=3), loss=nan_loss, progress=False)


def test_user_attrs_are_json_with_the_design_names(clean: TrialData) -> None:
    result = train_trial(clean, TrainSpec(epochs=2), loss="cce", progress=True)
    attrs = result.user_attrs()
    assert set(attrs) == USER_ATTRS
    assert json.loads(json.dumps(attrs)) == attrs
    assert attrs["device"] == "cpu" and attrs["epochs_run"] == 2
    best = result.best_val_epoch
    assert result.val_accuracy_per_epoch[best - 1] == max(result.val_accuracy_per_epoch)
    assert result.test_accuracy_at_best_val == result.test_accuracy_per_epoch[best - 1]


def test_noise_fit_fractions_on_a_known_case() -> None:
    true = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    noisy = torch.tensor([0, 1, 2, 3, 1, 2, 3, 0])  # last four corrupted
    pred = torch.tensor([0, 1, 2, 0, 1, 1, 0, 2])  # memorises 1, corrects 1, neither 2
    acc, memorized, corrected = noise_fit_fractions(pred, noisy, true)
    assert acc == pytest.approx(4 / 8)
    assert memorized == pytest.approx(1 / 4)
    assert corrected == pytest.approx(1 / 4)
    assert noise_fit_fractions(pred, true, true) == (pytest.approx(4 / 8), 0.0, 0.0)


def test_end_figures_match_the_model_predictions(noisy: TrialData) -> None:
    # DESIGN.md section 7: CCE at 40% symmetric noise, 100 epochs, memorises the corrupted
    # labels and ends near 0.69 test accuracy
    result = train_trial(noisy, TrainSpec(epochs=100), loss="cce", progress=False)
    assert result.memorized_noisy_fraction > 0.9
    assert result.corrected_noisy_fraction < 0.1
    assert result.noisy_train_accuracy > 0.9
    assert 0.6 < result.test_accuracy < 0.8
    assert result.test_accuracy_at_best_val > 0.85  # early epochs, before memorising


def test_lr_schedules() -> None:
    spec = TrainSpec(epochs=4, lr=0.2, schedule="cosine")
    lrs = _lr_per_step(spec, steps_per_epoch=10)
    assert len(lrs) == 40 and lrs[0] == 0.2 and lrs[-1] < 0.001
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    step = _lr_per_step(TrainSpec(epochs=4, lr=0.2, schedule="step"), 10)
    assert step[19] == 0.2 and math.isclose(step[20], 0.02) and math.isclose(step[39], 0.002)
    assert set(_lr_per_step(TrainSpec(epochs=2, schedule="constant"), 3)) == {0.1}


@pytest.mark.parametrize(
    ("spec", "word"),
    [
        (TrainSpec(schedule="linear"), "schedule"),
        (TrainSpec(epochs=0), "epochs"),
        (TrainSpec(batch_size=0), "batch_size"),
        (TrainSpec(lr=0.0), "lr"),
        (TrainSpec(model="vgg"), "model"),
        (TrainSpec(augment=True), "augment"),
    ],
)
def test_bad_train_specs(clean: TrialData, spec: TrainSpec, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        train_trial(clean, spec, loss="cce", progress=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> TrialData:
    path = Path(tmp_path_factory.mktemp("img")) / "img.npz"
    write_npz(path, n=160, images=True)
    return prepare_data(DataSpec("npz", root=str(path), noise_kind="none"))


@pytest.mark.parametrize("model", ["cnn", "resnet20"])
def test_image_models_train_with_augmentation_deterministically(
    images: TrialData, model: str
) -> None:
    spec = TrainSpec(model=model, epochs=2, batch_size=32, model_params={})
    a = train_trial(images, spec, loss="cce", progress=False)
    b = train_trial(images, spec, loss="cce", progress=False)
    assert a.train_loss_per_epoch == b.train_loss_per_epoch
    no_aug = train_trial(
        images,
        TrainSpec(model=model, epochs=2, batch_size=32, augment=False),
        loss="cce",
        progress=False,
    )
    assert no_aug.train_loss_per_epoch != a.train_loss_per_epoch
    assert all(np.isfinite(a.train_loss_per_epoch))


def test_result_type(clean: TrialData) -> None:
    result = train_trial(clean, TrainSpec(epochs=1), loss="cce", progress=False)
    assert isinstance(result, TrialResult) and result.device == "cpu"


# ---------------------------------------------- GPU-path options (checked on CPU)


def _tiny_images(n: int = 32):
    import torch

    from dm_tune.data import TrialData

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 16, 16, generator=gen), torch.arange(n) % 4
    return TrialData(x_train=x, y_train=y, y_train_true=y, x_val=x[:8], y_val=y[:8],
                     x_test=x[:8], y_test=y[:8], num_classes=4, input_shape=(3, 16, 16),
                     realised_noise_rate=0.0, label_digest="t", is_image=True)


def test_train_trial_compile_option_wraps_the_training_forward(monkeypatch):
    import torch

    from dm_tune.training import TrainSpec, train_trial

    compiled = []

    def fake_compile(model, *args, **kwargs):
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    spec = TrainSpec(model="fastnet", model_params={"width": 4}, epochs=1, batch_size=16)
    train_trial(_tiny_images(), spec, loss="cce", progress=False)
    assert compiled == []
    result = train_trial(_tiny_images(), TrainSpec(**{**spec.__dict__, "compile": True}),
                         loss="dm", loss_params={"emphasis_mode": 0.5,
                                                 "emphasis_variance": 8.0}, progress=False)
    assert len(compiled) == 1 and result.epochs_run == 1


def test_device_layout_is_channels_last_on_cuda_only():
    import torch

    from dm_tune.training import device_layout

    data = _tiny_images()
    assert device_layout(data, torch.device("cpu")) is data
    moved = device_layout(data, torch.device("cuda"))  # the layout step only: no transfer
    for x in (moved.x_train, moved.x_val, moved.x_test):
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert x.shape[1:] == (3, 16, 16)
    assert torch.equal(moved.x_train, data.x_train)
