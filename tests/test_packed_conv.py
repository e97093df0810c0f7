"""`PackedConv2d` split into K dense convolutions computes what the grouped one does."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fixtures_data import write_npz

import dm_tune.population.layers as layers
from dm_tune.data import DataSpec, prepare_data
from dm_tune.models import build_model
from dm_tune.population import Member, train_population
from dm_tune.population.layers import PackedConv2d, PopulationModel


def _population(model: str, members: int, **params) -> PopulationModel:
    models = []
    for seed in range(members):
        torch.manual_seed(seed)
        models.append(build_model(model, (3, 32, 32), 10, **params).double())
    return PopulationModel.from_models(models)


def _run(population: PopulationModel, x: torch.Tensor, split: str, monkeypatch):
    monkeypatch.setattr(layers, "SPLIT_CONVS", split)
    population.zero_grad(set_to_none=True)
    logits = population(x)
    (logits * torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype)
     .view_as(logits)).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in population.named_parameters()}


@pytest.mark.parametrize(("model", "params"), [("fastnet", {"width": 4}), ("resnet20", {}),
                                               ("cnn", {})])
@pytest.mark.parametrize("channels_last", [False, True])
def test_split_equals_grouped_forward_and_gradients(monkeypatch, model, params, channels_last):
    population = _population(model, 3, **params)
    x = torch.randn(3, 5, 3, 32, 32, dtype=torch.float64, generator=torch.Generator()
                    .manual_seed(0))
    if channels_last:
        population = population.to(memory_format=torch.channels_last)
        population._channels_last = None
    calls = []
    real = PackedConv2d.splits
    monkeypatch.setattr(PackedConv2d, "splits",
                        lambda self, t: calls.append(real(self, t)) or calls[-1])
    grouped, grouped_grads = _run(population, x, "never", monkeypatch)
    assert calls and not any(calls)
    calls.clear()
    split, split_grads = _run(population, x, "always", monkeypatch)
    assert calls and all(calls)  # every packed convolution ran as 3 dense ones
    torch.testing.assert_close(split, grouped, rtol=1e-10, atol=1e-12)
    for name, grad in grouped_grads.items():
        torch.testing.assert_close(split_grads[name], grad, rtol=1e-10, atol=1e-12)


def test_auto_splits_only_wide_members_on_cuda(monkeypatch):
    monkeypatch.setattr(layers, "SPLIT_CONVS", "auto")
    population = _population("fastnet", 2, width=64)  # stem 64, blocks 256 channels
    convs = [m for m in population.modules() if isinstance(m, PackedConv2d)]
    widths = sorted({c.out_channels // c.members for c in convs})
    assert widths == [64, 256] and all(c.members == 2 for c in convs)
    cpu = torch.empty(0)
    assert not any(c.splits(cpu) for c in convs)  # on CPU the grouped conv stays

    class OnCuda(torch.Tensor):
        is_cuda = True

    cuda = torch.empty(0).as_subclass(OnCuda)
    assert [c.out_channels // 2 for c in convs if c.splits(cuda)] == \
        [w for w in (c.out_channels // 2 for c in convs) if w >= 128]
    one = _population("fastnet", 1, width=64)
    assert not any(c.splits(cuda) for c in one.modules() if isinstance(c, PackedConv2d))


def test_members_follow_compaction_and_joins():
    population = _population("cnn", 3)
    conv = next(m for m in population.modules() if isinstance(m, PackedConv2d))
    assert conv.members == 3
    population.select_members([0, 2])
    assert conv.members == 2
    population.extend(_population("cnn", 2))
    assert conv.members == 4 and conv.weight.shape[0] == 4 * conv.out_channels // 4


@pytest.mark.usefixtures("float64")
def test_a_population_trains_the_same_split_or_grouped(monkeypatch, tmp_path):
    path = Path(tmp_path) / "img.npz"
    write_npz(path, n=96, images=True)
    data = prepare_data(DataSpec("npz", root=str(path), noise_kind="symmetric",
                                 noise_rate=0.25))
    data = replace(data, **{n: getattr(data, n).double() for n in ("x_train", "x_val",
                                                                   "x_test")})
    from dm_tune.training import TrainSpec

    spec = TrainSpec(model="cnn", epochs=2, batch_size=16, lr=0.05)
    runs = {}
    for split in ("never", "always"):
        monkeypatch.setattr(layers, "SPLIT_CONVS", split)
        members = [Member(data, "dm", {"emphasis_mode": 0.5, "emphasis_variance": 8.0}, s)
                   for s in range(3)]
        runs[split] = train_population(members, spec)
    for grouped, split in zip(runs["never"], runs["always"], strict=True):
        assert split.val_accuracy_per_epoch == grouped.val_accuracy_per_epoch
        assert split.train_loss_per_epoch == pytest.approx(grouped.train_loss_per_epoch,
                                                           rel=1e-9)


def test_padded_evaluation_predicts_the_same(monkeypatch, tmp_path):
    import dm_tune.population.engine as engine
    from dm_tune.training import TrainSpec

    path = Path(tmp_path) / "img.npz"
    write_npz(path, n=150, images=True)
    data = prepare_data(DataSpec("npz", root=str(path)))
    population = engine._Population(TrainSpec(model="cnn", epochs=1), data,
                                     torch.device("cpu"))
    population.add([Member(data, "cce", {}, s) for s in range(3)], [0, 1, 2])
    monkeypatch.setattr(engine, "EVAL_BATCH", 64)  # chunks of 64 // 3 = 21
    rows = len(data.x_train)
    assert rows % 21 != 0  # a short last chunk
    shapes = []
    forward = population.model.forward_packed

    def spied(packed):
        shapes.append(packed.shape[0])
        return forward(packed)

    monkeypatch.setattr(population.model, "forward_packed", spied)
    plain = population.predict(data.x_train)
    assert shapes[-1] == rows % 21
    monkeypatch.setattr(engine, "_pads_evaluation", lambda device, layout: True)
    shapes.clear()
    padded = population.predict(data.x_train)
    assert set(shapes) == {21}  # one shape: the last chunk padded
    assert torch.equal(padded, plain) and padded.shape == (3, rows)
    probabilities = population.predict(data.x_val, probabilities=True)
    assert probabilities.shape == (3, len(data.y_val), data.num_classes)
