"""N lightweight workers against PostgreSQL, directly and through the gRPC storage proxy.

Each worker is a process (forked from this one after the imports and the data cache
are warm, so 64 of them start in a second on 2 cores) running the real worker loop,
``dm_tune.campaign.run_worker``, with a stub ``train`` that sleeps ``--trial-ms`` (50 ms)
and reports one epoch: the database, the claim lock and the proxy are the load, not
training. For each N (8, 32, 64; ``--quick``: 8) and each mode a fresh database gets a
two-setting digits campaign (random sampler, no pruning, ``--trials-per-worker`` x N DM
trials in all plus one CCE baseline per setting), the N workers run it to its budgets,
and the database is dropped:

- direct: every worker opens ``postgresql+psycopg://...`` itself;
- proxy: one ``dm-tune storage-proxy --pool-size 8`` process owns the connections and
  the workers use ``grpc://127.0.0.1:PORT``.

Figures per mode and N::

    RESULT scale_<mode>_claims_per_s_<N> <trials / (last completion - first start)> target -
    RESULT scale_<mode>_failed_claims_<N> <worker exceptions + FAIL trials> target -
    RESULT scale_<mode>_connections_<N> <peak pg_stat_activity rows> target -
    RESULT scale_<mode>_lost_or_duplicated_<N> <sum |done - budget| + left RUNNING> target -

with targets on the proxy at 64 workers: ``scale_proxy_connections_64`` target 10 (pool
8 + the lock connection + slack 1) and ``scale_proxy_lost_or_duplicated_64`` target 0.
Connections are sampled every 20 ms from the admin database (not counted).

    .venv/bin/python benchmarks/scale.py [--quick] [--workers 8,32,64] [--modes direct,proxy]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pgtemp import ADMIN_DSN, create_database, database_url, drop_database, ensure_postgres

ROOT = Path(__file__).resolve().parent.parent
POOL_SIZE = 8
TARGETS = {"scale_proxy_connections_64": "10", "scale_proxy_lost_or_duplicated_64": "0"}

CAMPAIGN = """
[campaign]
name = "scale"
seed = 0

[data]
dataset = "digits"
val_fraction = 0.125

[training]
epochs = 1
batch_size = 64

[[noise]]
kind = "symmetric"
rates = [0.2, 0.4]

[search]
sampler = "random"
pruner = "none"
trials = {trials}
min_epochs = 1
warm_start = "none"
startup_trials = 0

[baselines]
losses = ["cce"]
"""


# ------------------------------------------------------------------ worker side


def stub_train(trial_s: float):
    """``train_trial``'s signature: sleep, report the one epoch, return a fixed result."""
    from dm_tune.training import TrialResult

    def train(data, spec, loss="dm", loss_params=None, on_epoch=None, progress=None):
        started = time.perf_counter()
        time.sleep(trial_s)
        metrics = {"val_accuracy": 0.5, "test_accuracy": 0.5, "train_loss": 1.0}
        if on_epoch is not None:
            on_epoch(1, metrics)
        return TrialResult(
            val_accuracy_per_epoch=[0.5], test_accuracy_per_epoch=[0.5], val_accuracy=0.5,
            test_accuracy=0.5, best_val_epoch=1, test_accuracy_at_best_val=0.5,
            noisy_train_accuracy=0.5, memorized_noisy_fraction=0.0,
            corrected_noisy_fraction=0.0, realised_noise_rate=0.2, epochs_run=1,
            seconds=time.perf_counter() - started, device="cpu", train_loss_per_epoch=[1.0],
        )

    return train


def worker_process(index: int, url: str, config_path: str, trial_s: float, go, results) -> None:
    """One worker: open the storage, wait for the start, run to the budgets (retrying)."""
    from dm_tune.campaign import run_worker
    from dm_tune.config import load_campaign_config
    from dm_tune.storage import open_storage

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends the run
    config = load_campaign_config(config_path)
    failures, trials, errors = 0, 0, []
    go.wait()
    for _attempt in range(5):
        try:
            storage = open_storage(url)
            summary = run_worker(storage, config, "cpu", name=f"w{index}", poll_seconds=0.2,
                                 sampler_seed=index, train=stub_train(trial_s))
            trials += summary.trials
            break
        except Exception as exc:  # a failed claim or trial: count it, start again
            failures += 1
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    results.put({"index": index, "trials": trials, "failures": failures, "errors": errors})


# ------------------------------------------------------------------ parent side


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_proxy(url: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "DM_TUNE_STORAGE": url, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "dm_tune", "storage-proxy", "--port", str(port),
         "--pool-size", str(POOL_SIZE)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    seen = []
    while not any("listening on grpc://" in line for line in seen):
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("the storage proxy exited:\n" + "".join(seen))
        seen.append(line)
    threading.Thread(target=process.stdout.read, daemon=True).start()  # drain its log
    return process, f"grpc://127.0.0.1:{port}"


def stop_proxy(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ConnectionSampler(threading.Thread):
    """Peak server connections to one database, sampled from the admin database."""

    def __init__(self, database: str, period_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.database, self.period_s, self.peak = database, period_s, 0
        self.done = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            while not self.done.is_set():
                (count,) = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                        (self.database,)).fetchone()
                self.peak = max(self.peak, int(count))
                self.done.wait(self.period_s)


def outcome(url: str, config) -> dict[str, float]:
    """Trials per second, FAIL trials and |done - budget| (+ RUNNING/WAITING left)."""
    import optuna

    from dm_tune.campaign.progress import campaign_progress
    from dm_tune.storage import open_storage

    storage = open_storage(url, heartbeat_interval=None, create=False)
    try:
        progress = campaign_progress(storage, config)
        wrong = sum(abs(p.done - p.budget) + p.running + p.waiting for p in progress)
        failed = sum(p.failed for p in progress)
        starts, ends = [], []
        for p in progress:
            study = optuna.load_study(study_name=p.study_name, storage=storage)
            for t in study.get_trials(deepcopy=False):
                if t.datetime_complete is not None and t.datetime_start is not None:
                    starts.append(t.datetime_start)
                    ends.append(t.datetime_complete)
        span = (max(ends) - min(starts)).total_seconds() if ends else float("nan")
        return {"trials": len(ends), "span": span, "failed": failed, "wrong": wrong}
    finally:
        storage.engine.dispose()


def one_run(mode: str, workers: int, trials_per_worker: int, trial_s: float,
            workdir: Path) -> dict[str, float]:
    from dm_tune.campaign.create import create_campaign
    from dm_tune.campaign.locks import dispose_lock_connection
    from dm_tune.config import load_campaign_config
    from dm_tune.storage import open_storage

    config_path = workdir / f"scale-{mode}-{workers}.toml"
    per_setting = max(1, workers * trials_per_worker // 2)
    config_path.write_text(CAMPAIGN.format(trials=per_setting))
    config = load_campaign_config(config_path)
    name = create_database("dmtune_scale")
    url = database_url(name)
    proxy = None
    try:
        storage = open_storage(url)
        create_campaign(config, storage)  # also warms the data cache the children inherit
        dispose_lock_connection(storage.engine)
        storage.engine.dispose()  # no pooled connection crosses the fork
        if mode == "proxy":
            proxy, worker_url = start_proxy(url)
        else:
            worker_url = url
        context = mp.get_context("fork")
        go, results = context.Event(), context.Queue()
        processes = [context.Process(target=worker_process,
                                     args=(i, worker_url, str(config_path), trial_s, go, results))
                     for i in range(workers)]
        for process in processes:
            process.start()
        sampler = ConnectionSampler(name)
        sampler.start()
        started = time.perf_counter()
        go.set()
        reports = [results.get(timeout=600) for _ in processes]
        for process in processes:
            process.join(timeout=60)
        wall = time.perf_counter() - started
        sampler.done.set()
        sampler.join()
        figures = outcome(url, config)
    finally:
        if proxy is not None:
            stop_proxy(proxy)
        drop_database(name)
    errors = [e for r in reports for e in r["errors"]]
    for error in sorted(set(errors))[:3]:
        print(f"# {mode} {workers}: worker error: {error}")
    return {
        "claims_per_s": figures["trials"] / figures["span"],
        "failed_claims": sum(r["failures"] for r in reports) + figures["failed"],
        "connections": sampler.peak,
        "lost_or_duplicated": figures["wrong"],
        "trials": figures["trials"],
        "wall": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 workers only")
    parser.add_argument("--workers", default="8,32,64", help="comma-separated worker counts")
    parser.add_argument("--modes", default="direct,proxy")
    parser.add_argument("--trials-per-worker", type=int, default=2)
    parser.add_argument("--trial-ms", type=float, default=50.0)
    args = parser.parse_args()
    counts = [8] if args.quick else [int(n) for n in args.workers.split(",")]
    modes = args.modes.split(",")
    ensure_postgres()
    import torch

    torch.set_num_threads(1)  # before any torch op: the forked workers inherit it
    import optuna

    import dm_tune.campaign.worker  # noqa: F401  (imports paid once, before the forks)

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    print(f"# {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; stub trial "
          f"{args.trial_ms:g} ms; {args.trials_per_worker} DM trials per worker; proxy "
          f"pool {POOL_SIZE}", flush=True)
    with tempfile.TemporaryDirectory(prefix="dm-tune-scale-") as tmp:
        for workers in counts:
            for mode in modes:
                run = one_run(mode, workers, args.trials_per_worker, args.trial_ms / 1000,
                              Path(tmp))
                print(f"# {mode:6s} N={workers:3d}: {run['trials']} trials, "
                      f"{run['claims_per_s']:.1f} claims/s, {run['failed_claims']} failed, "
                      f"peak {run['connections']} connections, {run['lost_or_duplicated']} "
                      f"lost or duplicated, {run['wall']:.1f} s", flush=True)
                for figure in ("claims_per_s", "failed_claims", "connections",
                               "lost_or_duplicated"):
                    key = f"scale_{mode}_{figure}_{workers}"
                    value = run[figure]
                    shown = f"{value:.2f}" if isinstance(value, float) else str(value)
                    print(f"RESULT {key} {shown} target {TARGETS.get(key, '-')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
