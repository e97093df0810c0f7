"""A hand-written Optuna study of DM on digits: what a user writes without dm-tune.

Plain Optuna + torch + scikit-learn, no dm-tune import: digits, 40% symmetric noise on
the training labels, a clean validation split, an MLP (64-256-256-10), SGD with cosine
decay, the DM loss as a detached-weight surrogate, TPE + Hyperband over
(emphasis_mode, emphasis_variance), the objective the final-epoch validation accuracy.
Prints one JSON line: the selected trial's parameters, its test accuracy, the CPU time.

    python benchmarks/plain_optuna.py --trials 30 --epochs 40 [--storage sqlite:///x.db]
        [--study-name NAME]
"""

from __future__ import annotations

import argparse
import json
import math
import resource

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


def noisy_digits(rate: float, seed: int) -> dict[str, torch.Tensor]:
    """Train (noisy) / clean validation / test splits of digits, features in [0, 1]."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.2, stratify=y,
                                                      random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=0.125,
                                                      stratify=y_rest, random_state=seed)
    rng = np.random.default_rng(seed)
    flip = rng.random(len(y_train)) < rate
    other = (y_train + rng.integers(1, 10, len(y_train))) % 10  # a uniformly random other class
    y_noisy = np.where(flip, other, y_train)
    as_t = torch.from_numpy
    return {"x_train": as_t(x_train), "y_train": as_t(y_noisy), "x_val": as_t(x_val),
            "y_val": as_t(y_val), "x_test": as_t(x_test), "y_test": as_t(y_test)}


def dm_loss(logits: torch.Tensor, y: torch.Tensor, mode: float, variance: float) -> torch.Tensor:
    """DM: CCE's direction with the emphasis density p^lam (1-p) as each example's weight."""
    ce = F.cross_entropy(logits, y, reduction="none")
    with torch.no_grad():
        p = torch.exp(-ce)
        lam = mode / (1.0 - mode)
        weights = torch.softmax(variance * p.pow(lam) * (1.0 - p), dim=0)
        # d CE / d z = p - e_y has L1 norm 2 (1 - p_y): rescale it to the weight
        coefficients = weights / (2.0 * (1.0 - p) + 1e-6)
    return (coefficients * ce).sum()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def objective_factory(data: dict[str, torch.Tensor], epochs: int, seed: int):
    def objective(trial: optuna.Trial) -> float:
        mode = trial.suggest_float("emphasis_mode", 0.0, 0.8)
        variance = trial.suggest_float("emphasis_variance", 0.0, 24.0)
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                              nn.Linear(256, 10))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        n = len(data["y_train"])
        steps = epochs * math.ceil(n / 64)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        val = 0.0
        for epoch in range(1, epochs + 1):
            model.train()
            for batch in torch.randperm(n).split(64):
                loss = dm_loss(model(data["x_train"][batch]), data["y_train"][batch], mode,
                               variance)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
            model.eval()
            val = accuracy(model, data["x_val"], data["y_val"])
            trial.report(val, epoch)
            trial.set_user_attr("epochs_run", epoch)
            if trial.should_prune():
                raise optuna.TrialPruned
        trial.set_user_attr("test_accuracy", accuracy(model, data["x_test"], data["y_test"]))
        return val

    return objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--rate", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", default=None,
                        help="an Optuna storage URL (default: in memory, nothing kept)")
    parser.add_argument("--study-name", default=None,
                        help="the study's name (default: Optuna's random one); Hyperband "
                        "picks each trial's bracket from a hash of it")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=args.storage,
        study_name=args.study_name,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=args.seed, multivariate=True),
        pruner=optuna.pruners.HyperbandPruner(min_resource=10, max_resource=args.epochs,
                                              reduction_factor=3),
    )
    study.optimize(objective_factory(noisy_digits(args.rate, args.seed), args.epochs, args.seed),
                   n_trials=args.trials)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    best = study.best_trial
    print(json.dumps({"cpu_seconds": usage.ru_utime + usage.ru_stime, **best.params,
                      "val_accuracy": best.value,
                      "trial_epochs": sum(t.user_attrs.get("epochs_run", 0)
                                          for t in study.trials),
                      "test_accuracy": best.user_attrs["test_accuracy"]}))


if __name__ == "__main__":
    main()
