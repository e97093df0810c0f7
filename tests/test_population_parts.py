"""Population engine parts: batched losses, stacked/packed layers, one SGD over the stack."""

from __future__ import annotations

import pytest
import torch

from dm_tune.losses import baseline_loss, dm_loss, get_loss
from dm_tune.models import build_model
from dm_tune.population import (
    PopulationLoss,
    PopulationModel,
    StackedLinear,
    StackedSGD,
    batched_dm_loss,
)
from dm_tune.training import TrainSpec, trial_optimizer

# float64 models and inputs: differences are the code's, not rounding's
pytestmark = pytest.mark.usefixtures("float64")


def _logits(members: int, batch: int = 24, classes: int = 10, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = (4 * torch.randn(members, batch, classes, generator=gen)).requires_grad_()
    targets = torch.randint(0, classes, (members, batch), generator=gen)
    return logits, targets


DM_PARAMS = [  # emphasis mode, variance, norm_epsilon: mixed, incl. the exact Eq. 7
    (0.0, 0.0, 1e-6), (1 / 3, 8.0, 0.0), (0.5, 16.0, 1e-3), (0.9, 2.0, 1e-6),
]


@pytest.mark.parametrize("params", [DM_PARAMS, [p for p in DM_PARAMS if p[2] == 0.0],
                                    [p for p in DM_PARAMS if p[2] > 0.0]])
def test_batched_dm_loss_is_each_members_dm_loss_value_and_gradient(params):
    logits, targets = _logits(len(params))
    modes, variances, epsilons = zip(*params, strict=True)
    values = batched_dm_loss(logits, targets, modes, variances, epsilons)
    weights = torch.randn(len(params))  # distinct upstream gradients per member
    (grad,) = torch.autograd.grad((values * weights).sum(), logits)
    for k, (mode, variance, epsilon) in enumerate(params):
        member = logits[k].detach().requires_grad_()
        value = dm_loss(member, targets[k], mode, variance, norm_epsilon=epsilon)
        (expected,) = torch.autograd.grad(value * weights[k], member)
        assert values[k].item() == pytest.approx(value.item(), rel=1e-13)
        torch.testing.assert_close(grad[k], expected, rtol=1e-12, atol=1e-15)
        # each member's weights are normalised in its own batch: DM's gradient norm
        # sums to the member's upstream gradient when eps = 0
        if epsilon == 0.0:
            assert grad[k].abs().sum().item() == pytest.approx(abs(weights[k].item()), rel=1e-12)


def test_population_loss_mixes_dm_and_baselines_in_member_order():
    specs = [("gce", {"q": 0.5}), ("dm", {"emphasis_mode": 0.5, "emphasis_variance": 8.0}),
             ("cce", {}), ("gce", {"q": 0.5}), ("sce", {}), ("gce", {"q": 0.9}),
             ("dm", {"emphasis_mode": 0.25, "emphasis_variance": 4.0, "norm_epsilon": 0.0})]
    loss = PopulationLoss([get_loss(name, **params) for name, params in specs])
    logits, targets = _logits(len(specs), seed=1)
    values = loss(logits, targets)
    (grad,) = torch.autograd.grad(values.sum(), logits)
    for k, (name, params) in enumerate(specs):
        member = logits[k].detach().requires_grad_()
        if name == "dm":
            value = dm_loss(member, targets[k], **params)
        else:
            value = baseline_loss(name, member, targets[k], **params)
        (expected,) = torch.autograd.grad(value, member)
        assert values[k].item() == pytest.approx(value.item(), rel=1e-12), name
        torch.testing.assert_close(grad[k], expected, rtol=1e-12, atol=1e-15)
    kept = loss.select([6, 0, 2])
    torch.testing.assert_close(kept(logits[[6, 0, 2]], targets[[6, 0, 2]]), values[[6, 0, 2]])


def _mlps(seeds):
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build_model("mlp", (8,), 3, hidden=(16, 16)))
    return models


def _cnns(seeds, name="cnn", **params):
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build_model(name, (3, 8, 8), 4, **params))
    return models


@pytest.mark.parametrize(("name", "params"), [
    ("mlp", {}), ("cnn", {"width": 4}), ("resnet20", {}), ("resnet20", {"shortcut": "B"}),
    ("fastnet", {"width": 2}),
])
def test_population_forward_is_each_models_forward_in_train_and_eval(name, params):
    models = _mlps(range(3)) if name == "mlp" else _cnns(range(3), name, **params)
    population = PopulationModel.from_models(models)
    shape = (8,) if name == "mlp" else (3, 8, 8)
    x = torch.randn(3, 6, *shape)
    for train in (True, False):  # batch statistics, then running averages
        population.train(train)
        for m in models:
            m.train(train)
        out = population(x)
        assert out.shape == (3, 6, 4 if name != "mlp" else 3)
        for k, model in enumerate(models):
            torch.testing.assert_close(out[k], model(x[k]), rtol=1e-12, atol=1e-12)
    # member_state names and values are each model's own state dict
    for k, model in enumerate(models):
        state = population.member_state(k)
        assert state.keys() == model.state_dict().keys()
        for key, value in model.state_dict().items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("width_out", [10, 7])
def test_stacked_linear_backward_is_autograds_and_autocast_takes_torchs_ops(bias, width_out):
    gen = torch.Generator().manual_seed(0)
    linears = [torch.nn.Linear(6, width_out, bias=bias) for _ in range(3)]
    layer = StackedLinear.from_linears(linears)
    x = torch.randn(3, 5, 6, generator=gen, requires_grad=True)
    upstream = torch.randn(3, 5, width_out, generator=gen)
    (layer(x) * upstream).sum().backward()
    mine = [x.grad, layer.weight.grad] + ([layer.bias.grad] if bias else [])
    for k, linear in enumerate(linears):  # each member's own nn.Linear, by autograd
        xk = x.detach()[k].clone().requires_grad_()
        (linear(xk) * upstream[k]).sum().backward()
        torch.testing.assert_close(mine[0][k], xk.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(mine[1][k], linear.weight.grad, rtol=1e-12, atol=1e-12)
        if bias:
            torch.testing.assert_close(mine[2][k, 0], linear.bias.grad, rtol=1e-12,
                                       atol=1e-12)
    single = StackedLinear.from_linears([linear.float() for linear in linears])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CUDA's path, on the CPU
        out = single(x.detach().float())
    assert out.dtype == torch.bfloat16
    (out.float() * upstream.float()).sum().backward()
    torch.testing.assert_close(single.weight.grad.double(), mine[1], rtol=0.05, atol=0.05)


def test_shared_inputs_give_every_member_the_same_batch():
    models = _cnns(range(2), width=4)
    population = PopulationModel.from_models(models).eval()
    x = torch.randn(5, 3, 8, 8)
    out = population.forward_packed(population.shared_inputs(x))
    for k, model in enumerate(models):
        torch.testing.assert_close(out[k], model.eval()(x), rtol=1e-12, atol=1e-12)


def test_unsupported_layers_are_refused():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.norm = torch.nn.LayerNorm(4)

    with pytest.raises(ValueError, match="no population layout for Odd"):
        PopulationModel.from_models([Odd(), Odd()])
    cnn = build_model("cnn", (3, 8, 8), 4, width=4)
    cnn.features[1] = torch.nn.LayerNorm([4, 8, 8])
    with pytest.raises(ValueError, match="LayerNorm 'features.1'"):
        PopulationModel.from_models([cnn, cnn])


def _step_all(population, optimizer, models, optimizers, x, lrs):
    """One SGD step of the population (member k at lrs[k]) and of each model on its own
    (loss: sum of squares); the population's cohorts are runs of equal learning rates."""
    cohorts = []
    for k, lr in enumerate(lrs):
        if cohorts and cohorts[-1][2] == lr:
            cohorts[-1] = (cohorts[-1][0], k + 1, lr)
        else:
            cohorts.append((k, k + 1, lr))
    optimizer.zero_grad()
    population(x).square().sum().backward()
    optimizer.step(cohorts)
    for k, (model, opt) in enumerate(zip(models, optimizers, strict=True)):
        opt.param_groups[0]["lr"] = lrs[k]
        opt.zero_grad(set_to_none=True)
        model(x[k]).square().sum().backward()
        opt.step()


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet20"])
def test_one_sgd_over_the_stack_equals_one_sgd_per_member_through_compaction_and_joins(
    kind, nesterov
):
    """StackedSGD is K torch SGD optimisers: members leave, join late (fresh momentum) and
    step at their own learning rates."""
    spec = TrainSpec(lr=0.05, momentum=0.9, weight_decay=5e-3, nesterov=nesterov)
    build = {"mlp": _mlps, "cnn": lambda seeds: _cnns(seeds, width=4),
             "resnet20": lambda seeds: _cnns(seeds, "resnet20")}[kind]
    shape = (8,) if kind == "mlp" else (3, 8, 8)
    models = build(range(4))
    population = PopulationModel.from_models(models)
    optimizer = StackedSGD(population.parameters(), 4, spec.momentum, spec.weight_decay,
                           spec.nesterov)
    optimizers = [trial_optimizer(m.parameters(), spec) for m in models]  # train_trial's
    gen = torch.Generator().manual_seed(0)

    scale = 0.01 if kind == "resnet20" else 1.0  # a sum of squares diverges in a deep net

    def steps(count, lrs):
        for step in range(count):
            _step_all(population, optimizer, models, optimizers,
                      torch.randn(len(models), 5, *shape, generator=gen),
                      [scale * lr / (step + 1) for lr in lrs])

    steps(4, [0.05] * 4)
    keep = [0, 2, 3]  # member 1 leaves: tensors and momentum buffers shrink
    population.select_members(keep)
    optimizer.select(keep)
    models, optimizers = [models[k] for k in keep], [optimizers[k] for k in keep]
    assert population.members == 3
    steps(2, [0.01] * 3)
    joining = build(range(10, 12))  # two members join with their own, fresh optimisers
    population.extend(PopulationModel.from_models(joining))
    optimizer.extend(2)
    models += joining
    optimizers += [trial_optimizer(m.parameters(), spec) for m in joining]
    assert population.members == 5
    for param, buffer in zip(population.parameters(), optimizer.buffers, strict=True):
        assert buffer.shape == param.shape and param.shape[0] % 5 == 0
    steps(3, [0.01, 0.01, 0.01, 0.07, 0.07])  # two cohorts, two learning rates
    for k, model in enumerate(models):
        state = population.member_state(k)
        for key, value in model.state_dict().items():
            if key.endswith("num_batches_tracked") and k >= 3:
                continue  # the population's one counter (unused: batch norm has a momentum)
            torch.testing.assert_close(state[key], value, rtol=1e-12, atol=1e-14, msg=key)


def test_channels_last_models_stay_channels_last_through_compaction_and_joins():
    # CUDA image models run channels_last (train_trial's layout); checked here on CPU
    models = [m.to(memory_format=torch.channels_last) for m in _cnns(range(3), width=4)]
    population = PopulationModel.from_models(models)
    assert population.channels_last
    x = torch.randn(3, 5, 3, 8, 8)
    assert population.pack_inputs(x).is_contiguous(memory_format=torch.channels_last)
    population.select_members([2, 0])
    assert population.channels_last and population.members == 2
    out = population(x[[2, 0]])
    for k, model in enumerate((models[2], models[0])):
        torch.testing.assert_close(out[k], model(x[[2, 0]][k]), rtol=1e-12, atol=1e-12)
    late = _cnns([9], width=4)[0].to(memory_format=torch.channels_last)
    population.extend(PopulationModel.from_models([late]))  # a member joins
    assert population.channels_last and population.members == 3
    for module in population.body.modules():
        if isinstance(module, torch.nn.Conv2d):  # the joined weights kept the layout
            assert module.weight.is_contiguous(memory_format=torch.channels_last)
            assert not module.weight.is_contiguous()
    out = population(x)
    for k, model in enumerate((models[2], models[0], late)):
        torch.testing.assert_close(out[k], model(x[k]), rtol=1e-12, atol=1e-12)
