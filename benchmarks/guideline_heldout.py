"""Is dm-tune's advice right at rates no campaign searched, on draws no campaign saw?

Design (the advice issue's "done when"):

- **Campaigns under test.** The demo campaign (``studies/digits-quick.toml``: symmetric
  every 0.1 from 0.2 to 0.6 (``rate_range``), pairflip 0.2/0.3/0.4, 30 trials each,
  confirmation and baselines as in the demo) run with campaign seeds 0, 1, 2 (the seed
  draws the split, the noise and the search). ``--dataset synthetic`` runs the same
  campaign on a second dataset through the npz path (below).
- **Held-out rates.** symmetric 0.35 and 0.45, pairflip 0.25 and 0.35: no campaign
  searched them; each lies halfway between two searched rates of its kind, as far from
  the evidence as a user's rate can be under this campaign. Each campaign's
  recommendation there (``recommend``, the default surface method with the risk model)
  is what is tested; the pre-risk-model advice (the surface's optima blended linearly
  between the neighbouring searched rates,
  ``Surface.optimum``) is re-trained beside it for comparison (``interp`` lines).
- **Fresh draws.** ``--draws`` (default 10) draws, each a split + noise seed
  (:data:`FIRST_DRAW_SEED` on, which no campaign uses: campaign seeds (``--seeds``,
  default 0-2) stay below it, confirmations train with seeds from 1000) and a training
  seed. Every recommendation and every point of a 20-point (mode, variance) grid
  (:data:`GRID_MODES` x :data:`GRID_VARIANCES`) is trained on every draw; one draw's
  jobs train as one population (they share the draw's inputs).
- **Reference.** At each held-out rate the grid point with the best mean test accuracy
  on half the draws, scored on the other half, and the same with the halves swapped
  (the two scores averaged): the best fixed setting one could have picked without
  peeking at the draws it is scored on.
- **Figures**, in points of test accuracy (final epoch), per rate and overall::

    RESULT heldout_<data>_mean_regret_<setting> <points> target 0.75
    RESULT heldout_<data>_worst_regret <points> target 2
    RESULT heldout_<data>_spread_<setting> <points> target 1.5
    RESULT heldout_<data>_collapsed_runs <count> target 0

  regret = reference - the recommendation's mean over the draws; spread = max - min over
  the campaign seeds of a rate's means over the draws; a collapsed run scores below chance + 10
  points. Informative lines (target -) give the same for the interpolated advice.
- **A check at the rate.** Each campaign's ``dm-tune recommend --verify`` at each held-out
  rate (3 candidates x 3 new seeds, on a copy of its database), timed; its verified pick is
  re-trained on the same draws::

    RESULT heldout_<data>_verify_seconds_max <s> target 60
    RESULT heldout_<data>_verified_gain_worst <points> target 0

  gain = the advice's regret - the verified pick's regret, per rate (mean over seeds).

The second dataset (``--dataset synthetic``, ``benchmarks/synthetic_data.py``) is
scikit-learn's ``make_classification`` (the generator behind NIPS 2003's Madelon): 2,000
examples, 10 classes, 32 features of which 12 informative, fixed seed, written to an npz
and loaded through ``dataset = "npz"``. It ships offline with scikit-learn; it is
generated data, not a recorded one.

    python benchmarks/guideline_heldout.py [--dataset digits|synthetic] [--keep DIR]
    python benchmarks/guideline_heldout.py --reuse DIR   # campaigns of an earlier --keep
    python benchmarks/guideline_heldout.py --pruner none ...  # the search unpruned (DESIGN 7)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from dm_tune.campaign.settings import Setting, data_spec, train_spec
from dm_tune.config import CampaignConfig, load_campaign_config
from dm_tune.data import clear_data_cache, prepare_data
from dm_tune.guidelines.loading import load_campaign
from dm_tune.guidelines.recommend import recommend
from dm_tune.population import Member, train_population

sys.path.insert(0, str(Path(__file__).resolve().parent))
from guideline_stability import log, run_campaign  # noqa: E402
from synthetic_data import write_synthetic  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "studies" / "digits-quick.toml"
HELD_OUT = (("symmetric", 0.35), ("symmetric", 0.45), ("pairflip", 0.25), ("pairflip", 0.35))
FIRST_DRAW_SEED = 50  # split + noise of fresh draw d: FIRST_DRAW_SEED + d
#: the issue asks for at least 6; with 6, pairflip 0.35's spread read 1.48 on campaigns
#: whose 10-draw spread is 3.78 (two more draws moved one pick's mean by 2 points)
DRAWS = 10
TRAIN_SEED_OFFSET = 500  # a draw's training seed: its draw seed + this
GRID_MODES = (0.0, 0.2, 0.4, 0.6, 0.8)
GRID_VARIANCES = (2.0, 6.0, 12.0, 20.0)
TARGETS = {"mean_regret": 0.75, "worst_regret": 2.0, "spread": 1.5, "collapsed_runs": 0}


def campaign_text(seed: int, dataset: str, npz: Path | None, quick: bool,
                  pruner: str | None = None) -> str:
    """The demo's campaign file with another seed (and dataset); ``quick``: tiny search;
    ``pruner``: another search pruner than the demo's (an experiment, ``--pruner``)."""
    text = DEMO.read_text()
    text, n = re.subn(r"(?m)^seed = \d+", f"seed = {seed}", text, count=1)
    assert n == 1, "studies/digits-quick.toml: no `seed = N` line"
    if pruner is not None:
        text, n = re.subn(r'(?m)^pruner = "\w+"', f'pruner = "{pruner}"', text, count=1)
        assert n == 1, "studies/digits-quick.toml: no `pruner = \"...\"` line"
    if dataset != "digits":
        text, n = re.subn(r'(?m)^dataset = "digits"', f'dataset = "npz"\nroot = "{npz}"', text)
        assert n == 1, "studies/digits-quick.toml: no `dataset = \"digits\"` line"
        text = text.replace('name = "digits-quick"', f'name = "{dataset}-quick"')
    if quick:
        for key, value in (("trials", 8), ("epochs", 10), ("min_epochs", 4)):
            text, n = re.subn(rf"(?m)^{key} = \d+", f"{key} = {value}", text, count=1)
            assert n == 1, f"studies/digits-quick.toml: no `{key} = N` line"
        text = re.sub(r'(?m)^losses = \[[^\]]*\]', "losses = []", text, count=1)
        text += "\n[confirm]\nseeds = 1\ncandidates = 1\ngce_q_trials = 0\n"
    return text


def advice(db: Path, campaign: str) -> dict[tuple[str, float], dict[str, tuple]]:
    """(kind, rate) -> {"advice": (mode, variance), "interp": (mode, variance)}."""
    results = load_campaign(f"sqlite:///{db}", campaign)
    out = {}
    for kind, rate in HELD_OUT:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rec = recommend(results, kind, rate)
        old = results.surfaces[kind].optimum(rate)
        out[(kind, rate)] = {
            "advice": (float(rec.emphasis_mode), float(rec.emphasis_variance)),
            "interp": (float(old.emphasis_mode), float(old.emphasis_variance)),
            "predicted": (rec.expected_accuracy, rec.low_accuracy, rec.collapse_probability,
                          rec.origin),
        }
    return out


def verify(path: Path, db: Path, label: str) -> dict[tuple[str, float], tuple]:
    """`dm-tune recommend --verify` at each held-out rate on a copy of ``db``: (kind, rate)
    -> ((mode, variance) of the verified pick, wall seconds of the command)."""
    copy = db.with_name(f"{db.stem}-verify.db")
    shutil.copy(db, copy)
    exe = Path(sys.executable).with_name("dm-tune")
    out = {}
    for kind, rate in HELD_OUT:
        command = [str(exe) if exe.exists() else "dm-tune", "recommend", str(path),
                   "--storage", f"sqlite:///{copy}", "--noise", kind, "--rate", f"{rate:g}",
                   "--verify", "--json"]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "200"})
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"{label}: verify failed ({done.returncode}):\n{done.stderr[-3000:]}")
        json_start = done.stdout.index("{")
        rec = json.loads(done.stdout[json_start:])
        out[(kind, rate)] = ((rec["emphasis_mode"], rec["emphasis_variance"]), wall)
        log(f"  {label} verify {kind} {rate:g}: {rec['emphasis_mode']:.3f}, "
            f"{rec['emphasis_variance']:.2f} ({rec['origin']}) in {wall:.0f} s")
    copy.unlink()
    return out


def _job_key(config: CampaignConfig, kind: str, rate: float, params: tuple, draw: int) -> str:
    """A re-trained run's identity: the dataset, epochs, setting, parameters and draw."""
    return (f"{config.data.dataset}|{config.training.epochs}|{kind}|{rate:g}|"
            f"{params[0]:.6f}|{params[1]:.6f}|{draw}")


def retrain(config: CampaignConfig, jobs: list[tuple[str, float, tuple]], draws: int,
            cache: dict[str, float] | None = None) -> tuple[np.ndarray, int]:
    """Final test accuracy [job, draw] of each (kind, rate, (mode, variance)); classes.

    ``cache`` (a ``--keep`` folder's, filled as runs finish) holds runs already trained:
    one draw's run of a setting trains alone in its population member, so a later
    ``--reuse`` re-trains only settings it has not seen (the grid is 80 of ~116 jobs).
    """
    draws = [FIRST_DRAW_SEED + d for d in range(draws)]
    test = np.full((len(jobs), len(draws)), np.nan)
    cache = {} if cache is None else cache
    classes = 0
    for d, draw in enumerate(draws):
        drawn = config.model_copy(
            update={"campaign": config.campaign.model_copy(update={"seed": draw})})
        keys = [_job_key(config, kind, rate, p, draw) for kind, rate, p in jobs]
        todo = sorted({k: j for j, k in enumerate(keys) if k not in cache}.values())
        datas = {}
        for kind, rate, _ in jobs:
            if (kind, rate) not in datas:
                datas[(kind, rate)] = prepare_data(data_spec(drawn, Setting(kind, rate)))
        classes = next(iter(datas.values())).num_classes
        if todo:
            members = [Member(datas[(jobs[j][0], jobs[j][1])], "dm",
                              {"emphasis_mode": jobs[j][2][0],
                               "emphasis_variance": jobs[j][2][1]},
                              draw + TRAIN_SEED_OFFSET)
                       for j in todo]
            spec = train_spec(drawn, "cpu", draw + TRAIN_SEED_OFFSET)
            start = time.perf_counter()
            results = train_population(members, spec)
            log(f"draw {draw}: {len(members)} members x {spec.epochs} epochs in "
                f"{time.perf_counter() - start:.0f} s ({len(jobs) - len(todo)} cached)")
            for j, result in zip(todo, results, strict=True):
                done = result.status == "complete" and result.test_accuracy_per_epoch
                cache[keys[j]] = result.test_accuracy_per_epoch[-1] if done else float("nan")
        for j, key in enumerate(keys):
            test[j, d] = cache[key]
        clear_data_cache()
    return test, classes


def reference(grid: np.ndarray) -> float:
    """Cross-fitted best grid point: chosen on one half of the draws, scored on the other."""
    half = grid.shape[1] // 2
    a, b = grid[:, :half], grid[:, half:]
    return 0.5 * (b[np.argmax(a.mean(1))].mean() + a[np.argmax(b.mean(1))].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("digits", "synthetic"), default="digits")
    parser.add_argument("--seeds", default="0,1,2", help="campaign seeds")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--reuse", type=Path,
                        help="a --keep folder: reuse its campaigns (verify copies the databases)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip `recommend --verify` at the held-out rates")
    parser.add_argument("--draws", type=int, default=DRAWS,
                        help=f"fresh draws each recommendation is re-trained on (default {DRAWS})")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 8 trials of 10 epochs, 2 draws (figures meaningless)")
    parser.add_argument("--pruner", choices=("hyperband", "median", "none"),
                        help="the campaigns' search pruner instead of the demo's (an experiment;"
                             " give it again with --reuse)")
    args = parser.parse_args()
    if args.draws < 2:
        parser.error("--draws must be at least 2 (the reference is cross-fitted on halves)")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    # --keep / --reuse work in that folder itself: the campaign files name the synthetic npz
    # by its path, which is part of the campaign's identity (verify checks it)
    folder = args.reuse or args.keep
    work = folder if folder else Path(tempfile.mkdtemp(prefix="dm-tune-heldout-"))
    work.mkdir(parents=True, exist_ok=True)
    tag = args.dataset
    try:
        npz = None
        if tag == "synthetic":
            npz = work / "synthetic.npz"
            if not npz.exists():
                write_synthetic(npz)
        recs, walls = {}, []
        for seed in seeds:
            path = work / f"campaign-seed{seed}.toml"
            path.write_text(campaign_text(seed, tag, npz, args.quick, args.pruner))
            db = work / f"seed{seed}.db"
            if not db.exists():
                wall = run_campaign(path, db, f"{tag} campaign seed {seed}")
                print(f"RESULT heldout_{tag}_campaign_run_s_seed{seed} {wall:.0f} target -")
            config = load_campaign_config(path)
            recs[seed] = advice(db, config.name)
            if not args.no_verify:
                for key, (pick, wall) in verify(path, db, f"seed {seed}").items():
                    recs[seed][key]["verified"] = pick
                    walls.append(wall)
            for (kind, rate), r in recs[seed].items():
                expected, low, collapse, origin = r["predicted"]
                log(f"  seed {seed} {kind} {rate:g}: advice {r['advice'][0]:.3f}, "
                    f"{r['advice'][1]:.2f} ({origin}; expected {expected:.3f}, low {low:.3f}, "
                    f"P(collapse) {collapse:.3f}); interp {r['interp'][0]:.3f}, "
                    f"{r['interp'][1]:.2f}")
        grid = [(m, v) for m in GRID_MODES for v in GRID_VARIANCES]
        jobs = [(k, r, p) for k, r in HELD_OUT for p in grid]
        kinds = ("advice", "interp") + (() if args.no_verify else ("verified",))
        jobs += [(k, r, recs[s][(k, r)][which]) for which in kinds
                 for s in seeds for k, r in HELD_OUT]
        cache_file = work / "retrain-cache.json"
        cache = json.loads(cache_file.read_text()) if folder and cache_file.exists() else {}
        test, classes = retrain(config, jobs, 2 if args.quick else args.draws, cache)
        if folder:
            cache_file.write_text(json.dumps(cache, indent=0, sort_keys=True))
        test *= 100
        chance = 100.0 / classes + 10.0
        n_grid = len(grid)
        base = len(HELD_OUT) * n_grid
        figures = {}
        for which_i, which in enumerate(kinds):
            regrets, collapsed, spreads = [], 0, {}
            for h, (kind, rate) in enumerate(HELD_OUT):
                name = f"{kind}{rate:g}"
                ref = reference(test[h * n_grid:(h + 1) * n_grid])
                rows = [base + (which_i * len(seeds) + s) * len(HELD_OUT) + h
                        for s in range(len(seeds))]
                means = test[rows].mean(1)
                regret = ref - means
                regrets.extend(regret)
                collapsed += int((test[rows] < chance).sum())
                spreads[name] = float(np.ptp(means))
                figures[(which, name)] = (float(regret.mean()), spreads[name])
                log(f"  {which} {name}: reference {ref:.2f}; per campaign seed "
                    + ", ".join(f"{m:.2f}" for m in means)
                    + f"; grid best-worst {test[h * n_grid:(h + 1) * n_grid].mean(1).max():.2f}"
                    f" / {test[h * n_grid:(h + 1) * n_grid].mean(1).min():.2f}")
            suffix = "" if which == "advice" else f"_{which}"
            target = (lambda key: f"{TARGETS[key]:g}") if which == "advice" else (lambda _: "-")
            for kind, rate in HELD_OUT:
                name = f"{kind}{rate:g}"
                mean_regret, spread = figures[(which, name)]
                print(f"RESULT heldout_{tag}{suffix}_mean_regret_{name} {mean_regret:.2f} "
                      f"target {target('mean_regret')}")
                print(f"RESULT heldout_{tag}{suffix}_spread_{name} {spread:.2f} "
                      f"target {target('spread')}")
            print(f"RESULT heldout_{tag}{suffix}_mean_regret {np.mean(regrets):.2f} "
                  f"target {target('mean_regret')}")
            print(f"RESULT heldout_{tag}{suffix}_worst_regret {np.max(regrets):.2f} "
                  f"target {target('worst_regret')}")
            print(f"RESULT heldout_{tag}{suffix}_max_spread {max(spreads.values()):.2f} "
                  f"target {target('spread')}")
            print(f"RESULT heldout_{tag}{suffix}_collapsed_runs {collapsed} "
                  f"target {target('collapsed_runs')}")
        if walls:
            print(f"RESULT heldout_{tag}_verify_seconds_max {max(walls):.0f} target 60")
            gains = [figures[("advice", n)][0] - figures[("verified", n)][0]
                     for n in (f"{k}{r:g}" for k, r in HELD_OUT)]
            # regret(advice) - regret(verified): >= 0 when verifying did not lose accuracy
            print(f"RESULT heldout_{tag}_verified_gain_worst {min(gains):.2f} target 0")
            print(f"RESULT heldout_{tag}_verified_gain_mean {np.mean(gains):.2f} target 0")
        sys.stdout.flush()
        if folder:
            np.save(work / "test.npy", test)
    finally:
        if not folder:
            shutil.rmtree(work, ignore_errors=True)
    log(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
