"""Time spent in Optuna's sampler + storage per trial, as a fraction of one demo trial.

A worker's per-trial bookkeeping is: fail stale trials, ask (TPE over the two DM params,
on a study that already holds N trials), report + should_prune (Hyperband) after each of
E epochs, the trial's user attrs, and tell. This script times exactly that with the
training replaced by nothing, for SQLite and PostgreSQL, and divides by the wall time of
one demo trial (`dm_tune.training.train_trial` on digits, E epochs, CPU), measured here
unless --trial-seconds is given. Prints one line per backend:

    RESULT storage_overhead_<backend> <fraction> target 0.02

Run: .venv/bin/python benchmarks/storage_overhead.py [--trials 10 --existing 100 --epochs 100
     --report-every 1]   (--report-every k: report/should_prune every k-th epoch only)
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import sqlalchemy

from dm_tune.storage import StorageError, fail_stale_trials, open_storage

PARAMS = {
    "emphasis_mode": optuna.distributions.FloatDistribution(0.0, 0.75),
    "emphasis_variance": optuna.distributions.FloatDistribution(0.0, 24.0, log=False),
}
USER_ATTRS = (  # DESIGN.md section 5, the attrs a worker writes on each trial
    "loss", "seed", "test_accuracy", "test_accuracy_at_best_val", "best_val_epoch",
    "noisy_train_accuracy", "memorized_noisy_fraction", "realised_noise_rate", "seconds",
    "device", "worker",
)  # fmt: skip


def demo_trial_seconds(epochs: int) -> float:
    """Return the wall time of one demo trial (digits, 40% symmetric noise, CPU), or 1.0."""
    try:
        from dm_tune.data import DataSpec
        from dm_tune.training import TrainSpec, train_trial
    except ImportError as exc:
        print(f"# dm_tune.training not importable ({exc}); demo trial = 1.0 s", file=sys.stderr)
        return 1.0
    data = DataSpec(dataset="digits", noise_kind="symmetric", noise_rate=0.4, seed=0)
    spec = TrainSpec(epochs=epochs, device="cpu")
    params = {"emphasis_mode": 1 / 3, "emphasis_variance": 8.0}
    train_trial(data, TrainSpec(epochs=2, device="cpu"), loss_params=params, progress=False)
    start = time.perf_counter()
    train_trial(data, spec, loss_params=params, progress=False)
    return time.perf_counter() - start


def seed_study(study: optuna.Study, existing: int, epochs: int) -> None:
    """Add ``existing`` finished trials with learning curves (as an old campaign has)."""
    rng = random.Random(0)
    trials = []
    for _ in range(existing):
        params = {"emphasis_mode": rng.uniform(0, 0.75), "emphasis_variance": rng.uniform(0, 24)}
        curve = {e: min(1.0, 0.3 + 0.6 * e / epochs + rng.uniform(-0.05, 0.05))
                 for e in range(1, epochs + 1)}  # fmt: skip
        trials.append(
            optuna.trial.create_trial(
                params=params,
                distributions=PARAMS,
                value=curve[epochs],
                intermediate_values=curve,
                user_attrs={"loss": "dm"},
            )  # fmt: skip
        )
    study.add_trials(trials)


PHASES = ("stale+ask", "report", "should_prune", "user_attrs", "tell")


def time_trials(
    storage: optuna.storages.BaseStorage, trials: int, existing: int, epochs: int, every: int
) -> tuple[list[float], dict[str, float]]:
    """Return the bookkeeping seconds of each trial (no training) and the total per phase."""
    study = optuna.create_study(
        storage=storage,
        study_name=f"bench-{uuid.uuid4().hex[:8]}",
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=10),
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs),
    )
    seed_study(study, existing, epochs)
    seconds = []
    phases = dict.fromkeys(PHASES, 0.0)
    for i in range(trials):
        t = [time.perf_counter()]
        fail_stale_trials(study)
        trial = study.ask(PARAMS)
        t.append(time.perf_counter())
        report_t = prune_t = 0.0
        for epoch in range(every, epochs + 1, every):
            a = time.perf_counter()
            trial.report(min(1.0, 0.3 + 0.006 * epoch), epoch)
            b = time.perf_counter()
            # Conservative: always all E epochs (a pruned trial would also train less).
            trial.should_prune()
            report_t += b - a
            prune_t += time.perf_counter() - b
        t.append(time.perf_counter())
        for key in USER_ATTRS:
            trial.set_user_attr(key, 0.5 if key != "worker" else f"bench-{i}")
        t.append(time.perf_counter())
        study.tell(trial, 0.9)
        t.append(time.perf_counter())
        seconds.append(t[-1] - t[0])
        if i:  # the first trial pays connection set-up and cold caches
            took_by_phase = (t[1] - t[0], report_t, prune_t, t[3] - t[2], t[4] - t[3])
            for name, took in zip(PHASES, took_by_phase, strict=True):
                phases[name] += took / (trials - 1)
    return seconds, phases


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """Yield the URL of a scratch PostgreSQL database, dropped afterwards."""
    engine = sqlalchemy.create_engine(
        admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    name = f"dmtune_bench_{uuid.uuid4().hex[:8]}"
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sqlalchemy.engine.make_url(admin_url).set(database=name).render_as_string(False)
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            )
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        engine.dispose()


def report(
    backend: str, timing: tuple[list[float], dict[str, float]], trial_seconds: float
) -> None:
    """Print the breakdown and the RESULT line."""
    seconds, phases = timing
    mean = statistics.fmean(seconds[1:] or seconds)  # first trial pays connection set-up
    print(
        f"# {backend}: {len(seconds)} trials, bookkeeping mean {mean * 1e3:.1f} ms, "
        f"median {statistics.median(seconds) * 1e3:.1f} ms, max {max(seconds) * 1e3:.1f} ms; "
        f"demo trial {trial_seconds:.2f} s"
    )
    print("#   per trial: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in phases.items()))
    print(f"RESULT storage_overhead_{backend} {mean / trial_seconds:.4f} target 0.02", flush=True)


def main() -> int:
    """Run the benchmark for both backends."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="timed trials per backend")
    parser.add_argument("--existing", type=int, default=100, help="trials already in the study")
    parser.add_argument("--epochs", type=int, default=100, help="epochs (reports) per trial")
    parser.add_argument("--report-every", type=int, default=1, help="report every k epochs")
    parser.add_argument("--trial-seconds", type=float, default=None, help="demo trial wall time")
    parser.add_argument(
        "--pg-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")

    trial_seconds = args.trial_seconds or demo_trial_seconds(args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(f"sqlite:///{Path(tmp) / 'bench.db'}")
        timing = time_trials(storage, args.trials, args.existing, args.epochs, args.report_every)
        report("sqlite", timing, trial_seconds)
        storage.engine.dispose()
    try:
        with postgres_database(args.pg_admin_url) as url:
            storage = open_storage(url)
            timing = time_trials(
                storage, args.trials, args.existing, args.epochs, args.report_every
            )
            storage.engine.dispose()
            report("postgresql", timing, trial_seconds)
    except (sqlalchemy.exc.OperationalError, StorageError) as exc:
        print(f"# postgresql skipped: server unreachable ({str(exc).splitlines()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
