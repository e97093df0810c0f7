"""The risk-aware advice: no blend across DM's cliff, risk figures, the export v4, words."""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest

from dm_tune import guidelines as g
from dm_tune.guidelines.advice import TOLERANCE, advise, determination, order_verified
from dm_tune.guidelines.compare import best_configuration
from dm_tune.guidelines.risk import COLLAPSE_MARGIN, TAIL_QUANTILE, RiskModel
from dm_tune.guidelines.selection import FALL, fallen_points
from tests.fake_campaign import DISTRIBUTIONS, study_attrs

CLIFF = 0.15  # the accuracy of a collapsed run


def truth(mode: float, variance: float, rate: float) -> float:
    """A landscape with DM's cliff: from rate 0.35 on, a mode below 0.55 with a variance
    above 10 collapses. The optimum moves from (0.3, 6) at 0.4 to (0.75, 20) at 0.6, so the
    straight line between the two optima crosses the cliff (at 0.5: (0.525, 13))."""
    if rate >= 0.35 and mode < 0.55 and variance > 10:
        return CLIFF
    best_mode = np.interp(rate, [0.2, 0.4, 0.6], [0.2, 0.3, 0.75])
    best_var = np.interp(rate, [0.2, 0.4, 0.6], [4.0, 6.0, 20.0])
    return float(0.95 - 0.4 * rate - (mode - best_mode) ** 2 - 0.0005 * (variance - best_var) ** 2)


@pytest.fixture(scope="module")
def cliff(tmp_path_factory) -> g.CampaignResults:
    """A campaign searched by TPE on :func:`truth` (plus seed noise) at 0.2, 0.4, 0.6."""
    url = f"sqlite:///{tmp_path_factory.mktemp('cliff') / 'c.db'}"
    storage = optuna.storages.RDBStorage(url)
    rng = np.random.default_rng(0)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for i, rate in enumerate((0.2, 0.4, 0.6)):
        study = optuna.create_study(storage=storage, study_name=f"cliff/symmetric-{rate:.2f}",
                                    direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=i))
        for key, value in {**study_attrs("cliff", "symmetric", rate, "dm"),
                           "num_classes": 10}.items():
            study.set_user_attr(key, value)

        def objective(trial: optuna.Trial, rate: float = rate) -> float:
            mode = trial.suggest_float("emphasis_mode", 0.0, 0.95)
            variance = trial.suggest_float("emphasis_variance", 0.5, 24.0)
            return truth(mode, variance, rate) + float(rng.normal(0, 0.005))

        study.optimize(objective, n_trials=40)
    storage.engine.dispose()
    return g.load_campaign(url, "cliff")


def test_the_risk_aware_pick_avoids_the_cliff_that_a_blend_walks_into(cliff):
    surface = cliff.surfaces["symmetric"]
    blend = surface.optimum(0.5)  # the old advice: the two rates' optima, blended
    assert truth(blend.emphasis_mode, blend.emphasis_variance, 0.5) == CLIFF  # the premise
    rec = g.recommend(cliff, "symmetric", 0.5)
    assert truth(rec.emphasis_mode, rec.emphasis_variance, 0.5) > 0.7
    # the risk model sees the cliff at the blend and none at the pick
    (at_blend,) = surface.risk.estimate(blend.emphasis_mode, blend.emphasis_variance, 0.5)
    assert at_blend.collapse_probability > 0.1 >= rec.collapse_probability
    assert rec.low_accuracy > at_blend.low + 0.3
    assert rec.expected_accuracy >= rec.low_accuracy
    assert rec.origin and not rec.origin.startswith("verify")


def test_no_pick_is_a_blend_and_every_rate_of_the_grid_avoids_the_cliff(cliff):
    observed = {(round(t.emphasis_mode, 6), round(t.emphasis_variance, 6))
                for s in cliff.settings for t in (*s.trials, *s.confirm_trials)}
    for rate in np.round(np.arange(0.4, 0.61, 0.02), 2):
        rec = g.recommend(cliff, "symmetric", float(rate))
        key = (round(rec.emphasis_mode, 6), round(rec.emphasis_variance, 6))
        assert key in observed  # a setting the campaign trained, never a blend
        assert truth(rec.emphasis_mode, rec.emphasis_variance, float(rate)) > CLIFF + 0.4, rate


def test_the_mixture_gives_the_closed_form_quantile_and_collapse_probability():
    # one place, ten runs: eight at +0.01 around a mean of 0.9, two collapsed at 0.05
    residuals = np.array([0.01] * 8 + [-0.85] * 2)
    model = RiskModel(np.full(10, 0.5), np.full(10, 8.0), np.full(10, 0.4), 0.9 + residuals,
                      lambda m, v, r: (np.full(len(m), 0.9), np.zeros(len(m))),
                      lambda m, v: np.column_stack([m, v / 24]), chance=0.1, prior_mass=0.0)
    (e,) = model.estimate(0.5, 8.0, 0.4)
    assert e.collapse_probability == pytest.approx(0.2, abs=1e-6)  # 0.05 < 0.1 + 0.1
    assert e.expected == pytest.approx(0.9 + residuals.mean(), abs=1e-6)
    # the 10th percentile lies in the collapsed component (20% of the mass below 0.2)
    assert e.low < 0.1 + COLLAPSE_MARGIN and TAIL_QUANTILE == 0.1
    assert e.evidence == pytest.approx(10.0)
    # far from every run the prior decides: with no prior mass there is nothing there, so
    # the estimate is the same mixture (normalised weights), and evidence is ~0
    (far,) = model.estimate(0.0, 24.0, 0.4)
    assert far.evidence < 1e-6


def test_fallen_pruned_trials_join_the_evidence_and_others_stay_censored():
    complete = [optuna.trial.create_trial(
        params={"emphasis_mode": 0.5, "emphasis_variance": 8.0}, distributions=DISTRIBUTIONS,
        value=v) for v in (0.90, 0.92, 0.94)]

    def pruned(last: float) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(
            state=optuna.trial.TrialState.PRUNED, distributions=DISTRIBUTIONS,
            params={"emphasis_mode": 0.3, "emphasis_variance": 20.0},
            intermediate_values={5: 0.9, 25: last})

    fell, censored = pruned(0.92 - FALL - 0.01), pruned(0.92 - FALL + 0.01)
    points = fallen_points([*complete, fell, censored])
    assert [p.val_accuracy for p in points] == [pytest.approx(0.92 - FALL - 0.01)]


def test_determination_says_when_the_mode_is_not_pinned_down(cliff):
    surface = cliff.surfaces["symmetric"]
    at = determination(surface, 0.2)
    modes, _, mean, _ = surface.grid(0.2)
    near = np.nonzero(mean >= mean.max() - TOLERANCE)[0]
    assert at.mode_interval == (modes[near].min(), modes[near].max())
    span = modes[-1] - modes[0]
    wide = at.mode_interval[1] - at.mode_interval[0] >= 0.5 * span
    assert at.mode_determined == (not wide)
    words = at.sentences()
    assert any("mode is not determined" in w for w in words) == wide
    # a flat surface determines nothing, and says so with the interval
    flat = type(surface).__new__(type(surface))
    flat.__dict__.update(surface.__dict__)
    flat._grids = {0.3: (modes, surface.grid(0.2)[1], np.full_like(mean, 0.9),
                         np.zeros_like(mean))}
    words = determination(flat, 0.3).sentences()
    assert words[0] == (f"the mode is not determined at this rate: anything in "
                        f"[{modes[0]:.2f}, {modes[-1]:.2f}] is within 0.5 points")
    assert words[1].startswith("the variance is not determined at this rate")


def test_a_baseline_better_by_more_than_its_standard_error_is_the_configuration():
    from dm_tune.guidelines.results import BaselineResult, Selection, SettingResult

    def setting(gce_val: float) -> SettingResult:
        sel = Selection(0.5, 8.0, 0.80, 0.79, None, None, "confirm", 3, n_seeds=3,
                        val_accuracy_std=0.01, test_accuracy_std=0.01)
        gce = BaselineResult("gce", 3, gce_val, 0.85, None, None, val_accuracy_std=0.01,
                             test_accuracy_std=0.01, params={"q": 0.7})
        return SettingResult("symmetric", 0.6, "symmetric-0.60", "s", {}, [], [], sel,
                             baselines={"gce": gce})

    margin = math.sqrt(2 * 0.01**2 / 3)
    assert best_configuration(setting(0.80 + margin + 0.001)).loss == "gce"
    assert best_configuration(setting(0.80 + margin - 0.001)).loss == "dm"
    better = best_configuration(setting(0.85))
    assert better.params == {"q": 0.7} and better.dm_val_accuracy == 0.80
    assert better.reason.startswith("GCE (q=0.7) beats DM on clean validation by 5.0 points")


def test_export_v4_carries_the_advice_and_recommends_it_without_blending(cliff, tmp_path):
    data = g.load_export(g.write_json(cliff, tmp_path / "e.json"))
    assert data["schema_version"] == 4
    advice = data["advice"]["symmetric"]
    assert [p["noise_rate"] for p in advice] == sorted(p["noise_rate"] for p in advice)
    for rate in (0.5, 0.47, 0.2):
        from_file, live = g.recommend(data, "symmetric", rate), g.recommend(cliff, "symmetric",
                                                                            rate)
        assert from_file == live
    # between grid points: the nearest one's pick, as written
    between = g.recommend(data, "symmetric", 0.503)
    point = next(p for p in advice if p["noise_rate"] == 0.5)
    assert (between.emphasis_mode, between.low_accuracy) == (point["emphasis_mode"],
                                                             point["low_accuracy"])
    # an advice point without its risk figures, or NaN anywhere, is refused
    broken = json.loads(json.dumps(data))
    del broken["advice"]["symmetric"][0]["low_accuracy"]
    (tmp_path / "b.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="advice 'symmetric' has a point without"):
        g.load_export(tmp_path / "b.json")
    text = (tmp_path / "e.json").read_text().replace(
        f'"emphasis_mode": {advice[0]["emphasis_mode"]}', '"emphasis_mode": NaN', 1)
    (tmp_path / "n.json").write_text(text)
    with pytest.raises(ValueError, match="non-finite number"):
        g.load_export(tmp_path / "n.json")


def test_advise_ranks_by_the_tail_then_the_mean(cliff):
    ranked = advise(cliff.surfaces["symmetric"], cliff.settings_of("symmetric"), 0.5)
    keys = [(-round(a.low_accuracy, 4), -round(a.expected_accuracy, 4)) for a in ranked]
    assert keys == sorted(keys) and len(ranked) > 5
    assert len({(a.emphasis_mode, a.emphasis_variance) for a in ranked}) == len(ranked)


def test_the_report_shows_the_advice_rows_and_the_surface_shades_the_collapse_region(cliff):
    from dm_tune.guidelines.recommend import advice_rows
    from dm_tune.report import render_html
    from dm_tune.surface_plots import AVOID_PROBABILITY, surface_data, surface_figure

    page = render_html(cliff, {})
    rows = advice_rows(cliff)
    assert [r.noise_rate for r in rows] == [0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6]
    table = page[page.index('class="dm-advice"'):]
    table = table[:table.index("</table>")]
    assert table.count("<tr>") == 1 + len(rows)
    assert f"<td>{rows[6].emphasis_mode:.3f}</td>" in table  # the pick at 0.5
    assert "<b>symmetric 0.4</b>: use DM" in page
    data = surface_data(cliff)
    at_06 = next(p for p in data.panels if p.optimum.noise_rate == 0.6)
    modes, variances = np.array(at_06.modes), np.array(at_06.variances)
    collapse = np.array(at_06.collapse)
    # the region drawn is where runs collapse (below chance + 10 points: 0.2 here), and
    # the settings the advice picks lie outside it
    inside = np.argwhere(collapse >= AVOID_PROBABILITY)
    assert len(inside) > 0
    wrong = [truth(modes[i], variances[j], 0.6) for i, j in inside]
    assert np.mean(np.array(wrong) < 0.1 + COLLAPSE_MARGIN) > 0.75  # smoothed: edges spill
    fig = surface_figure(data)
    regions = [t for t in fig.data if t.name == "collapse region"]
    assert regions and regions[0].contours.value == AVOID_PROBABILITY


def test_a_verified_lead_within_seed_noise_keeps_the_risk_aware_pick():
    incumbent, close, far = (0.5, 4.0), (0.6, 8.0), (0.7, 12.0)
    # close leads by 0.4 points with a standard error of the difference of ~0.58 points
    groups = {incumbent: [0.900, 0.910, 0.905], close: [0.905, 0.915, 0.907]}
    assert order_verified(groups, incumbent)[0] == incumbent
    # without a known incumbent the best mean is first (the confirmation's rule)
    assert order_verified(groups, None)[0] == close
    # a lead of 3 points against the same noise displaces it; the rest follow by mean
    groups[far] = [0.930, 0.935, 0.940]
    assert order_verified(groups, incumbent) == [far, close, incumbent]
    # one run each: the lead's noise is unknown, the incumbent stays
    assert order_verified({incumbent: [0.80], far: [0.95]}, incumbent)[0] == incumbent
    # margin 0: any positive lead with known noise displaces it
    assert order_verified(groups, incumbent, margin=0.0)[0] == far
