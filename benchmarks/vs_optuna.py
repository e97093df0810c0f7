"""The same search, dm-tune vs a hand-written Optuna script: CPU time and selected test accuracy.

One study: digits, 40% symmetric noise, 30 DM trials of 40 epochs, TPE + Hyperband (first
rung at epoch 10), no baselines. ``dm-tune run`` runs it as a campaign on a temporary
SQLite file (with ``[search] population = K``: K trials trained as one model);
``benchmarks/plain_optuna.py`` runs it as a plain Optuna study (no dm-tune import). CPU
time is each whole process's user + system time (imports included: a user pays them),
the two runs interleaved ``--rounds`` times. Prints::

    RESULT cpu_ratio_dm_tune_vs_plain_optuna <median ratio> target 0.6
    RESULT cpu_ratio_dm_tune_vs_plain_optuna_sqlite <the script on a SQLite file> target -
    RESULT selected_test_accuracy_dm_tune <mean over rounds> target -
    RESULT selected_test_accuracy_plain_optuna <mean over rounds> target -

    python benchmarks/vs_optuna.py [--population 8] [--rounds 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CAMPAIGN = """
[campaign]
name = "vs-optuna"
seed = 0

[data]
dataset = "digits"
val_fraction = 0.125
test_fraction = 0.2

[model]
name = "mlp"

[training]
epochs = {epochs}
batch_size = 64
lr = 0.1
momentum = 0.9
weight_decay = 5e-4
schedule = "cosine"

[[noise]]
kind = "symmetric"
rates = [0.4]

[search]
sampler = "tpe"
pruner = "hyperband"
trials = {trials}
min_epochs = {min_epochs}
population = {population}

[baselines]
losses = []
"""
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
       "DM_TUNE_TORCH_THREADS": "1", "DM_TUNE_STORAGE": ""}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_dm_tune(workdir: Path, trials: int, epochs: int, population: int) -> tuple[float, float]:
    """(CPU seconds, selected test accuracy) of `dm-tune run` on a fresh database."""
    config = workdir / "vs-optuna.toml"
    config.write_text(CAMPAIGN.format(trials=trials, epochs=epochs, population=population,
                                      min_epochs=max(1, epochs // 4)))
    db = workdir / f"run-{population}-{len(list(workdir.iterdir()))}.db"
    url = f"sqlite:///{db}"
    before = _children_cpu()
    # --no-confirm: the same search as the script's; the confirmation after it (on by
    # default) re-trains candidates with new seeds, which the script has no counterpart of
    subprocess.run([sys.executable, "-m", "dm_tune", "run", str(config), "--storage", url,
                    "--device", "cpu", "--no-report", "--no-confirm"], check=True, env=ENV,
                   stdout=subprocess.DEVNULL)
    cpu = _children_cpu() - before
    exported = subprocess.run([sys.executable, "-m", "dm_tune", "export", str(config),
                               "--storage", url], check=True, env=ENV, capture_output=True,
                              text=True)
    selected = json.loads(exported.stdout)["settings"][0]["selected"]
    print(f"# dm-tune: {_trial_epochs(url)} trial-epochs", flush=True)
    return cpu, float(selected["test_accuracy"])


def _trial_epochs(url: str) -> int:
    """Epochs trained over the search's trials (pruned ones included)."""
    import optuna  # the driver's only Optuna use: counting, after the timed run

    storage = optuna.storages.RDBStorage(url)
    return sum(int(t.user_attrs.get("epochs_run", 0))
               for study in storage.get_all_studies()
               for t in storage.get_all_trials(storage.get_study_id_from_name(study.study_name),
                                               deepcopy=False))


#: dm-tune's study name for the campaign above: the script's study takes it too, so that
#: Hyperband (which hashes the study name and trial number into a bracket) puts the same
#: trial numbers in the same brackets on both sides; with Optuna's random study names the
#: script's work varied from 720 to 880 trial-epochs between runs
STUDY_NAME = "vs-optuna/symmetric-0.40"


def run_plain(trials: int, epochs: int, storage: str | None = None) -> tuple[float, float]:
    """(CPU seconds, selected test accuracy) of the hand-written Optuna script."""
    before = _children_cpu()
    extra = ["--study-name", STUDY_NAME, *(["--storage", storage] if storage else [])]
    out = subprocess.run([sys.executable, str(HERE / "plain_optuna.py"), "--trials",
                          str(trials), "--epochs", str(epochs), *extra], check=True, env=ENV,
                         capture_output=True, text=True)
    cpu = _children_cpu() - before
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"# plain Optuna: {summary['trial_epochs']} trial-epochs", flush=True)
    return cpu, float(summary["test_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="6 trials of 8 epochs (smoke)")
    args = parser.parse_args()
    trials, epochs = (6, 8) if args.quick else (args.trials, args.epochs)
    ratios, sqlite_ratios, ours, theirs = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            order = ("dm", "plain", "plain-sqlite")
            order = order if round_ % 2 == 0 else order[::-1]
            measured = {}
            for name in order:
                if name == "dm":
                    measured[name] = run_dm_tune(Path(tmp), trials, epochs, args.population)
                elif name == "plain":
                    measured[name] = run_plain(trials, epochs)
                else:  # the script keeping its trials in SQLite, as dm-tune always does
                    url = f"sqlite:///{Path(tmp) / f'plain-{round_}.db'}"
                    measured[name] = run_plain(trials, epochs, url)
            print(f"# round {round_}: dm-tune {measured['dm'][0]:.1f} s CPU, test "
                  f"{measured['dm'][1]:.4f}; plain Optuna {measured['plain'][0]:.1f} s CPU, "
                  f"test {measured['plain'][1]:.4f}; plain Optuna on SQLite "
                  f"{measured['plain-sqlite'][0]:.1f} s CPU", flush=True)
            ratios.append(measured["dm"][0] / measured["plain"][0])
            sqlite_ratios.append(measured["dm"][0] / measured["plain-sqlite"][0])
            ours.append(measured["dm"][1])
            theirs.append(measured["plain"][1])
    print(f"RESULT cpu_ratio_dm_tune_vs_plain_optuna {statistics.median(ratios):.3f} "
          "target 0.6")
    print(f"RESULT cpu_ratio_dm_tune_vs_plain_optuna_sqlite {statistics.median(sqlite_ratios):.3f} "
          "target -")
    print(f"RESULT selected_test_accuracy_dm_tune {statistics.mean(ours):.4f} target -")
    print(f"RESULT selected_test_accuracy_plain_optuna {statistics.mean(theirs):.4f} target -")


if __name__ == "__main__":
    main()
