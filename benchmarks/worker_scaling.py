"""Trials per minute of a digits campaign on PostgreSQL with 1 and 2 CPU workers.

A copy of ``studies/digits-quick.toml`` (two settings, ``--trials`` DM trials in all, no
baselines, no pruning so every trial does the same 40 epochs of work) is written to a
temporary directory; for each run a fresh PostgreSQL database is created (psycopg,
autocommit), ``dm-tune create`` runs once, then K ``dm-tune worker CONFIG --storage URL
--device cpu --threads 1 --quiet`` processes share it until the budget is met, and the
database is dropped. Runs are interleaved (1, 2, 2, 1, 1, 2) to cancel drift in the load
other processes put on the machine; the medians per worker count are reported.

Each worker process is ``run_worker`` started through a thin shim (this file with
``--shim OUT CONFIG URL LABEL``) that reads the worker's own timings of its claims
(campaign lock, progress query, stale check, ``study.ask``) and trials (attrs,
heartbeat, training, ``tell``) and passes a timed ``train`` hook that separates pure
training from the epoch callbacks (``trial.report`` + ``should_prune``), so that

    sampler_storage_fraction = (claim + run - pure training) / (claim + run)

summed over all trials. Throughput is trials / (last trial's completion - first
trial's start) read from the storage (process start-up excluded; the process wall time
is printed too). Prints::

    RESULT worker_scaling_2v1 <throughput ratio> target 1.8
    RESULT sampler_storage_fraction <fraction> target 0.02
    RESULT trials_per_minute_<k>w <trials/min> target -

    .venv/bin/python benchmarks/worker_scaling.py [--trials 24 --repeats 3 --epochs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from pgtemp import create_database, database_url, drop_database, ensure_postgres

ROOT = Path(__file__).resolve().parent.parent
STUDY_FILE = ROOT / "studies" / "digits-quick.toml"


# ------------------------------------------------------------------------- worker shim


def run_shim(out: str, config_path: str, url: str, label: str) -> None:
    """Run one worker in this process through its explicit hooks; write the timings to ``out``.

    ``run_worker`` times its claims and trials itself; ``train`` is the one hook wrapped
    here, to split pure training from the epoch callbacks (report + should_prune).
    """
    import torch

    from dm_tune.campaign import run_worker
    from dm_tune.config import load_campaign_config
    from dm_tune.storage import open_storage
    from dm_tune.training import train_trial

    torch.set_num_threads(1)
    rec: dict[str, list[float] | float] = {"train": [], "callbacks": [], "started": time.time()}

    def timed_train(data, spec, loss="dm", loss_params=None, on_epoch=None, progress=None):
        in_callbacks = [0.0]

        def timed(epoch, metrics):
            t = time.perf_counter()
            try:
                return on_epoch(epoch, metrics)
            finally:
                in_callbacks[0] += time.perf_counter() - t

        t = time.perf_counter()
        try:
            return train_trial(data, spec, loss, loss_params,
                               on_epoch=timed if on_epoch else None, progress=progress)
        finally:
            rec["train"].append(time.perf_counter() - t - in_callbacks[0])
            rec["callbacks"].append(in_callbacks[0])

    summary = run_worker(open_storage(url), load_campaign_config(config_path), "cpu",
                         name=label, train=timed_train)
    rec.update(claim=summary.claim_seconds, run=summary.trial_seconds,
               idle=summary.idle_seconds, ended=time.time())
    Path(out).write_text(json.dumps(rec))


# ------------------------------------------------------------------------------ a run


def write_config(directory: Path, trials: int, epochs: int) -> Path:
    """digits-quick with two settings, ``trials`` DM trials in all, no baselines or pruning."""
    doc = tomllib.loads(STUDY_FILE.read_text(encoding="utf-8"))
    per_setting = max(1, trials // 2)
    lines = [
        "[campaign]", 'name = "scaling"', f"seed = {doc['campaign']['seed']}", "",
        "[data]", *(f"{k} = {json.dumps(v)}" for k, v in doc["data"].items()), "",
        "[model]", f"name = {json.dumps(doc['model']['name'])}", "",
        "[training]",
        *(f"{k} = {json.dumps(v)}" for k, v in doc["training"].items() if k != "epochs"),
        f"epochs = {epochs}", "",
        "[[noise]]", 'kind = "symmetric"', "rates = [0.4]", "",
        "[[noise]]", 'kind = "pairflip"', "rates = [0.4]", "",
        "[search]", 'sampler = "tpe"', 'pruner = "none"', f"trials = {per_setting}",
        'warm_start = "paper"', "",
        "[baselines]", "losses = []", "",
    ]
    path = directory / "scaling.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def storage_span(url: str) -> tuple[int, float]:
    """(finished trials, seconds from the first trial's start to the last's completion)."""
    import optuna

    from dm_tune.storage import open_storage

    storage = open_storage(url, heartbeat_interval=None)
    trials = [t for s in storage.get_all_studies()
              for t in optuna.load_study(study_name=s.study_name, storage=storage)
              .get_trials(deepcopy=False)
              if t.datetime_complete is not None and t.state.name == "COMPLETE"]
    storage.engine.dispose()
    first = min(t.datetime_start for t in trials)
    last = max(t.datetime_complete for t in trials)
    return len(trials), (last - first).total_seconds()


def one_run(config: Path, workers: int, workdir: Path) -> dict:
    """A fresh database, `dm-tune create`, K workers to the end; timings."""
    db = create_database()
    url = database_url(db)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "DM_TUNE_STORAGE": ""}
    try:
        subprocess.run([sys.executable, "-m", "dm_tune", "create", str(config), "--storage", url],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        load_before = os.getloadavg()[0]
        outs = [workdir / f"{db}-w{k}.json" for k in range(workers)]
        started = time.perf_counter()
        processes = [
            subprocess.Popen(
                [sys.executable, __file__, "--shim", str(out), str(config), url, f"bench-w{k}"],
                env=env, stdout=subprocess.DEVNULL,
            )
            for k, out in enumerate(outs)
        ]
        codes = [p.wait() for p in processes]
        wall = time.perf_counter() - started
        if any(codes):
            raise RuntimeError(f"worker exit codes {codes}")
        trials, span = storage_span(url)
        shims = [json.loads(out.read_text()) for out in outs]
    finally:
        drop_database(db)
    claim = sum(sum(s["claim"]) for s in shims)
    run = sum(sum(s["run"]) for s in shims)
    train = sum(sum(s["train"]) for s in shims)
    callbacks = sum(sum(s["callbacks"]) for s in shims)
    return {
        "workers": workers, "trials": trials, "span": span, "wall": wall,
        "per_minute": 60 * trials / span, "load": (load_before, os.getloadavg()[0]),
        "overhead": (claim + run - train) / (claim + run),
        "claim_ms": 1e3 * claim / trials, "callbacks_ms": 1e3 * callbacks / trials,
        "other_ms": 1e3 * (run - train - callbacks) / trials, "train_s": train / trials,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="DM trials per run (2 settings)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs per trial")
    parser.add_argument("--repeats", type=int, default=3,
                        help="pairs of runs (order 1,2 then 2,1, ...); medians are reported")
    if len(sys.argv) > 2 and sys.argv[1] == "--shim":
        run_shim(*sys.argv[2:6])
        return 0
    args = parser.parse_args()
    ensure_postgres()
    order = []
    for r in range(args.repeats):
        order += [1, 2] if r % 2 == 0 else [2, 1]
    runs = []
    with tempfile.TemporaryDirectory(prefix="dm-tune-scaling-") as tmp:
        config = write_config(Path(tmp), args.trials, args.epochs)
        for workers in order:
            run = one_run(config, workers, Path(tmp))
            runs.append(run)
            print(f"# {workers} worker(s): {run['trials']} trials in {run['span']:.1f} s "
                  f"({run['per_minute']:.1f}/min; process wall {run['wall']:.1f} s); per trial: "
                  f"training {run['train_s']:.2f} s, claim {run['claim_ms']:.1f} ms, "
                  f"report+prune {run['callbacks_ms']:.1f} ms, other {run['other_ms']:.1f} ms; "
                  f"load average {run['load'][0]:.2f} -> {run['load'][1]:.2f}", flush=True)
    rate = {k: statistics.median(r["per_minute"] for r in runs if r["workers"] == k)
            for k in (1, 2)}
    overhead = statistics.median(r["overhead"] for r in runs)
    load = statistics.fmean(x for r in runs for x in r["load"])
    print(f"# load average (1 min) during the runs: {load:.2f} on {os.cpu_count()} CPUs")
    for k in (1, 2):
        print(f"RESULT trials_per_minute_{k}w {rate[k]:.1f} target -")
    print(f"RESULT worker_scaling_2v1 {rate[2] / rate[1]:.2f} target 1.8")
    print(f"RESULT sampler_storage_fraction {overhead:.4f} target 0.02")
    return 0


if __name__ == "__main__":
    sys.exit(main())
