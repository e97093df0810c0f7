"""Which validation design makes a noise-aware objective? Seed noise and top-10 agreement.

On the demo's data and training (digits, MLP, ``studies/digits-quick.toml``: 40 epochs,
lr 0.1, batch 64, cosine), a fixed scan of DM settings (6 modes x 4 variances spanning the
demo's search ranges) is trained as populations (``dm_tune.population``), at symmetric
0.4 and 0.6, and each validation design's objective is compared with the *truth*: the
mean final test accuracy of 5 fresh seeds (seeds the objectives never use) of the
setting trained as the product trains it (the 0.125 split's 1,257 noisy examples).

Designs (the objective of one search trial):

* ``split180_s1``: today's clean validation split (val_fraction 0.125, 180 examples), one
  seed; figures averaged over 3 seeds taken in turn as "the" seed.
* ``split180_s3``: the same split, mean of S = 3 replicate seeds (``[search] seeds``).
* ``split360_s1``: a larger split (val_fraction 0.25, 360 examples: the 180 extra come
  out of the noisy training set; the test split is the same), one seed (2 in turn).
* ``cv2_s1``: 2-fold cross-validation of the clean 180: fold k trains on the 1,257 noisy
  examples plus the other fold's 90 clean ones (true labels) and validates on its own 90;
  objective = mean of the two folds (every clean example validates once), one seed per
  fold (2 trainings per trial). ``DataSpec`` cannot express this (its one seed draws the
  test split, the val split and the noise together, and validation examples never enter
  training), so the folds' ``TrialData`` are built here from ``prepare_data``'s tensors.

Figures, per design and noise setting::

    RESULT validation_<design>_<kind><rate>_seed_std <median over settings> target -
    RESULT validation_<design>_<kind><rate>_top10_spearman <rho> target -
    RESULT validation_<design>_<kind><rate>_regret <points> target -

``seed_std``: standard deviation of the objective across replicate seeds (S = 3: the one-
seed std / sqrt(3), seeds being independent). ``top10_spearman``: Spearman of the
objective with the truth over the 10 settings best by the truth. ``regret``: truth of the
best setting minus truth of the objective's argmax, in accuracy points. The run ends with
one ``VERDICT`` line.

    python benchmarks/validation_design.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.model_selection import StratifiedKFold

from dm_tune.campaign.settings import Setting, data_spec, train_spec
from dm_tune.config import load_campaign_config
from dm_tune.data import TrialData, prepare_data
from dm_tune.population import Member, train_population

ROOT = Path(__file__).resolve().parent.parent
MODES = (0.0, 0.16, 0.32, 0.48, 0.64, 0.8)
VARIANCES = (0.5, 4.0, 12.0, 20.0)
RATES = (("symmetric", 0.4), ("symmetric", 0.6))
TOP = 10
CHUNK = 96  # members per population (cache-friendly on one thread)
COST = {"split180_s1": 1, "split180_s3": 3, "split360_s1": 1, "cv2_s1": 2}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cv_folds(data: TrialData, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """Per fold: (x_train, extra true labels, x_val, y_val) for a 2-fold CV of the clean
    validation split; the fold's other half joins training with its true labels."""
    y = data.y_val.numpy()
    folds = StratifiedKFold(2, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    out = []
    for extra, held in folds:
        extra_t, held_t = torch.from_numpy(extra), torch.from_numpy(held)
        out.append((torch.cat([data.x_train, data.x_val[extra_t]]), data.y_val[extra_t],
                    data.x_val[held_t].clone(), data.y_val[held_t].clone()))
    return out


def fold_data(data: TrialData, fold: tuple[torch.Tensor, ...]) -> TrialData:
    """`data` (one noise setting) with the fold's clean examples added to training."""
    x_train, extra_y, x_val, y_val = fold
    return replace(data, x_train=x_train, y_train=torch.cat([data.y_train, extra_y]),
                   y_train_true=torch.cat([data.y_train_true, extra_y]), x_val=x_val,
                   y_val=y_val, input_shape=tuple(x_train.shape[1:]))


def train(datas: dict, settings: list, seeds: list[int], spec, label: str) -> tuple:
    """Final (val, test) accuracies, arrays (rate, setting, seed), of one population."""
    members = [Member(datas[r], "dm", {"emphasis_mode": m, "emphasis_variance": v}, s)
               for r in range(len(datas)) for (m, v) in settings for s in seeds]
    start = time.perf_counter()
    log(f"{label}: {len(members)} members x {spec.epochs} epochs ...")
    results = []  # in chunks: one population of 384 ran at half the per-member speed of 96
    for first in range(0, len(members), CHUNK):
        results += train_population(members[first : first + CHUNK], spec)
    log(f"{label}: done in {time.perf_counter() - start:.0f} s")
    shape = (len(datas), len(settings), len(seeds))
    val, test = np.full(shape, np.nan), np.full(shape, np.nan)
    for index, result in enumerate(results):
        r, rest = divmod(index, len(settings) * len(seeds))
        k, s = divmod(rest, len(seeds))
        if result.status == "complete" and result.test_accuracy_per_epoch:
            val[r, k, s] = result.val_accuracy_per_epoch[-1]
            test[r, k, s] = result.test_accuracy_per_epoch[-1]
    return val, test


def rho(objective: np.ndarray, truth: np.ndarray, top: np.ndarray) -> float:
    """Spearman over the `top` settings; 0 when the objective ties them all (no ranking)."""
    a, b = objective[top], truth[top]
    if np.ptp(a) == 0 or not np.all(np.isfinite(a)):
        return 0.0
    return float(spearmanr(a, b).statistic)


def figures(runs: list[np.ndarray], std: float, truth: np.ndarray, top: np.ndarray) -> dict:
    """seed_std, top-10 Spearman and regret (points) of a design, averaged over its runs."""
    best = np.nanmax(truth)
    return {
        "seed_std": std,
        "top10_spearman": float(np.mean([rho(o, truth, top) for o in runs])),
        "all_spearman": float(np.mean([rho(o, truth, np.arange(len(truth))) for o in runs])),
        "regret": float(np.mean([100 * (best - truth[np.nanargmax(o)]) for o in runs])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="12 settings, 8 epochs, symmetric 0.4, fewer seeds (smoke test)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    config = load_campaign_config(ROOT / "studies" / "digits-quick.toml")
    spec = train_spec(config, "cpu", 0)
    if args.quick:
        modes, variances, rates = (0.0, 0.3, 0.5, 0.8), (1.0, 8.0, 20.0), RATES[:1]
        obj, n_truth, n_other = 3, 2, 2
        spec = replace(spec, epochs=8)
    else:
        modes, variances, rates, obj, n_truth, n_other = MODES, VARIANCES, RATES, 3, 5, 2
    settings = list(itertools.product(modes, variances))
    top_n = min(TOP, len(settings))
    specs = [data_spec(config, Setting(kind, rate)) for kind, rate in rates]
    d125 = [prepare_data(s) for s in specs]
    d250 = [prepare_data(replace(s, val_fraction=0.25)) for s in specs]
    log(f"split 0.125: train {len(d125[0].y_train)} / val {len(d125[0].y_val)}; split 0.25: "
        f"train {len(d250[0].y_train)} / val {len(d250[0].y_val)}; test {len(d125[0].y_test)}")
    # objective seeds 0..obj-1, truth seeds after them (never an objective's)
    v125, t125 = train(dict(enumerate(d125)), settings, list(range(obj + n_truth)), spec,
                       "split 0.125")
    v250, t250 = train(dict(enumerate(d250)), settings, list(range(n_other)), spec,
                       "split 0.25")
    cv_val = []
    for f, fold in enumerate(cv_folds(d125[0])):
        datas = {r: fold_data(d, fold) for r, d in enumerate(d125)}
        cv_val.append(train(datas, settings, list(range(n_other)), spec, f"cv fold {f}")[0])
    cv = np.mean(cv_val, axis=0)  # (rate, setting, seed): the mean over the two folds

    scores: dict[str, list[float]] = {name: [] for name in COST}
    regrets: dict[str, list[float]] = {name: [] for name in COST}
    for r, (kind, rate) in enumerate(rates):
        truth = np.nanmean(t125[r, :, obj:], axis=1)
        top = np.argsort(-truth, kind="stable")[:top_n]
        one_std = float(np.nanmedian(np.nanstd(v125[r], axis=1, ddof=1)))
        designs = {
            "split180_s1": figures([v125[r, :, s] for s in range(obj)], one_std, truth, top),
            "split180_s3": figures([np.nanmean(v125[r, :, :3], axis=1)], one_std / np.sqrt(3),
                                   truth, top),
            "split360_s1": figures([v250[r, :, s] for s in range(n_other)],
                                   float(np.nanmedian(np.nanstd(v250[r], axis=1, ddof=1))),
                                   truth, top),
            "cv2_s1": figures([cv[r, :, s] for s in range(n_other)],
                              float(np.nanmedian(np.nanstd(cv[r], axis=1, ddof=1))), truth, top),
        }
        tag = f"{kind}{rate:g}"
        for name, values in designs.items():
            scores[name].append(values["top10_spearman"])
            regrets[name].append(values["regret"])
            for figure in ("seed_std", "top10_spearman", "all_spearman", "regret"):
                print(f"RESULT validation_{name}_{tag}_{figure} {values[figure]:.4f} target -")
        truth_std = float(np.nanmedian(np.nanstd(t125[r, :, obj:], axis=1, ddof=1)))
        spread = 100 * float(truth[top[0]] - truth[top[-1]])
        cost = 100 * float(np.nanmean(t125[r, :, :n_other] - t250[r]))
        print(f"RESULT validation_truth_{tag}_top10_range_points {spread:.2f} target -")
        print(f"RESULT validation_truth_{tag}_seed_std {truth_std:.4f} target -")
        print(f"RESULT validation_split360_{tag}_test_cost_points {cost:.2f} target -",
              flush=True)
    summary = ", ".join(f"{name} rho {np.mean(scores[name]):.2f} regret "
                        f"{np.mean(regrets[name]):.2f} pts (x{COST[name]} training)"
                        for name in COST)
    best = max(COST, key=lambda name: (np.mean(scores[name]), -COST[name]))
    cheap = max((n for n in COST if COST[n] == 1), key=lambda n: np.mean(scores[n]))
    print(f"VERDICT top-10 agreement favours {best} (mean over rates; best at one training per "
          f"trial: {cheap}); {summary}")
    log(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
