"""One selection: status, export, report and recommend name the same best setting."""

from __future__ import annotations

import json

import optuna
import pytest
from fake_campaign import CAMPAIGN, CONFIRMED, build_campaign
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from dm_tune import guidelines
from dm_tune.config import parse_campaign_config
from dm_tune.guidelines.selection import select
from dm_tune.guidelines.status import status_rows
from dm_tune.report import render_html

DIST = {"emphasis_mode": FloatDistribution(0.0, 0.95),
        "emphasis_variance": FloatDistribution(0.5, 24.0)}


def _trial(mode: float, variance: float, value: float | None, number: int = 0, **attrs):
    state = TrialState.COMPLETE if value is not None else TrialState.PRUNED
    trial = create_trial(state=state, value=value, params={
        "emphasis_mode": mode, "emphasis_variance": variance}, distributions=DIST,
        user_attrs=attrs)
    trial.number = number
    return trial


def test_confirmed_mean_beats_a_better_single_search_trial() -> None:
    search = [_trial(0.4, 12.0, 0.95, 0), _trial(0.5, 8.0, 0.90, 1)]
    confirm = [_trial(0.5, 8.0, 0.91, 0, seed=1, source_trial=1),
               _trial(0.5, 8.0, 0.93, 1, seed=2, source_trial=1),
               _trial(0.4, 12.0, 0.85, 2, seed=1, source_trial=0)]
    chosen = select(search, confirm)
    assert (chosen.emphasis_mode, chosen.emphasis_variance) == (0.5, 8.0)
    assert chosen.source == "confirm" and chosen.n_seeds == 2
    assert chosen.val_accuracy == pytest.approx(0.92)
    assert chosen.trial_number == 1


def test_a_diverged_confirmation_seed_counts_against_its_setting() -> None:
    # (0.4, 12): two seeds at 0.95 and one whose loss went non-finite at epoch 3 (PRUNED
    # in a study without a pruner); (0.5, 8): three steady seeds at 0.90
    diverged = _trial(0.4, 12.0, None, 2, seed=3, pruned_reason="non-finite loss",
                      val_accuracy_curve=[0.5, 0.6, float("nan")], test_accuracy=0.1)
    confirm = [_trial(0.4, 12.0, 0.95, 0, seed=1, test_accuracy=0.94),
               _trial(0.4, 12.0, 0.95, 1, seed=2, test_accuracy=0.94), diverged,
               *[_trial(0.5, 8.0, 0.90, 3 + k, seed=k, test_accuracy=0.9) for k in range(3)]]
    chosen = select([], confirm)
    assert (chosen.emphasis_mode, chosen.emphasis_variance) == (0.5, 8.0)
    assert not chosen.collapsed
    # alone, the diverged setting counts all three seeds and is flagged
    alone = select([], confirm[:3])
    assert alone.n_seeds == 3 and alone.collapsed
    assert alone.val_accuracy == pytest.approx((0.95 + 0.95 + 0.6) / 3)
    assert alone.test_accuracy == pytest.approx((0.94 + 0.94 + 0.1) / 3)


def test_a_diverged_baseline_seed_counts_and_flags_the_baseline() -> None:
    from dm_tune.guidelines.selection import summarize_baselines

    runs = [create_trial(state=TrialState.COMPLETE, value=0.9,
                         user_attrs={"loss": "gce", "seed": k, "test_accuracy": 0.88})
            for k in range(2)]
    runs.append(create_trial(state=TrialState.PRUNED, user_attrs={
        "loss": "gce", "seed": 2, "pruned_reason": "non-finite loss",
        "val_accuracy_curve": [0.3], "test_accuracy": 0.2}))
    gce = summarize_baselines(runs)["gce"]
    assert gce.n == 3 and gce.collapsed
    assert gce.test_accuracy == pytest.approx((0.88 + 0.88 + 0.2) / 3)


def test_non_finite_values_are_skipped() -> None:
    search = [_trial(0.4, 12.0, float("inf"), 0), _trial(0.5, 8.0, 0.7, 1),
              _trial(0.6, 4.0, None, 2)]
    chosen = select(search)
    assert (chosen.emphasis_mode, chosen.trial_number, chosen.source) == (0.5, 1, "search")
    assert select([_trial(0.4, 1.0, float("inf"), 0)]) is None


def test_status_export_report_and_recommend_agree(tmp_path) -> None:
    url = build_campaign(f"sqlite:///{tmp_path / 'fake.db'}")
    storage = optuna.storages.RDBStorage(url)
    config = parse_campaign_config({
        "campaign": {"name": CAMPAIGN},
        "noise": [{"kind": "symmetric", "rates": [0.2, 0.4, 0.6]},
                  {"kind": "pairflip", "rates": [0.4]}],
    })
    status = {row.setting: row.selected for row in status_rows(storage, config)}
    results = guidelines.load_campaign(storage, CAMPAIGN)
    exported = json.loads(guidelines.dumps_json(guidelines.to_export_dict(results)))
    html = render_html(results, {})
    for setting in exported["settings"]:
        chosen = status[setting["setting"]]
        assert setting["selected"]["emphasis_mode"] == chosen.emphasis_mode
        assert setting["selected"]["emphasis_variance"] == chosen.emphasis_variance
        assert setting["selected"]["source"] == chosen.source
    # the confirmed setting wins over the search's best at symmetric 0.4, everywhere
    assert (status["symmetric-0.40"].emphasis_mode,
            status["symmetric-0.40"].emphasis_variance) == CONFIRMED
    assert "confirm (2 seeds)" in html
    at_rate = guidelines.recommend(exported, "symmetric", 0.4)
    point = next(p for p in exported["trends"]["symmetric"] if p["noise_rate"] == 0.4)
    assert at_rate.emphasis_mode == pytest.approx(point["emphasis_mode"])


def test_recommend_at_a_confirmed_rate_prints_the_confirmed_mean_and_std(tmp_path, capsys):
    from dm_tune.cli.guideline_commands import run_recommend

    url = build_campaign(f"sqlite:///{tmp_path / 'fake.db'}")
    path = tmp_path / "e.json"
    guidelines.write_json(guidelines.load_campaign(url, CAMPAIGN), path)
    selected = next(s["selected"] for s in json.loads(path.read_text())["settings"]
                    if s["setting"] == "symmetric-0.40")
    run_recommend(path, "symmetric", 0.4)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"symmetric 0.4: emphasis_mode {CONFIRMED[0]:.3f} ")
    assert [line for line in lines if line.startswith("confirmed at")][0] == (
        f"confirmed at symmetric 0.4: mode {CONFIRMED[0]:.3f}, variance {CONFIRMED[1]:.3g}, "
        f"clean-val {100 * selected['val_accuracy']:.1f} ± "
        f"{100 * selected['val_accuracy_std']:.1f}%, "
        f"test {100 * selected['test_accuracy']:.1f} ± {100 * selected['test_accuracy_std']:.1f}% "
        "over 2 seeds")
    run_recommend(path, "symmetric", 0.3)  # not searched: no confirmed line
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("symmetric 0.3: ")
    assert not [line for line in out if line.startswith("confirmed at")]
