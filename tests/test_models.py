"""Model registry and architectures (dm_tune.models)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dm_tune.models import MODELS, build_model, register_model


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_mlp_default_is_64_256_256_10() -> None:
    model = build_model("mlp", (64,), 10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 256), (256, 256), (256, 10)]
    assert model(torch.randn(5, 64)).shape == (5, 10)


def test_mlp_hidden_param_and_image_input() -> None:
    model = build_model("mlp", (1, 8, 8), 3, hidden=[32])
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    assert _params(model) == 64 * 32 + 32 + 32 * 3 + 3


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28), (3, 8, 8)])
def test_cnn_any_image_size(shape: tuple[int, int, int]) -> None:
    model = build_model("cnn", shape, 7)
    assert model(torch.randn(4, *shape)).shape == (4, 7)


@pytest.mark.parametrize(("depth", "millions"), [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85)])
def test_resnet_depths_match_he_et_al(depth: int, millions: float) -> None:
    model = build_model("resnet", (3, 32, 32), 10, depth=depth)
    assert _params(model) / 1e6 == pytest.approx(millions, abs=0.006)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == depth  # 6n + 1 convs and the linear head
    alias = build_model(f"resnet{depth}", (3, 32, 32), 10)
    assert _params(alias) == _params(model)


def test_resnet20_exact_count_and_output() -> None:
    model = build_model("resnet20", (3, 32, 32), 100)
    assert _params(model) == 269_722 + 64 * 90 + 90
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_resnet_option_b_adds_projections() -> None:
    a = build_model("resnet", (3, 32, 32), 10, depth=20, shortcut="A")
    b = build_model("resnet", (3, 32, 32), 10, depth=20, shortcut="B")
    assert _params(b) > _params(a)
    assert b(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(ValueError, match="model") as info:
        build_model("vgg", (3, 32, 32), 10)
    for name in ("mlp", "cnn", "resnet", "resnet56"):
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("name", "shape", "params", "word"),
    [
        ("resnet", (3, 32, 32), {"depth": 18}, "depth"),
        ("resnet", (3, 32, 32), {"shortcut": "C"}, "shortcut"),
        ("cnn", (64,), {}, "cnn"),
        ("mlp", (64,), {"width": 3}, "model_params"),
    ],
)
def test_bad_model_inputs(name: str, shape: tuple, params: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        build_model(name, shape, 10, **params)


def test_register_model_extends_the_registry() -> None:
    register_model("_tiny", lambda shape, k: nn.Linear(shape[0], k))
    try:
        assert build_model("_tiny", (4,), 2)(torch.randn(3, 4)).shape == (3, 2)
    finally:
        del MODELS["_tiny"]


# ------------------------------------------------------------------------ fastnet


def test_fastnet_shapes_widths_and_options():
    import torch

    from dm_tune.models import build_model

    model = build_model("fastnet", (3, 32, 32), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs][:2] == [64, 256]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    small = build_model("fastnet", (3, 32, 32), 100, width=[4, 8, 8, 16], residual=False)
    assert small(torch.randn(3, 3, 32, 32)).shape == (3, 100)
    assert len([m for m in small.modules() if isinstance(m, torch.nn.Conv2d)]) == 4
    with pytest.raises(ValueError, match="fastnet"):
        build_model("fastnet", (64,), 10)
    with pytest.raises(ValueError, match="8x8"):
        build_model("fastnet", (3, 4, 4), 10)
    with pytest.raises(ValueError, match="width"):
        build_model("fastnet", (3, 32, 32), 10, width=[8, 8])


def test_fastnet_fits_a_tiny_synthetic_batch():
    import torch

    from dm_tune.models import build_model

    torch.manual_seed(0)
    model = build_model("fastnet", (3, 16, 16), 10, width=4)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
