"""The Gaussian-process response surface, its self-check and the v2 export (no training).

A synthetic objective with a known optimum that moves with the rate,

    acc(m, v, r) = 0.9 - 2 (m - (0.2 + 0.6 r))^2 - 0.002 (v - (4 + 20 r))^2 + N(0, 0.01^2),

is observed by 25 random trials at each of the rates 0.2, 0.4, 0.6, written to a real
Optuna study in a temporary SQLite storage. At the unsearched rate 0.5 the truth is
(mode 0.5, variance 14).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import optuna
import pytest
from fake_campaign import FakeTrial, add_setting, study_attrs
from optuna.distributions import FloatDistribution

from dm_tune import guidelines as g
from dm_tune import plots, report, surface_plots
from dm_tune.guidelines.check import leave_one_rate_out
from dm_tune.guidelines.surface import Observations, fit_surface

optuna.logging.set_verbosity(optuna.logging.WARNING)

CAMPAIGN = "synthetic"
RATES = (0.2, 0.4, 0.6)
PER_RATE = 25
NOISE = 0.01
SEED = 0
SPACE = {
    "emphasis_mode": FloatDistribution(0.0, 0.95),
    "emphasis_variance": FloatDistribution(0.0, 30.0),
}
TRUTH_AT_05 = (0.5, 14.0)
MODE_TOL, VARIANCE_TOL = 0.06, 2.5


def truth(m, v, r):
    """The noise-free objective."""
    return 0.9 - 2.0 * (m - (0.2 + 0.6 * r)) ** 2 - 0.002 * (v - (4.0 + 20.0 * r)) ** 2


def draw(seed: int) -> dict[float, list[tuple[float, float, float]]]:
    """(mode, variance, noisy accuracy) of PER_RATE random trials per rate."""
    rng = np.random.default_rng(seed)
    out = {}
    for r in RATES:
        m = rng.uniform(0.0, 0.95, PER_RATE)
        v = rng.uniform(0.0, 30.0, PER_RATE)
        y = truth(m, v, r) + rng.normal(0.0, NOISE, PER_RATE)
        out[r] = list(zip(m.tolist(), v.tolist(), y.tolist(), strict=True))
    return out


def write_study(storage, rate: float, rows, *, kind: str = "symmetric") -> None:
    """A DM study named and attributed as the campaign names it, with COMPLETE trials."""
    study = optuna.create_study(
        storage=storage, study_name=f"{CAMPAIGN}/{kind}-{rate:.2f}", direction="maximize"
    )
    for key, value in study_attrs(CAMPAIGN, kind, rate, "dm").items():
        study.set_user_attr(key, value)
    for i, (m, v, y) in enumerate(rows):
        study.add_trial(
            optuna.trial.create_trial(
                params={"emphasis_mode": m, "emphasis_variance": v},
                distributions=SPACE,
                value=y,
                user_attrs={"loss": "dm", "seed": i},
            )
        )


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    """The synthetic campaign in a SQLite storage."""
    url = f"sqlite:///{tmp_path_factory.mktemp('surface') / 'synthetic.db'}"
    store = optuna.storages.RDBStorage(url)
    for rate, rows in draw(SEED).items():
        write_study(store, rate, rows)
    return store


@pytest.fixture(scope="module")
def results(storage) -> g.CampaignResults:
    return g.load_campaign(storage, CAMPAIGN, method="surface")


def _best_observed_interpolation(rows_by_rate, rate=0.5):
    """What the best noisy observation alone says at ``rate``: the best trial at each
    bracketing searched rate, interpolated linearly."""
    best = {r: max(rows, key=lambda row: row[2]) for r, rows in rows_by_rate.items()}
    lo, hi = 0.4, 0.6
    w = (rate - lo) / (hi - lo)
    return tuple((1 - w) * best[lo][i] + w * best[hi][i] for i in (0, 1))


def _regret(mode, variance, rate=0.5):
    return truth(*TRUTH_AT_05, rate) - truth(mode, variance, rate)


# ------------------------------------------------------------------ the surface


def test_surface_recovers_the_moving_optimum_at_an_unsearched_rate(results):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = g.recommend(results, "symmetric", 0.5)
    assert abs(rec.emphasis_mode - TRUTH_AT_05[0]) < MODE_TOL
    assert abs(rec.emphasis_variance - TRUTH_AT_05[1]) < VARIANCE_TOL
    assert rec.nearest_rates == (0.4, 0.6) and not rec.extrapolated
    # the credible band contains the true optimum
    assert rec.emphasis_mode_low <= TRUTH_AT_05[0] <= rec.emphasis_mode_high
    assert rec.emphasis_variance_low <= TRUTH_AT_05[1] <= rec.emphasis_variance_high
    assert rec.predicted_accuracy == pytest.approx(0.9, abs=0.02)
    # the best noisy observations, interpolated, are further off in true accuracy
    naive = _best_observed_interpolation(draw(SEED))
    assert _regret(*naive) > 2 * _regret(rec.emphasis_mode, rec.emphasis_variance)


def test_surface_beats_the_best_observation_in_most_seeds():
    """Over 8 fixed seeds (arrays, no storage): the surface's regret at 0.5 is smaller."""
    wins = 0
    for seed in range(8):
        rows = draw(seed)
        arr = np.array([(m, v, r, y) for r, rs in rows.items() for m, v, y in rs])
        surface = fit_surface("symmetric", Observations(*arr.T))
        point = surface.optimum(0.5)
        assert abs(point.emphasis_mode - TRUTH_AT_05[0]) < MODE_TOL
        assert abs(point.emphasis_variance - TRUTH_AT_05[1]) < VARIANCE_TOL
        gp = _regret(point.emphasis_mode, point.emphasis_variance)
        wins += gp < _regret(*_best_observed_interpolation(rows))
    assert wins >= 7


def test_selection_at_a_searched_rate_is_the_surface_argmax(results):
    points = {p.noise_rate: p for p in results.trends["symmetric"].points}
    assert sorted(points) == list(RATES)
    for r, p in points.items():
        assert abs(p.emphasis_mode - (0.2 + 0.6 * r)) < MODE_TOL
        assert abs(p.emphasis_variance - (4 + 20 * r)) < 2 * VARIANCE_TOL
        assert p.n_trials == PER_RATE and p.predicted_std > 0
    # the argmax is a grid point, not a trial's parameters
    trial_modes = {t.emphasis_mode for s in results.settings for t in s.trials}
    assert points[0.4].emphasis_mode not in trial_modes


def _synthetic_observations(seed: int = SEED) -> Observations:
    arr = np.array([(m, v, r, y) for r, rs in draw(seed).items() for m, v, y in rs])
    return Observations(*arr.T)


def test_the_fence_raises_only_a_rates_low_outliers():
    rates = np.repeat([0.2, 0.4], 6)
    values = np.array([0.95, 0.94, 0.93, 0.96, 0.92, 0.95,   # 0.2: no low outlier
                       0.90, 0.91, 0.89, 0.92, 0.90, 0.25])  # 0.4: one collapsed trial
    obs = Observations(np.linspace(0, 0.8, 12), np.linspace(0, 20, 12), rates, values)
    floored = obs.floored().values
    assert np.array_equal(floored[:6], values[:6])  # an outlier-free rate is not changed
    q1, q3 = np.quantile(values[6:], [0.25, 0.75])
    assert floored[11] == pytest.approx(q1 - 1.5 * (q3 - q1))  # the cliff, to 0.4's fence
    assert 0.85 < floored[11] < 0.89
    assert np.array_equal(floored[6:11], values[6:11])  # the rest of 0.4 untouched


def test_a_confirmed_anchor_stands_for_its_rate_and_interpolation_joins_the_rates():
    obs = _synthetic_observations()
    free = fit_surface("symmetric", obs)
    anchored = fit_surface("symmetric", obs, anchors={0.4 + 1e-12: (0.3, 9.0)})
    assert anchored.anchors == {0.4: (0.3, 9.0)}
    point = anchored.optimum(0.4)
    assert (point.emphasis_mode, point.emphasis_variance) == (0.3, 9.0)
    assert point.emphasis_mode_low <= 0.3 <= point.emphasis_mode_high  # the band holds it
    # unanchored rates keep the surface's own pick
    assert anchored.optimum(0.6) == free.optimum(0.6)
    # between searched rates: the neighbours' points, linearly (here at the middle)
    lo, hi, mid = anchored.optimum(0.4), anchored.optimum(0.6), anchored.optimum(0.5)
    assert mid.emphasis_mode == pytest.approx((lo.emphasis_mode + hi.emphasis_mode) / 2)
    assert mid.emphasis_variance == pytest.approx((lo.emphasis_variance + hi.emphasis_variance) / 2)
    # outside the searched rates: the nearest searched rate's point
    assert anchored.optimum(0.9).emphasis_mode == hi.emphasis_mode
    # a rate that is not searched cannot be anchored
    assert fit_surface("symmetric", obs, anchors={0.5: (0.1, 1.0)}).anchors == {}


def test_leave_one_rate_out_drops_the_held_out_rates_anchor(results):
    full = results.surfaces["symmetric"]
    anchored = g.CampaignResults(**{**results.__dict__})
    anchored.surfaces = {"symmetric": fit_surface("symmetric", _synthetic_observations(),
                                                  anchors={0.4: (0.05, 1.0), 0.6: (0.56, 16.0)})}
    (row,) = leave_one_rate_out(anchored)
    # 0.4 is held out: its anchor (0.05, 1.0) must not steer the recommendation there,
    # which interpolates the surface's pick at 0.2 and the anchor at 0.6
    assert abs(row.emphasis_mode - 0.44) < 2 * MODE_TOL
    assert full.searched_rates == anchored.surfaces["symmetric"].searched_rates


def test_fit_is_fast_for_200_points():
    rng = np.random.default_rng(1)
    n = 200
    m, v, r = rng.uniform(0, 0.95, n), rng.uniform(0, 30, n), rng.choice(RATES, n)
    obs = Observations(m, v, r, truth(m, v, r) + rng.normal(0, NOISE, n))
    started = time.process_time()
    fit_surface("symmetric", obs)
    assert time.process_time() - started < 2.0


def test_few_trials_and_one_rate_still_work(tmp_path):
    """A kind with fewer than MIN_OBSERVATIONS falls back to top-k, said in
    ``fallbacks``; the surface itself still fits a handful of points."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'few.db'}")
    trials = [FakeTrial(0.2, 2.0, 0.80), FakeTrial(0.5, 8.0, 0.90), FakeTrial(0.8, 20.0, 0.70)]
    confirm = [FakeTrial(0.5, 8.0, 0.91, seed=1, source_trial=1)]
    add_setting(storage, "pairflip", 0.3, trials, campaign="few", confirm=confirm)
    add_setting(storage, "symmetric", 0.3, trials[:1], campaign="few")
    results = g.load_campaign(storage, "few")  # the default: surface
    assert results.method == "surface" and results.surfaces == {}
    assert sorted(results.fallbacks) == ["pairflip", "symmetric"]
    assert results.fallbacks["pairflip"].startswith("4 finished trials (fewer than 10)")
    assert "top-k" in results.fallbacks["symmetric"]
    (p,) = results.trends["pairflip"].points  # the top-k trend: search trials only
    assert p.k == 3 and p.predicted_accuracy is None
    (one,) = results.trends["symmetric"].points  # a single trial: its own parameters
    assert (one.emphasis_mode, one.emphasis_variance) == pytest.approx((0.2, 2.0))
    assert results.checks == []  # one rate: nothing to leave out
    with pytest.warns(UserWarning, match="outside the searched rates"):
        rec = g.recommend(results, "pairflip", 0.6)
    assert rec.extrapolated and rec.emphasis_mode == p.emphasis_mode
    # the surface fits four points when asked directly (one rate: over mode, variance)
    obs = Observations(*np.array([[0.2, 2.0, 0.3, 0.8], [0.5, 8.0, 0.3, 0.9],
                                  [0.8, 20.0, 0.3, 0.7], [0.5, 8.0, 0.3, 0.91]]).T)
    best = fit_surface("pairflip", obs).optimum(0.3)
    assert best.emphasis_mode_low <= best.emphasis_mode <= best.emphasis_mode_high
    assert 0.2 <= best.emphasis_mode <= 0.8
    # the v3 export names the fallbacks, its null predictions validate, recommend reads it
    data = g.load_export(g.write_json(results, tmp_path / "few.json"))
    assert data["schema_version"] == 4
    assert data["provenance"]["method"]["fallbacks"] == results.fallbacks
    assert data["surface"]["pairflip"] == data["trends"]["pairflip"]
    assert g.recommend(data, "pairflip", 0.3).emphasis_mode == pytest.approx(p.emphasis_mode)
    text = report.render_html(results, plots.build_figures(results))
    assert 'class="dm-fallback"' in text and "4 finished trials (fewer than 10)" in text


# ---------------------------------------------------------------- the self-check


def test_a_failed_fit_falls_back_to_top_k_and_says_why(storage, monkeypatch):
    from dm_tune.guidelines import surface

    def singular(*args, **kwargs):
        raise np.linalg.LinAlgError("singular matrix")

    monkeypatch.setattr(surface, "fit_surface", singular)
    results = g.load_campaign(storage, CAMPAIGN)  # no crash: the kind uses top-k
    assert results.surfaces == {}
    assert "fit failed (singular matrix)" in results.fallbacks["symmetric"]
    assert results.trends["symmetric"].points  # the top-k trend stands in


def test_leave_one_rate_out_at_0_4_has_a_small_gap(results):
    (row,) = results.checks
    assert (row.noise_kind, row.noise_rate, row.selected_source) == ("symmetric", 0.4, "surface")
    assert abs(row.emphasis_mode - 0.44) < 2 * MODE_TOL
    # the full surface's own choice maximises mean - std, so a held-out guess may sit at a
    # slightly higher mean (and a wider std): the gap is small either way
    assert abs(row.gap) < 0.01
    assert leave_one_rate_out(results) == results.checks  # deterministic


# -------------------------------------------------------------------- the export


def test_export_v4_round_trips_and_recommends_like_the_results(results, tmp_path):
    path = g.write_json(results, tmp_path / "e.json")
    data = g.load_export(path)
    assert data["schema_version"] == 4 and data["provenance"]["method"]["fallbacks"] == {}
    assert data["provenance"]["method"]["trend"] == "gaussian-process surface"
    grid = [p["noise_rate"] for p in data["surface"]["symmetric"]]
    assert grid[0] == 0.2 and grid[-1] == 0.6 and len(grid) == 41 and 0.5 in grid
    assert data["checks"]["leave_one_rate_out"][0]["noise_rate"] == 0.4
    for rate in (0.5, 0.33, 0.4):
        from_file, from_gp = (
            g.recommend(data, "symmetric", rate),
            g.recommend(results, "symmetric", rate),
        )
        assert from_file.emphasis_mode == pytest.approx(from_gp.emphasis_mode, abs=0.01)
        assert from_file.emphasis_variance == pytest.approx(from_gp.emphasis_variance, abs=0.01)
    for rate in (0.5, 0.33, 0.4):  # on the 0.01 grid the file holds the advice itself
        assert g.recommend(data, "symmetric", rate) == g.recommend(results, "symmetric", rate)
    header = g.dumps_csv(data).splitlines()[0]
    assert "trend_predicted_accuracy" in header
    # a version-2 file (0.1.0's surface export: no fallbacks, no advice) is still read: its
    # surface grid's nearest point, as written (never blended with a neighbour)
    method = {k: v for k, v in data["provenance"]["method"].items()
              if k not in ("fallbacks", "fallback_method", "min_observations")}
    v2 = {**{k: v for k, v in data.items() if k != "advice"}, "schema_version": 2,
          "provenance": {**data["provenance"], "method": method}}
    path.write_text(g.dumps_json(v2))
    old = g.recommend(g.load_export(path), "symmetric", 0.333)
    written = next(p for p in v2["surface"]["symmetric"] if p["noise_rate"] == 0.33)
    assert (old.emphasis_mode, old.emphasis_variance) == (
        written["emphasis_mode"], written["emphasis_variance"])
    assert old.expected_accuracy is None  # a v2 file has no risk figures


def test_v2_export_without_its_parts_is_refused(results, tmp_path):
    data = g.to_export_dict(results)
    for broken in (
        {k: v for k, v in data.items() if k != "surface"},
        {**data, "checks": {"leave_one_rate_out": [{"gap": 0.0}]}},
    ):
        path = tmp_path / "b.json"
        path.write_text(g.dumps_json(broken))
        with pytest.raises(ValueError, match="schema_version 4"):
            g.load_export(path)


def test_top_k_method_still_writes_v1(storage):
    data = g.to_export_dict(g.load_campaign(storage, CAMPAIGN, method="top-k"))
    assert data["schema_version"] == 1 and "surface" not in data
    assert "predicted_accuracy" not in data["trends"]["symmetric"][0]


# --------------------------------------------------------------- plots and report


def test_surface_figure_and_report(results, tmp_path):
    data = surface_plots.surface_data(results)
    assert [p.optimum.noise_rate for p in data.panels] == list(RATES)
    panel = data.panels[1]
    # the panel's optimum is the surface's selection: the grid's argmax of mean - std
    _, _, mean, std = results.surfaces["symmetric"].grid(0.4)
    assert np.allclose(panel.mean, mean)
    i, j = np.unravel_index(np.argmax(mean - std), np.shape(mean))
    best = (panel.optimum.emphasis_mode, panel.optimum.emphasis_variance)
    assert (panel.modes[i], panel.variances[j]) == pytest.approx(best)
    figures = plots.build_figures(results)
    assert list(figures)[:3] == ["trend", "landscape", "surface"]
    paths = report.write_report(results, tmp_path, png=False)
    text = paths.html.read_text(encoding="utf-8")
    assert 'class="dm-checks"' in text and 'data-figure="surface"' in text
    assert "credible set" in text
