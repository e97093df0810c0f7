"""Does a published guideline transfer? One dataset's recommendations on another dataset.

Two campaigns, the demo's recipe (``studies/digits-quick.toml``: MLP, 40 epochs, 30
trials per setting, TPE + Hyperband, paper warm start, population 8) at symmetric 0.2,
0.4, 0.6 and pairflip 0.2, 0.4, no baselines, no confirmation: one on digits, one on
the synthetic npz (benchmarks/synthetic_data.py: generated data, not a real dataset).
Each campaign's recommendation at every rate (``load_campaign`` + ``recommend``, the
default method) is re-trained on *both* datasets with 5 fresh seeds on one common
evaluation draw of the data (data seed 10, training seeds 100-104), all of a dataset's
jobs as one population. The transfer regret at a rate is, in test-accuracy points (mean
over the 5 seeds)::

    regret(A -> B) = acc_B(B's own recommendation) - acc_B(A's recommendation)

    RESULT transfer_regret_<A>_to_<B>_<kind><rate> <points> target -

(negative: the transferred guideline did better than the target's own search). The
standard error of one 5-seed mean is printed beside it: a regret within about two of them
is selection noise, not a failure to transfer.

Run: .venv/bin/python benchmarks/guideline_transfer.py [--keep DIR] [--trials 30]
(about 3-4 minutes on the shared 2 cores)
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from guideline_stability import (  # noqa: E402
    log,
    recommendations,
    run_campaign,
    with_rates,
)
from synthetic_data import write_synthetic  # noqa: E402

from dm_tune.campaign.settings import Setting, data_spec, train_spec  # noqa: E402
from dm_tune.config import load_campaign_config  # noqa: E402
from dm_tune.data import prepare_data  # noqa: E402
from dm_tune.population import Member, train_population  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "studies" / "digits-quick.toml"
RATES = {"symmetric": [0.2, 0.4, 0.6], "pairflip": [0.2, 0.4]}
EVAL_DATA_SEED = 10
FRESH_SEEDS = (100, 101, 102, 103, 104)


def campaign_text(name: str, data_lines: str, trials: int, epochs: int) -> str:
    """The demo's campaign with another name, data, rates and a smaller search."""
    text = DEMO.read_text()
    text = re.sub(r'(?m)^name = "[^"]*"', f'name = "{name}"', text, count=1)
    text = re.sub(r'(?m)^dataset = "digits"', data_lines, text, count=1)
    text = with_rates(text, RATES)
    for key, value in (("trials", trials), ("epochs", epochs)):
        text, n = re.subn(rf"(?m)^{key} = \d+", f"{key} = {value}", text, count=1)
        assert n == 1, f"{DEMO}: no `{key} = N` line"
    text, n = re.subn(r"(?m)^losses = \[[^\]]*\]", "losses = []", text, count=1)
    assert n == 1
    return text + "\n[confirm]\nseeds = 0\n"


def retrain(config_path: Path, jobs: list[tuple[str, float, tuple]]) -> np.ndarray:
    """Test accuracy (job, seed) of each (kind, rate, (mode, variance)) on the campaign's
    data at the evaluation draw; one population."""
    config = load_campaign_config(config_path)
    config = config.model_copy(
        update={"campaign": config.campaign.model_copy(update={"seed": EVAL_DATA_SEED})})
    datas = {(k, r): prepare_data(data_spec(config, Setting(k, r))) for k, r, _ in jobs}
    members = [Member(datas[(k, r)], "dm", {"emphasis_mode": m, "emphasis_variance": v}, s)
               for k, r, (m, v) in jobs for s in FRESH_SEEDS]
    results = train_population(members, train_spec(config, "cpu", 0))
    test = np.array([r.test_accuracy_per_epoch[-1] if r.status == "complete" else np.nan
                     for r in results])
    return test.reshape(len(jobs), len(FRESH_SEEDS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="keep the databases and files here")
    parser.add_argument("--trials", type=int, default=30, help="DM trials per setting")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="dm-tune-transfer-"))
    folder.mkdir(parents=True, exist_ok=True)
    synth = write_synthetic(folder / "synthetic.npz")
    sources = {"digits": 'dataset = "digits"',
               "synthetic": f'dataset = "npz"\nroot = "{synth}"'}
    paths, recs = {}, {}
    wanted = [(k, r) for k, rates in RATES.items() for r in rates]
    for name, lines in sources.items():
        paths[name] = folder / f"{name}.toml"
        paths[name].write_text(campaign_text(f"transfer-{name}", lines, args.trials,
                                             args.epochs))
        db = folder / f"{name}.db"
        run_campaign(paths[name], db, name)
        recs[name] = recommendations(db, f"transfer-{name}", "surface", wanted)
    accuracy = {}
    for target in sources:
        jobs = [(k, r, recs[src][(k, r)]) for src in sources for k, r in wanted]
        log(f"re-training on {target}: {len(jobs)} recommendations x {len(FRESH_SEEDS)} seeds")
        test = retrain(paths[target], jobs)
        for (k, r, _), row, src in zip(jobs, test, [s for s in sources for _ in wanted],
                                       strict=True):
            accuracy[(src, target, k, r)] = row
    for src, target in (("digits", "synthetic"), ("synthetic", "digits")):
        regrets = []
        for k, r in wanted:
            own, moved = accuracy[(target, target, k, r)], accuracy[(src, target, k, r)]
            regret = 100 * (np.nanmean(own) - np.nanmean(moved))
            se = 100 * np.nanstd(own, ddof=1) / np.sqrt(np.sum(~np.isnan(own)))
            regrets.append(regret)
            (om, ov), (mm, mv) = recs[target][(k, r)], recs[src][(k, r)]
            print(f"{src} -> {target} {k} {r}: own (mode {om:.2f}, variance {ov:.1f}) "
                  f"{100 * np.nanmean(own):.1f}, transferred (mode {mm:.2f}, variance "
                  f"{mv:.1f}) {100 * np.nanmean(moved):.1f}; one 5-seed mean's SE {se:.1f}")
            print(f"RESULT transfer_regret_{src}_to_{target}_{k}{r} {regret:.1f} target -")
        print(f"RESULT transfer_regret_{src}_to_{target}_worst {max(regrets):.1f} target -")
    log(f"total {time.perf_counter() - t0:.0f} s; files in {folder}")


if __name__ == "__main__":
    main()
