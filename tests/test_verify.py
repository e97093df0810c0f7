"""A check at the user's own rate (`recommend --verify`), and campaigns over a rate range."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from dm_tune.campaign.candidates import distinct_candidates
from dm_tune.campaign.verify import (
    CANDIDATE_DISTANCE,
    VERIFY_SEED_OFFSET,
    plan_verification,
    run_verification,
    verified_pick,
)
from dm_tune.cli import app
from dm_tune.config import ConfigError, load_campaign_config, parse_campaign_config
from dm_tune.errors import CampaignError
from dm_tune.guidelines import load_campaign, recommend
from dm_tune.storage import open_storage
from tests.campaign_files import write_tiny

STUDY = "tiny/symmetric-0.30/verify"


def _run(config: Path, db: str, *extra: str):
    result = CliRunner().invoke(app, ["run", str(config), "--storage", db, "--no-report",
                                      "--device", "cpu", *extra])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny campaign (symmetric 0.2 and 0.4, 12 trials each) run once; tests copy it."""
    folder = tmp_path_factory.mktemp("verify")
    config = write_tiny(folder, epochs=2, trials=12, baselines=())
    db = folder / "c.db"
    _run(config, f"sqlite:///{db}")
    return config, db


@pytest.fixture
def campaign(searched, tmp_path) -> tuple[Path, str]:
    config, db = searched
    copy = tmp_path / "c.db"
    with sqlite3.connect(db) as source, sqlite3.connect(copy) as target:
        source.backup(target)  # the WAL's pages too, unlike a file copy
    return config, f"sqlite:///{copy}"


def _trials(url: str, name: str = STUDY) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _distinct(points: np.ndarray, count: int) -> list[int]:
    """verify's rule: at least CANDIDATE_DISTANCE apart, filled up in rank order."""
    return distinct_candidates(points, count, CANDIDATE_DISTANCE)


def test_distinct_candidates_skip_neighbours_of_those_chosen_then_fill_up_in_rank_order():
    ranked = np.array([[0.5, 0.5], [0.52, 0.5], [0.9, 0.9], [0.1, 0.1], [0.11, 0.1]])
    # the second is a neighbour of the first (0.02 away), the fifth of the fourth
    assert _distinct(ranked, 3) == [0, 2, 3]
    assert _distinct(ranked, 4) == [0, 2, 3, 1]  # three far apart, then rank order
    assert _distinct(ranked, 1) == [0]  # the advice itself is always first
    close = np.array([[0.5, 0.5], [0.5, 0.5 + CANDIDATE_DISTANCE * 0.99], [0.7, 0.7]])
    assert _distinct(close, 2) == [0, 2]
    assert _distinct(close, 3) == [0, 2, 1]


def test_verify_plans_the_advice_and_the_best_candidates_that_differ_from_it(campaign):
    from dm_tune.guidelines.advice import advise

    config_path, url = campaign
    results = load_campaign(url, "tiny")
    surface = results.surfaces["symmetric"]
    ranked = advise(surface, results.settings_of("symmetric"), 0.3)
    storage = open_storage(url)
    plan = plan_verification(storage, load_campaign_config(config_path), "symmetric", 0.3,
                             candidates=3, seeds=1)
    planned = np.array([(m, v) for m, v, _ in plan.candidates])
    assert planned[0] == pytest.approx((ranked[0].emphasis_mode, ranked[0].emphasis_variance))
    points = surface.scaled(planned[:, 0], planned[:, 1])
    gaps = [np.linalg.norm(points[i] - points[j]) for i in range(3) for j in range(i)]
    everyone = surface.scaled(np.array([a.emphasis_mode for a in ranked]),
                              np.array([a.emphasis_variance for a in ranked]))
    # the tiny search spreads its trials: three candidates that far apart exist, and the
    # plan is them, not the three best by rank
    assert len(_distinct(everyone, 3)) == 3 and min(gaps) >= CANDIDATE_DISTANCE
    assert _distinct(everyone, 3) != [0, 1, 2]  # the top three are neighbours here
    assert [ranked[i].origin for i in _distinct(everyone, 3)] == [
        origin for _, _, origin in plan.candidates]


def test_verify_trains_its_candidates_with_new_seeds_and_answers(campaign):
    config_path, url = campaign
    before = recommend(load_campaign(url, "tiny"), "symmetric", 0.3)
    result = CliRunner().invoke(app, ["recommend", str(config_path), "--storage", url,
                                      "--noise", "symmetric", "--rate", "0.3", "--verify",
                                      "--candidates", "2", "--seeds", "2"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # the cost comes first, before anything trains
    assert lines[0].startswith("verify symmetric 0.3: 2 candidates x 2 seeds = 4 runs of 2 "
                               "epochs as one population; 4 to train (0 stored)")
    trials = _trials(url)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    first = load_campaign_config(config_path).campaign.seed + VERIFY_SEED_OFFSET
    assert sorted(t.user_attrs["seed"] for t in trials) == [first, first, first + 1, first + 1]
    plan = optuna.load_study(study_name=STUDY, storage=url).user_attrs["verify_plan"]
    assert (plan[0][0], plan[0][1]) == pytest.approx(
        (before.emphasis_mode, before.emphasis_variance))  # the advice itself is verified
    assert all(t.user_attrs.get("collapsed") in (True, False) for t in trials)
    # the answer: the plan's first (risk-aware) candidate, unless another's mean clean-val
    # over its seeds leads by more than one standard error of the difference
    runs = {}
    for t in trials:
        runs.setdefault((t.params["emphasis_mode"], t.params["emphasis_variance"]),
                        []).append(t.value)
    incumbent = min(runs, key=lambda k: abs(k[0] - plan[0][0]) + abs(k[1] - plan[0][1]))
    (challenger,) = set(runs) - {incumbent}
    lead = np.mean(runs[challenger]) - np.mean(runs[incumbent])
    se = np.sqrt(np.var(runs[challenger], ddof=1) / 2 + np.var(runs[incumbent], ddof=1) / 2)
    best = challenger if lead > se else incumbent
    verified = next(line for line in lines if line.startswith("verified at symmetric 0.3"))
    assert f"emphasis_mode {best[0]:.3f}" in verified and "over 2 seeds" in verified
    assert re.search(r"clean-val \d+\.\d ± \d+\.\d%, test \d+\.\d% over 2 seeds",
                     verified), verified
    # from now on the advice at that rate is the verified pick (measured beats predicted)
    after = recommend(load_campaign(url, "tiny"), "symmetric", 0.3)
    assert (after.emphasis_mode, after.emphasis_variance) == pytest.approx(best)
    assert after.origin == "verify@0.3"
    # the verify study is not a setting: status, trends and searched rates are unchanged
    results = load_campaign(url, "tiny")
    assert [s.noise_rate for s in results.settings] == [0.2, 0.4]
    assert results.surfaces["symmetric"].searched_rates == (0.2, 0.4)


def test_verify_resumes_a_killed_run_with_an_exact_budget(campaign):
    config_path, url = campaign
    config = load_campaign_config(config_path)
    storage = open_storage(url, heartbeat_interval=60)
    plan = plan_verification(storage, config, "symmetric", 0.3, candidates=2, seeds=2)
    assert (plan.runs, plan.remaining) == (4, 4)
    # a run killed mid-way: two jobs claimed (RUNNING, live heartbeat when it died)
    study = optuna.load_study(study_name=STUDY, storage=storage)
    with pytest.warns(UserWarning, match="Heartbeat of storage"):  # as a worker claims
        for _ in range(2):
            study.ask()
    assert plan_verification(storage, config, "symmetric", 0.3, 2, 2).remaining == 4
    trained = run_verification(storage, config, plan)
    assert trained == 4
    states = [t.state for t in _trials(url)]
    assert states.count(TrialState.COMPLETE) == 4 and states.count(TrialState.FAIL) == 2
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    # the two jobs killed before they suggested anything trained their own candidates
    # again, not settings the sampler chose: each candidate has both its seeds
    trained_jobs = sorted((round(t.params["emphasis_mode"], 6),
                           round(t.params["emphasis_variance"], 6), t.user_attrs["seed"])
                          for t in _trials(url) if t.state == TrialState.COMPLETE)
    assert trained_jobs == sorted((round(m, 6), round(v, 6), s) for m, v, _ in plan.candidates
                                  for s in plan.seeds)
    assert optuna.load_study(study_name=STUDY, storage=url).user_attrs["budget"] == 4
    # a re-run (even asking for more candidates) queues and trains nothing
    again = plan_verification(storage, config, "symmetric", 0.3, candidates=3, seeds=2)
    assert (again.runs, again.remaining, again.candidates) == (4, 0, plan.candidates)
    assert run_verification(storage, config, again) == 0
    results = load_campaign(url, "tiny")
    pick = verified_pick(results.verified["symmetric"], again)
    assert pick is not None and pick.n_seeds == 2
    # the verify runs carry their candidate's index; the CLI's pick (advise) and
    # verified_pick apply the one rule to the one incumbent
    sources = sorted({p.source_trial for _, p in results.verified["symmetric"]})
    assert sources == [0, 1]
    first = recommend(results, "symmetric", 0.3)
    assert (first.emphasis_mode, first.emphasis_variance) == pytest.approx(
        (pick.emphasis_mode, pick.emphasis_variance))


def test_verify_refuses_bad_requests_before_writing(campaign):
    config_path, url = campaign
    config = load_campaign_config(config_path)
    storage = open_storage(url, heartbeat_interval=None)
    names = {s.study_name for s in storage.get_all_studies()}
    for kind, rate, count, message in (
        ("pairflip", 0.3, 2, "the campaign searched symmetric"),
        ("symmetric", 0.333, 2, "at most 2 decimals"),
        ("symmetric", 0.3, 0, "at least 1"),
    ):
        with pytest.raises(CampaignError, match=message):
            plan_verification(storage, config, kind, rate, candidates=count)
    assert {s.study_name for s in storage.get_all_studies()} == names
    result = CliRunner().invoke(app, ["recommend", "--from", "x.json", "--noise", "symmetric",
                                      "--rate", "0.3", "--verify"])
    assert result.exit_code == 2 and "needs the campaign file" in result.stderr


def test_recommend_reads_the_database_and_refuses_the_csv(campaign, tmp_path):
    config_path, url = campaign
    result = CliRunner().invoke(app, ["recommend", str(config_path), "--storage", url,
                                      "--noise", "symmetric", "--rate", "0.35", "--json"])
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)
    assert rec["low_accuracy"] <= rec["expected_accuracy"] and rec["origin"]
    assert 0.0 <= rec["collapse_probability"] <= 1.0
    csv = tmp_path / "r.csv"
    res = CliRunner().invoke(app, ["export", str(config_path), "--storage", url, "-f", "csv",
                                   "-o", str(csv)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["recommend", "--from", str(csv), "--noise", "symmetric",
                                   "--rate", "0.3"])
    assert res.exit_code == 2
    assert re.search(r"is not the JSON export .*dm-tune export CONFIG -f json", res.stderr)


# ------------------------------------------------------------------ rate ranges


def test_a_rate_range_expands_to_one_study_per_rate_and_checks_its_bounds():
    config = parse_campaign_config({"campaign": {"name": "r"}, "noise": [
        {"kind": "symmetric", "rate_range": [0.2, 0.6], "rate_step": 0.1},
        {"kind": "pairflip", "rate_range": [0.2, 0.45]}]})
    assert config.noise[0].rates == [0.2, 0.3, 0.4, 0.5, 0.6]
    assert config.noise[1].rates == [0.2, 0.25, 0.3, 0.35, 0.4, 0.45]  # step 0.05
    for noise, message in (
        ({"rate_range": [0.6, 0.2]}, "0 <= low < high < 1"),
        ({"rate_range": [0.2, 0.6], "rates": [0.2]}, "not both"),
        ({"rate_range": [0.2, 0.6], "rate_step": 0.001}, "rate_step"),
        ({"rates": [0.2], "rate_step": 0.1}, "goes with `rate_range`"),
        ({"rate_range": [0.0, 0.9], "rate_step": 0.01}, "at most 41"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_campaign_config({"campaign": {"name": "r"},
                                   "noise": [{"kind": "symmetric", **noise}]})


def test_a_rate_range_campaign_round_trips_create_worker_status_export(tmp_path):
    path = write_tiny(tmp_path, name="ranged", epochs=2, trials=3, baselines=())
    path.write_text(path.read_text().replace(
        "rates = [0.2, 0.4]", "rate_range = [0.2, 0.3]\nrate_step = 0.05"))
    db = f"sqlite:///{tmp_path / 'r.db'}"
    runner = CliRunner()
    assert runner.invoke(app, ["create", str(path), "--storage", db]).exit_code == 0
    res = runner.invoke(app, ["worker", str(path), "--storage", db, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    storage = optuna.storages.RDBStorage(db)
    for rate in ("0.20", "0.25", "0.30"):
        trials = optuna.load_study(study_name=f"ranged/symmetric-{rate}",
                                   storage=storage).get_trials()
        assert len(trials) == 3 and all(t.state.is_finished() for t in trials)
    status = runner.invoke(app, ["status", str(path), "--storage", db], env={"COLUMNS": "200"})
    assert status.exit_code == 0
    assert [line.split()[0] for line in status.stdout.splitlines()
            if line.strip().startswith("symmetric-")] == ["symmetric-0.20", "symmetric-0.25",
                                                 "symmetric-0.30"]
    res = runner.invoke(app, ["export", str(path), "--storage", db, "--method", "top-k"])
    assert res.exit_code == 0, res.output
    exported = json.loads(res.stdout)
    assert [s["noise_rate"] for s in exported["settings"]] == [0.2, 0.25, 0.3]
