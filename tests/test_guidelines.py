"""Tests of dm_tune.guidelines and the export/recommend commands on a fake campaign."""

from __future__ import annotations

import csv
import io
import json
import math
import warnings

import optuna
import pytest
import typer
from fake_campaign import (
    AGREED,
    CAMPAIGN,
    CONFIRMED,
    FakeTrial,
    add_setting,
    campaign_file,
    shared_campaign_url,
)
from typer.testing import CliRunner

from dm_tune import guidelines as g

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    """A SQLite storage holding the standard fake campaign."""
    return shared_campaign_url(tmp_path_factory)


@pytest.fixture(scope="module")
def results(url) -> g.CampaignResults:
    """The aggregated fake campaign, top-k method (the surface, the default, is tested in
    test_surface.py and test_presentation.py)."""
    return g.load_campaign(optuna.storages.RDBStorage(url), CAMPAIGN, method="top-k")


def _setting(results, kind, rate) -> g.SettingResult:
    return next(s for s in results.settings if (s.noise_kind, s.noise_rate) == (kind, rate))


# ------------------------------------------------------------------ aggregation


def test_settings_are_grouped_by_attrs(results):
    assert [(s.noise_kind, s.noise_rate) for s in results.settings] == [
        ("pairflip", 0.4),
        ("symmetric", 0.2),
        ("symmetric", 0.4),
        ("symmetric", 0.6),
    ]
    assert _setting(results, "symmetric", 0.2).study_name == "fake/symmetric-0.20"


def test_best_trial_is_selected_on_clean_validation(results):
    sel = _setting(results, "symmetric", 0.2).selected
    assert (sel.emphasis_mode, sel.emphasis_variance) == AGREED[0.2]
    assert sel.source == "search" and sel.trial_number == 0
    assert sel.val_accuracy == pytest.approx(0.90)
    assert sel.test_accuracy == pytest.approx(0.88)
    assert sel.test_accuracy_at_best_val == pytest.approx(0.885)


def test_confirmed_mean_is_preferred(results):
    sel = _setting(results, "symmetric", 0.4).selected
    assert (sel.emphasis_mode, sel.emphasis_variance) == CONFIRMED
    assert sel.source == "confirm" and sel.n_seeds == 2 and sel.trial_number == 5
    assert sel.val_accuracy == pytest.approx(0.915)
    assert sel.test_accuracy == pytest.approx(0.91)
    assert sel.memorized_noisy_fraction == pytest.approx(0.06)


def test_top_k_counts_and_baselines(results):
    s = _setting(results, "symmetric", 0.2)
    assert [t.number for t in s.top_k] == [0, 1, 2, 3, 4]
    assert s.trial_counts["COMPLETE"] == 12
    assert s.trial_counts["PRUNED"] == 1 and s.trial_counts["FAIL"] == 1
    cce = s.baselines["cce"]
    assert cce.n == 2
    assert cce.val_accuracy == pytest.approx(0.70) and cce.test_accuracy == pytest.approx(0.68)
    assert s.best_baseline().loss == "gce"
    assert s.variance_log


def test_provenance(results):
    prov = results.provenance
    assert (prov.campaign, prov.config_hash, prov.dataset, prov.model) == (
        "fake",
        "cafe1234",
        "digits",
        "mlp",
    )
    assert prov.trial_counts["COMPLETE"] == 48
    assert prov.trial_counts["PRUNED"] == 1 and prov.trial_counts["FAIL"] == 1


def test_load_through_storage_url(url):
    assert len(g.load_campaign(url, CAMPAIGN).settings) == 4


def test_missing_database_is_not_created(tmp_path):
    from dm_tune.storage import StorageError

    with pytest.raises(StorageError):
        g.load_campaign(f"sqlite:///{tmp_path / 'missing.db'}", CAMPAIGN)
    assert not (tmp_path / "missing.db").exists()


def test_unknown_campaign_and_no_finished_trials(url, tmp_path):
    with pytest.raises(g.NoResultsError, match="no study"):
        g.load_campaign(optuna.storages.RDBStorage(url), "nope")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'empty.db'}")
    add_setting(storage, "symmetric", 0.2, [], campaign="empty", pruned=2)
    with pytest.raises(g.NoResultsError, match="no finished DM trial"):
        g.load_campaign(storage, "empty")


# ------------------------------------------------------------------------ trend


def test_trend_passes_through_agreeing_points_with_narrow_band(results):
    points = results.trends["symmetric"].points
    assert [p.noise_rate for p in points] == [0.2, 0.4, 0.6]
    for p in points:
        mode, variance = AGREED[p.noise_rate]
        assert p.emphasis_mode == pytest.approx(mode)
        assert p.emphasis_variance == pytest.approx(variance)
        assert p.emphasis_mode_high - p.emphasis_mode_low < 1e-9
        assert p.emphasis_variance_high - p.emphasis_variance_low < 1e-9
        assert p.k == 5 and p.n_trials == 12


def test_band_is_wide_when_top_trials_disagree(results):
    (p,) = results.trends["pairflip"].points
    assert p.emphasis_mode_low <= p.emphasis_mode <= p.emphasis_mode_high
    assert p.emphasis_mode_high - p.emphasis_mode_low > 0.2
    assert p.emphasis_variance_high / p.emphasis_variance_low > 2


def test_rank_weights_and_log_scale_mean(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'w.db'}")
    trials = [FakeTrial(0.2, 2.0, 0.9), FakeTrial(0.5, 8.0, 0.8), FakeTrial(0.9, 20.0, 0.1)]
    add_setting(storage, "symmetric", 0.3, trials, campaign="w")
    (p,) = g.load_campaign(storage, "w", top_k=2, method="top-k").trends["symmetric"].points
    # weights 2/3 and 1/3; the variance is log-scaled in the search space: geometric mean
    assert p.emphasis_mode == pytest.approx(2 / 3 * 0.2 + 1 / 3 * 0.5)
    assert p.emphasis_variance == pytest.approx(2 ** (2 / 3) * 8 ** (1 / 3))


def test_bootstrap_is_deterministic(url):
    a = g.load_campaign(url, CAMPAIGN, method="top-k").trends["pairflip"].points
    b = g.load_campaign(url, CAMPAIGN, method="top-k").trends["pairflip"].points
    assert a == b


# -------------------------------------------------------------------- recommend


def test_recommend_never_blends_two_rates_settings(results):
    # top-k trend: 0.2 -> (0.25, 8), 0.4 -> (0.40, 12). A blend, (0.325, 10), was never
    # trained; the advice between the rates is the nearer rate's point (ties: the lower)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = g.recommend(results, "symmetric", 0.3)
        nearer = g.recommend(results, "symmetric", 0.35)
    assert (rec.emphasis_mode, rec.emphasis_variance) == pytest.approx(AGREED[0.2])
    assert (nearer.emphasis_mode, nearer.emphasis_variance) == pytest.approx(AGREED[0.4])
    assert rec.nearest_rates == (0.2, 0.4)
    assert not rec.extrapolated
    assert rec.emphasis_lambda == pytest.approx(0.25 / 0.75)


def test_recommend_at_a_searched_rate(results):
    rec = g.recommend(results, "symmetric", 0.4)
    assert (rec.emphasis_mode, rec.nearest_rates) == (pytest.approx(0.4), (0.4,))


@pytest.mark.parametrize(("rate", "nearest"), [(0.8, 0.6), (0.0, 0.2)])
def test_recommend_outside_range_warns(results, rate, nearest):
    with pytest.warns(UserWarning, match="outside the searched rates"):
        rec = g.recommend(results, "symmetric", rate)
    assert rec.extrapolated and rec.nearest_rates == (nearest,)
    assert rec.emphasis_mode == pytest.approx(AGREED[nearest][0])


def test_recommend_rejects_bad_input(results):
    with pytest.raises(ValueError, match="known kinds: pairflip, symmetric"):
        g.recommend(results, "human", 0.3)
    for rate in (1.0, -0.1, math.nan):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            g.recommend(results, "symmetric", rate)


# ----------------------------------------------------------------------- export


def test_export_round_trip(results, tmp_path):
    path = g.write_json(results, tmp_path / "e.json")
    data = g.load_export(path)
    assert data["schema"] == "dm-tune/recommendations" and data["schema_version"] == 1
    for kind, rate in [("symmetric", 0.3), ("symmetric", 0.55), ("pairflip", 0.4)]:
        assert g.recommend(data, kind, rate) == g.recommend(results, kind, rate)
    setting = next(s for s in data["settings"] if s["setting"] == "symmetric-0.40")
    assert setting["selected"]["source"] == "confirm"
    assert setting["baselines"]["cce"]["test_accuracy"] == pytest.approx(0.68)
    assert len(setting["top_k"]) == 5


def test_csv_and_json_agree(results, tmp_path):
    data = json.loads(g.write_json(results, tmp_path / "e.json").read_text())
    rows = list(csv.DictReader(io.StringIO(g.write_csv(results, tmp_path / "e.csv").read_text())))
    assert len(rows) == len(data["settings"]) == 4
    trends = {(k, p["noise_rate"]): p for k, pts in data["trends"].items() for p in pts}
    for row, s in zip(rows, data["settings"], strict=True):
        assert (row["noise_kind"], float(row["noise_rate"])) == (s["noise_kind"], s["noise_rate"])
        for name in ("emphasis_mode", "emphasis_variance", "val_accuracy", "test_accuracy"):
            assert float(row[f"selected_{name}"]) == s["selected"][name]  # exact: repr floats
        point = trends[(s["noise_kind"], s["noise_rate"])]
        assert float(row["trend_emphasis_mode_low"]) == point["emphasis_mode_low"]
        assert float(row["baseline_gce_test_accuracy"]) == s["baselines"]["gce"]["test_accuracy"]
        assert int(row["n_complete"]) == s["trial_counts"]["COMPLETE"]


def _write(tmp_path, data) -> str:
    path = tmp_path / "x.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_load_export_rejects_newer_and_malformed(results, tmp_path):
    good = g.to_export_dict(results)
    cases = {
        "schema_version 2": {**good, "schema_version": 2},
        "not a dm-tune/recommendations": {**good, "schema": "other"},
        "not a JSON export": "{nope",
        "malformed": {**good, "trends": {"symmetric": [{"noise_rate": 0.2}]}},
    }
    for match, data in cases.items():
        with pytest.raises(ValueError, match=match) as info:
            g.load_export(_write(tmp_path, data))
        assert "\n" not in str(info.value)


# -------------------------------------------------------------------------- CLI


@pytest.fixture
def app() -> typer.Typer:
    """The guideline commands in a Typer app."""
    from dm_tune.cli import app

    return app


def _config(tmp_path, name=CAMPAIGN) -> str:
    path = tmp_path / "c.toml"
    path.write_text(campaign_file(name))
    return str(path)


def test_cli_export_then_recommend(app, url, tmp_path):
    out = tmp_path / "r.json"
    runner = CliRunner()
    res = runner.invoke(
        app, ["export", _config(tmp_path), "--out", str(out), "--storage", url, "--method", "top-k"]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["recommend", "--from", str(out), "--noise", "symmetric", "--rate", "0.3"]
    )
    assert res.exit_code == 0, res.output
    # the nearer searched rate's point (a tie: the lower), never the blend 0.325
    assert "emphasis_mode 0.250" in res.stdout and "0.2, 0.4" in res.stdout
    res = runner.invoke(
        app, ["recommend", "--from", str(out), "--noise", "symmetric", "--rate", "0.9", "--json"]
    )
    assert res.exit_code == 0
    assert json.loads(res.stdout)["extrapolated"] is True
    assert res.stderr.startswith("warning:") and res.stderr.count("\n") == 1


def test_cli_export_csv_to_stdout_from_env(app, url, tmp_path):
    res = CliRunner().invoke(
        app, ["export", _config(tmp_path), "--format", "csv"], env={"DM_TUNE_STORAGE": url}
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("campaign,config_hash,noise_kind")
    assert len(res.stdout.strip().splitlines()) == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--noise", "human", "--rate", "0.3"], "known kinds"),
        (["--noise", "symmetric", "--rate", "1.5"], "[0, 1)"),
    ],
)
def test_cli_recommend_bad_input_exits_2(app, results, tmp_path, args, message):
    path = g.write_json(results, tmp_path / "e.json")
    res = CliRunner().invoke(app, ["recommend", "--from", str(path), *args])
    assert res.exit_code == 2
    assert message in res.stderr and res.stderr.count("\n") == 1


def test_cli_recommend_newer_schema_exits_2(app, results, tmp_path):
    path = _write(tmp_path, {**g.to_export_dict(results), "schema_version": 9})
    res = CliRunner().invoke(app, ["recommend", "--from", path, "--noise", "x", "--rate", "0.1"])
    assert res.exit_code == 2 and "upgrade dm-tune" in res.stderr


def test_cli_export_errors_exit_2(app, url, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["export", _config(tmp_path, "nope"), "--storage", url])
    assert res.exit_code == 2 and "no study" in res.stderr and res.stderr.count("\n") == 1
    res = runner.invoke(app, ["export", str(tmp_path / "missing.toml"), "--storage", url])
    assert res.exit_code == 2 and "not found" in res.stderr
    missing_db = f"sqlite:///{tmp_path / 'none.db'}"
    res = runner.invoke(app, ["export", _config(tmp_path), "--storage", missing_db])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1
