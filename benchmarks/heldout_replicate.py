"""Would more seeds on a campaign's own data have told two settings apart?

A diagnostic for ``guideline_heldout.py``'s kept campaigns (``--keep DIR``), run by hand,
not part of ``make bench``. When campaigns disagree at a rate on fresh draws, the question
is whether each campaign's *own* evidence could have preferred the better setting: its
split and its noise, more seeds than the search (one) or the confirmation (three) gave.
For every ``DIR/campaign-seed<N>.toml`` and every asked rate, each setting is trained with
``--replicates`` seeds on that campaign's draw (``data_spec`` of its file, the rate's noise),
the confirmation's seed policy (campaign seed + ``CONFIRM_SEED_OFFSET`` + r), one population
per (campaign, rate). It prints the final clean-validation accuracy, mean and sample std
over the seeds, in points::

    RESULT replicate_seed<N>_<kind><rate>_<mode>_<variance>_val_mean <points> target -
    RESULT replicate_seed<N>_<kind><rate>_<mode>_<variance>_val_std <points> target -

Test accuracy is never shown: the question is what the campaign could have seen.

    python benchmarks/heldout_replicate.py DIR --kind pairflip --rates 0.3,0.4 \\
        --settings 0.565:13.2,0.789:21.4 [--replicates 5]

(the settings of docs/DESIGN.md section 7's replication; ~35 s per campaign and rate for
12 settings x 5 seeds on 2 cores)
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from dm_tune.campaign.confirm import CONFIRM_SEED_OFFSET
from dm_tune.campaign.settings import Setting, data_spec, train_spec
from dm_tune.config import load_campaign_config
from dm_tune.data import clear_data_cache, prepare_data
from dm_tune.population import Member, train_population


def parse_settings(text: str) -> list[tuple[float, float]]:
    """``"0.565:13.2,0.789:21.4"`` -> [(0.565, 13.2), (0.789, 21.4)]."""
    out = []
    for item in text.split(","):
        mode, sep, variance = item.partition(":")
        if not sep:
            raise ValueError(f"a setting is MODE:VARIANCE, got {item!r}")
        out.append((float(mode), float(variance)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a guideline_heldout.py --keep folder")
    parser.add_argument("--kind", default="pairflip")
    parser.add_argument("--rates", default="0.3,0.4")
    parser.add_argument("--settings", required=True, help="MODE:VARIANCE,...")
    parser.add_argument("--replicates", type=int, default=5)
    args = parser.parse_args()
    try:
        settings = parse_settings(args.settings)
        rates = [float(r) for r in args.rates.split(",")]
    except ValueError as exc:
        parser.error(str(exc))
    if args.replicates < 2:
        parser.error("--replicates must be at least 2 (a std needs two)")
    files = sorted(args.folder.glob("campaign-seed*.toml"),
                   key=lambda p: int(re.sub(r"\D", "", p.stem)))
    if not files:
        sys.exit(f"{args.folder}: no campaign-seed<N>.toml (a guideline_heldout.py --keep folder)")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    for path in files:
        config = load_campaign_config(path)
        seed = config.campaign.seed
        seeds = [seed + CONFIRM_SEED_OFFSET + r for r in range(args.replicates)]
        for rate in rates:
            data = prepare_data(data_spec(config, Setting(args.kind, rate)))
            members = [Member(data, "dm", {"emphasis_mode": m, "emphasis_variance": v}, s)
                       for m, v in settings for s in seeds]
            start = time.perf_counter()
            results = train_population(members, train_spec(config, "cpu", seeds[0]))
            val = np.array([r.val_accuracy_per_epoch[-1] if r.val_accuracy_per_epoch
                            else np.nan for r in results]).reshape(len(settings), len(seeds))
            print(f"# campaign seed {seed}, {args.kind} {rate:g}: {len(members)} members in "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            for (mode, variance), row in zip(settings, 100 * val, strict=True):
                name = f"replicate_seed{seed}_{args.kind}{rate:g}_{mode:g}_{variance:g}"
                print(f"RESULT {name}_val_mean {np.nanmean(row):.1f} target -")
                print(f"RESULT {name}_val_std {np.nanstd(row, ddof=1):.1f} target -", flush=True)
            clear_data_cache()


if __name__ == "__main__":
    main()
