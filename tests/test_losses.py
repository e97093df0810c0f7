"""DM's manipulated derivative and the baselines, checked against the formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dm_tune.emphasis import LOSS_DEFAULTS, derivative_magnitude, dm_density
from dm_tune.losses import DMLoss, baseline_loss, dm_loss, dm_weights, get_loss, loss_names

SETTINGS = [(0.0, 0.0), (0.0, 8.0), (0.5, 0.0), (1 / 3, 8.0), (0.5, 16.0), (2 / 3, 12.0),
            (0.9, 24.0), (0.2, -4.0)]


def _batch(n: int = 96, c: int = 10, scale: float = 3.0, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=gen, dtype=torch.float64) * scale).to(dtype)
    targets = torch.randint(0, c, (n,), generator=gen)
    return logits.requires_grad_(True), targets


def _direction(logits: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    probs = torch.softmax(logits.detach().double(), 1).numpy()
    probs[np.arange(len(targets)), targets.numpy()] -= 1.0
    return probs


def _p_true(logits: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    probs = torch.softmax(logits.detach().double(), 1).numpy()
    return probs[np.arange(len(targets)), targets.numpy()]


@pytest.mark.parametrize(("mode", "variance"), SETTINGS)
def test_dm_gradient_norm_is_normalised_emphasis_density(mode, variance):
    logits, targets = _batch()
    dm_loss(logits, targets, mode, variance, norm_epsilon=0.0).backward()
    grad = logits.grad.numpy()
    expected = dm_density(_p_true(logits, targets), mode, variance)
    np.testing.assert_allclose(np.abs(grad).sum(1), expected / expected.sum(), rtol=0, atol=1e-9)
    # the direction is CCE's: parallel (not anti-parallel) to p_i - e_y
    direction = _direction(logits, targets)
    cosine = (grad * direction).sum(1) / (
        np.linalg.norm(grad, axis=1) * np.linalg.norm(direction, axis=1)
    )
    np.testing.assert_allclose(cosine, 1.0, atol=1e-12)


@pytest.mark.parametrize(("mode", "variance"), SETTINGS[:4])
@pytest.mark.parametrize("epsilon", [1e-6, 1e-2])
def test_default_normaliser_epsilon_matches_the_official_layer(mode, variance, epsilon):
    # dL/dz = (w_i / sum w) (p - e_y) / (||p - e_y||_1 + eps): norm = w/sum w * l1/(l1 + eps)
    logits, targets = _batch(scale=6.0)
    dm_loss(logits, targets, mode, variance, norm_epsilon=epsilon).backward()
    p_true = _p_true(logits, targets)
    weights = dm_density(p_true, mode, variance)
    l1 = 2 * (1 - p_true)
    expected = weights / weights.sum() * l1 / (l1 + epsilon)
    np.testing.assert_allclose(np.abs(logits.grad.numpy()).sum(1), expected, rtol=1e-9,
                               atol=1e-15)


def test_default_epsilon_fades_the_push_on_fitted_examples():
    # why the epsilon is the default: a fitted example (1 - p = 1e-9) keeps its whole
    # push with eps = 0, which grows margins without bound; with eps = 1e-6 it fades
    logits = torch.zeros(2, 10, dtype=torch.float64)
    logits[0, 0] = np.log(9 / 1e-9)
    targets = torch.zeros(2, dtype=torch.long)
    exact = logits.clone().requires_grad_(True)
    dm_loss(exact, targets, 0.5, 0.0, norm_epsilon=0.0).backward()
    faded = logits.clone().requires_grad_(True)
    dm_loss(faded, targets, 0.5, 0.0).backward()
    assert exact.grad[0].abs().sum() == pytest.approx(0.5)
    assert faded.grad[0].abs().sum() == pytest.approx(0.5 * 2e-9 / (2e-9 + 1e-6), rel=1e-6)
    assert faded.grad[1].abs().sum() == pytest.approx(0.5 * 1.8 / (1.8 + 1e-6), rel=1e-9)


def test_variance_zero_gives_uniform_weights_like_normalised_cce():
    logits, targets = _batch(n=64)
    dm_loss(logits, targets, 0.5, 0.0, norm_epsilon=0.0).backward()
    np.testing.assert_allclose(np.abs(logits.grad.numpy()).sum(1), 1 / 64, atol=1e-12)


def test_weights_carry_no_gradient():
    # With the weights detached, the gradient equals the weighted sum of unit directions;
    # differentiating through the weights would add a term that breaks the norm identity
    # for every batch above, so here we also check against an explicit formula.
    logits, targets = _batch(n=64, seed=3)
    dm_loss(logits, targets, 0.5, 8.0, norm_epsilon=0.0).backward()
    weights = dm_weights(logits, targets, 0.5, 8.0).numpy()
    direction = _direction(logits, targets)
    unit = direction / np.abs(direction).sum(1, keepdims=True)
    np.testing.assert_allclose(logits.grad.numpy(), weights[:, None] * unit, atol=1e-12)
    assert not dm_weights(logits, targets, 0.5, 8.0).requires_grad


def test_confident_examples_float64_p_one_minus_1e_12():
    # p_y = 1 - 1e-12 in float64: a margin of log((C-1) / 1e-12) over 9 equal others
    margin = np.log(9 / 1e-12)
    logits = torch.zeros(64, 10, dtype=torch.float64)
    logits[:32, 0] = margin
    logits[32:] = torch.randn(32, 10, dtype=torch.float64)
    targets = torch.zeros(64, dtype=torch.long)
    logits.requires_grad_(True)
    dm_loss(logits, targets, 0.5, 8.0, norm_epsilon=0.0).backward()
    grad = logits.grad.numpy()
    assert np.all(np.isfinite(grad))
    p_true = _p_true(logits, targets)
    np.testing.assert_allclose(1 - p_true[:32], 1e-12, rtol=1e-3)
    expected = dm_density(p_true, 0.5, 8.0)
    np.testing.assert_allclose(np.abs(grad).sum(1), expected / expected.sum(), atol=1e-9)
    # the labelled entry carries half the norm even though 1 - p rounds badly
    np.testing.assert_allclose(-grad[:32, 0], np.abs(grad[:32]).sum(1) / 2, rtol=1e-9)


@pytest.mark.parametrize("margin", [30.0, 80.0, 200.0])
def test_confident_examples_float32_margin(margin):
    logits = torch.zeros(64, 10)
    logits[:, 0] = margin
    logits[32:, 1] = margin + 1.0  # half of them confidently wrong
    targets = torch.zeros(64, dtype=torch.long)
    logits.requires_grad_(True)
    dm_loss(logits, targets, 0.5, 8.0, norm_epsilon=0.0).backward()
    grad = logits.grad.double().numpy()
    assert np.all(np.isfinite(grad))
    # every example has norm w_i / sum_j w_j; both groups are internally identical
    norms = np.abs(grad).sum(1)
    np.testing.assert_allclose(norms.sum(), 1.0, rtol=1e-5)
    p_true = _p_true(logits.double(), targets)
    expected = dm_density(p_true, 0.5, 8.0)
    np.testing.assert_allclose(norms, expected / expected.sum(), rtol=1e-5)
    # the labelled entry is minus the sum of the others: parallel to p - e_y
    np.testing.assert_allclose(-grad[:, 0], np.abs(grad).sum(1) / 2, rtol=1e-5)
    # with the default epsilon: finite, and the fitted half's push faded as the formula says
    logits.grad = None
    dm_loss(logits, targets, 0.5, 8.0).backward()
    faded = logits.grad.double().numpy()
    assert np.all(np.isfinite(faded))
    # 1 - p from the other classes' probabilities: float64 1 - p_true loses 1e-4 here
    probs = torch.softmax(logits.detach().double(), 1).numpy()
    l1 = 2 * probs[:, 1:].sum(1)
    # (at margin 200 the faded push, ~1e-82, underflows float32 to an exact 0)
    np.testing.assert_allclose(np.abs(faded).sum(1), expected / expected.sum() * l1 / (l1 + 1e-6),
                               rtol=1e-5, atol=1e-40)


def test_cross_entropy_itself_loses_the_labelled_entry_in_float32():
    # Why dm_loss does not weight F.cross_entropy: its gradient has p_y - 1 == 0 here.
    logits = torch.zeros(1, 10)
    logits[0, 0] = 30.0
    logits.requires_grad_(True)
    torch.nn.functional.cross_entropy(logits, torch.zeros(1, dtype=torch.long)).backward()
    assert logits.grad[0, 0].item() == 0.0


@pytest.mark.parametrize("name", sorted(LOSS_DEFAULTS))
def test_baseline_gradient_norm_equals_its_derivative_magnitude(name):
    logits, targets = _batch(n=80, seed=7)
    get_loss(name)(logits, targets).backward()
    norms = np.abs(logits.grad.numpy()).sum(1) * len(targets)  # the loss is a batch mean
    expected = derivative_magnitude(name, _p_true(logits, targets))
    np.testing.assert_allclose(norms, expected, rtol=1e-9, atol=1e-12)
    cosine_sign = np.sign((logits.grad.numpy() * _direction(logits, targets)).sum(1))
    assert np.all(cosine_sign >= 0)


@pytest.mark.parametrize(("name", "params"), [("gce", {"q": 0.3}), ("sce", {"alpha": 1.0,
                         "beta": 0.5}), ("taylor", {"order": 4}), ("poly1", {"epsilon": 2.0})])
def test_baseline_parameters_reach_the_gradient(name, params):
    logits, targets = _batch(n=64, seed=11)
    get_loss(name, **params)(logits, targets).backward()
    norms = np.abs(logits.grad.numpy()).sum(1) * len(targets)
    expected = derivative_magnitude(name, _p_true(logits, targets), **params)
    np.testing.assert_allclose(norms, expected, rtol=1e-9)


def test_dm_with_mode_zero_and_small_variance_orders_like_cce():
    # mode 0 emphasises hard examples: a lower p_y never gets a smaller weight
    logits, targets = _batch(n=128, seed=5)
    weights = dm_weights(logits, targets, 0.0, 4.0).numpy()
    order = np.argsort(_p_true(logits, targets))
    assert np.all(np.diff(weights[order]) <= 1e-15)


def test_module_equals_function_and_preserves_dtype():
    for dtype in (torch.float32, torch.float64):
        for epsilon in (0.0, 1e-6):
            logits, targets = _batch(n=64, dtype=dtype)
            module_value = DMLoss(0.5, 8.0, norm_epsilon=epsilon)(logits, targets)
            function_value = dm_loss(logits, targets, 0.5, 8.0, norm_epsilon=epsilon)
            assert module_value.dtype == dtype
            assert torch.equal(module_value, function_value)
            module_value.backward()
            module_grad = logits.grad.clone()
            logits.grad = None
            function_value.backward()
            assert torch.equal(module_grad, logits.grad)
            assert logits.grad.dtype == dtype
            assert logits.grad.device == logits.device


def test_bf16_logits_are_promoted_and_gradient_keeps_input_dtype():
    logits, targets = _batch(n=64, dtype=torch.bfloat16)
    value = dm_loss(logits, targets, 0.5, 8.0)
    assert value.dtype == torch.float32
    value.backward()
    assert logits.grad.dtype == torch.bfloat16
    assert torch.isfinite(logits.grad.float()).all()


def test_reported_value_is_the_mean_probability_off_the_label():
    logits, targets = _batch(n=64, seed=2)
    p_label = torch.softmax(logits, dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)
    expected = (1 - p_label).mean()
    assert torch.allclose(dm_loss(logits, targets, 1 / 3, 8.0), expected, atol=1e-12)
    assert torch.equal(DMLoss(1 / 3, 8.0)(logits, targets), dm_loss(logits, targets, 1 / 3, 8.0))


@pytest.mark.parametrize(("mode", "variance"), [(1 / 3, 8.0), (0.0, 0.0), (0.8, 24.0)])
def test_reported_value_falls_as_the_logits_move_toward_the_labels(mode, variance):
    # training on noisy labels in miniature: three quarters of the examples (clean) move
    # toward their label, one quarter (corrupted) toward the class the model learns for
    # them instead. DM's weighted cross-entropy, the value before, rose here as in real
    # training: the weight moves to the unfitted (corrupted) examples, whose CE grows
    logits, targets = _batch(n=64, scale=0.5, seed=4)
    classes = logits.shape[1]
    toward = torch.nn.functional.one_hot(targets, classes).to(logits.dtype)
    away = torch.nn.functional.one_hot((targets + 1) % classes, classes).to(logits.dtype)
    clean = (torch.arange(64) % 4 != 0).unsqueeze(1)
    values, weighted_ce = [], []
    for step in range(0, 21):
        z = logits.detach() + 0.75 * step * torch.where(clean, toward, away)
        values.append(dm_loss(z, targets, mode, variance).item())
        weights = dm_weights(z, targets, mode, variance)
        ce = torch.nn.functional.cross_entropy(z, targets, reduction="none")
        weighted_ce.append((weights * ce).sum().item())
    assert all(b < a for a, b in zip(values, values[1:], strict=False)), values
    assert values[0] > 0.85 and values[-1] == pytest.approx(0.25, abs=0.01)  # the corrupted
    if variance > 0:
        assert weighted_ce[-1] > weighted_ce[0] + 1.0, weighted_ce


def test_gradcheck_of_the_surrogate_in_float64():
    # the surrogate (without the logging trick) is a smooth function of the logits with the
    # weights held fixed: gradcheck against finite differences of that function
    logits, targets = _batch(n=8, c=5, seed=9)
    weights = dm_weights(logits, targets, 0.5, 8.0)

    def surrogate(z):
        from dm_tune.losses import other_class_margin

        return torch.dot(0.5 * weights, other_class_margin(z, targets))

    assert torch.autograd.gradcheck(surrogate, (logits,))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"emphasis_mode": 1.0, "emphasis_variance": 1.0}, "emphasis_mode"),
        ({"emphasis_mode": -0.1, "emphasis_variance": 1.0}, "emphasis_mode"),
        ({"emphasis_mode": 0.5, "emphasis_variance": float("nan")}, "emphasis_variance"),
        ({"emphasis_mode": 0.5, "emphasis_variance": float("inf")}, "emphasis_variance"),
    ],
)
def test_bad_emphasis_raises_value_error_naming_argument(kwargs, needle):
    logits, targets = _batch(n=4)
    with pytest.raises(ValueError, match=needle):
        dm_loss(logits, targets, **kwargs)
    with pytest.raises(ValueError, match=needle):
        DMLoss(**kwargs)


def test_shape_mismatch_raises():
    logits, _ = _batch(n=4)
    with pytest.raises(ValueError, match="targets"):
        dm_loss(logits, torch.zeros(5, dtype=torch.long), 0.5, 1.0)
    with pytest.raises(ValueError, match="logits"):
        dm_loss(logits[0], torch.zeros(4, dtype=torch.long), 0.5, 1.0)
    with pytest.raises(ValueError, match="integer"):
        dm_loss(logits, torch.zeros(4), 0.5, 1.0)
    with pytest.raises(ValueError, match="targets"):
        baseline_loss("mae", logits, torch.zeros(3, dtype=torch.long))


def test_registry_errors_name_the_problem():
    assert set(loss_names()) == {"dm", "cce", "mae", "mse", "gce", "sce", "taylor", "poly1",
                                "forward"}
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        get_loss("focal")
    with pytest.raises(ValueError, match="emphasis_variance"):
        get_loss("dm", emphasis_mode=0.5)
    with pytest.raises(ValueError, match="unknown parameter"):
        get_loss("cce", q=0.7)
    with pytest.raises(ValueError, match="q must be in"):
        get_loss("gce", q=0.0)
    with pytest.raises(ValueError, match="order"):
        get_loss("taylor", order=1.5)
    with pytest.raises(ValueError, match="norm_epsilon"):
        get_loss("dm", emphasis_mode=0.5, emphasis_variance=1.0, norm_epsilon=-1.0)
    exact = get_loss("dm", emphasis_mode=0.5, emphasis_variance=1.0, norm_epsilon=0)
    assert exact.norm_epsilon == 0
