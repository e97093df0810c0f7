"""Are dm-tune's guidelines stable across campaign seeds, and right at a held-out rate?

(a) Stability. The demo campaign (``studies/digits-quick.toml``) is run with campaign seeds
0, 1, 2 (``dm-tune run`` on a temporary SQLite file, a copy of the campaign file whose
``seed`` changes: the seed draws the split, the noise and the search). Each campaign's
recommendation (``load_campaign(..., method=M)`` + ``recommend``) at every searched rate
is re-trained with 5 fresh seeds on one common evaluation draw of the data (data seed 10,
training seeds 100-104, the same for every campaign: only the recommendation differs), as
one population. Per rate: the spread (max - min) across campaign seeds of those 5-seed
mean test accuracies, in points::

    RESULT stability_spread_<kind><rate> <points> target 1

(b) Held-out rate. Campaign seed 0 is extended with the held-out rates where its file
lacks them (the demo searches both, symmetric 0.5 and pairflip 0.3, so nothing new
trains): the *full* recommendation at symmetric 0.5 / pairflip 0.3 comes from that
campaign; the *held-out* one from a copy of the same database whose studies of those two
settings are deleted (a campaign searched at symmetric {0.2, 0.3, 0.4, 0.6} and pairflip
{0.2, 0.4}). Both are re-trained like (a); the error is |full - held-out| in points::

    RESULT heldout_error_symmetric0.5 <points> target 1
    RESULT heldout_error_pairflip0.3 <points> target 1

Informative lines give the noise floor: the standard error of one 5-seed mean
(``stability_seed_se_*``), the accuracies compared and the run time of each campaign.

    python benchmarks/guideline_stability.py [--method surface|top-k] [--quick] [--keep DIR]
    python benchmarks/guideline_stability.py --reuse DIR --method top-k  # same campaigns
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import torch

from dm_tune.campaign.records import StudyKey
from dm_tune.campaign.settings import Setting, data_spec, train_spec
from dm_tune.config import CampaignConfig, load_campaign_config
from dm_tune.data import prepare_data
from dm_tune.guidelines.loading import load_campaign
from dm_tune.guidelines.recommend import recommend
from dm_tune.guidelines.results import DEFAULT_METHOD, METHODS
from dm_tune.population import Member, train_population

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "studies" / "digits-quick.toml"
EVAL_DATA_SEED = 10  # the evaluation draw of split + noise: no campaign's seed
FRESH_SEEDS = (100, 101, 102, 103, 104)
TARGET = 1.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def with_rates(text: str, rates: dict[str, list[float]]) -> str:
    """A campaign file's text with each named kind searched at exactly ``rates[kind]``,
    whether the file gives that kind's rates as a list or as a range (``rate_range`` +
    ``rate_step``); a kind without its ``[[noise]]`` table is an error."""
    for kind, values in rates.items():
        text, n = re.subn(rf'kind = "{kind}"\s*\n(?:rates = \[[^\]]*\]|'
                          rf'rate_range = \[[^\]]*\]\s*\nrate_step = [\d.]+)',
                          f'kind = "{kind}"\nrates = {sorted(values)}', text)
        assert n == 1, f"campaign file: expected one [[noise]] table of kind {kind}"
    return text


def campaign_text(seed: int, rates: dict[str, list[float]], quick: bool) -> str:
    """The demo's campaign file with another seed and rates (``--quick``: a tiny search)."""
    text = DEMO.read_text()
    text, n = re.subn(r"(?m)^seed = \d+", f"seed = {seed}", text, count=1)
    assert n == 1, "studies/digits-quick.toml: no `seed = N` line"

    text = with_rates(text, rates)
    if quick:
        for key, value in (("trials", 6), ("epochs", 8), ("min_epochs", 3)):
            text, n = re.subn(rf"(?m)^{key} = \d+", f"{key} = {value}", text, count=1)
            assert n == 1, f"studies/digits-quick.toml: no `{key} = N` line"
        text, n = re.subn(r'(?m)^losses = \[[^\]]*\]', "losses = []", text, count=1)
        assert n == 1, "studies/digits-quick.toml: no [baselines] `losses = [...]` line"
        if "confirm" in CampaignConfig.model_fields and "[confirm]" not in text:
            text += "\n[confirm]\nseeds = 1\ncandidates = 0\ngce_q_trials = 0\n"
    return text


def run_campaign(path: Path, db: Path, label: str) -> float:
    """`dm-tune run` on the SQLite file `db`; returns its wall time."""
    exe = Path(sys.executable).with_name("dm-tune")
    command = [str(exe) if exe.exists() else "dm-tune", "run", str(path), "--storage",
               f"sqlite:///{db}", "--no-report", "--device", "cpu"]
    log(f"{label}: dm-tune run ...")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{label}: dm-tune run failed ({done.returncode}):\n"
                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    log(f"{label}: done in {wall:.0f} s")
    return wall


def copy_db(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database (the backup API, not a file copy)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


def delete_settings(db: Path, campaign: str, drop: list[tuple[str, float]]) -> int:
    """Delete every study (search, baselines, confirm, ...) of the settings `drop`."""
    url = f"sqlite:///{db}"
    storage = optuna.storages.RDBStorage(url)
    gone = 0
    for study in storage.get_all_studies():
        attrs = study.user_attrs
        key = (str(attrs.get(StudyKey.NOISE_KIND)), round(float(attrs.get(StudyKey.NOISE_RATE,
                                                                              -1)), 6))
        if attrs.get(StudyKey.CAMPAIGN) == campaign and key in drop:
            optuna.delete_study(study_name=study.study_name, storage=storage)
            gone += 1
    storage.remove_session()
    return gone


def recommendations(db: Path, campaign: str, method: str,
                    wanted: list[tuple[str, float]]) -> dict[tuple[str, float], tuple]:
    """(mode, variance) the campaign in `db` recommends at each wanted setting."""
    results = load_campaign(f"sqlite:///{db}", campaign, method=method)
    out = {}
    for kind, rate in wanted:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rec = recommend(results, kind, rate)
        out[(kind, rate)] = (float(rec.emphasis_mode), float(rec.emphasis_variance))
    return out


def retrain(config: CampaignConfig, jobs: list[tuple[str, float, tuple]]) -> np.ndarray:
    """Final test accuracy, (job, fresh seed), of each (kind, rate, params) on the common
    evaluation data, every job x seed one member of one population."""
    config = config.model_copy(
        update={"campaign": config.campaign.model_copy(update={"seed": EVAL_DATA_SEED})})
    datas = {}
    for kind, rate, _ in jobs:
        if (kind, rate) not in datas:
            datas[(kind, rate)] = prepare_data(data_spec(config, Setting(kind, rate)))
    members = [Member(datas[(kind, rate)], "dm", {"emphasis_mode": mode,
                                                  "emphasis_variance": variance}, seed)
               for kind, rate, (mode, variance) in jobs for seed in FRESH_SEEDS]
    spec = train_spec(config, "cpu", 0)
    log(f"re-training {len(jobs)} recommendations x {len(FRESH_SEEDS)} seeds "
        f"({len(members)} members, {spec.epochs} epochs) ...")
    start = time.perf_counter()
    results = train_population(members, spec)
    log(f"re-training: done in {time.perf_counter() - start:.0f} s")
    test = np.full(len(members), np.nan)
    for index, result in enumerate(results):
        if result.status == "complete" and result.test_accuracy_per_epoch:
            test[index] = result.test_accuracy_per_epoch[-1]
    return test.reshape(len(jobs), len(FRESH_SEEDS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                        help=f"the guidelines' trend method (default: {DEFAULT_METHOD})")
    parser.add_argument("--seeds", default="0,1,2", help="campaign seeds")
    parser.add_argument("--keep", type=Path, help="keep the databases and files here")
    parser.add_argument("--reuse", type=Path,
                        help="a --keep folder of an earlier run with the same seeds: reuse its "
                             "campaigns (no dm-tune run), e.g. to compare --method")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: seeds 0,1; symmetric {0.2,0.6}, pairflip {0.2,0.4} "
                             "with held-out symmetric 0.4, pairflip 0.3; 6 trials of 8 epochs, "
                             "no baselines, 1 confirmation seed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    demo = load_campaign_config(DEMO)
    name = demo.name
    if args.quick:
        rates = {"symmetric": [0.2, 0.6], "pairflip": [0.2, 0.4]}
        targets = [("symmetric", 0.4), ("pairflip", 0.3)]
        seeds = [0, 1]
    else:
        rates = {s.kind: [float(r) for r in s.rates] for s in demo.noise}
        targets = [("symmetric", 0.5), ("pairflip", 0.3)]
        seeds = [int(s) for s in args.seeds.split(",")]
    searched = [(kind, rate) for kind, values in rates.items() for rate in values]
    confirm = getattr(demo, "confirm", None)
    log(f"method {args.method}; confirmation in `dm-tune run`: "
        f"{'none in this version' if confirm is None else confirm.model_dump()}")
    work = Path(tempfile.mkdtemp(prefix="dm-tune-stability-"))
    if args.reuse:
        shutil.copytree(args.reuse, work, dirs_exist_ok=True)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    try:
        recs, walls = {}, {}
        for seed in seeds:
            path = work / f"campaign-seed{seed}.toml"
            path.write_text(campaign_text(seed, rates, args.quick))
            db = work / f"seed{seed}.db"
            if not db.exists():
                walls[f"seed{seed}"] = run_campaign(path, db, f"campaign seed {seed}")
            recs[seed] = recommendations(db, name, args.method, searched)
            for setting, (mode, variance) in recs[seed].items():
                log(f"  seed {seed} {setting[0]} {setting[1]:g}: mode {mode:.3f} "
                    f"variance {variance:.2f}")
        # (b): campaign seed 0 with the held-out rates added, then with them deleted
        full_rates = {k: sorted(set(v) | {r for kk, r in targets if kk == k})
                      for k, v in rates.items()}
        full_db, held_db = work / "full.db", work / "heldout.db"
        if not full_db.exists():
            copy_db(work / f"seed{seeds[0]}.db", full_db)
            path = work / "campaign-full.toml"
            path.write_text(campaign_text(seeds[0], full_rates, args.quick))
            walls["extra_rates"] = run_campaign(path, full_db, "held-out rates, full search")
        held_db.unlink(missing_ok=True)
        copy_db(full_db, held_db)
        gone = delete_settings(held_db, name, targets)
        log(f"held-out copy: deleted {gone} studies of {targets}")
        full = recommendations(full_db, name, args.method, targets)
        held = recommendations(held_db, name, args.method, targets)
        for setting in targets:
            log(f"  {setting[0]} {setting[1]:g}: full {full[setting]}, held-out {held[setting]}")

        config = load_campaign_config(work / f"campaign-seed{seeds[0]}.toml")
        jobs = [(k, r, recs[s][(k, r)]) for s in seeds for (k, r) in searched]
        jobs += [(k, r, full[(k, r)]) for k, r in targets]
        jobs += [(k, r, held[(k, r)]) for k, r in targets]
        test = retrain(config, jobs)
        means = 100 * np.nanmean(test, axis=1)
        ses = 100 * np.nanstd(test, axis=1, ddof=1) / np.sqrt(test.shape[1])
        n = len(searched)
        for i, (kind, rate) in enumerate(searched):
            per_seed = means[i::n][: len(seeds)]
            tag = f"{kind}{rate:g}"
            log(f"  {tag}: 5-seed mean test per campaign seed: "
                + ", ".join(f"{m:.2f}" for m in per_seed))
            print(f"RESULT stability_spread_{tag} {np.ptp(per_seed):.2f} target {TARGET:g}")
            print(f"RESULT stability_seed_se_{tag} {np.median(ses[i::n][: len(seeds)]):.2f} "
                  "target -")
        base = len(seeds) * n
        for j, (kind, rate) in enumerate(targets):
            tag = f"{kind}{rate:g}"
            f_acc, h_acc = means[base + j], means[base + len(targets) + j]
            print(f"RESULT heldout_error_{tag} {abs(f_acc - h_acc):.2f} target {TARGET:g}")
            print(f"RESULT heldout_full_test_{tag} {f_acc:.2f} target -")
            print(f"RESULT heldout_heldout_test_{tag} {h_acc:.2f} target -")
            print(f"RESULT heldout_seed_se_{tag} "
                  f"{max(ses[base + j], ses[base + len(targets) + j]):.2f} target -")
        for label, wall in walls.items():
            print(f"RESULT stability_campaign_run_s_{label} {wall:.0f} target -")
        sys.stdout.flush()
        if args.keep:
            for item in work.iterdir():
                shutil.copy2(item, args.keep / item.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
