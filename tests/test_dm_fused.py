"""The compiled DM loss (CUDA's default, `losses.FUSED_DM`) checked on CPU: the same
formulas as the eager loss (tests/test_losses.py), the same numbers, one graph for every
trial's emphasis mode and variance."""

from __future__ import annotations

import pytest
import test_losses as formulas
import torch
from torch._dynamo.utils import counters

import dm_tune.losses as losses


@pytest.fixture(scope="module", autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.fixture
def fused(monkeypatch):
    monkeypatch.setattr(losses, "FUSED_DM", "always")
    calls = []
    real = losses._fused_terms

    def spied(*args):
        terms = real(*args)
        calls.append(terms is not None)
        return terms

    monkeypatch.setattr(losses, "_fused_terms", spied)
    yield calls
    assert calls and all(calls), "the compiled path did not run"


@pytest.mark.parametrize(("mode", "variance"), [(0.0, 0.0), (1 / 3, 8.0), (0.9, 24.0)])
def test_compiled_gradient_norm_is_normalised_emphasis_density(fused, mode, variance):
    formulas.test_dm_gradient_norm_is_normalised_emphasis_density(mode, variance)


@pytest.mark.parametrize("epsilon", [1e-6, 1e-2])
def test_compiled_epsilon_matches_the_official_layer(fused, epsilon):
    formulas.test_default_normaliser_epsilon_matches_the_official_layer(0.5, 8.0, epsilon)


@pytest.mark.parametrize("margin", [30.0, 200.0])
def test_compiled_confident_examples_float32(fused, margin):
    formulas.test_confident_examples_float32_margin(margin)


def test_compiled_equals_eager_value_and_gradient(monkeypatch):
    logits, targets = formulas._batch(n=128, dtype=torch.float32, scale=5.0)
    results = {}
    for mode in ("never", "always"):
        monkeypatch.setattr(losses, "FUSED_DM", mode)
        x = logits.detach().clone().requires_grad_(True)
        value = losses.DMLoss(0.3, 8.0)(x, targets)
        (3.0 * value).backward()  # a grad_output other than 1 reaches the gradient
        results[mode] = (value.detach(), x.grad)
    (v_eager, g_eager), (v_fused, g_fused) = results["never"], results["always"]
    torch.testing.assert_close(v_fused, v_eager, rtol=1e-6, atol=0)
    torch.testing.assert_close(g_fused, g_eager, rtol=1e-5, atol=1e-9)


def test_new_emphasis_values_reuse_the_graph(monkeypatch):
    monkeypatch.setattr(losses, "FUSED_DM", "always")
    logits, targets = formulas._batch(n=64, dtype=torch.float32)
    losses.dm_loss(logits, targets, 0.5, 8.0).backward()
    graphs = counters["stats"]["unique_graphs"]
    for mode, variance in ((0.1, 2.0), (0.7, 20.0), (0.25, 0.0)):
        logits.grad = None
        losses.dm_loss(logits, targets, mode, variance).backward()
    assert counters["stats"]["unique_graphs"] == graphs  # a trial's values are inputs
