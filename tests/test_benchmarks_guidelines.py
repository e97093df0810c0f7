"""Smoke tests of the guideline benchmarks (validation_design, guideline_stability,
guideline_heldout, heldout_replicate, ...).

Each runs with ``--quick`` (tiny training) and its RESULT lines must parse, be finite and
lie in their ranges; no figure's target is asserted (they measure, they do not gate).
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from test_benchmarks import ROOT, _module, _run, parse_results

DESIGNS = ("split180_s1", "split180_s3", "split360_s1", "cv2_s1")


def test_stability_campaign_file_changes_only_seed_and_rates(tmp_path):
    from dm_tune.campaign.settings import settings_of
    from dm_tune.config import load_campaign_config

    bench = _module("guideline_stability")
    demo = load_campaign_config(ROOT / "studies" / "digits-quick.toml")
    path = tmp_path / "c.toml"
    path.write_text(bench.campaign_text(2, {"symmetric": [0.6, 0.2, 0.5], "pairflip": [0.2]},
                                        quick=False))
    config = load_campaign_config(path)
    assert config.campaign.seed == 2
    assert [(s.kind, s.rate) for s in settings_of(config)] == [
        ("symmetric", 0.2), ("symmetric", 0.5), ("symmetric", 0.6), ("pairflip", 0.2)]
    # everything else, the search budget and the training included, is the demo's
    assert config.training == demo.training and config.search == demo.search
    assert config.baselines == demo.baselines and config.name == demo.name
    path.write_text(bench.campaign_text(0, {"symmetric": [0.4], "pairflip": [0.3]}, quick=True))
    quick = load_campaign_config(path)
    assert (quick.search.trials, quick.training.epochs) == (6, 8)
    assert quick.baselines.losses == []


@pytest.mark.slow
def test_validation_design_quick_prints_every_design():
    out = _run([sys.executable, "benchmarks/validation_design.py", "--quick"], timeout=240)
    results = parse_results(out)
    for design in DESIGNS:
        stem = f"validation_{design}_symmetric0.4"
        std = results[f"{stem}_seed_std"][0]
        rho = results[f"{stem}_top10_spearman"][0]
        regret = results[f"{stem}_regret"][0]
        assert math.isfinite(std) and 0.0 < std < 0.5, (design, std)
        assert -1.0 <= rho <= 1.0, (design, rho)
        assert 0.0 <= regret <= 100.0, (design, regret)
    # S = 3 replicate seeds: a third the variance of one seed, by construction
    one = results["validation_split180_s1_symmetric0.4_seed_std"][0]
    three = results["validation_split180_s3_symmetric0.4_seed_std"][0]
    assert three == pytest.approx(one / math.sqrt(3), abs=1e-3)
    # the truth is the test accuracy of models that learned something: its top-10 spans
    # a finite, non-negative range in points
    assert 0.0 <= results["validation_truth_symmetric0.4_top10_range_points"][0] < 100.0
    verdicts = [line for line in out.splitlines() if line.startswith("VERDICT ")]
    assert len(verdicts) == 1 and any(d in verdicts[0] for d in DESIGNS)


def test_rung_agreement_quick_prints_seed_mean_and_single_run_agreement():
    results = parse_results(_run([sys.executable, "benchmarks/rung_agreement.py", "--quick"],
                                 timeout=240))
    # --quick: 12 epochs, so the rungs are 3 (epochs // 4), 5 and 10; the demo's 25 is past
    # the end and not printed
    for which in ("rung_spearman", "rung_spearman_single"):
        epochs = sorted(int(name.rsplit("_e", 1)[1]) for name in results
                        if name.startswith(f"{which}_symmetric_0.40_e"))
        assert epochs == [3, 5, 10], (which, epochs)
        for epoch in epochs:
            rho = results[f"{which}_symmetric_0.40_e{epoch}"][0]
            assert -1.0 <= rho <= 1.0, (which, epoch, rho)
    assert "first_trustworthy_rung_symmetric_0.40" in results


@pytest.mark.slow
def test_guideline_stability_quick_prints_spread_and_heldout_error():
    out = _run([sys.executable, "benchmarks/guideline_stability.py", "--quick"], timeout=300)
    results = parse_results(out)
    for tag in ("symmetric0.2", "symmetric0.6", "pairflip0.2", "pairflip0.4"):
        spread, target = results[f"stability_spread_{tag}"]
        assert math.isfinite(spread) and 0.0 <= spread <= 100.0 and target == "1"
        assert 0.0 <= results[f"stability_seed_se_{tag}"][0] < 50.0
    for tag in ("symmetric0.4", "pairflip0.3"):
        error, target = results[f"heldout_error_{tag}"]
        full = results[f"heldout_full_test_{tag}"][0]
        held = results[f"heldout_heldout_test_{tag}"][0]
        assert target == "1"
        # both re-trained recommendations learned (chance is 10 points) and the error is
        # exactly the gap between them
        assert 30.0 < full <= 100.0 and 30.0 < held <= 100.0, (tag, full, held)
        assert error == pytest.approx(abs(full - held), abs=0.011)
    for label in ("seed0", "seed1", "extra_rates"):
        assert results[f"stability_campaign_run_s_{label}"][0] > 0


def test_heldout_reference_is_cross_fitted_and_the_synthetic_campaign_is_the_demos(tmp_path):
    import numpy as np

    from dm_tune.config import load_campaign_config

    bench = _module("guideline_heldout")
    # grid point 0 wins on the first half of the draws, point 1 on the second: each is
    # scored on the half it was not chosen on
    grid = np.array([[90.0, 90.0, 80.0, 80.0], [80.0, 80.0, 95.0, 95.0]])
    assert bench.reference(grid) == pytest.approx(0.5 * (80.0 + 80.0))
    npz = bench.write_synthetic(tmp_path / "s.npz")
    data = np.load(npz)
    assert data["x"].shape == (2000, 32) and sorted(set(data["y"].tolist())) == list(range(10))
    path = tmp_path / "c.toml"
    path.write_text(bench.campaign_text(1, "synthetic", npz, quick=False))
    config = load_campaign_config(path)
    demo = load_campaign_config(ROOT / "studies" / "digits-quick.toml")
    assert (config.data.dataset, config.data.root, config.campaign.seed) == ("npz", str(npz), 1)
    assert config.search == demo.search and config.training == demo.training
    assert config.noise == demo.noise and config.confirm == demo.confirm
    # the symmetric rates searched every 0.1 over the demo's range, pairflip's as the demo's
    rates = {n.kind: [round(r, 6) for r in n.rates] for n in config.noise}
    assert rates == {"symmetric": [0.2, 0.3, 0.4, 0.5, 0.6], "pairflip": [0.2, 0.3, 0.4]}
    # every held-out rate is unsearched and halfway between two neighbouring searched rates
    for kind, rate in bench.HELD_OUT:
        below = max(r for r in rates[kind] if r < rate)
        above = min(r for r in rates[kind] if r > rate)
        assert rate not in rates[kind] and rate == pytest.approx((below + above) / 2)
    # --pruner changes the search's pruner and nothing else
    path.write_text(bench.campaign_text(1, "synthetic", npz, quick=False, pruner="none"))
    unpruned = load_campaign_config(path)
    assert demo.search.pruner == "hyperband" and unpruned.search.pruner == "none"
    assert unpruned.search.model_copy(update={"pruner": "hyperband"}) == demo.search
    assert unpruned.noise == config.noise and unpruned.training == config.training


def test_transfer_campaign_file_searches_its_own_rates_whatever_the_demo_declares():
    from dm_tune.config import parse_campaign_config

    bench = _module("guideline_transfer")
    import tomllib

    config = parse_campaign_config(tomllib.loads(
        bench.campaign_text("t", 'dataset = "digits"', trials=16, epochs=40)))
    # the demo declares symmetric as a range: the file still searches RATES, no more
    assert {n.kind: [round(r, 6) for r in n.rates] for n in config.noise} == bench.RATES


def test_heldout_retrain_trains_only_what_its_cache_lacks(monkeypatch):
    from types import SimpleNamespace

    import numpy as np

    from dm_tune.config import load_campaign_config

    bench = _module("guideline_heldout")
    config = load_campaign_config(ROOT / "studies" / "digits-quick.toml")
    config = config.model_copy(update={"training": config.training.model_copy(
        update={"epochs": 2, "min_epochs": 1})})
    jobs = [("symmetric", 0.3, (0.2, 6.0)), ("symmetric", 0.3, (0.4, 12.0))]
    draws = [bench.FIRST_DRAW_SEED, bench.FIRST_DRAW_SEED + 1]
    trained = []

    def fake_population(members, spec):
        trained.append([dict(m.loss_params) for m in members])
        return [SimpleNamespace(status="complete", test_accuracy_per_epoch=[0.5, 0.25])
                for _ in members]

    monkeypatch.setattr(bench, "train_population", fake_population)
    cache = {bench._job_key(config, "symmetric", 0.3, (0.2, 6.0), d): 0.9 for d in draws}
    test, classes = bench.retrain(config, jobs, draws=2, cache=cache)
    assert classes == 10
    # the cached setting is read back, only the other one trains (once per draw)
    assert trained == [[{"emphasis_mode": 0.4, "emphasis_variance": 12.0}]] * 2
    np.testing.assert_allclose(test, [[0.9, 0.9], [0.25, 0.25]])
    assert len(cache) == 4


@pytest.mark.slow
def test_guideline_heldout_quick_prints_the_four_figures():
    out = _run([sys.executable, "benchmarks/guideline_heldout.py", "--quick", "--seeds", "0",
                "--no-verify"], timeout=400)
    results = parse_results(out)
    for name in ("symmetric0.35", "symmetric0.45", "pairflip0.25", "pairflip0.35"):
        regret, target = results[f"heldout_digits_mean_regret_{name}"]
        assert math.isfinite(regret) and -100 < regret < 100 and target == "0.75"
        assert results[f"heldout_digits_spread_{name}"] == (0.0, "1.5")  # one campaign seed
    worst, target = results["heldout_digits_worst_regret"]
    assert target == "2" and worst >= results["heldout_digits_mean_regret"][0]
    collapsed, target = results["heldout_digits_collapsed_runs"]
    assert target == "0" and collapsed == int(collapsed) >= 0


def test_rate_dimension_shows_the_sampled_rate_leaving_the_upper_range_unsearched():
    out = _run([sys.executable, "benchmarks/rate_dimension.py"], timeout=120)
    results = parse_results(out)
    assert results["rate_dimension_upper_half_share_grid"][0] == pytest.approx(4 / 9, abs=0.01)
    assert results["rate_dimension_upper_half_share_sampled"][0] < 0.25
    assert results["rate_dimension_regret_sampled"][0] > results["rate_dimension_regret_grid"][0]


@pytest.mark.slow
def test_heldout_replicate_trains_each_setting_on_each_kept_campaigns_draw(tmp_path):
    heldout = _module("guideline_heldout")
    for seed in (1, 0):
        (tmp_path / f"campaign-seed{seed}.toml").write_text(
            heldout.campaign_text(seed, "digits", None, quick=True))
    command = [sys.executable, "benchmarks/heldout_replicate.py", str(tmp_path),
               "--rates", "0.4", "--settings", "0.6:12,0.8:20", "--replicates", "2"]
    first = parse_results(_run(command, timeout=300))
    names = {f"replicate_seed{s}_pairflip0.4_{m}_{v}_val_{stat}"
             for s in (0, 1) for m, v in (("0.6", "12"), ("0.8", "20"))
             for stat in ("mean", "std")}
    assert set(first) == names
    assert all(0.0 <= first[n][0] <= 100.0 and first[n][1] == "-" for n in names)
    # each campaign trains on its own draw (split, noise, seeds): the two read differently
    def figures(seed: int) -> list[float]:
        return [first[n][0] for n in sorted(names) if n.startswith(f"replicate_seed{seed}_")]

    assert figures(0) != figures(1)
    # and a rerun reads exactly the same: a diagnostic meant to be re-read
    assert parse_results(_run(command, timeout=300)) == first


def test_heldout_replicate_refuses_bad_input(tmp_path):
    bench = _module("heldout_replicate")
    assert bench.parse_settings("0.565:13.2,0.8:20") == [(0.565, 13.2), (0.8, 20.0)]
    with pytest.raises(ValueError):
        bench.parse_settings("0.565")
    script = [sys.executable, "benchmarks/heldout_replicate.py"]
    empty = subprocess.run([*script, str(tmp_path), "--settings", "0.6:12"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert empty.returncode != 0 and "no campaign-seed<N>.toml" in empty.stderr
    bad = subprocess.run([*script, str(tmp_path), "--settings", "0.6-12"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "MODE:VARIANCE" in bad.stderr
