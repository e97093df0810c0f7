"""Does the first pruning rung rank settings as training ends? Spearman, rung vs final.

A scan of DM settings (emphasis mode x variance) on the demo's data and training
(digits, MLP, 40 epochs, ``studies/digits-quick.toml``), each trained with S seeds as one
population (no pruning), at each noise setting asked. For every candidate rung epoch
(5, 10, 20, 30 and the demo's Hyperband rung, ``min_epochs`` = 25) it prints the Spearman
correlation between the seed-mean validation accuracy at that epoch and the seed-mean
*final test* accuracy: a rung may prune only where it ranks settings as they finish.
A pruner sees one run, not a seed mean, so ``rung_spearman_single`` correlates each
single run's validation accuracy at the epoch with its setting's seed-mean final test
accuracy (over settings x seeds). Prints::

    RESULT rung_spearman_<kind>_<rate>_e<epoch> <rho> target 0.7
    RESULT rung_spearman_single_<kind>_<rate>_e<epoch> <rho> target -
    RESULT first_trustworthy_rung_<kind>_<rate> <epoch or inf> target -

    python benchmarks/rung_agreement.py [--seeds 3] [--settings KIND:RATE,...] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from dm_tune.campaign.settings import Setting, data_spec, train_spec
from dm_tune.config import CampaignConfig, load_campaign_config
from dm_tune.data import prepare_data
from dm_tune.population import Member, train_population

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "studies" / "digits-quick.toml"
MODES = (0.0, 0.15, 0.3, 0.45, 0.6, 0.75)
VARIANCES = (0.5, 4.0, 12.0, 20.0)
THRESHOLD = 0.7


def scan(config: CampaignConfig, kind: str, rate: float, seeds: int,
         epochs: int) -> tuple[dict[int, float], dict[int, float]]:
    """Per epoch e: Spearman(val at e, final test) of seed means, and of single runs
    against their setting's seed-mean final test."""
    data = prepare_data(data_spec(config, Setting(kind, rate)))
    spec = train_spec(config, "cpu", 0)
    spec = replace(spec, epochs=epochs)
    settings = list(itertools.product(MODES, VARIANCES))
    members = [Member(data, "dm", {"emphasis_mode": m, "emphasis_variance": v}, seed)
               for (m, v) in settings for seed in range(seeds)]
    results = train_population(members, spec)
    val = np.full((len(settings), seeds, epochs), np.nan)
    test = np.full((len(settings), seeds), np.nan)
    for index, result in enumerate(results):
        s, r = divmod(index, seeds)
        curve = result.val_accuracy_per_epoch
        val[s, r, : len(curve)] = curve
        if result.test_accuracy_per_epoch and len(curve) == epochs:
            test[s, r] = result.test_accuracy_per_epoch[-1]
    final = np.nanmean(test, axis=1)
    means = {e: float(spearmanr(np.nanmean(val[:, :, e - 1], axis=1), final).statistic)
             for e in range(1, epochs + 1)}
    truth = np.repeat(final, seeds)
    single = {e: float(spearmanr(val[:, :, e - 1].ravel(), truth, nan_policy="omit").statistic)
              for e in range(1, epochs + 1)}
    return means, single


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--settings", default="symmetric:0.4,symmetric:0.6,pairflip:0.3")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 12 epochs, one setting")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds, epochs = (2, 12) if args.quick else (args.seeds, 40)
    wanted = ["symmetric:0.4"] if args.quick else args.settings.split(",")
    config = load_campaign_config(DEMO)
    demo_rung = config.search.min_epochs
    rungs = sorted({e for e in (5, 10, 20, 30, demo_rung) if e < epochs} | {max(1, epochs // 4)})
    for item in wanted:
        kind, rate = item.split(":")
        rho, single = scan(config, kind, float(rate), seeds, epochs)
        tag = f"{kind}_{float(rate):.2f}"
        for epoch in rungs:
            print(f"RESULT rung_spearman_{tag}_e{epoch} {rho[epoch]:.3f} target {THRESHOLD}")
            print(f"RESULT rung_spearman_single_{tag}_e{epoch} {single[epoch]:.3f} target -")
        trusted = next((e for e in range(1, epochs) if all(rho[k] >= THRESHOLD
                                                            for k in range(e, epochs))), None)
        print(f"RESULT first_trustworthy_rung_{tag} {trusted if trusted else 'inf'} target -",
              flush=True)


if __name__ == "__main__":
    main()
