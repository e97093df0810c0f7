"""Tests of dm_tune.plots: the data objects carry the campaign's numbers."""

from __future__ import annotations

import math

import numpy as np
import optuna
import plotly.graph_objects as go
import pytest
from fake_campaign import AGREED, CAMPAIGN, CONFIRMED, FakeTrial, add_setting, shared_campaign_url

from dm_tune import plot_style, plots, surface_plots
from dm_tune.guidelines import load_campaign
from dm_tune.guidelines.results import (
    BaselineResult,
    CampaignResults,
    Provenance,
    Selection,
    SettingResult,
)

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


@pytest.mark.parametrize("method", ["top-k", "surface"])
def test_trend_band_is_one_filled_outline_per_kind_and_kinds_stay_apart(
        results, surface_results, method):
    """A band is one closed polygon (not an error bar per rate: dozens of hatched bars on
    the surface's 0.01 grid); the two kinds differ in colour, dash and marker."""
    data = plots.trend_data(results if method == "top-k" else surface_results)
    fig = plots.trend_figure(data)
    bands = [t for t in fig.data if t.fill == "toself"]
    sym = data.mode["symmetric"]
    assert sorted(t.name for t in bands) == ["symmetric band", "symmetric band"]
    band = bands[0]
    assert list(band.x) == pytest.approx([*sym.x, *reversed(sym.x)])
    assert list(band.y) == pytest.approx([*sym.high, *reversed(sym.low)])
    lines = {t.name: t for t in fig.data if t.name in ("symmetric", "pairflip")}
    assert lines["symmetric"].error_y.array is None  # a band, no bars
    # pairflip was searched at one rate: no area, so an error bar there
    assert len(lines["pairflip"].x) == 1 and len(lines["pairflip"].error_y.array) == 1
    assert not any(t.error_y.array is not None and len(t.error_y.array) > 1 for t in fig.data)
    styles = {k: (lines[k].line.color, lines[k].line.dash) for k in lines}
    assert styles["symmetric"][0] != styles["pairflip"][0]
    assert styles["symmetric"][1] != styles["pairflip"][1]
    marks = {t.name: t.marker.symbol for t in fig.data if t.name.endswith(" selected")}
    assert marks["symmetric selected"] != marks["pairflip selected"]


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
    # the colour scale: from the 25th percentile of every trial (the fake campaign has no
    # num_classes, so no collapse line) to the best, in percent
    every = [a for p in data.panels for a in p.accuracies]
    assert data.colour_min == pytest.approx(np.percentile(every, 25))
    assert data.colour_min > data.accuracy_min
    fig = plots.landscape_figure(data)
    assert fig.layout.coloraxis.cmax == pytest.approx(90.0)
    assert fig.layout.coloraxis.cmin == pytest.approx(100 * data.colour_min)
    assert fig.layout.coloraxis.colorbar.ticksuffix == "%"
    # the x axis is the searched range [0, 0.95] (fake_campaign.DISTRIBUTIONS) + 2 %, not 1
    assert panel.mode_range == (0.0, 0.95)
    assert list(fig.layout.xaxis.range) == pytest.approx([-0.019, 0.969])


def test_colour_range_spreads_the_good_settings():
    """Two collapsed runs (10 %) and six good ones (65-90 %), 10 classes: the scale starts
    at the 25th percentile of the six above chance + 10 points: 70 + 0.25 * 5 = 71.25 %."""
    values = [0.10, 0.10, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90]
    assert plot_style.colour_range(values, chance=0.1) == pytest.approx((0.7125, 0.90))
    # without chance, the 25th percentile of all: 0.10 + 0.75 * (0.65 - 0.10)
    assert plot_style.colour_range(values) == pytest.approx((0.5125, 0.90))
    assert plot_style.colour_range([0.5, 0.5]) == (0.5, 0.5)
    assert plot_style.colour_range([]) == (0.0, 1.0)


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


def test_surface_credible_set_is_an_outline_with_its_share_named(surface_results):
    """The credible set is drawn as the outline of the grid points whose mean + 1 std
    reaches the best mean (not a box over its extremes, which covers the whole panel when
    the set is wide); each panel says how much of the grid it is."""
    data = surface_plots.surface_data(surface_results)
    surface = surface_results.surfaces["symmetric"]
    _, _, mean, std = surface.grid(0.4)
    panel = next(p for p in data.panels if p.noise_kind == "symmetric"
                 and p.optimum.noise_rate == 0.4)
    share = float(np.mean(mean + std >= mean.max()))
    assert panel.credible_share == pytest.approx(share)
    fig = surface_plots.surface_figure(data)
    assert not [t for t in fig.data if t.name == "credible set" and t.type == "scatter"]
    outlines = [t for t in fig.data if t.name == "credible set"]
    partial = [p for p in data.panels if 0 < p.credible_share < 0.995]
    assert len(outlines) == len(partial)
    for t in outlines:
        assert t.type == "contour" and t.contours.type == "constraint"
        assert t.fillcolor == "rgba(0,0,0,0)"  # an outline: the surface stays visible
    titles = [a.text for a in fig.layout.annotations]
    assert surface_plots.panel_title(panel) in titles
    assert surface_plots.panel_title(panel) == f"symmetric 0.40 · credible {100 * share:.0f}%"
    low, high = data.colour_range()
    assert fig.layout.coloraxis.cmin == pytest.approx(100 * low)
    assert fig.layout.coloraxis.cmax == pytest.approx(100 * high)
    assert 100 * low > 100 * min(v for p in data.panels for row in p.mean for v in row)


def _sel(test: float, std: float | None) -> Selection:
    return Selection(0.4, 8.0, test + 0.01, test, test, 0.1, "confirm", 3, n_seeds=3,
                     val_accuracy_std=std, test_accuracy_std=std)


def _setting(rate: float, sel: Selection, q: float) -> SettingResult:
    gce = BaselineResult("gce", 3, 0.8, 0.79, 0.79, 0.3, 0.01, 0.012, {"q": q})
    cce = BaselineResult("cce", 3, 0.7, 0.68, 0.68, 0.6, 0.02, 0.02)
    return SettingResult("symmetric", rate, f"symmetric-{rate:.2f}", f"a/symmetric-{rate:.2f}",
                         {"COMPLETE": 3}, [], [], sel, {"gce": gce, "cce": cce})


def test_accuracy_figure_has_error_bars_and_names_gce_q():
    prov = Provenance("a", "cafe", "0.1.0", "digits", "mlp", {"COMPLETE": 6}, "now")
    results = CampaignResults(prov, [_setting(0.2, _sel(0.9, 0.01), 0.46),
                                     _setting(0.4, _sel(0.85, None), 0.82)], trends={})
    (kind,) = plots.accuracy_data(results).kinds
    assert kind.errors["dm (tuned)"] == [0.01, None]
    assert kind.errors["gce"] == [0.012, 0.012]
    assert kind.labels == {"gce": ["q=0.46", "q=0.82"]}
    fig = plots.accuracy_figure(plots.accuracy_data(results))
    lines = {t.legendgroup: t for t in fig.data}
    assert list(lines["dm (tuned)"].y) == pytest.approx([90.0, 85.0])  # percent
    assert list(lines["dm (tuned)"].error_y.array) == pytest.approx([1.0, 0.0])
    assert lines["gce"].error_y.visible and list(lines["gce"].error_y.array) == pytest.approx(
        [1.2, 1.2])
    assert lines["gce"].name == "gce, tuned q (value at each point)"
    assert list(lines["gce"].text) == ["q=0.46", "q=0.82"] and "text" in lines["gce"].mode
    assert lines["cce"].text is None and lines["cce"].name == "cce"
    assert fig.layout.yaxis.title.text == "final test accuracy (%)"
