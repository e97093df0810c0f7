"""Tests of dm_tune.plots: the data objects carry the campaign's numbers."""

from __future__ import annotations

import math

import numpy as np
import optuna
import plotly.graph_objects as go
import pytest
from fake_campaign import AGREED, CAMPAIGN, CONFIRMED, FakeTrial, add_setting, shared_campaign_url

from dm_tune import plots, surface_plots
from dm_tune.guidelines import load_campaign

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """The aggregated standard fake campaign, top-k trend (its numbers are exact)."""
    return load_campaign(shared_campaign_url(tmp_path_factory), CAMPAIGN, method="top-k")


@pytest.fixture(scope="module")
def surface_results(tmp_path_factory):
    """The same campaign with the default method: a GP surface per kind."""
    return load_campaign(shared_campaign_url(tmp_path_factory), CAMPAIGN)


def test_trend_data(results):
    data = plots.trend_data(results)
    assert data.kinds == ["pairflip", "symmetric"]
    sym = data.mode["symmetric"]
    assert sym.x == [0.2, 0.4, 0.6]
    assert sym.y == pytest.approx([AGREED[r][0] for r in sym.x])
    assert data.variance["symmetric"].y == pytest.approx([8.0, 12.0, 12.0])
    assert data.selected_mode["symmetric"] == [0.25, CONFIRMED[0], 0.55]
    pf = data.mode["pairflip"]
    assert pf.low[0] < pf.y[0] < pf.high[0]


def test_trend_figure_draws_the_data(results):
    data = plots.trend_data(results)
    fig = plots.trend_figure(data)
    centre = [t for t in fig.data if t.name == "symmetric"]
    assert len(centre) == 2  # mode and variance panels
    assert list(centre[0].y) == pytest.approx(data.mode["symmetric"].y)
    assert list(centre[1].y) == pytest.approx(data.variance["symmetric"].y)


def test_landscape_data(results):
    data = plots.landscape_data(results)
    assert [p.title for p in data.panels] == [
        "pairflip 0.40",
        "symmetric 0.20",
        "symmetric 0.40",
        "symmetric 0.60",
    ]
    panel = data.panels[2]
    assert len(panel.accuracies) == 12 and panel.variance_log
    assert panel.selected == CONFIRMED
    assert max(panel.accuracies) == pytest.approx(0.90)
    assert (data.accuracy_min, data.accuracy_max) == pytest.approx((0.27, 0.90))
    fig = plots.landscape_figure(data)
    assert fig.layout.coloraxis.cmax == pytest.approx(0.90)


def test_unified_view_data(results):
    data = plots.unified_view_data(results, points=201)
    p = np.array(data.p)
    assert set(data.losses) == {"cce", "mae", "mse", "gce", "sce", "forward (symmetric 0.4)",
                                "pencil"}
    for w in data.losses.values():
        assert max(w) == pytest.approx(1.0)
    assert data.losses["cce"][0] == pytest.approx(1.0)  # CCE emphasises the hardest p=0
    assert p[np.argmax(data.losses["mae"])] == pytest.approx(0.5)
    assert p[np.argmax(data.losses["mse"])] == pytest.approx(1 / 3, abs=0.005)
    # Forward at symmetric 0.4, C = 10: w(p) = 2p(1-p)(5/9) / (0.6p + 0.4(1-p)/9), whose
    # maximum is at p = (sqrt(a^2 + ab) - a) / b with a = 0.4/9, b = 0.6 - a
    a = 0.4 / 9
    b = 0.6 - a
    forward = data.losses["forward (symmetric 0.4)"]
    assert forward[0] == 0.0 and p[np.argmax(forward)] == pytest.approx(
        (np.sqrt(a * a + a * b) - a) / b, abs=0.005)
    sym = [d for d in data.densities if d.noise_kind == "symmetric"]
    assert [d.noise_rate for d in sym] == [0.2, 0.4, 0.6]
    for d in sym:  # each density peaks at its recommended emphasis mode
        assert max(d.weights) == pytest.approx(1.0)
        assert p[np.argmax(d.weights)] == pytest.approx(d.emphasis_mode, abs=0.005)
    assert data.kinds == ["pairflip", "symmetric"]
    fig = plots.unified_view_figure(data)
    assert len(fig.data) == 7 + 4


def test_accuracy_and_memorisation_data(results):
    acc = {k.noise_kind: k for k in plots.accuracy_data(results).kinds}
    sym = acc["symmetric"]
    assert sym.rates == [0.2, 0.4, 0.6]
    assert sym.lines["dm (tuned)"] == pytest.approx([0.88, 0.91, 0.88])
    assert sym.lines["cce"] == pytest.approx([0.68] * 3)
    assert sym.lines["gce"] == pytest.approx([0.79] * 3)
    mem = {k.noise_kind: k for k in plots.memorisation_data(results).kinds}
    assert mem["symmetric"].lines["dm (tuned)"] == pytest.approx([0.10, 0.06, 0.10])
    assert mem["symmetric"].lines["cce"] == pytest.approx([0.60] * 3)


def test_missing_baselines_and_attrs_are_gaps(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'g.db'}")
    add_setting(storage, "symmetric", 0.2, [FakeTrial(0.3, 4.0, 0.8)], campaign="gaps")
    results = load_campaign(storage, "gaps")
    (kind,) = plots.memorisation_data(results).kinds
    assert kind.lines == {"dm (tuned)": [None], "cce": [None]}
    fig = plots.memorisation_figure(plots.memorisation_data(results))
    assert all(math.isnan(y) for t in fig.data for y in t.y)
    (kind,) = plots.accuracy_data(results).kinds
    assert list(kind.lines) == ["dm (tuned)"]


def test_build_figures_names_and_types(results, surface_results):
    figures = plots.build_figures(results)
    assert list(figures) == ["trend", "landscape", "unified-view", "accuracy", "memorisation"]
    for fig in figures.values():
        assert isinstance(fig, go.Figure) and len(fig.data) > 0 and fig.layout.height
    figures = plots.build_figures(surface_results)  # the default method adds the surface
    assert list(figures) == [
        "trend", "landscape", "surface", "unified-view", "accuracy", "memorisation"
    ]


def test_surface_trend_is_drawn_on_the_rate_grid(surface_results):
    """With a surface the trend line is the argmax every 0.01 with its credible band,
    the selections are markers at the searched rates only."""
    data = plots.trend_data(surface_results)
    assert data.band == "credible set of the GP surface"
    sym = data.mode["symmetric"]
    assert sym.x[0] == 0.2 and sym.x[-1] == 0.6 and len(sym.x) == 41
    surface = surface_results.surfaces["symmetric"]
    for i in (0, 13, 40):
        best = surface.optimum(sym.x[i])
        assert sym.y[i] == best.emphasis_mode and sym.low[i] <= sym.y[i] <= sym.high[i]
        assert data.variance["symmetric"].y[i] == best.emphasis_variance
    marked = [x for x, m in zip(sym.x, data.selected_mode["symmetric"], strict=True) if m]
    assert marked == [0.2, 0.4, 0.6]
    assert data.selected_mode["symmetric"][20] == CONFIRMED[0]  # rate 0.4: the confirmed one
    panels = surface_plots.surface_data(surface_results).panels
    assert [(p.noise_kind, p.optimum.noise_rate) for p in panels] == [
        ("pairflip", 0.4), ("symmetric", 0.2), ("symmetric", 0.4), ("symmetric", 0.6)
    ]
    assert np.shape(panels[0].mean) == (41, 41)
