"""Train K trials as one model: `train_population`.

Member k is a replicate of ``train_trial(member.data, replace(spec, seed=member.seed),
member.loss, member.loss_params)``: its model is built and initialised by train_trial's
own code (`training.trial_model`) and copied into the stacked/packed population model,
it draws its batch order (and augmentation) from its own generators seeded as a trial's,
its loss is its own (`PopulationLoss`) and one SGD optimiser over the stacked tensors
updates every member exactly as K optimisers would (SGD acts elementwise).

Members leave individually: after each epoch `on_epoch` may remove members (pruned), and
a member whose epoch loss is NaN/inf is removed ("nonfinite"). Removal compacts the
population's tensors and optimiser state, so the survivors train at K' members' cost.

Example:
    >>> from dm_tune.data import DataSpec, prepare_data
    >>> data = prepare_data(DataSpec("digits"))
    >>> members = [Member(data, "dm", {"emphasis_mode": 0.5, "emphasis_variance": 8.0}, s)
    ...            for s in range(4)]
    >>> [r.status for r in train_population(members, TrainSpec(epochs=2))]
    ['complete', 'complete', 'complete', 'complete']
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from dm_tune.data import TrialData, augment_batch
from dm_tune.losses import get_loss
from dm_tune.population.layers import PopulationModel
from dm_tune.population.loss import PopulationLoss
from dm_tune.training import (
    EVAL_BATCH,
    TrainSpec,
    TrialResult,
    check_train_spec,
    device_layout,
    lr_per_step,
    noise_fit_fractions,
    nonfinite_loss_message,
    train_autocast,
    trial_generators,
    trial_model,
    trial_optimizer,
    trial_result,
)

__all__ = [
    "Member",
    "MemberResult",
    "MemberStatus",
    "PopulationCallback",
    "check_shared_inputs",
    "stack_labels",
    "train_population",
]

MemberStatus = Literal["complete", "pruned", "nonfinite"]
#: on_epoch(epoch, {member index: metrics}) -> member indices to remove (or None)
PopulationCallback = Callable[[int, dict[int, dict[str, float]]], Iterable[int] | None]

# Everything the members must share: they differ only in their given train labels.
_SHARED = ("x_train", "x_val", "x_test", "y_val", "y_test")


@dataclass(frozen=True)
class Member:
    """One trial of a population: its data (noisy labels), loss and seed."""

    data: TrialData
    loss: str = "dm"
    loss_params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0


@dataclass
class MemberResult:
    """How one member ended, its curves, and (completed members) its TrialResult."""

    index: int
    status: MemberStatus
    val_accuracy_per_epoch: list[float]
    test_accuracy_per_epoch: list[float]
    train_loss_per_epoch: list[float]
    reason: str | None = None
    result: TrialResult | None = None

    @property
    def epochs_run(self) -> int:
        """Epochs whose validation accuracy was measured."""
        return len(self.val_accuracy_per_epoch)


def check_shared_inputs(members: Sequence[Member]) -> None:
    """Raise ValueError unless all members share inputs, clean labels and shapes."""
    if not members:
        raise ValueError("members: a population needs at least one member")
    first = members[0].data
    for k, member in enumerate(members[1:], start=1):
        data = member.data
        for name in ("num_classes", "input_shape", "is_image"):
            if getattr(data, name) != getattr(first, name):
                raise ValueError(f"members[{k}].data.{name}: {getattr(data, name)!r} differs "
                                 f"from members[0]'s {getattr(first, name)!r}")
        for name in (*_SHARED, "y_train"):
            mine, theirs = getattr(data, name), getattr(first, name)
            if name == "y_train":  # labels may differ, their count may not
                same = mine.shape == theirs.shape
            else:
                same = mine is theirs or (mine.shape == theirs.shape and mine.dtype == theirs.dtype
                                          and torch.equal(mine, theirs.to(mine.device)))
            if not same:
                raise ValueError(
                    f"members[{k}].data.{name}: differs from members[0]'s; a population shares "
                    f"its inputs (same dataset, split and seed), only y_train may differ"
                )


def stack_labels(members: Sequence[Member], device: torch.device | str = "cpu") -> torch.Tensor:
    """The members' given train labels as one (K, N) tensor on `device`."""
    return torch.stack([m.data.y_train.to(device) for m in members])


class _Population:
    """The state of the members still training (kept together to keep functions short)."""

    def __init__(
        self, members: Sequence[Member], spec: TrainSpec, data: TrialData, device: torch.device
    ) -> None:
        specs = [replace(spec, seed=m.seed) for m in members]
        # train_trial's own builder per member: the same RNG calls, so the same weights
        self.model = PopulationModel.from_models([trial_model(data, s, device) for s in specs])
        # fused: one kernel per stacked tensor; the for-loop SGD's separate passes over
        # K members' parameters cost as much as the matmuls on a digits MLP
        self.optimizer = trial_optimizer(self.model.parameters(), spec, fused=True)
        self.loss = PopulationLoss([get_loss(m.loss, **dict(m.loss_params)) for m in members])
        generators = [trial_generators(data, s, device) for s in specs]
        self.order_gens = [order for order, _ in generators]
        self.aug_gens = [aug for _, aug in generators if aug is not None]
        self.labels = stack_labels(members, device)
        self.alive = list(range(len(members)))  # member indices, in population order
        self.x = data.x_train
        self.batch_size = spec.batch_size
        self.lrs = lr_per_step(spec, math.ceil(len(data.y_train) / spec.batch_size))
        self.amp = device.type == "cuda"
        self.step = 0
        # torch.compile wraps the training forward only (as train_trial); compaction
        # changes shapes, which recompiles
        forward = self.model.forward_packed
        self.step_forward = torch.compile(forward) if spec.compile else forward

    def _batch_inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """Member k's batch x[idx[k]] (augmented with its own generator), packed."""
        if not self.aug_gens:
            return self.model.pack_inputs(self.x[idx])
        # one augment_batch call per member: each draws from its own stream exactly as
        # its trial would (a batched draw could not reproduce K generators' sequences)
        batches = [augment_batch(self.x[i], g) for i, g in zip(idx, self.aug_gens, strict=True)]
        return self.model.pack_inputs(torch.stack(batches))

    def epoch(self) -> torch.Tensor:
        """Train one epoch; each member's mean batch loss (K',) as a device tensor."""
        self.model.train()
        device = self.labels.device
        perms = torch.stack([
            torch.randperm(self.labels.shape[1], generator=g, device=device)
            for g in self.order_gens
        ])
        total = torch.zeros(len(self.alive), device=device)
        group = self.optimizer.param_groups[0]
        batches = torch.split(perms, self.batch_size, dim=1)
        for idx in batches:
            targets = self.labels.gather(1, idx)
            packed = self._batch_inputs(idx)
            group["lr"] = self.lrs[self.step]
            with train_autocast(device, self.amp):
                logits = self.step_forward(packed)
            losses = self.loss(logits.float(), targets)
            self.optimizer.zero_grad(set_to_none=True)
            # members share no parameters: each gets the gradient of its own loss
            losses.sum().backward()
            self.optimizer.step()
            total += losses.detach()
            self.step += 1
        return total / len(batches)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's predicted classes of x (K', N), in eval mode."""
        self.model.eval()
        preds = []
        # K members' activations per example: shrink the chunks to keep memory as a trial's
        chunk = max(1, EVAL_BATCH // len(self.alive))
        with torch.inference_mode(), train_autocast(x.device, self.amp):
            for part in torch.split(x, chunk):
                logits = self.model.forward_packed(self.model.shared_inputs(part))
                preds.append(logits.argmax(dim=-1))
        self.model.train()
        if not preds:
            return torch.empty(len(self.alive), 0, dtype=torch.long, device=x.device)
        return torch.cat(preds, dim=1)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        """Each member's accuracy on (x, y), as train_trial's evaluate (0.0 when empty)."""
        if len(y) == 0:
            return [0.0] * len(self.alive)
        return (self.predict(x) == y).float().mean(dim=1).tolist()

    def remove(self, positions: Iterable[int]) -> None:
        """Drop the members at `positions` from every tensor, the optimiser and the loss."""
        gone = set(positions)
        keep = [p for p in range(len(self.alive)) if p not in gone]
        if not keep:
            self.alive = []
            return
        self.model.select_members(keep, self.optimizer)
        self.loss = self.loss.select(keep)
        self.labels = self.labels[keep]
        self.order_gens = [self.order_gens[p] for p in keep]
        self.aug_gens = [self.aug_gens[p] for p in keep] if self.aug_gens else []
        self.alive = [self.alive[p] for p in keep]


def _removal_positions(population: _Population, indices: Iterable[int] | None) -> list[int]:
    """Positions of member `indices` among the living ones (ValueError for others)."""
    if indices is None:
        return []
    where = {member: p for p, member in enumerate(population.alive)}
    positions = []
    for index in indices:
        if index not in where:
            raise ValueError(f"on_epoch: member {index!r} is not training (training: "
                             f"{population.alive})")
        positions.append(where[index])
    return positions


def train_population(
    members: Sequence[Member], spec: TrainSpec, on_epoch: PopulationCallback | None = None
) -> list[MemberResult]:
    """Train `members` as one model; one MemberResult per member, in member order.

    `spec` is shared (its seed is ignored: each member uses its own). After each epoch,
    `on_epoch(epoch, {index: metrics})` sees the living members' metrics (train_trial's
    keys) and returns the indices to remove (status "pruned"), or None; what it raises
    propagates. A member with a NaN/inf epoch loss is removed with status "nonfinite".
    """
    check_train_spec(spec)
    check_shared_inputs(members)
    for k, member in enumerate(members):
        if not isinstance(member.loss, str):
            raise ValueError(f"members[{k}].loss: a registry loss name is needed, got "
                             f"{member.loss!r}")
    start = time.perf_counter()
    device = torch.device(spec.device)
    data = device_layout(members[0].data.to(device), device)
    bench = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda" or bench
    try:
        population = _Population(members, spec, data, device)
        curves = {k: {"val": [], "test": [], "loss": []} for k in range(len(members))}
        ended = _run_epochs(population, data, spec, on_epoch, curves, start)
        if population.alive:
            ended.update(_complete(population, members, data, spec, curves, start))
    finally:
        torch.backends.cudnn.benchmark = bench
    return [ended[k] for k in range(len(members))]


def _ended(index: int, status: MemberStatus, curves: dict, reason: str | None) -> MemberResult:
    """A MemberResult with copies of the member's curves."""
    return MemberResult(index, status, list(curves["val"]), list(curves["test"]),
                        list(curves["loss"]), reason)


def _run_epochs(
    population: _Population,
    data: TrialData,
    spec: TrainSpec,
    on_epoch: PopulationCallback | None,
    curves: dict[int, dict[str, list[float]]],
    start: float,
) -> dict[int, MemberResult]:
    """Train all epochs (or until no member is left); the members that left early."""
    ended: dict[int, MemberResult] = {}
    for epoch in range(1, spec.epochs + 1):
        train_loss = population.epoch().tolist()  # the one host sync of the epoch
        broken = [p for p, value in enumerate(train_loss) if not math.isfinite(value)]
        for p in broken:
            index = population.alive[p]
            ended[index] = _ended(index, "nonfinite", curves[index],
                                  nonfinite_loss_message(train_loss[p], epoch, spec))
        if broken:
            train_loss = [v for p, v in enumerate(train_loss) if p not in broken]
            population.remove(broken)
        if not population.alive:
            break
        val = population.accuracy(data.x_val, data.y_val)
        test = population.accuracy(data.x_test, data.y_test)
        metrics = {}
        for p, index in enumerate(population.alive):
            for key, value in (("val", val[p]), ("test", test[p]), ("loss", train_loss[p])):
                curves[index][key].append(value)
            metrics[index] = {
                "val_accuracy": val[p], "test_accuracy": test[p], "train_loss": train_loss[p],
                "lr": population.lrs[population.step - 1],
                "seconds": time.perf_counter() - start,
            }
        if on_epoch is None:
            continue
        positions = _removal_positions(population, on_epoch(epoch, metrics))
        for p in positions:
            index = population.alive[p]
            ended[index] = _ended(index, "pruned", curves[index],
                                  f"removed by on_epoch after epoch {epoch}")
        if positions:
            population.remove(positions)
        if not population.alive:
            break
    return ended


def _complete(
    population: _Population,
    members: Sequence[Member],
    data: TrialData,
    spec: TrainSpec,
    curves: dict[int, dict[str, list[float]]],
    start: float,
) -> dict[int, MemberResult]:
    """Results of the members that trained every epoch, with train_trial's end figures."""
    pred = population.predict(data.x_train)
    device = pred.device
    seconds = time.perf_counter() - start  # the population's wall time, shared
    done = {}
    for p, index in enumerate(population.alive):
        own = members[index].data
        fit = noise_fit_fractions(pred[p], own.y_train.to(device), own.y_train_true.to(device))
        result = trial_result(curves[index], fit, own, replace(spec, seed=members[index].seed),
                              seconds)
        done[index] = _ended(index, "complete", curves[index], None)
        done[index].result = result
    return done
