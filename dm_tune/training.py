"""One trial end to end: build a model, train with a loss on (noisy) labels, evaluate.

The loop keeps the data on the device as tensors, draws batches from a seeded
`torch.randperm` and syncs with the host only once per epoch. On CUDA it also augments
on the device (crop/flip in one gather), runs under bf16 autocast with images and model
in channels_last and cudnn.benchmark on; `TrainSpec.compile` adds torch.compile.
`TrainSpec.precision` ("fp32" or "bf16") sets the autocast on any device; None keeps each
device's default (bf16 on CUDA, fp32 elsewhere).

Example:
    >>> from dm_tune.data import DataSpec
    >>> result = train_trial(DataSpec("digits"), TrainSpec(epochs=5), loss="cce")
    >>> result.epochs_run
    5
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from dm_tune.data import DataSpec, TrialData, augment_batch, prepare_data
from dm_tune.models import build_model

__all__ = [
    "NonFiniteLossError",
    "TrainSpec",
    "TrialResult",
    "best_val_epoch",
    "cuda_process_settings",
    "epoch_derivative_sums",
    "check_train_spec",
    "derivative_means",
    "derivative_sums",
    "derivative_weights",
    "evaluate",
    "lr_per_step",
    "noise_fit_fractions",
    "nonfinite_loss_message",
    "predict",
    "PRECISIONS",
    "resolved_precision",
    "train_autocast",
    "train_trial",
    "trial_generators",
    "trial_model",
    "trial_optimizer",
    "trial_result",
]

SCHEDULES = ("constant", "cosine", "step")
#: forward precisions: "fp32" (no autocast) or "bf16" (autocast to bfloat16); see TrainSpec
PRECISIONS = ("fp32", "bf16")
EVAL_BATCH = 2048
EpochCallback = Callable[[int, dict[str, float]], None]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (the message names the epoch)."""


@dataclass(frozen=True)
class TrainSpec:
    """How a trial trains: model, optimiser, schedule, seed, device."""

    model: str = "mlp"
    model_params: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    seed: int = 0
    device: str = "cpu"
    augment: bool | None = None  # None: on for image data
    compile: bool = False  # torch.compile the training forward (worth it on GPUs)
    nesterov: bool = False
    #: "fp32" or "bf16" autocast of the forward; None: the device's default (bf16 on CUDA,
    #: where it is 2-3x faster, fp32 elsewhere). The loss always sees float32 logits.
    precision: str | None = None


@dataclass
class TrialResult:
    """Per-epoch curves and the final figures of one trial."""

    val_accuracy_per_epoch: list[float]
    test_accuracy_per_epoch: list[float]
    val_accuracy: float
    test_accuracy: float
    best_val_epoch: int
    test_accuracy_at_best_val: float
    noisy_train_accuracy: float
    memorized_noisy_fraction: float
    corrected_noisy_fraction: float
    realised_noise_rate: float
    epochs_run: int
    seconds: float
    device: str
    train_loss_per_epoch: list[float] = field(default_factory=list)
    #: per epoch, the mean derivative magnitude on corrupted / clean training examples
    derivative_corrupted_per_epoch: list[float] = field(default_factory=list)
    derivative_clean_per_epoch: list[float] = field(default_factory=list)
    #: the forward's precision the trial trained in ("fp32" or "bf16")
    precision: str = "fp32"

    def user_attrs(self) -> dict[str, Any]:
        """The trial user attributes of DESIGN.md section 5 (JSON-serialisable)."""
        return {
            "test_accuracy": float(self.test_accuracy),
            "test_accuracy_at_best_val": float(self.test_accuracy_at_best_val),
            "best_val_epoch": int(self.best_val_epoch),
            "noisy_train_accuracy": float(self.noisy_train_accuracy),
            "memorized_noisy_fraction": float(self.memorized_noisy_fraction),
            "corrected_noisy_fraction": float(self.corrected_noisy_fraction),
            "realised_noise_rate": float(self.realised_noise_rate),
            "seconds": float(self.seconds),
            "device": str(self.device),
            "precision": str(self.precision),
            "epochs_run": int(self.epochs_run),
        }


# ------------------------------------------------------------------------- evaluation


def predict(
    model: nn.Module, x: torch.Tensor, batch: int = EVAL_BATCH, autocast: bool | str = False
) -> torch.Tensor:
    """Predicted classes of `x` in eval mode, in large batches, without autograd."""
    was_training = model.training
    model.eval()
    preds = []
    with torch.inference_mode(), _autocast(x.device, autocast):
        for chunk in torch.split(x, batch):
            preds.append(model(chunk).argmax(dim=1))
    model.train(was_training)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=x.device)


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: bool | str = False
) -> float:
    """Accuracy of `model` on (x, y); 0.0 for an empty set."""
    if len(y) == 0:
        return 0.0
    return (predict(model, x, autocast=autocast) == y).float().mean().item()


def noise_fit_fractions(
    pred: torch.Tensor, noisy: torch.Tensor, true: torch.Tensor
) -> tuple[float, float, float]:
    """(accuracy vs noisy labels, memorised, corrected) fractions from train predictions.

    Memorised: among corrupted examples (noisy != true), the fraction predicted as their
    noisy label; corrected: the fraction predicted as their true label. Both are 0.0
    when nothing is corrupted.
    """
    noisy_acc = (pred == noisy).float().mean().item() if len(pred) else 0.0
    corrupted = noisy != true
    n = int(corrupted.sum().item())
    if n == 0:
        return noisy_acc, 0.0, 0.0
    memorized = (pred[corrupted] == noisy[corrupted]).sum().item() / n
    corrected = (pred[corrupted] == true[corrupted]).sum().item() / n
    return noisy_acc, memorized, corrected


# --------------------------------------------------------------------------- training


def resolved_precision(spec: TrainSpec, device: torch.device) -> str:
    """The precision a trial trains in: spec.precision, else the device's default (bf16 on
    CUDA, the layout tensor cores run at full rate; fp32 elsewhere, as before the option)."""
    if spec.precision is not None:
        return spec.precision
    return "bf16" if device.type == "cuda" else "fp32"


def _autocast(device: torch.device, enabled: bool | str) -> contextlib.AbstractContextManager:
    """bf16 autocast for precision "bf16" on any device (True: bf16 on CUDA only, the
    pre-`precision` meaning); nothing for "fp32" / False."""
    if enabled is True:
        enabled = "bf16" if device.type == "cuda" else "fp32"
    if enabled == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _lr_per_step(spec: TrainSpec, steps_per_epoch: int) -> list[float]:
    """The learning rate of every optimiser step (cosine is per step, to zero)."""
    total = spec.epochs * steps_per_epoch
    if spec.schedule == "constant":
        return [spec.lr] * total
    if spec.schedule == "cosine":
        return [0.5 * spec.lr * (1 + math.cos(math.pi * t / total)) for t in range(total)]
    # step: divide by 10 at 50% and 75% of training (He et al.'s CIFAR recipe)
    marks = (spec.epochs // 2 * steps_per_epoch, spec.epochs * 3 // 4 * steps_per_epoch)
    return [spec.lr * 0.1 ** sum(t >= m for m in marks) for t in range(total)]


def _check_train_spec(spec: TrainSpec) -> None:
    """Raise ValueError on a TrainSpec that cannot train."""
    if spec.schedule not in SCHEDULES:
        raise ValueError(f"schedule: unknown {spec.schedule!r}; expected one of {SCHEDULES}")
    if spec.epochs < 1:
        raise ValueError(f"epochs: must be at least 1, got {spec.epochs}")
    if spec.batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1, got {spec.batch_size}")
    if not spec.lr > 0:
        raise ValueError(f"lr: must be positive, got {spec.lr}")
    if spec.precision is not None and spec.precision not in PRECISIONS:
        raise ValueError(f"precision: unknown {spec.precision!r}; expected one of {PRECISIONS}")


def _resolve_loss(loss: str | LossFn, loss_params: Mapping[str, Any] | None) -> LossFn:
    """A loss callable from a registry name (losses.get_loss) or a callable as is."""
    if callable(loss):
        return loss
    from dm_tune.losses import get_loss

    return get_loss(loss, **dict(loss_params or {}))


def _build(data: TrialData, spec: TrainSpec, device: torch.device) -> nn.Module:
    """The model, initialised from spec.seed without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = build_model(spec.model, data.input_shape, data.num_classes, **spec.model_params)
    model = model.to(device)
    if device.type == "cuda" and data.is_image:
        model = model.to(memory_format=torch.channels_last)
    return model


def _progress(enabled: bool | None):
    """A rich progress bar over epochs, or None."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    )


@dataclass
class _Loop:
    """Everything one epoch of training needs (kept together to keep functions short)."""

    model: nn.Module
    step_model: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    lrs: list[float]
    x: torch.Tensor
    y: torch.Tensor
    batch_size: int
    order_gen: torch.Generator
    aug_gen: torch.Generator | None
    #: "fp32" or "bf16" (resolved_precision)
    amp: str
    #: (N, 2) float: [1 where the given label is wrong, 1] (see derivative_sums)
    derivative_weights: torch.Tensor | None = None
    step: int = 0
    #: after an epoch: (sum of derivative magnitudes on corrupted examples, on all)
    derivative_sums: torch.Tensor | None = None

    def epoch(self) -> torch.Tensor:
        """Train one epoch; return the mean batch loss as a device tensor (no host sync)."""
        self.model.train()
        perm = torch.randperm(len(self.y), generator=self.order_gen, device=self.y.device)
        total = torch.zeros((), device=self.y.device)
        norms: list[torch.Tensor] = []
        group = self.optimizer.param_groups[0]
        batches = torch.split(perm, self.batch_size)
        for idx in batches:
            xb, yb = self.x[idx], self.y[idx]
            if self.aug_gen is not None:
                xb = augment_batch(xb, self.aug_gen)
            group["lr"] = self.lrs[self.step]
            with _autocast(xb.device, self.amp):
                logits = self.step_model(xb)
            scores = logits.float()
            scores.retain_grad()
            loss = self.loss_fn(scores, yb)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach()
            norms.append(torch.linalg.vector_norm(scores.grad, ord=1, dim=-1))
            self.step += 1
        self.derivative_sums = _epoch_sums(norms, self.derivative_weights[perm])
        return total / len(batches)


def derivative_sums(grad: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    """(sum over the corrupted examples, sum over all) of the batch's derivative magnitudes.

    An example's derivative magnitude is the L1 norm of the loss's gradient w.r.t. its
    logits times the batch size B (a mean-reduced loss gives example i ``dl_i/dz_i / B``):
    CCE's is ``2 (1 - p_y)``, DM's ``B w_i / sum_j w_j`` (DESIGN.md section 1). ``grad``
    (..., B, C), ``corrupted`` (..., B) with 1.0 where the given label is wrong; the sums
    are taken over the batch axis (shape (..., 2)).
    """
    weights = torch.stack([corrupted, torch.ones_like(corrupted)], dim=-1)
    return _epoch_sums([torch.linalg.vector_norm(grad, ord=1, dim=-1)], weights)


def _epoch_sums(norms: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """derivative_sums of a whole epoch: ``norms`` the per-step L1 norms of the logit
    gradients (..., B_j) in batch order, ``weights`` (..., N, 2) = [corrupted, 1] in the
    same order. The loops keep one op a step (each costs ~15 us on a CPU) and do the
    rest here, once an epoch."""
    sizes = torch.cat([torch.full((n.shape[-1],), float(n.shape[-1]), dtype=n.dtype,
                                  device=n.device) for n in norms])
    magnitude = torch.cat(norms, dim=-1).mul_(sizes).unsqueeze(-2)  # (..., 1, N)
    return torch.matmul(magnitude, weights.to(magnitude.dtype)).squeeze(-2)


def _derivative_weights(corrupted: torch.Tensor) -> torch.Tensor:
    """[corrupted, 1] per example, (..., N, 2) float."""
    return torch.stack([corrupted.float(), torch.ones_like(corrupted, dtype=torch.float)], -1)


def derivative_means(sums: torch.Tensor, corrupted, total: int) -> torch.Tensor:
    """(mean on corrupted, mean on clean) magnitudes of an epoch from its sums (..., 2) and
    the number of corrupted examples (an int or a (...,) tensor) among ``total``: an epoch
    visits every training example once. NaN (0 / 0) where a group is empty."""
    count = torch.as_tensor(corrupted, dtype=sums.dtype, device=sums.device)
    return torch.stack([sums[..., 0] / count, (sums[..., 1] - sums[..., 0]) / (total - count)],
                       dim=-1)


def _make_loop(
    data: TrialData, spec: TrainSpec, loss_fn: LossFn, device: torch.device
) -> _Loop:
    """Model, optimiser, schedule and generators of one trial."""
    model = _build(data, spec, device)
    steps = math.ceil(len(data.y_train) / spec.batch_size)
    optimizer = trial_optimizer(model.parameters(), spec)
    order_gen, aug_gen = trial_generators(data, spec, device)
    # torch.compile wraps the training forward only; evaluation runs the eager module
    # (same parameters), so the varying eval batch sizes never trigger recompiles.
    step_model = torch.compile(model) if spec.compile else model
    return _Loop(
        model, step_model, optimizer, loss_fn, _lr_per_step(spec, steps), data.x_train,
        data.y_train,
        spec.batch_size, order_gen, aug_gen, amp=resolved_precision(spec, device),
        derivative_weights=_derivative_weights(data.y_train != data.y_train_true),
    )


# Public hooks for engines that must replicate a trial exactly (dm_tune.population trains
# K trials as one model): the same model and initialisation, optimiser, schedule, random
# streams and result assembly as train_trial, from one place.


def trial_model(data: TrialData, spec: TrainSpec, device: torch.device) -> nn.Module:
    """The model train_trial trains, initialised from spec.seed (global RNG untouched)."""
    return _build(data, spec, device)


def trial_optimizer(params: Iterable[torch.Tensor], spec: TrainSpec) -> torch.optim.SGD:
    """train_trial's SGD (momentum, weight decay, nesterov) over `params`."""
    return torch.optim.SGD(
        params, lr=spec.lr, momentum=spec.momentum,
        weight_decay=spec.weight_decay, nesterov=spec.nesterov and spec.momentum > 0,
    )


def trial_generators(
    data: TrialData, spec: TrainSpec, device: torch.device
) -> tuple[torch.Generator, torch.Generator | None]:
    """(batch order, augmentation or None) generators of a trial seeded from spec.seed."""
    augment = data.is_image if spec.augment is None else spec.augment
    if augment and not data.is_image:
        raise ValueError("augment: crop/flip augmentation needs image data")
    order_gen = torch.Generator(device=device).manual_seed(spec.seed)
    aug_gen = torch.Generator(device=device).manual_seed(spec.seed + 1) if augment else None
    return order_gen, aug_gen


def epoch_derivative_sums(norms: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """The training loop's derivative sums of an epoch (see derivative_sums): the per-step
    L1 norms of the logit gradients and the [corrupted, 1] weights in batch order."""
    return _epoch_sums(norms, weights)


def derivative_weights(corrupted: torch.Tensor) -> torch.Tensor:
    """The weights batch_derivative_sums takes, (..., N, 2), from a corrupted mask."""
    return _derivative_weights(corrupted)


def lr_per_step(spec: TrainSpec, steps_per_epoch: int) -> list[float]:
    """The learning rate of every optimiser step of a trial."""
    return _lr_per_step(spec, steps_per_epoch)


def check_train_spec(spec: TrainSpec) -> None:
    """Raise ValueError on a TrainSpec that cannot train."""
    _check_train_spec(spec)


def train_autocast(device: torch.device, enabled: bool | str) -> contextlib.AbstractContextManager:
    """The autocast context train_trial runs forwards under: a precision ("fp32", "bf16",
    see resolved_precision) or, as before the option, True for bf16 on CUDA only."""
    return _autocast(device, enabled)


def trial_result(
    curves: dict[str, list[float]], fit: tuple[float, float, float], data: TrialData,
    spec: TrainSpec, seconds: float,
) -> TrialResult:
    """A TrialResult from curves {"val", "test", "loss"} and noise_fit_fractions' figures."""
    return _result(curves, fit, data, spec, seconds)


def nonfinite_loss_message(train_loss: float, epoch: int, spec: TrainSpec) -> str:
    """The NonFiniteLossError message of a trial whose epoch loss is NaN/inf."""
    return (f"training loss is {train_loss} in epoch {epoch} of {spec.epochs} "
            f"(lr {spec.lr}, model {spec.model})")


_CUDA_SET_UP = False


def cuda_process_settings(device: torch.device) -> None:
    """Turn cudnn.benchmark on, once per process, the first time a trial trains on CUDA.

    Set once and left on (not flipped on and back off around every trial): cuDNN's
    autotuning results are cached per process and shape, so every later trial and
    population of the worker reuses them. A caller that wants it off sets it after.
    """
    global _CUDA_SET_UP
    if device.type == "cuda" and not _CUDA_SET_UP:
        torch.backends.cudnn.benchmark = True
        _CUDA_SET_UP = True


def device_layout(data: TrialData, device: torch.device) -> TrialData:
    """Images in channels_last on CUDA (the layout bf16 convolutions run fastest in).

    Train, validation and test images are converted once, so neither the training steps
    nor the per-epoch evaluation converts layouts again; other data is returned as is.
    """
    if device.type != "cuda" or not data.is_image:
        return data
    return replace(data, **{
        name: getattr(data, name).contiguous(memory_format=torch.channels_last)
        for name in ("x_train", "x_val", "x_test")
    })


def train_trial(
    data: TrialData | DataSpec,
    spec: TrainSpec,
    loss: str | LossFn = "dm",
    loss_params: Mapping[str, Any] | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool | None = None,
) -> TrialResult:
    """Train one model on `data` with `loss`; clean-val and test accuracy every epoch.

    `on_epoch(epoch, metrics)` runs after each (1-based) epoch; what it raises (e.g.
    optuna.TrialPruned) propagates. A NaN/inf training loss raises NonFiniteLossError.
    """
    _check_train_spec(spec)
    start = time.perf_counter()
    device = torch.device(spec.device)
    if isinstance(data, DataSpec):
        data = prepare_data(data)
    data = device_layout(data.to(device), device)  # resident on the device for the trial
    loss_fn = _resolve_loss(loss, loss_params)
    cuda_process_settings(device)
    loop = _make_loop(data, spec, loss_fn, device)
    curves = _run_epochs(loop, data, spec, on_epoch, progress, start)
    pred = predict(loop.model, loop.x, autocast=loop.amp)
    fit = noise_fit_fractions(pred, data.y_train, data.y_train_true)
    return _result(curves, fit, data, spec, time.perf_counter() - start)


def _run_epochs(
    loop: _Loop,
    data: TrialData,
    spec: TrainSpec,
    on_epoch: EpochCallback | None,
    progress: bool | None,
    start: float,
) -> dict[str, list[float]]:
    """Train all epochs, evaluating and reporting after each."""
    curves: dict[str, list[float]] = {"val": [], "test": [], "loss": [],
                                      "derivative_corrupted": [], "derivative_clean": []}
    n_corrupted = int(loop.derivative_weights[:, 0].sum().item())
    bar = _progress(progress)
    with bar if bar is not None else contextlib.nullcontext():
        task = bar.add_task(f"{spec.model}", total=spec.epochs) if bar is not None else None
        for epoch in range(1, spec.epochs + 1):
            train_loss = loop.epoch().item()  # the one host sync of the epoch
            if not math.isfinite(train_loss):
                raise NonFiniteLossError(nonfinite_loss_message(train_loss, epoch, spec))
            val = evaluate(loop.model, data.x_val, data.y_val, loop.amp)
            test = evaluate(loop.model, data.x_test, data.y_test, loop.amp)
            on_corrupted, on_clean = derivative_means(
                loop.derivative_sums, n_corrupted, len(loop.y)).tolist()
            for key, value in (("val", val), ("test", test), ("loss", train_loss),
                               ("derivative_corrupted", on_corrupted),
                               ("derivative_clean", on_clean)):
                curves[key].append(value)
            if bar is not None:
                bar.update(task, advance=1, description=f"{spec.model} val {val:.3f}")
            if on_epoch is not None:
                on_epoch(epoch, {
                    "val_accuracy": val, "test_accuracy": test, "train_loss": train_loss,
                    "lr": loop.lrs[loop.step - 1], "seconds": time.perf_counter() - start,
                    "derivative_corrupted": on_corrupted, "derivative_clean": on_clean,
                })
    return curves


def best_val_epoch(val: list[float], test: list[float]) -> tuple[int, float]:
    """The first (1-based) epoch with the best validation accuracy, and test accuracy there."""
    best = max(range(len(val)), key=val.__getitem__)
    return best + 1, test[best]


def _result(
    curves: dict[str, list[float]], fit: tuple[float, float, float], data: TrialData,
    spec: TrainSpec, seconds: float,
) -> TrialResult:
    """Assemble the TrialResult from the curves and the final train-set figures."""
    val, test = curves["val"], curves["test"]
    best_epoch, test_at_best = best_val_epoch(val, test)
    return TrialResult(
        val_accuracy_per_epoch=val,
        test_accuracy_per_epoch=test,
        val_accuracy=val[-1],
        test_accuracy=test[-1],
        best_val_epoch=best_epoch,
        test_accuracy_at_best_val=test_at_best,
        noisy_train_accuracy=fit[0],
        memorized_noisy_fraction=fit[1],
        corrected_noisy_fraction=fit[2],
        realised_noise_rate=float(data.realised_noise_rate),
        epochs_run=len(val),
        seconds=seconds,
        device=str(spec.device),
        train_loss_per_epoch=curves["loss"],
        derivative_corrupted_per_epoch=curves.get("derivative_corrupted", []),
        derivative_clean_per_epoch=curves.get("derivative_clean", []),
        precision=resolved_precision(spec, torch.device(spec.device)),
    )
