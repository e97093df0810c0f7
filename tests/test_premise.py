"""DM's premise, recorded: the mean derivative magnitude on corrupted vs clean training
examples per epoch, checked against a hand computation on a tiny batch (both trainers),
stored as trial attrs, and drawn in the report."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from dm_tune.campaign.records import TrialKey, curve_attrs
from dm_tune.data import DataSpec, prepare_data
from dm_tune.emphasis import dm_density
from dm_tune.guidelines.premise import PremiseCurve
from dm_tune.population import Member, train_population
from dm_tune.premise_plots import premise_figure, premise_ratios
from dm_tune.training import TrainSpec, derivative_means, train_trial, trial_model

N = 8  # one batch of 8 examples, 3 of them corrupted
DM = {"emphasis_mode": 0.5, "emphasis_variance": 8.0}


@pytest.fixture(scope="module")
def tiny():
    data = prepare_data(DataSpec("digits", noise_kind="symmetric", noise_rate=0.4))
    true = data.y_train_true[:N].clone()
    given = true.clone()
    given[[1, 4, 6]] = (true[[1, 4, 6]] + 3) % 10  # the corrupted ones
    return replace(data, x_train=data.x_train[:N], y_train=given, y_train_true=true)


def _by_hand(data, spec, loss: str) -> tuple[float, float]:
    """(mean on corrupted, mean on clean) of B * ||dL/dz_i||_1 at the first step's logits,
    from the formulas: CCE 2 (1 - p_y); DM B w_i / sum_j w_j * l1 / (l1 + eps)."""
    model = trial_model(data, spec, torch.device("cpu"))
    with torch.no_grad():
        p = torch.softmax(model(data.x_train).double(), dim=1).numpy()
    p_y = p[np.arange(N), data.y_train.numpy()]
    one_minus = 1.0 - p_y
    if loss == "cce":
        magnitude = 2.0 * one_minus
    else:
        w = dm_density(p_y, **DM)
        l1 = 2.0 * one_minus
        magnitude = N * w / w.sum() * l1 / (l1 + 1e-6)
    corrupted = (data.y_train != data.y_train_true).numpy()
    return float(magnitude[corrupted].mean()), float(magnitude[~corrupted].mean())


@pytest.mark.parametrize("loss", ["cce", "dm"])
def test_recorded_magnitudes_match_the_hand_computation_in_both_trainers(tiny, loss):
    spec = TrainSpec(epochs=1, batch_size=N, seed=5)
    params = {} if loss == "cce" else DM
    expected = _by_hand(tiny, spec, loss)
    trial = train_trial(tiny, spec, loss, params, progress=False)
    got = (trial.derivative_corrupted_per_epoch[0], trial.derivative_clean_per_epoch[0])
    assert got == pytest.approx(expected, rel=1e-5)
    members = [Member(tiny, loss, params, seed=5), Member(tiny, "cce", {}, seed=5)]
    result = train_population(members, spec)[0].result
    assert (result.derivative_corrupted_per_epoch[0],
            result.derivative_clean_per_epoch[0]) == pytest.approx(expected, rel=1e-5)


def test_the_means_and_the_stored_curves():
    sums = torch.tensor([[3.0, 10.0], [0.0, 4.0]])
    means = derivative_means(sums, torch.tensor([2.0, 0.0]), 6)
    assert means[0].tolist() == [1.5, 7.0 / 4]
    assert math.isnan(means[1, 0]) and means[1, 1] == pytest.approx(4.0 / 6)
    metrics = [{"val_accuracy": 0.5, "test_accuracy": 0.4, "derivative_corrupted": math.nan,
                "derivative_clean": 1.25}]
    attrs = curve_attrs(metrics)
    assert attrs[TrialKey.DERIVATIVE_CORRUPTED_CURVE] == [None]  # JSON has no NaN
    assert attrs[TrialKey.DERIVATIVE_CLEAN_CURVE] == [1.25]


def test_the_figure_draws_the_ratio_per_setting_and_loss():
    curves = [PremiseCurve("symmetric", 0.4, "dm", 3, [0.5, None], [1.0, 1.0]),
              PremiseCurve("symmetric", 0.4, "cce", 0, [1.8, 1.8], [1.2, 0.9])]
    assert premise_ratios(curves[1]) == pytest.approx([1.5, 2.0])
    assert premise_ratios(curves[0])[0] == 0.5 and math.isnan(premise_ratios(curves[0])[1])
    fig = premise_figure(curves)
    assert [t.name for t in fig.data] == ["DM", "CCE"]
    assert list(fig.data[1].y) == pytest.approx([1.5, 2.0])


def test_a_campaign_records_the_curves_and_its_report_draws_them(tmp_path):
    from campaign_files import write_tiny
    from typer.testing import CliRunner

    from dm_tune.cli import app
    from dm_tune.guidelines.premise import load_premise

    path = write_tiny(tmp_path, epochs=2, trials=2, baselines=("cce", "gce"))
    url = f"sqlite:///{tmp_path / 'p.db'}"
    res = CliRunner().invoke(app, ["run", str(path), "--storage", url, "--no-confirm"])
    assert res.exit_code == 0, res.output
    curves = load_premise(url, "tiny")
    assert {(c.noise_rate, c.loss) for c in curves} == {
        (r, loss) for r in (0.2, 0.4) for loss in ("dm", "cce", "gce")}
    assert all(len(c.corrupted) == len(c.clean) == 2 for c in curves)
    html = (tmp_path / "dm_tune_reports" / "tiny" / "report.html").read_text()
    assert 'id="dm-figure-derivative-premise"' in html
