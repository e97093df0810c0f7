"""The confirmation that ends `dm-tune run`: candidates, exact jobs, GCE's q, collapses."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

from dm_tune.campaign.candidates import MIN_DISTANCE, Observed, confirm_candidates
from dm_tune.campaign.confirm_run import confirmation_config, gce_q_grid, queue_confirmations
from dm_tune.campaign.create import create_campaign
from dm_tune.campaign.launcher import worker_command
from dm_tune.campaign.worker import run_worker
from dm_tune.cli import app
from dm_tune.config import ConfigError, load_campaign_config, parse_campaign_config
from dm_tune.guidelines.selection import select, summarize_baselines
from dm_tune.storage import open_storage
from dm_tune.training import train_trial
from tests.campaign_files import write_tiny
from tests.stored import trials_by_study

RANGES = ((0.0, 0.8), (0.0, 24.0))


def _tiny(tmp_path: Path, seeds: int = 2, candidates: int = 1, q: int = 3) -> Path:
    return write_tiny(tmp_path, epochs=2, trials=4, baselines=("cce", "gce"),
                      confirm={"seeds": seeds, "candidates": candidates, "gce_q_trials": q})




# ------------------------------------------------------------------ config


def test_confirm_table_defaults_and_old_files_stay_valid(tmp_path):
    path = write_tiny(tmp_path)
    path.write_text(path.read_text().replace("[confirm]\nseeds = 0", ""))  # an old file
    config = load_campaign_config(path)
    assert (config.confirm.seeds, config.confirm.candidates, config.confirm.gce_q_trials) == \
        (3, 2, 6)
    changed = load_campaign_config(_tiny(tmp_path, seeds=0))
    assert changed.confirm.seeds == 0
    assert changed.config_hash() == load_campaign_config(_tiny(tmp_path, seeds=5)).config_hash()


@pytest.mark.parametrize(("table", "needle"), [
    ({"seeds": -1}, "confirm.seeds"),
    ({"candidates": "two"}, "confirm.candidates"),
    ({"gce_q_trials": 5000}, "confirm.gce_q_trials"),
    ({"top_k": 3}, "confirm.top_k: unknown key"),
])
def test_bad_confirm_keys_name_the_key(table, needle):
    doc = {"campaign": {"name": "x"}, "noise": [{"kind": "symmetric", "rates": [0.2]}],
           "confirm": table}
    with pytest.raises(ConfigError, match=needle):
        parse_campaign_config(doc, "c.toml")


# -------------------------------------------------------------- candidates


class _Peak:
    """A fake surface: a smooth peak at (0.4, 10) whatever the rate."""

    def optimum(self, rate):
        return SimpleNamespace(emphasis_mode=0.4, emphasis_variance=10.0, predicted_accuracy=0.9)

    def predict(self, modes, variances, rate):
        modes, variances = np.asarray(modes, float), np.asarray(variances, float)
        mean = 0.9 - (modes - 0.4) ** 2 - ((variances - 10.0) / 24) ** 2
        return mean, np.zeros_like(mean)


def _distance(a, b) -> float:
    return math.dist((a.emphasis_mode / 0.8, a.emphasis_variance / 24),
                     (b.emphasis_mode / 0.8, b.emphasis_variance / 24))


def test_candidates_start_with_the_argmax_and_are_distinct():
    observed = [
        Observed(0.401, 10.1, 0.95, 0),   # as good as the argmax: a duplicate of it
        Observed(0.45, 11.0, None, 1),    # pruned, but the surface ranks it second
        Observed(0.451, 11.05, 0.7, 2),   # a duplicate of #1
        Observed(0.2, 4.0, 0.99, 3),      # the luckiest observation, far from the peak
        Observed(0.6, 20.0, 0.5, 4),
    ]
    chosen = confirm_candidates(observed, 2, *RANGES, surface=_Peak(), rate=0.4)
    assert [(c.emphasis_mode, c.emphasis_variance) for c in chosen[:1]] == [(0.4, 10.0)]
    assert chosen[0].origin == "surface argmax" and chosen[0].source_trial is None
    # the best finished trial, then by posterior mean (pruned included)
    assert [c.source_trial for c in chosen[1:]] == [3, 1]
    assert [c.origin for c in chosen[1:]] == ["best observed", "surface rank"]
    assert [c.source_trial for c in confirm_candidates(observed, 3, *RANGES, surface=_Peak(),
                                                       rate=0.4)[1:]] == [3, 1, 4]
    assert all(_distance(a, b) >= MIN_DISTANCE
               for i, a in enumerate(chosen) for b in chosen[i + 1:])


def test_candidates_without_a_surface_are_the_best_distinct_finished_trials():
    observed = [Observed(0.3, 8.0, 0.9, 0), Observed(0.3, 8.1, 0.91, 1),
                Observed(0.5, 16.0, None, 2), Observed(0.6, 4.0, 0.5, 3),
                Observed(0.1, 2.0, 0.4, 4)]
    chosen = confirm_candidates(observed, 2, *RANGES)
    assert [c.source_trial for c in chosen] == [1, 3, 4]
    assert {c.origin for c in chosen} == {"best observed"}
    assert confirm_candidates(observed, 0, *RANGES)[0].source_trial == 1


def test_the_gce_q_grid_spans_its_range():
    assert gce_q_grid(6) == [0.1, 0.28, 0.46, 0.64, 0.82, 1.0]
    assert gce_q_grid(1) == [0.55]


# ------------------------------------------------------------ `dm-tune run`


def _run(config: Path, db: str, *extra: str):
    result = CliRunner().invoke(app, ["run", str(config), "--storage", db, "--no-report",
                                      "--device", "cpu", *extra])
    assert result.exit_code == 0, result.output
    return result


def test_run_with_jobs_confirms_in_the_wider_population_and_exactly(tmp_path, monkeypatch):
    # the worker processes read the campaign file ([search] population = 1): the
    # confirmation's population must reach them on their command line
    monkeypatch.setenv("DM_TUNE_TORCH_THREADS", "1")
    config = _tiny(tmp_path, seeds=2, candidates=1, q=2)
    db = f"sqlite:///{tmp_path / 'c.db'}"
    _run(config, db, "--jobs", "2")
    studies = trials_by_study(db)
    wanted = confirmation_config(load_campaign_config(config)).search.population
    assert wanted > 1
    for setting in ("symmetric-0.20", "symmetric-0.40"):
        confirm = studies[f"tiny/{setting}/confirm"]
        assert confirm and all(t.state == TrialState.COMPLETE for t in confirm)
        sizes = [t.user_attrs.get("population_size", 1) for t in confirm]
        assert 1 < max(sizes) <= -(-wanted // 2), sizes  # split between the two workers
        plan = optuna.load_study(study_name=f"tiny/{setting}/confirm",
                                 storage=optuna.storages.RDBStorage(db)).user_attrs["confirm_plan"]
        assert len(confirm) == 2 * len(plan)  # exact, with two workers claiming


def test_a_changed_gce_q_grid_fills_gaps_within_its_budget(tmp_path):
    from dm_tune.campaign.confirm_run import _queue_gce_q
    from dm_tune.campaign.settings import load_setting_data, settings_of

    storage = open_storage(f"sqlite:///{tmp_path / 'c.db'}")
    setting = None
    # a re-run with more points fills the widest gaps; with fewer, nothing is queued that
    # the budget would leave waiting
    for q_trials, added, grid in ((3, 3, [0.1, 0.55, 1.0]),
                                  (4, 1, [0.1, 0.4, 0.55, 1.0]),  # 0.4 and 0.7 tie: one
                                  (2, 0, [0.1, 0.4, 0.55, 1.0]),
                                  (6, 2, [0.1, 0.28, 0.4, 0.55, 0.82, 1.0])):
        config = load_campaign_config(_tiny(tmp_path, q=q_trials))
        setting = setting or settings_of(config)[0]
        data = load_setting_data(config, setting)
        assert _queue_gce_q(storage, config, setting, data) == added
        trials = optuna.load_study(study_name=setting.study_name(config.name, "gce_q"),
                                   storage=storage).trials
        assert sorted(t.user_attrs["loss_params"]["q"] for t in trials) == grid


def test_worker_command_carries_a_population_override():
    assert worker_command("c.toml", "cpu")[-1] == "--quiet"
    assert worker_command("c.toml", "cpu", 16)[-2:] == ["--population", "16"]


def test_run_ends_with_exact_confirmations_and_a_rerun_adds_none(tmp_path):
    seeds, q_trials = 2, 3
    config = _tiny(tmp_path, seeds=seeds, candidates=1, q=q_trials)
    db = f"sqlite:///{tmp_path / 'c.db'}"
    output = _run(config, db).output
    assert "confirming with 2 new seeds" in output and "GCE at its best q" in output
    studies = trials_by_study(db)
    for setting in ("symmetric-0.20", "symmetric-0.40"):
        confirm = studies[f"tiny/{setting}/confirm"]
        storage = optuna.storages.RDBStorage(db)
        plan = optuna.load_study(study_name=f"tiny/{setting}/confirm",
                                 storage=storage).user_attrs["confirm_plan"]
        assert 1 <= len(plan) <= 2
        assert len(confirm) == seeds * len(plan)
        assert all(t.state == TrialState.COMPLETE for t in confirm)
        assert all(t.user_attrs["confirmation"] is True for t in confirm)
        for mode, variance, _ in plan:
            mine = [t for t in confirm if t.params == {"emphasis_mode": mode,
                                                       "emphasis_variance": variance}]
            assert sorted(t.user_attrs["seed"] for t in mine) == [1000, 1001]
        gce_q = studies[f"tiny/{setting}/gce_q"]
        assert len(gce_q) == q_trials and all(t.state == TrialState.COMPLETE for t in gce_q)
        assert sorted(t.params["q"] for t in gce_q) == [0.1, 0.55, 1.0]
        best = max(gce_q, key=lambda t: (t.value, -t.number)).params["q"]
        baselines = studies[f"tiny/{setting}/baselines"]
        confirmed = [t for t in baselines if t.user_attrs.get("confirmation")]
        assert sorted((t.user_attrs["loss"], t.user_attrs["seed"]) for t in confirmed) == [
            ("cce", 1000), ("cce", 1001), ("gce", 1000), ("gce", 1001)]
        assert all(t.user_attrs["loss_params"] == {"q": best}
                   for t in confirmed if t.user_attrs["loss"] == "gce")
        assert all(t.state == TrialState.COMPLETE and "collapsed" in t.user_attrs
                   for t in confirmed)
        summary = summarize_baselines(baselines)
        assert summary["gce"].params == {"q": best} and summary["gce"].n == seeds
        assert summary["cce"].n == seeds and summary["cce"].val_accuracy_std is not None
        chosen = select(studies[f"tiny/{setting}"], confirm)
        assert chosen.source == "confirm" and chosen.n_seeds == seeds
        assert chosen.val_accuracy_std is not None
    total = sum(len(ts) for ts in studies.values())
    again = _run(config, db).output
    assert "0 trial(s) queued" in again
    assert sum(len(ts) for ts in trials_by_study(db).values()) == total


def test_no_confirm_and_zero_seeds_add_nothing(tmp_path):
    expected = {"tiny/symmetric-0.20": 4, "tiny/symmetric-0.40": 4,
                "tiny/symmetric-0.20/baselines": 2, "tiny/symmetric-0.40/baselines": 2}
    db = f"sqlite:///{tmp_path / 'a.db'}"
    _run(_tiny(tmp_path), db, "--no-confirm")
    assert {name: len(ts) for name, ts in trials_by_study(db).items()} == expected
    db = f"sqlite:///{tmp_path / 'b.db'}"
    output = _run(_tiny(tmp_path, seeds=0), db).output
    assert "confirming" not in output
    assert {name: len(ts) for name, ts in trials_by_study(db).items()} == expected


# -------------------------------------------------------------- collapses


def test_a_collapsed_replicate_is_flagged_and_counted_in_the_mean(tmp_path):
    config = load_campaign_config(_tiny(tmp_path, seeds=2, candidates=0, q=0))
    storage = open_storage(f"sqlite:///{tmp_path / 'c.db'}")
    create_campaign(config, storage)
    run_worker(storage, config, "cpu", name="w0")
    queue_confirmations(storage, config)

    def collapsing(data, spec, loss, loss_params, on_epoch=None, progress=None):
        result = train_trial(data, spec, loss, loss_params, on_epoch=on_epoch, progress=False)
        return replace(result, val_accuracy=0.05) if spec.seed == 1001 else result

    run_worker(storage, config, "cpu", name="w1", train=collapsing)
    name = "tiny/symmetric-0.40"
    dm = optuna.load_study(study_name=name, storage=storage).get_trials()
    confirm = optuna.load_study(study_name=f"{name}/confirm", storage=storage).get_trials()
    assert len(confirm) == 2
    flags = {t.user_attrs["seed"]: t.user_attrs["collapsed"] for t in confirm}
    assert flags == {1000: False, 1001: True}
    chosen = select(dm, confirm)
    assert chosen.collapsed and chosen.n_seeds == 2
    assert chosen.val_accuracy == pytest.approx(np.mean([t.value for t in confirm]))
    assert chosen.val_accuracy_std == pytest.approx(np.std([t.value for t in confirm], ddof=1))
    baselines = optuna.load_study(study_name=f"{name}/baselines", storage=storage).get_trials()
    summary = summarize_baselines(baselines)
    assert set(summary) == {"cce", "gce"}
    for result in summary.values():
        assert result.collapsed and result.n == 2


def _baseline(value: float, seed: int, loss: str = "cce", **attrs) -> optuna.trial.FrozenTrial:
    return create_trial(value=value, user_attrs={"loss": loss, "seed": seed,
                                                 "test_accuracy": value - 0.01, **attrs})


def test_baseline_summary_prefers_the_confirmed_runs():
    trials = [_baseline(0.95, 0), _baseline(0.80, 1000, confirmation=True),
              _baseline(0.70, 1001, confirmation=True, collapsed=False),
              _baseline(0.60, 0, "gce", loss_params={}),
              _baseline(0.75, 1000, "gce", loss_params={"q": 0.46}, confirmation=True),
              _baseline(0.15, 1001, "gce", loss_params={"q": 0.46}, confirmation=True,
                        collapsed=True)]
    summary = summarize_baselines(trials)
    assert summary["cce"].n == 2 and summary["cce"].val_accuracy == pytest.approx(0.75)
    assert summary["cce"].val_accuracy_std == pytest.approx(np.std([0.8, 0.7], ddof=1))
    assert summary["cce"].params == {} and not summary["cce"].collapsed
    assert summary["gce"].params == {"q": 0.46} and summary["gce"].collapsed
    assert summary["gce"].val_accuracy == pytest.approx(0.45)  # the collapse counts
    lone = summarize_baselines([_baseline(0.9, 0)])["cce"]
    assert lone.n == 1 and lone.val_accuracy_std is None


def test_an_interrupted_confirmation_resumes_to_exact_counts(tmp_path):
    seeds, q_trials = 2, 3
    path = _tiny(tmp_path, seeds=seeds, candidates=1, q=q_trials)
    db = f"sqlite:///{tmp_path / 'c.db'}"
    _run(path, db, "--no-confirm")
    config = load_campaign_config(path)
    storage = open_storage(db)
    assert queue_confirmations(storage, config) > 0
    run_worker(storage, config, "cpu", name="cut", max_trials=3)  # cut short
    assert queue_confirmations(storage, config) == 0  # nothing queued twice
    _run(path, db)
    studies = trials_by_study(db)
    for setting in ("symmetric-0.20", "symmetric-0.40"):
        plan = optuna.load_study(study_name=f"tiny/{setting}/confirm",
                                 storage=storage).user_attrs["confirm_plan"]
        confirm = studies[f"tiny/{setting}/confirm"]
        assert len(confirm) == seeds * len(plan)
        assert len(studies[f"tiny/{setting}/gce_q"]) == q_trials
        assert len(studies[f"tiny/{setting}/baselines"]) == 2 + 2 * seeds
        for trials in (confirm, studies[f"tiny/{setting}/baselines"]):
            assert all(t.state == TrialState.COMPLETE for t in trials)


def test_a_new_best_q_is_confirmed_on_a_rerun_without_repeating_the_old_one(tmp_path):
    seeds = 2
    config = _tiny(tmp_path, seeds=seeds, candidates=1, q=3)
    db = f"sqlite:///{tmp_path / 'q.db'}"
    _run(config, db)
    storage = optuna.storages.RDBStorage(db)
    name = "tiny/symmetric-0.20"
    old = {t.user_attrs["loss_params"]["q"] for t in trials_by_study(db)[f"{name}/baselines"]
           if t.user_attrs.get("confirmation") and t.user_attrs["loss"] == "gce"}
    (old_q,) = old
    # a later q trial beats the grid: GCE must now be confirmed at q = 0.3 as well
    q_study = optuna.load_study(study_name=f"{name}/gce_q", storage=storage)
    q_study.add_trial(create_trial(
        value=1.0, params={"q": 0.3},
        distributions={"q": optuna.distributions.FloatDistribution(0.1, 1.0)},
        user_attrs={"loss": "gce", "loss_params": {"q": 0.3}, "seed": 0}))
    _run(config, db)
    gce = [t for t in trials_by_study(db)[f"{name}/baselines"]
           if t.user_attrs.get("confirmation") and t.user_attrs["loss"] == "gce"]
    by_q = {}
    for t in gce:
        by_q.setdefault(t.user_attrs["loss_params"]["q"], []).append(t.user_attrs["seed"])
    assert sorted(by_q) == sorted({old_q, 0.3})
    assert all(sorted(s) == [1000, 1001] for s in by_q.values())  # each q: R seeds, once
    assert all(t.state == TrialState.COMPLETE for t in gce)
    # the other setting's best q did not move: nothing new there
    other = [t for t in trials_by_study(db)["tiny/symmetric-0.40/baselines"]
             if t.user_attrs.get("confirmation") and t.user_attrs["loss"] == "gce"]
    assert len(other) == seeds
