"""The presentation of issue 12: the DM-vs-baseline comparison (numbers and sentences),
the report's comparison and leave-one-rate-out tables, the status table, and the export
of the checks and the spreads. Hand-built result objects where the numbers must be exact;
a fake campaign (no training) where the surface and its checks are needed."""

from __future__ import annotations

import csv
import io
import json
import re

import optuna
import pytest
from fake_campaign import FakeTrial, add_setting, agreeing_trials, campaign_file
from rich.console import Console
from typer.testing import CliRunner

from dm_tune import guidelines as g
from dm_tune import report
from dm_tune.cli.tables import status_sentences, status_table
from dm_tune.guidelines.check import gap_verdict
from dm_tune.guidelines.compare import compare, sentence
from dm_tune.guidelines.results import (
    BaselineResult,
    CampaignResults,
    Provenance,
    RateCheck,
    Selection,
    SettingResult,
)
from dm_tune.guidelines.status import StatusRow

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ---------------------------------------------------------------- hand-built data


def _selection(test: float, test_std: float | None, n: int = 3, collapsed: bool = False):
    return Selection(
        emphasis_mode=0.5, emphasis_variance=12.0, val_accuracy=test + 0.01,
        test_accuracy=test, test_accuracy_at_best_val=test, memorized_noisy_fraction=None,
        source="confirm" if n > 1 else "search", trial_number=4, n_seeds=n,
        val_accuracy_std=test_std, test_accuracy_std=test_std, collapsed=collapsed,
    )


def _baseline(loss: str, test: float, std: float | None, n: int = 3, params=None,
              collapsed: bool = False) -> BaselineResult:
    return BaselineResult(
        loss=loss, n=n, val_accuracy=test, test_accuracy=test, test_accuracy_at_best_val=test,
        memorized_noisy_fraction=None, val_accuracy_std=std, test_accuracy_std=std,
        params=params or {}, collapsed=collapsed,
    )


GCE_BETTER = (_selection(0.865, 0.010), {
    "cce": _baseline("cce", 0.700, 0.020),
    "gce": _baseline("gce", 0.871, 0.006, params={"q": 0.4}),
})
DM_BETTER = (_selection(0.905, 0.004), {
    "cce": _baseline("cce", 0.700, 0.020),
    "gce": _baseline("gce", 0.880, 0.006, params={"q": 0.7}),
})


def _results(pairs: dict[tuple[str, float], tuple], checks=()) -> CampaignResults:
    settings = [
        SettingResult(
            noise_kind=kind, noise_rate=rate, setting=f"{kind}-{rate:.2f}",
            study_name=f"h/{kind}-{rate:.2f}", trial_counts={"COMPLETE": 3}, trials=[],
            top_k=[], selected=sel, baselines=baselines,
        )
        for (kind, rate), (sel, baselines) in pairs.items()
    ]
    prov = Provenance("h", "cafe", "0.1.0", "digits", "mlp", {"COMPLETE": 3}, "now")
    return CampaignResults(prov, settings, trends={}, method="surface", checks=list(checks))


# ------------------------------------------------------------------- the comparison


def test_gce_better_is_said_with_its_params_and_numbers():
    comparisons = compare(*GCE_BETTER)
    assert [c.baseline for c in comparisons] == ["gce", "cce"]  # best baseline first
    gce = comparisons[0]
    assert gce.baseline_as_good and not comparisons[1].baseline_as_good
    assert gce.margin == pytest.approx((0.010**2 / 3 + 0.006**2 / 3) ** 0.5)
    assert sentence("symmetric 0.6", comparisons) == (
        "At symmetric 0.6, GCE (q=0.4) is as good as or better than DM: 0.871 ± 0.006 vs "
        "0.865 ± 0.010 test accuracy (3 seeds each)."
    )


def test_dm_better_is_said_too():
    comparisons = compare(*DM_BETTER)
    assert not any(c.baseline_as_good for c in comparisons)
    text = sentence("symmetric 0.2", comparisons)
    assert text.startswith("At symmetric 0.2, DM is better than every baseline: 0.905 ± 0.004 "
                           "vs GCE (q=0.7) 0.880 ± 0.006 test accuracy, the best baseline")
    assert "3 seeds each" in text


def test_a_difference_within_one_standard_error_goes_to_the_baseline():
    sel = _selection(0.900, 0.030)  # se = sqrt(0.03^2/3 + 0.03^2/3) = 0.0245
    (c,) = compare(sel, {"gce": _baseline("gce", 0.880, 0.030)})
    assert c.baseline_as_good  # 0.880 >= 0.900 - 0.0245
    (c,) = compare(sel, {"gce": _baseline("gce", 0.870, 0.030)})
    assert not c.baseline_as_good


def test_one_seed_compares_the_means_and_says_the_spread_is_unknown():
    sel = _selection(0.90, None, n=1)
    comparisons = compare(sel, {"cce": _baseline("cce", 0.91, None, n=1)})
    assert comparisons[0].baseline_as_good and comparisons[0].margin == 0.0
    assert "(1 seed each: spread unknown)" in sentence("pairflip 0.3", comparisons)
    (c,) = compare(sel, {"cce": _baseline("cce", 0.89, None, n=1)})
    assert not c.baseline_as_good  # no spread known: DM's higher mean stands


def test_collapse_is_named_and_missing_numbers_still_give_a_sentence():
    sel = _selection(0.70, 0.2, collapsed=True)
    text = sentence("symmetric 0.8", compare(sel, {"gce": _baseline("gce", 0.75, 0.01)}))
    assert "A replicate of DM collapsed (below chance + 10 points)." in text
    assert compare(None, {"gce": _baseline("gce", 0.75, 0.01)}) == []
    assert "no baseline" in sentence("symmetric 0.8", [])


# ---------------------------------------------------------------------- the report


def test_report_comparison_table_and_sentences():
    checks = [RateCheck("symmetric", 0.4, 0.45, 11.0, 0.881, 0.884, "confirm", 0.003)]
    results = _results({("symmetric", 0.2): DM_BETTER, ("symmetric", 0.6): GCE_BETTER}, checks)
    text = report.render_html(results, {})
    table = text[text.index('class="dm-confirmed"'):text.index("</table>",
                                                               text.index("dm-confirmed"))]
    rows = table.split("<tr>")[2:]
    assert len(rows) == 2
    # the report speaks percent, as the CLI does (the export keeps fractions)
    assert "90.5 ± 0.4% <span class='band'>(3)</span>" in rows[0]
    assert "87.1 ± 0.6% <span class='band'>(3)</span> <span class='band'>(q=0.4)</span>" in (
        rows[1])
    sentences = re.findall(r'<li class="dm-sentence">(.*?)</li>', text)
    assert sentences[0].startswith("At symmetric 0.2, DM is better than every baseline")
    assert sentences[1].startswith("At symmetric 0.6, GCE (q=0.4) is as good as or better")
    assert not re.search(r"\b0\.\d{3}\b", "".join(sentences)), sentences
    assert "one pooled standard error" in text  # the rule is printed


def test_report_marks_a_collapse_and_renders_unknown_spreads_as_plain_means():
    sel = _selection(0.70, 0.2, collapsed=True)
    one = _selection(0.90, None, n=1)
    results = _results({
        ("symmetric", 0.8): (sel, {"cce": _baseline("cce", 0.5, None, n=1, collapsed=True)}),
        ("symmetric", 0.2): (one, {}),
    })
    text = report.render_html(results, {})
    assert text.count("<span class='collapsed'") == 2
    assert "90.0% <span class='band'>(1)</span>" in text  # no ± without a spread


def _interior_campaign(url: str) -> None:
    """symmetric at 0.2, 0.3, 0.4, 0.5 and pairflip at 0.2, 0.3, 0.4: three interior rates."""
    storage = optuna.storages.RDBStorage(url)
    for kind, rates in (("symmetric", (0.2, 0.3, 0.4, 0.5)), ("pairflip", (0.2, 0.3, 0.4))):
        for rate in rates:
            trials = agreeing_trials(0.2 + 0.5 * rate, 6.0 + 10 * rate, n_top=5, n_bad=5)
            add_setting(storage, kind, rate, trials, campaign="loro",
                        baselines={"gce": (0.8, 0.79, 0.3)})


@pytest.fixture(scope="module")
def loro(tmp_path_factory) -> tuple[str, CampaignResults]:
    url = f"sqlite:///{tmp_path_factory.mktemp('loro') / 'loro.db'}"
    _interior_campaign(url)
    return url, g.load_campaign(url, "loro")


def test_report_has_a_leave_one_rate_out_row_per_interior_rate(loro):
    _, results = loro
    assert [(c.noise_kind, c.noise_rate) for c in results.checks] == [
        ("pairflip", 0.3), ("symmetric", 0.3), ("symmetric", 0.4)]
    text = report.render_html(results, {})
    table = text[text.index('class="dm-checks"'):]
    table = table[:table.index("</table>")]
    rows = table.split("<tr>")[2:]
    assert len(rows) == 3
    for row, c in zip(rows, results.checks, strict=True):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        assert cells[:2] == [c.noise_kind, f"{c.noise_rate:.2f}"]
        assert cells[4] == f"{100 * c.predicted_accuracy:.1f}"  # percent, as the CLI
        assert cells[5] == f"{100 * c.selected_accuracy:.1f}"
        assert cells[7] == f"{100 * c.gap:+.1f}"  # points
        assert cells[8] == gap_verdict(c.gap)  # the words follow the number beside them
        assert c.gap == pytest.approx(c.selected_accuracy - c.predicted_accuracy)
    worst = max(results.checks, key=lambda c: abs(c.gap))
    assert (f'<p class="dm-checks-verdict">Largest gap: {100 * worst.gap:+.1f} points '
            f"({worst.noise_kind} {worst.noise_rate:.2f}): {gap_verdict(worst.gap)}.</p>") in text


@pytest.mark.parametrize(
    ("gap", "verdict"),
    [
        (0.0, "small"), (0.01, "small"), (-0.0104, "small"),  # printed as 1.0: small
        (0.012, "moderate"), (-0.02, "moderate"),
        (0.027, "large"), (-0.027, "large"),  # the 2.7-point gap is not small
        (None, "unknown"),
    ],
)
def test_gap_verdict_follows_the_printed_number(gap, verdict):
    assert gap_verdict(gap).startswith(verdict + ":")


def test_report_calls_a_large_gap_large():
    checks = [RateCheck("symmetric", 0.4, 0.45, 11.0, 0.881, 0.908, "confirm", 0.027)]
    results = _results({("symmetric", 0.2): DM_BETTER, ("symmetric", 0.6): GCE_BETTER}, checks)
    text = report.render_html(results, {})
    assert "<td>+2.7</td>" in text and "interpolates well" not in text
    assert ("Largest gap: +2.7 points (symmetric 0.40): large: the guideline does not "
            "interpolate well here") in text


# ------------------------------------------------------------------------ the export


def test_export_round_trips_the_checks_spreads_and_comparisons(loro, tmp_path):
    _, results = loro
    data = g.load_export(g.write_json(results, tmp_path / "e.json"))
    assert data["schema_version"] == 4
    assert data["checks"]["leave_one_rate_out"] == [vars(c) for c in results.checks]
    s = data["settings"][0]
    for name in ("val_accuracy_std", "test_accuracy_std", "collapsed", "n_seeds"):
        assert name in s["selected"]
    assert set(s["baselines"]["gce"]) >= {"n", "test_accuracy_std", "params", "collapsed"}
    (c,) = s["comparisons"]
    assert c["baseline"] == "gce" and isinstance(c["baseline_as_good"], bool)
    header = g.dumps_csv(data).splitlines()[0].split(",")
    assert header[-8:] == [
        "selected_val_accuracy_std", "selected_test_accuracy_std", "selected_collapsed",
        "baseline_gce_n", "baseline_gce_val_accuracy_std", "baseline_gce_test_accuracy_std",
        "baseline_gce_collapsed", "baseline_gce_params"]


def test_export_csv_carries_spreads_and_params(tmp_path):
    results = _results({("symmetric", 0.6): GCE_BETTER})
    results.trends = {}
    rows = list(csv.DictReader(io.StringIO(g.dumps_csv(g.to_export_dict(results)))))
    assert float(rows[0]["selected_test_accuracy_std"]) == 0.010
    assert rows[0]["baseline_gce_params"] == "q=0.4" and rows[0]["baseline_cce_params"] == ""


def test_v3_null_predictions_only_for_a_named_fallback(loro, tmp_path):
    _, results = loro
    data = g.to_export_dict(results)
    data["trends"]["symmetric"][0]["predicted_accuracy"] = None
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not a finite number"):
        g.load_export(path)


def test_cli_export_method_option(loro, tmp_path):
    from dm_tune.cli import app

    url, _ = loro
    config = tmp_path / "c.toml"
    config.write_text(campaign_file("loro"))
    for method, version in (("top-k", 1), ("surface", 4)):
        res = CliRunner().invoke(app, ["export", str(config), "--storage", url,
                                       "--method", method])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["schema_version"] == version
    res = CliRunner().invoke(app, ["export", str(config), "--storage", url])
    assert json.loads(res.stdout)["schema_version"] == 4  # the default is the surface
    path = tmp_path / "e.json"
    path.write_text(res.stdout)
    res = CliRunner().invoke(app, ["recommend", "--from", str(path), "--noise", "symmetric",
                                   "--rate", "0.35"])
    assert res.exit_code == 0, res.output
    first = res.stdout.splitlines()[0]
    assert "(searched rates 0.3, 0.4; from " in first
    # the risk figures of one run, in order: expected >= its 10th percentile
    found = re.search(r"expected (\d+\.\d)%, 10th percentile (\d+\.\d)%, "
                      r"P\(collapse\) (\d\.\d+)", first)
    assert found and 100 >= float(found[1]) >= float(found[2]) and 0 <= float(found[3]) <= 1


# ---------------------------------------------------------------------- the status


def _row(setting: str, sel, baselines) -> StatusRow:
    return StatusRow(setting=setting, budget=30, complete=20, pruned=10, failed=0, running=0,
                     confirmed=3, selected=sel, baselines=baselines)


def test_status_table_shows_mean_std_beside_baselines_in_100_columns():
    rows = [_row("symmetric-0.60", *GCE_BETTER), _row("symmetric-0.20", *DM_BETTER),
            _row("human-random_label1", None, {})]
    console = Console(record=True, width=100)
    console.print(status_table("h", rows))
    text = console.export_text()
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 100
    assert "…" not in text  # nothing truncated
    line = next(x for x in text.splitlines() if x.strip().startswith("symmetric-0.60"))
    assert "30/30" in line and "3 seeds" in line and "86.5±1.0" in line
    assert "cce 70.0±2.0" in line
    assert "gce 87.1±0.6 q=0.4" in text
    assert "At symmetric-0.60, GCE (q=0.4) is as good as or better than DM" in text
    assert "DM is better than every baseline at symmetric-0.20." in text
    # the sentences under the table speak the table's unit, percent
    assert status_sentences(rows)[0] == (
        "At symmetric-0.60, GCE (q=0.4) is as good as or better than DM: 87.1 ± 0.6% vs "
        "86.5 ± 1.0% test accuracy (3 seeds each).")


def test_status_flags_a_collapse_and_one_seed():
    sel = _selection(0.70, 0.2, collapsed=True)
    rows = [_row("symmetric-0.80", sel, {"cce": _baseline("cce", 0.5, None, n=1,
                                                           collapsed=True)})]
    console = Console(record=True, width=100)
    console.print(status_table("h", rows))
    text = console.export_text()
    assert "70.0±20.0!" in text and "cce 50.0!" in text
    assert status_sentences([_row("x", None, {})]) == []


def test_fake_campaign_status_rows_render(tmp_path):
    """The status rows of a stored campaign (selection.py's fields, defaults or filled)
    render through the same table."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    confirm = [FakeTrial(0.4, 12.0, 0.88, 0.86, seed=1, source_trial=0),
               FakeTrial(0.4, 12.0, 0.90, 0.88, seed=2, source_trial=0)]
    add_setting(storage, "symmetric", 0.4, agreeing_trials(0.4, 12.0), campaign="s",
                baselines={"gce": (0.8, 0.79, 0.3)}, confirm=confirm)
    results = g.load_campaign(storage, "s")
    (s,) = results.settings
    row = _row("symmetric-0.40", s.selected, s.baselines)
    console = Console(record=True, width=100)
    console.print(status_table("s", [row]))
    text = console.export_text()
    assert "2 seeds" in text and "87.0" in text and "gce 79.0" in text
