"""Sampler + storage time per trial of the real worker, as a fraction of its wall time.

Runs dm-tune's own worker loop (`dm_tune.worker.run_worker`: claim under the campaign
lock, TPE ask/suggest, rung reports + Hyperband, one batched user-attr write, tell) in
this process on a copy of the digits demo campaign, for SQLite and PostgreSQL. Training
(`train_trial`) is timed separately by wrapping it; everything else the loop spends per
trial is sampler + storage. Prints one line per backend:

    RESULT storage_overhead_<backend> <fraction> target 0.02
    RESULT storage_ms_per_trial_<backend> <ms> target -

Run: .venv/bin/python benchmarks/storage_overhead.py [--trials 24] [--epochs 40] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path

import torch
from pgtemp import create_database, database_url, drop_database, ensure_postgres

from dm_tune import campaign
from dm_tune.campaign import run_worker
from dm_tune.config import load_campaign_config, parse_campaign_config
from dm_tune.storage import open_storage
from dm_tune.training import train_trial

ROOT = Path(__file__).resolve().parent.parent


def _config(trials: int, epochs: int):
    base = load_campaign_config(ROOT / "studies" / "digits-quick.toml").model_dump()
    base["campaign"]["name"] = "storage-bench"
    base["training"]["epochs"] = epochs
    base["search"]["trials"] = trials
    base["search"]["population"] = 1  # one trial at a time: the `train` hook times each one
    base["noise"] = [{"kind": "symmetric", "rates": [0.4]}]
    base["baselines"] = {"losses": []}
    return parse_campaign_config(base)


def measure(url: str, trials: int, epochs: int) -> tuple[float, float]:
    """(fraction of the worker's wall time outside training, ms per trial outside it)."""
    config = _config(trials, epochs)
    storage = open_storage(url)
    campaign.create_campaign(config, storage)
    campaign.load_setting_data(config, campaign.settings_of(config)[0])  # data outside timing
    training = []

    def timed_train(*args, **kwargs):
        start = time.perf_counter()
        try:
            return train_trial(*args, **kwargs)
        finally:
            training.append(time.perf_counter() - start)

    try:
        start = time.perf_counter()
        summary = run_worker(storage, config, "cpu", name="bench", train=timed_train)
        wall = time.perf_counter() - start
    finally:
        storage.engine.dispose()
    outside = wall - sum(training)
    return outside / wall, 1000 * outside / max(1, summary.trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the PostgreSQL run and print where the time goes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# load average {os.getloadavg()[0]:.2f}; {args.trials} trials x {args.epochs} "
          "epochs (digits MLP, TPE + Hyperband), pruned trials included")
    with tempfile.TemporaryDirectory() as tmp:
        fraction, ms = measure(f"sqlite:///{Path(tmp) / 'bench.db'}", args.trials, args.epochs)
    print(f"RESULT storage_overhead_sqlite {fraction:.4f} target 0.02")
    print(f"RESULT storage_ms_per_trial_sqlite {ms:.1f} target -")
    try:
        ensure_postgres()
        name = create_database()
    except Exception as error:  # noqa: BLE001 - report and go on: SQLite was measured
        print(f"# PostgreSQL unavailable, skipped: {str(error).splitlines()[0]}")
        return
    profiler = cProfile.Profile() if args.profile else None
    try:
        if profiler is not None:
            profiler.enable()
        fraction, ms = measure(database_url(name), args.trials, args.epochs)
    finally:
        if profiler is not None:
            profiler.disable()
        drop_database(name)
    print(f"RESULT storage_overhead_postgresql {fraction:.4f} target 0.02")
    print(f"RESULT storage_ms_per_trial_postgresql {ms:.1f} target -")
    if profiler is not None:
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(
            r"claims.py.*\(claim_trial\)|run_trial.py.*\((_record|loss_of)\)|should_prune"
            r"|study.py.*\((ask|tell)\)"
            r"|_trial.py.*\(report\)"
        )


if __name__ == "__main__":
    main()
