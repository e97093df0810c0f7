"""Forward correction (Patrini et al. 2017): gradient against its formula in float64, its
derivative magnitude, population members that replicate train_trial, campaign wiring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from campaign_files import write_tiny
from test_population import as_float64, assert_replicates, run_population, run_trial

from dm_tune.campaign.settings import Setting, forward_transition
from dm_tune.config import load_campaign_config
from dm_tune.data import DataSpec, prepare_data
from dm_tune.emphasis import derivative_magnitude, forward_magnitude, pencil_magnitude
from dm_tune.errors import CampaignError, ConfigError
from dm_tune.losses import ForwardLoss, forward_loss, get_loss
from dm_tune.noise import transition_matrix
from dm_tune.population import Member
from dm_tune.training import TrainSpec


def _batch(n=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n, c, generator=g, dtype=torch.float64)).requires_grad_()
    return logits, torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("kind,rate", [("symmetric", 0.4), ("pairflip", 0.3)])
def test_gradient_is_p_minus_the_true_class_posterior_in_float64(kind, rate):
    logits, y = _batch()
    t = torch.tensor(transition_matrix(kind, 5, rate))
    forward_loss(logits, y, t).backward()
    p = torch.softmax(logits.detach(), dim=1)
    weighted = p * t[:, y].T  # p_k T_{k, y}
    posterior = weighted / weighted.sum(dim=1, keepdim=True)
    torch.testing.assert_close(logits.grad, (p - posterior) / len(y), rtol=1e-12, atol=1e-15)
    # and the value: -log (p T)_y by plain matrix products
    value = forward_loss(logits.detach(), y, t)
    expected = -torch.log((p @ t)[torch.arange(len(y)), y]).mean()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)


def test_gradcheck_and_identity_is_cross_entropy():
    logits, y = _batch(n=4, c=3)
    t = torch.tensor(transition_matrix("symmetric", 3, 0.3))
    assert torch.autograd.gradcheck(lambda z: forward_loss(z, y, t), (logits,))
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(forward_loss(logits, y, eye),
                               torch.nn.functional.cross_entropy(logits, y), rtol=1e-12, atol=0)


def test_extreme_logits_stay_finite():
    logits = torch.tensor([[80.0, -80.0, 0.0], [-80.0, 80.0, 0.0]], requires_grad=True)
    y = torch.tensor([1, 1])  # the first example confidently contradicts its label
    t = torch.tensor(transition_matrix("pairflip", 3, 0.2))
    loss = forward_loss(logits, y, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # p = e_0, T_01 = 0.2 and p = e_1, T_11 = 0.8: the mean of -log 0.2 and -log 0.8
    assert loss.item() == pytest.approx(-(np.log(0.2) + np.log(0.8)) / 2, rel=1e-5)


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.6])
def test_forward_magnitude_matches_the_gradient_norm_for_any_other_classes(rate):
    c = 6
    t = torch.tensor(transition_matrix("symmetric", c, rate))
    g = torch.Generator().manual_seed(1)
    for p_y in (0.05, 0.3, 0.7, 0.95):
        rest = torch.rand(c - 1, generator=g, dtype=torch.float64)
        probs = torch.cat([torch.tensor([p_y], dtype=torch.float64),
                           (1 - p_y) * rest / rest.sum()])
        logits = probs.log().unsqueeze(0).requires_grad_()
        forward_loss(logits, torch.tensor([0]), t).backward()
        assert logits.grad.abs().sum().item() == pytest.approx(
            float(forward_magnitude(p_y, rate, c)), rel=1e-10)
    assert forward_magnitude(np.array([0.0, 0.5]), 0.0, c) == pytest.approx(
        derivative_magnitude("cce", np.array([0.0, 0.5])))


def test_pencil_magnitude_matches_autograd_of_its_classification_loss():
    c, k = 5, 10.0
    y_tilde = torch.zeros(c, dtype=torch.float64)
    y_tilde[0] = k
    log_yd = torch.log_softmax(y_tilde, 0)
    for p_y in (0.1, 0.5, 0.9):
        probs = torch.tensor([p_y] + [(1 - p_y) / (c - 1)] * (c - 1), dtype=torch.float64)
        logits = probs.log().requires_grad_()
        f = torch.softmax(logits, 0)
        (f * (torch.log(f) - log_yd)).sum().backward()  # KL(f || y^d)
        assert logits.grad.abs().sum().item() == pytest.approx(
            float(pencil_magnitude(p_y, c, k)), rel=1e-10)


def test_get_loss_forward_validates_its_matrix():
    loss = get_loss("forward", transition=transition_matrix("pairflip", 4, 0.2))
    assert isinstance(loss, ForwardLoss) and loss.num_classes == 4
    with pytest.raises(ValueError, match="row 1 sums to"):
        get_loss("forward", transition=[[1.0, 0.0], [0.5, 0.6]])
    with pytest.raises(ValueError, match="zero column"):
        get_loss("forward", transition=[[1.0, 0.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="exactly one parameter"):
        get_loss("forward")
    logits, y = _batch(c=5)
    with pytest.raises(ValueError, match="5 classes"):
        loss(logits, y)


@pytest.mark.usefixtures("float64")
def test_forward_members_replicate_train_trial(monkeypatch):
    data = as_float64(prepare_data(DataSpec("digits", noise_kind="pairflip", noise_rate=0.3)))
    t = transition_matrix("pairflip", 10, 0.3)
    members = [Member(data, "forward", {"transition": t}, seed=1),
               Member(data, "cce", {}, seed=1),
               Member(data, "forward", {"transition": t}, seed=2)]
    spec = TrainSpec(epochs=2)
    results, population = run_population(monkeypatch, members, spec)
    for k, member in enumerate(members):
        trial, model = run_trial(monkeypatch, member, spec)
        assert_replicates(results[k], population.states[k], trial, model)
    assert results[0].train_loss_per_epoch != results[1].train_loss_per_epoch


def _estimate_file(path: Path, matrix) -> Path:
    path.write_text(json.dumps({"version": 1, "transition": matrix, "estimated_rate": 0.2,
                                "nearest_kind": "symmetric", "nearest_rate": 0.2}))
    return path


def test_campaign_forward_uses_the_setting_matrix_or_the_estimate(tmp_path):
    path = write_tiny(tmp_path, baselines=("cce", "forward"))
    config = load_campaign_config(path)
    matrix = forward_transition(config, Setting("symmetric", 0.4), 10)
    assert np.allclose(matrix, transition_matrix("symmetric", 10, 0.4))
    estimate = _estimate_file(tmp_path / "est.json", transition_matrix("pairflip", 10, 0.1)
                              .tolist())
    text = path.read_text().replace('losses = ["cce", "forward"]',
                                    f'losses = ["cce", "forward"]\nforward_estimate = "{estimate}"')
    path.write_text(text)
    config = load_campaign_config(path)
    assert np.allclose(forward_transition(config, Setting("symmetric", 0.4), 10),
                       transition_matrix("pairflip", 10, 0.1))
    with pytest.raises(CampaignError, match="3x3 but the data has 10"):
        _estimate_file(estimate, transition_matrix("pairflip", 3, 0.1).tolist())
        forward_transition(config, Setting("symmetric", 0.4), 10)


def test_campaign_refuses_a_bad_forward_estimate_and_forward_under_human_noise(tmp_path):
    path = write_tiny(tmp_path, baselines=("cce", "forward"))
    bad = _estimate_file(tmp_path / "bad.json", [[0.9, 0.2], [0.1, 0.9]])
    path.write_text(path.read_text().replace(
        'losses = ["cce", "forward"]', f'losses = ["cce", "forward"]\nforward_estimate = "{bad}"'))
    with pytest.raises(ConfigError, match="row 0 sums to 1.1") as error:
        load_campaign_config(path)
    assert "\n" not in str(error.value)
    human = tmp_path / "human.toml"
    human.write_text(write_tiny(tmp_path, name="h", baselines=("forward",)).read_text()
                     .replace('dataset = "digits"', 'dataset = "cifar10n"')
                     .replace('kind = "symmetric"\nrates = [0.2, 0.4]',
                              'kind = "human"\nlabels = ["worse_label"]'))
    with pytest.raises(ConfigError, match="forward_estimate"):
        load_campaign_config(human)


@pytest.mark.parametrize("population", [1, 4])
def test_forward_trains_as_a_campaign_baseline_and_shows_in_status(tmp_path, population):
    import optuna
    from typer.testing import CliRunner

    from dm_tune.cli import app

    path = write_tiny(tmp_path, epochs=2, trials=2, baselines=("cce", "forward"))
    path.write_text(path.read_text().replace("startup_trials = 2",
                                             f"startup_trials = 2\npopulation = {population}"))
    url = f"sqlite:///{tmp_path / 'f.db'}"
    res = CliRunner().invoke(app, ["run", str(path), "--storage", url, "--no-confirm",
                                   "--no-report"])
    assert res.exit_code == 0, res.output
    study = optuna.load_study(study_name="tiny/symmetric-0.40/baselines", storage=url)
    forward = [t for t in study.get_trials() if t.user_attrs["loss"] == "forward"]
    assert len(forward) == 1 and forward[0].state.name == "COMPLETE"
    assert forward[0].user_attrs["loss_params"] == {}  # the matrix is never stored
    assert (forward[0].user_attrs.get("population_size") is not None) == (population > 1)
    status = CliRunner().invoke(app, ["status", str(path), "--storage", url])
    assert status.exit_code == 0 and status.stdout.count("forward") == 2  # one per setting
