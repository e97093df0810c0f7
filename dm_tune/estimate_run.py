"""Out-of-fold probabilities trained by dm-tune, and the noise estimate of a label set.

K stratified folds of the train split: fold k's model trains on the other K - 1 folds and
predicts fold k, so every example's probabilities come from a model that never saw its
(possibly wrong) label, and the examples of one fold are all scored by the same models
(`fold_of`: the estimate ranks them per fold, see dm_tune.estimate). Label sets over the
same inputs (the draws of a benchmark, the settings of a campaign) share the folds and
train together as one population per fold (`dm_tune.population.train_population`):
they differ only in their labels.

The recipe (`OOF_SPEC`, `OOF_EPOCHS`, `OOF_REPEATS`): the campaign's model with CCE and
weight decay 5e-3, the probabilities averaged over 3 models per fold (seeds differ, the
folds do not: an average over different fold splits would mix models that trained on
an example's fold-mates into its score). Short, regularised training keeps the fold
models from memorising the noisy labels of the training folds, which is what confident
learning needs; how short depends on the data, so each label set is trained for 5 and
for 15 epochs and keeps the budget whose out-of-fold probabilities give its own labels
the lower log loss (`selected_probabilities`; a cross-validated proper score of the
noisy-label model). On the benchmarks' synthetic data 15 epochs fit the noise (the fold
models' accuracy on the true labels at symmetric 0.6: 0.59, at 5 epochs 0.75), on digits
5 epochs underfit (pairflip 0.4: 0.65 against 0.75); the log loss picks 5 and 15
epochs there (measured in benchmarks/noise_estimate.py).

Example:
    >>> from dm_tune.data import DataSpec
    >>> est = estimate_noise(DataSpec("digits", noise_kind="symmetric", noise_rate=0.4))
    >>> abs(est.estimated_rate - est.realised_rate) < 0.05
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from dm_tune.data import DataSpec, TrialData, prepare_data
from dm_tune.estimate import (
    NoiseEstimate,
    check_fold_labels,
    estimate_from_probabilities,
    held_out_log_loss,
)
from dm_tune.training import TrainSpec

__all__ = ["DEFAULT_FOLDS", "OOF_EPOCHS", "OOF_REPEATS", "OOF_SPEC", "estimate_noise",
           "fold_indices", "fold_of", "out_of_fold_probabilities", "selected_probabilities"]

DEFAULT_FOLDS = 5
#: how each fold's model trains (CCE; few epochs so the training folds are not memorised)
OOF_SPEC = TrainSpec(epochs=15, batch_size=64, lr=0.1, schedule="cosine", weight_decay=5e-3)
#: the fold models' epoch budgets; each label set keeps the one its labels score best
OOF_EPOCHS = (5, 15)
#: out-of-fold probabilities averaged over this many models per fold (one fold split)
OOF_REPEATS = 3
#: the fold models' loss and its parameters
OOF_LOSS: tuple[str, dict] = ("cce", {})


def fold_indices(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """The held-out rows of each of ``folds`` stratified folds (every class in each)."""
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed % 2**32)
    return [held for _, held in splitter.split(np.zeros(len(labels)), labels)]


def fold_of(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0 .. folds - 1) that holds each row out: :func:`fold_indices` per row."""
    ids = np.zeros(len(labels), dtype=np.int64)
    for k, held in enumerate(fold_indices(labels, folds, seed)):
        ids[held] = k
    return ids


def _fold_data(data: TrialData, train: np.ndarray, held: np.ndarray,
               first: torch.Tensor) -> TrialData:
    """Fold data: train on the `train` rows; "validate" on the held-out rows (labelled by
    the first label set: the members share it; it only feeds the accuracy curves)."""
    train_t, held_t = torch.as_tensor(train), torch.as_tensor(held)
    return replace(
        data, x_train=data.x_train[train_t], y_train=first[train_t],
        y_train_true=first[train_t], x_val=data.x_train[held_t], y_val=first[held_t],
        x_test=data.x_train[:0], y_test=first[:0],
    )


def out_of_fold_probabilities(
    data: TrialData,
    label_sets: Sequence[np.ndarray],
    folds: int = DEFAULT_FOLDS,
    spec: TrainSpec = OOF_SPEC,
    seed: int = 0,
    loss: str = OOF_LOSS[0],
    loss_params: dict | None = None,
    repeats: int = OOF_REPEATS,
) -> list[np.ndarray]:
    """Each label set's out-of-fold probabilities (N, C) over ``data.x_train``.

    The folds are stratified by the first label set and shared by all (one population
    per fold, one member per label set; ``fold_of(label_sets[0], folds, seed)`` says
    which fold holds each row out). With ``repeats`` > 1 the probabilities are the mean
    over that many models per fold (model seeds ``seed + 1000 r + k``), all trained
    without the fold. Classes with fewer than ``folds`` examples are refused
    (`EstimateError`).
    """
    from dm_tune.population import Member, train_population

    sets = [check_fold_labels(labels, data.num_classes, folds) for labels in label_sets]
    n = len(data.x_train)
    if any(len(labels) != n for labels in sets):
        raise ValueError(f"every label set needs {n} labels (one per training example)")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    out = [np.zeros((n, data.num_classes)) for _ in sets]
    tensors = [torch.as_tensor(labels) for labels in sets]
    params = dict(OOF_LOSS[1] if loss_params is None else loss_params)
    held_out = fold_indices(sets[0], folds, seed)
    for r in range(repeats):
        model_seed = seed + 1000 * r
        for k, held in enumerate(held_out):
            train = np.setdiff1d(np.arange(n), held)
            base = _fold_data(data, train, held, tensors[0])
            rows = torch.as_tensor(train)
            members = [Member(replace(base, y_train=labels[rows], y_train_true=labels[rows]),
                              loss, params, model_seed + k) for labels in tensors]
            results = train_population(members, replace(spec, seed=model_seed + k),
                                       probabilities_on=data.x_train[torch.as_tensor(held)])
            for row, result in enumerate(results):
                if result.probabilities is None:
                    raise RuntimeError(f"fold {k}: member {row} did not complete "
                                       f"({result.reason})")
                out[row][held] += result.probabilities.double().numpy() / repeats
    return out


def selected_probabilities(
    data: TrialData,
    label_sets: Sequence[np.ndarray],
    folds: int = DEFAULT_FOLDS,
    spec: TrainSpec = OOF_SPEC,
    seed: int = 0,
    budgets: Sequence[int] = OOF_EPOCHS,
) -> tuple[list[np.ndarray], list[int]]:
    """Each label set's out-of-fold probabilities at the epoch budget (of ``budgets``)
    whose probabilities give its labels the lowest log loss, and that budget."""
    if not budgets:
        raise ValueError("budgets must name at least one epoch count")
    trained = [out_of_fold_probabilities(data, label_sets, folds, replace(spec, epochs=e),
                                         seed=seed) for e in budgets]
    chosen, picks = [], []
    for row, labels in enumerate(label_sets):
        losses = [held_out_log_loss(labels, run[row]) for run in trained]
        best = int(np.argmin(losses))
        chosen.append(trained[best][row])
        picks.append(int(budgets[best]))
    return chosen, picks


def estimate_noise(
    spec: DataSpec,
    folds: int = DEFAULT_FOLDS,
    train: TrainSpec = OOF_SPEC,
    source: str = "",
    budgets: Sequence[int] = OOF_EPOCHS,
) -> NoiseEstimate:
    """Estimate the transition matrix of ``spec``'s training labels (its train split).

    The fold models train as ``train`` says, for each of ``budgets`` epochs (the chosen
    one is recorded in ``extra["epochs"]``). For synthetic noise the realised rate and
    the true kind and rate are recorded beside the estimate, so that it can be checked.
    """
    data = prepare_data(spec)
    given = data.y_train.numpy()
    check_fold_labels(given, data.num_classes, folds)
    probs, picks = selected_probabilities(data, [given], folds, train, spec.seed, budgets)
    probs = probs[0]
    dataset = spec.dataset if spec.dataset != "npz" else None
    estimate = estimate_from_probabilities(given, probs, dataset,
                                           groups=fold_of(given, folds, spec.seed))
    estimate.source, estimate.folds = source or spec.dataset, folds
    estimate.extra["epochs"] = picks[0]
    if spec.noise_kind != "human":  # synthetic: the truth is known
        estimate.true_kind, estimate.true_rate = spec.noise_kind, float(spec.noise_rate)
        estimate.realised_rate = float(data.realised_noise_rate)
    elif bool((data.y_train != data.y_train_true).any()) or spec.dataset == "npz":
        # an npz's clean y beside noisy_y (when it has them): the realised rate
        estimate.realised_rate = float(data.realised_noise_rate)
    return estimate
