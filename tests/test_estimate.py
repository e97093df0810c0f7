"""Noise estimation: confident learning on out-of-fold probabilities (numbers checked
against the realised noise), the nearest kind, the estimate file, and the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from campaign_files import write_tiny
from fake_campaign import CAMPAIGN, shared_campaign_url
from fixtures_data import write_npz
from typer.testing import CliRunner

import dm_tune.guidelines as g
from dm_tune.cli import app
from dm_tune.data import DataSpec
from dm_tune.estimate import (
    EstimateError,
    anchor_counts,
    check_fold_labels,
    estimate_from_probabilities,
    kind_fits,
    pairflip_contamination,
    read_estimate,
)
from dm_tune.estimate_run import estimate_noise, fold_indices, fold_of
from dm_tune.noise import corrupt_labels, realised_rate, transition_matrix


def _confident_probs(true: np.ndarray, c: int, top: float = 0.9) -> np.ndarray:
    probs = np.full((len(true), c), (1 - top) / (c - 1))
    probs[np.arange(len(true)), true] = top
    return probs


@pytest.mark.parametrize("kind,rate", [("symmetric", 0.4), ("pairflip", 0.3)])
def test_confident_probabilities_recover_the_realised_noise_exactly(kind, rate):
    c = 5
    true = np.repeat(np.arange(c), 200)
    given = corrupt_labels(true, c, kind, rate, seed=3).labels
    estimate = estimate_from_probabilities(given, _confident_probs(true, c))
    # every example is counted in (given, true): the estimate is the empirical matrix
    counts = np.zeros((c, c))
    np.add.at(counts, (true, given), 1)
    assert np.allclose(estimate.transition, counts / counts.sum(1, keepdims=True))
    assert estimate.estimated_rate == pytest.approx(realised_rate(true, given), abs=1e-12)
    assert estimate.nearest_kind == kind
    assert estimate.nearest_rate == pytest.approx(rate, abs=0.05)


def _imperfect_model(true: np.ndarray, c: int, wrong: float, seed: int) -> np.ndarray:
    """Probabilities of a model that is wrong on a `wrong` fraction of the examples: right
    ones get p(true) = 0.5 + 0.5 u, wrong ones p(a random other class) = 0.3 + 0.5 u
    (u uniform), the rest spread evenly; its confidence says nothing of the given label."""
    rng = np.random.default_rng(seed)
    n = len(true)
    guess = true.copy()
    is_wrong = rng.random(n) < wrong
    guess[is_wrong] = (true[is_wrong] + rng.integers(1, c, is_wrong.sum())) % c
    top = np.where(is_wrong, 0.3 + 0.5 * rng.random(n), 0.5 + 0.5 * rng.random(n))
    probs = np.repeat(((1 - top) / (c - 1))[:, None], c, axis=1)
    probs[np.arange(n), guess] = top
    return probs


def test_the_confident_fifth_ignores_the_models_errors_and_gives_the_rate_back():
    c, n = 5, 60_000
    matrix = np.array([[0.6, 0.3, 0.1, 0.0, 0.0], [0.0, 0.8, 0.2, 0.0, 0.0],
                       [0.0, 0.0, 0.7, 0.3, 0.0], [0.1, 0.0, 0.0, 0.9, 0.0],
                       [0.25, 0.25, 0.0, 0.0, 0.5]])
    true = np.random.default_rng(0).integers(0, c, n)
    rng = np.random.default_rng(1)
    given = (rng.random(n)[:, None] < np.cumsum(matrix, axis=1)[true]).argmax(axis=1)
    probs = _imperfect_model(true, c, wrong=0.15, seed=2)
    estimate = estimate_from_probabilities(given, probs)
    # the counted examples, by hand: predicted as i with p(i) in the top 20 % of those
    # (all of them right: a wrong prediction has p < 0.8, the 80 % quantile is ~0.9)
    predicted, conf = probs.argmax(1), probs.max(1)
    counts = np.zeros((c, c))
    for i in range(c):
        mine = predicted == i
        chosen = mine & (conf >= np.quantile(conf[mine], 0.8) - 1e-6)  # cleanlab's slack
        assert (true[chosen] == i).all()
        np.add.at(counts[i], given[chosen], 1)
    assert np.allclose(estimate.transition, counts / counts.sum(1, keepdims=True))
    assert np.abs(np.array(estimate.transition) - matrix).max() < 0.02
    real = realised_rate(true, given)
    assert abs(estimate.estimated_rate - real) < 0.01
    # this general matrix is nearest pairflip, with mass beyond the diagonal's neighbours:
    # that mass stays noise (dm_tune/estimate.py's notes). The root alone reads ~0.09 low,
    # and the other mass counted from half of the anchors reads the model's errors as
    # noise (+0.02; from the purest fifth -0.002)
    assert estimate.nearest_kind == "pairflip"
    assert estimate.nearest_rate - real == pytest.approx(-0.088, abs=0.005)
    half = estimate_from_probabilities(given, probs, fraction=0.5)
    assert half.estimated_rate - real == pytest.approx(0.020, abs=0.005)
    # cleanlab's default thresholds (each class's mean self-confidence) count the
    # model's 15 % errors among the noise: the old estimate is off by more than 0.03
    from cleanlab.count import estimate_joint
    assert 1 - np.trace(estimate_joint(given, probs)) - real > 0.03


def test_anchor_counts_rank_within_each_group():
    c = 4
    true = np.repeat(np.arange(c), 500)
    given = corrupt_labels(true, c, "symmetric", 0.3, seed=5).labels
    probs = _imperfect_model(true, c, wrong=0.1, seed=6)
    groups = np.arange(len(true)) % 3
    probs[groups == 1] = 0.5 * probs[groups == 1] + 0.5 / c  # a less confident fold
    whole = anchor_counts(given, probs, groups)
    parts = sum(anchor_counts(given[groups == g], probs[groups == g]) for g in range(3))
    assert np.array_equal(whole, parts)
    # one threshold for all would take the anchors of class 0 from groups 0 and 2 only
    pooled = anchor_counts(given, probs)
    assert pooled.sum() == pytest.approx(whole.sum(), abs=c * 3)
    chosen_in_1 = anchor_counts(given[groups == 1], probs[groups == 1]).sum()
    assert chosen_in_1 == pytest.approx(0.2 * (groups == 1).sum(), abs=c * 2)
    with pytest.raises(ValueError, match="one entry per label"):
        anchor_counts(given, probs, groups[:-1])
    # a small class: at least min_count of its examples count (here 30 of 60: half)
    small = np.flatnonzero(true != 3)[:540].tolist() + np.flatnonzero(true == 3)[:60].tolist()
    few = anchor_counts(given[small], probs[small], min_count=30)
    predicted = probs[small].argmax(1)
    assert few.sum(axis=1)[3] == pytest.approx(max(0.2 * np.sum(predicted == 3), 30), abs=1)
    assert few.sum(axis=1)[0] == pytest.approx(0.2 * np.sum(predicted == 0), abs=1)
    assert np.array_equal(fold_of(true, 5, 0)[fold_indices(true, 5, 0)[2]], np.full(400, 2))


def test_kind_fits_are_exact_on_each_kinds_matrix():
    for kind, rate in (("symmetric", 0.3), ("pairflip", 0.2), ("asymmetric", 0.4)):
        best = kind_fits(transition_matrix(kind, 10, rate, dataset="digits"), "digits")[0]
        assert (best.kind, best.rate, best.fit) == (kind, pytest.approx(rate),
                                                   pytest.approx(1.0))
    fits = {f.kind: f for f in kind_fits(transition_matrix("symmetric", 10, 0.3))}
    # pairflip's least-squares rate on a symmetric T: the mass on the (c, c+1) entries
    # against the whole off-diagonal: <T - I, P - I> / ||P - I||^2 = (0.3 + 0.3/9) / 2
    assert fits["pairflip"].rate == pytest.approx((0.3 + 0.3 / 9) / 2)
    assert "asymmetric" not in fits  # no dataset map given


def test_pairflip_rate_is_corrected_for_anchors_of_the_previous_class():
    # C = 5, pairflip rho = 0.4, and 30 of the 100 examples the models are sure belong to
    # class i truly of class i - 1. Labels, by hand: the 70 of class i are i (42) or
    # i + 1 (28); the 30 of class i - 1 are i - 1 (18) or i (12). Row i of T: i - 1 0.18,
    # i 0.54, i + 1 0.28, so f = 0.28 = 0.7 * 0.4, b = 0.18 = 0.3 * 0.6; uncorrected
    # 1 - 0.54 = 0.46, least squares f + b / 2 = 0.37; corrected: 1.1 - sqrt(1.21 - 1.12)
    # = 0.8, / 2 = 0.4; no mass beyond the neighbours, so the estimated rate is 0.4 too.
    # (At C = 4 this matrix is nearer symmetric: fit 0.875 against pairflip's 0.849.)
    c = 5
    anchor, given = [], []
    for i in range(c):
        for label, n in ((i, 42), ((i + 1) % c, 28), ((i - 1) % c, 18), (i, 12)):
            anchor += [i] * n
            given += [label] * n
    estimate = estimate_from_probabilities(np.array(given),
                                           _confident_probs(np.array(anchor), c))
    row = np.array([0.54, 0.28, 0.0, 0.0, 0.18])
    assert np.allclose(estimate.transition, [np.roll(row, i) for i in range(c)])
    assert estimate.nearest_kind == "pairflip"
    assert estimate.estimated_rate == pytest.approx(0.4, abs=1e-12)
    assert estimate.nearest_rate == pytest.approx(0.4, abs=1e-12)
    fixed = estimate.extra["pairflip_correction"]
    assert fixed["contamination"] == pytest.approx(0.3, abs=1e-12)
    assert (fixed["forward"], fixed["backward"]) == (pytest.approx(0.28), pytest.approx(0.18))
    assert fixed["uncorrected_rate"] == pytest.approx(0.46)
    assert fixed["other_rate"] == pytest.approx(0.0, abs=1e-12)
    assert fixed["least_squares_rate"] == pytest.approx(0.37)
    assert pairflip_contamination(estimate.transition) == (pytest.approx(0.4),
                                                           pytest.approx(0.3))
    # no contamination: the forward rate itself; plain pairflip at 0.2 is read exactly
    assert pairflip_contamination(transition_matrix("pairflip", 10, 0.2))[0] == (
        pytest.approx(0.2, abs=1e-12))


def test_symmetric_estimate_is_not_corrected():
    c = 5
    true = np.repeat(np.arange(c), 200)
    given = corrupt_labels(true, c, "symmetric", 0.4, seed=3).labels
    probs = _confident_probs(true, c)
    estimate = estimate_from_probabilities(given, probs)
    assert estimate.nearest_kind == "symmetric" and estimate.extra == {}
    t = np.asarray(estimate.transition)
    assert estimate.estimated_rate == pytest.approx(float(np.mean(1 - np.diag(t))), abs=1e-12)
    assert estimate.fits == kind_fits(t)


def test_fold_labels_refuse_one_class_and_too_few_examples():
    with pytest.raises(EstimateError, match="only one class"):
        check_fold_labels(np.zeros(20, dtype=int), 3, 5)
    with pytest.raises(EstimateError, match="class 2 has 4 example.*5 folds"):
        check_fold_labels(np.array([0] * 10 + [1] * 10 + [2] * 4), 3, 5)
    held = fold_indices(np.repeat(np.arange(3), 10), 5, seed=0)
    assert sorted(np.concatenate(held).tolist()) == list(range(30))


def test_out_of_fold_estimate_on_digits_is_within_the_target():
    estimate = estimate_noise(DataSpec("digits", noise_kind="symmetric", noise_rate=0.4))
    assert abs(estimate.estimated_rate - estimate.realised_rate) < 0.05
    assert estimate.nearest_kind == "symmetric"
    assert np.allclose(np.sum(estimate.transition, axis=1), 1.0)


def _doc(**change) -> dict:
    return {"version": 1, "transition": [[0.8, 0.2], [0.2, 0.8]], "estimated_rate": 0.2,
            "nearest_kind": "symmetric", "nearest_rate": 0.2, **change}


@pytest.mark.parametrize("change,message", [
    ({"transition": [[0.8, 0.3], [0.2, 0.8]]}, "row 0 sums to 1.1"),
    ({"transition": [[0.8, 0.2]]}, "must be square"),
    ({"transition": [[1.2, -0.2], [0.2, 0.8]]}, "probabilities in"),
    ({"version": 7}, "not a dm-tune estimate file"),
    ({"nearest_kind": "human"}, "nearest_kind must be"),
    ({"nearest_rate": 0.6, "nearest_kind": "pairflip"}, "nearest_rate must be"),
])
def test_read_estimate_refuses_a_bad_file_in_one_line(tmp_path, change, message):
    path = tmp_path / "e.json"
    path.write_text(json.dumps(_doc(**change)))
    with pytest.raises(EstimateError, match=message) as error:
        read_estimate(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


@pytest.fixture(scope="module")
def noisy_npz(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("est")
    arrays = write_npz(folder / "base.npz", n=400, num_classes=4)
    noisy = corrupt_labels(arrays["y"], 4, "symmetric", 0.3, seed=1).labels
    np.savez(folder / "noisy.npz", x=arrays["x"], y=arrays["y"], noisy_y=noisy)
    return folder / "noisy.npz"


def test_cli_on_an_npz_with_noisy_y_then_recommend_from_the_estimate(
        noisy_npz, tmp_path, tmp_path_factory):
    out = tmp_path / "estimate.json"
    res = CliRunner().invoke(app, ["estimate-noise", str(noisy_npz), "-o", str(out)])
    assert res.exit_code == 0, res.output
    doc = read_estimate(out)
    assert f"estimated noise rate {doc['estimated_rate']:.3f}" in res.stdout
    assert f"realised {doc['realised_rate']:.3f}" in res.stdout
    assert abs(doc["estimated_rate"] - doc["realised_rate"]) < 0.06
    assert doc["nearest_kind"] == "symmetric" and len(doc["transition"]) == 4
    url = shared_campaign_url(tmp_path_factory)
    results = g.load_campaign(optuna.storages.RDBStorage(url), CAMPAIGN, method="top-k")
    export = g.write_json(results, tmp_path / "export.json")
    res = CliRunner().invoke(app, ["recommend", "--from", str(export), "--from-estimate",
                                   str(out)])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"symmetric {doc['nearest_rate']:g}:")
    res = CliRunner().invoke(app, ["recommend", "--from", str(export), "--from-estimate",
                                   str(out), "--noise", "symmetric"])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1


def test_cli_on_a_campaign_setting(tmp_path):
    path = write_tiny(tmp_path)
    out = tmp_path / "e.json"
    res = CliRunner().invoke(app, ["estimate-noise", str(path), "--setting",
                                   "symmetric-0.40", "-o", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert (doc["true_kind"], doc["true_rate"]) == ("symmetric", 0.4)
    assert abs(doc["estimated_rate"] - doc["realised_rate"]) < 0.05


def _refused(args: list[str], out: Path, message: str) -> None:
    res = CliRunner().invoke(app, ["estimate-noise", *args, "-o", str(out)])
    assert res.exit_code == 2, res.output
    assert message in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not out.exists()


def test_cli_refuses_bad_inputs_in_one_line_writing_nothing(tmp_path, noisy_npz):
    out = tmp_path / "never.json"
    arrays = write_npz(tmp_path / "x.npz", n=200, num_classes=4)
    one = tmp_path / "one.npz"
    np.savez(one, x=arrays["x"], y=np.zeros(200, dtype=np.int64),
             noisy_y=np.zeros(200, dtype=np.int64))
    _refused([str(one)], out, "at least 2 classes")
    few = tmp_path / "few.npz"
    y = arrays["y"].copy()
    y[y == 3] = 0
    y[:12] = 3  # class 3: 12 examples, 9 in the train split
    np.savez(few, x=arrays["x"], y=y, noisy_y=y)
    _refused([str(few), "--folds", "10"], out, "fewer than the 10 folds")
    _refused([str(tmp_path / "x.npz")], out, "has no noisy_y")
    _refused(["digits"], out, "needs --noise and --rate")
    _refused([str(write_tiny(tmp_path)), "--setting", "pairflip-0.10"], out,
             "has no setting 'pairflip-0.10'")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_doc(transition=[[0.5, 0.2], [0.2, 0.8]])))
    res = CliRunner().invoke(app, ["recommend", "--from", str(bad), "--from-estimate", str(bad)])
    assert res.exit_code == 2 and "row 0 sums to 0.7" in res.stderr
    assert res.stderr.count("\n") == 1
