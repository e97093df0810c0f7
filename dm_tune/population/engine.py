"""Train K trials as one model: `train_population`.

Member k is a replicate of ``train_trial(member.data, replace(spec, seed=member.seed),
member.loss, member.loss_params)``: its model is built and initialised by train_trial's
own code (`training.trial_model`) and copied into the stacked/packed population model,
it draws its batch order (and augmentation) from its own generators seeded as a trial's,
its loss is its own (`PopulationLoss`) and one SGD optimiser over the stacked tensors
updates every member exactly as K optimisers would (SGD acts elementwise).

Members leave individually: after each epoch `on_epoch` may remove members (pruned), a
member whose epoch loss is NaN/inf is removed ("nonfinite") and one that trained every
epoch completes. Removal compacts the population's tensors and optimiser state, so the
survivors train at K' members' cost. With `refill`, new members take the freed places at
their own first epoch (`StackedSGD` steps each cohort at its own learning rate), so a
worker's population stays K wide while its trials end at different epochs.

Example:
    >>> from dm_tune.data import DataSpec, prepare_data
    >>> data = prepare_data(DataSpec("digits"))
    >>> members = [Member(data, "dm", {"emphasis_mode": 0.5, "emphasis_variance": 8.0}, s)
    ...            for s in range(4)]
    >>> [r.status for r in train_population(members, TrainSpec(epochs=2))]
    ['complete', 'complete', 'complete', 'complete']
"""

from __future__ import annotations

import copy
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
from dm_tune.population.optim import StackedSGD
from dm_tune.training import (
    EVAL_BATCH,
    TrainSpec,
    TrialResult,
    check_train_spec,
    cuda_process_settings,
    derivative_means,
    derivative_weights,
    device_layout,
    epoch_derivative_sums,
    lr_per_step,
    noise_fit_fractions,
    nonfinite_loss_message,
    resolved_precision,
    train_autocast,
    trial_generators,
    trial_model,
    trial_result,
)

__all__ = [
    "Member",
    "MemberResult",
    "MemberStatus",
    "PopulationCallback",
    "RefillCallback",
    "check_shared_inputs",
    "stack_labels",
    "train_population",
]

MemberStatus = Literal["complete", "pruned", "nonfinite"]
#: on_epoch(epoch, {member index: metrics}) -> member indices to remove (or None)
PopulationCallback = Callable[[int, dict[int, dict[str, float]]], Iterable[int] | None]
#: refill(free slots) -> up to that many new members (empty: none for now)
RefillCallback = Callable[[int], Sequence["Member"]]

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
    #: softmax probabilities (N, C) on train_population's `probabilities_on` (complete only)
    probabilities: torch.Tensor | None = None

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
    """The state of the members still training (kept together to keep functions short).

    Positions run in the order members joined; members joined together sit side by side
    at the same epoch (a *cohort*), and a removal keeps the order, so every cohort stays
    one run of positions with its own place in the learning-rate schedule.
    """

    def __init__(self, spec: TrainSpec, data: TrialData, device: torch.device) -> None:
        self.spec = spec
        self.data = data
        self.device = device
        self.x = data.x_train
        self.batch_size = spec.batch_size
        self.steps_per_epoch = math.ceil(len(data.y_train) / spec.batch_size)
        self.lrs = lr_per_step(spec, self.steps_per_epoch)
        self.amp = resolved_precision(spec, device)  # "fp32" or "bf16", as train_trial
        self._clear()

    def _clear(self) -> None:
        """No member: the next `add` builds the model and optimiser afresh."""
        self.model: PopulationModel | None = None
        self.optimizer: StackedSGD | None = None
        self.loss: PopulationLoss | None = None
        self.order_gens: list[torch.Generator] = []
        self.aug_gens: list[torch.Generator] = []
        self.labels = torch.empty(0, len(self.data.y_train), dtype=torch.long,
                                  device=self.device)
        # (K, N, 2): [1 where a member's given label is wrong, 1]; (K, 2) sums an epoch
        self.derivative_weights = torch.empty(0, len(self.data.y_train), 2, device=self.device)
        self.derivative_sums = torch.empty(0, 2, device=self.device)
        self.alive: list[int] = []  # member indices, in population order
        self.epochs_done: list[int] = []  # per position
        self.joined: list[float] = []  # per position: perf_counter when it joined
        self.step_forward: Callable[[torch.Tensor], torch.Tensor] | None = None

    def add(self, members: Sequence[Member], indices: Sequence[int]) -> None:
        """Members join at their first epoch, after the others (their cohort)."""
        specs = [replace(self.spec, seed=m.seed) for m in members]
        # train_trial's own builder per member: the same RNG calls, so the same weights
        joining = PopulationModel.from_models([trial_model(self.data, s, self.device)
                                               for s in specs])
        if self.model is None:
            self.model = joining
            spec = self.spec
            self.optimizer = StackedSGD(self.model.parameters(), len(members), spec.momentum,
                                        spec.weight_decay, spec.nesterov)
            # torch.compile wraps the training forward only (as train_trial); compaction
            # and joins change shapes, which recompiles
            forward = self.model.forward_packed
            self.step_forward = torch.compile(forward) if spec.compile else forward
        else:
            self.model.extend(joining)
            self.optimizer.extend(len(members))
        self.model.train()
        losses = [get_loss(m.loss, **dict(m.loss_params)) for m in members]
        self.loss = PopulationLoss([*(self.loss.losses if self.loss else []), *losses])
        generators = [trial_generators(self.data, s, self.device) for s in specs]
        self.order_gens.extend(order for order, _ in generators)
        self.aug_gens.extend(aug for _, aug in generators if aug is not None)
        self.labels = torch.cat([self.labels, stack_labels(members, self.device)])
        corrupted = torch.stack([(m.data.y_train != m.data.y_train_true).to(self.device)
                                 for m in members])
        self.derivative_weights = torch.cat([self.derivative_weights,
                                             derivative_weights(corrupted)])
        self.alive.extend(indices)
        self.epochs_done.extend([0] * len(members))
        self.joined.extend([time.perf_counter()] * len(members))

    def _batch_inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """Member k's batch x[idx[k]] (augmented with its own generator), packed."""
        if not self.aug_gens:
            return self.model.pack_inputs(self.x[idx])
        # one augment_batch call per member: each draws from its own stream exactly as
        # its trial would (a batched draw could not reproduce K generators' sequences)
        batches = [augment_batch(self.x[i], g) for i, g in zip(idx, self.aug_gens, strict=True)]
        return self.model.pack_inputs(torch.stack(batches))

    def cohorts(self) -> list[tuple[int, int, int]]:
        """(first, end, epochs done) of each run of positions at the same epoch."""
        runs: list[tuple[int, int, int]] = []
        for p, done in enumerate(self.epochs_done):
            if runs and runs[-1][2] == done:
                runs[-1] = (runs[-1][0], p + 1, done)
            else:
                runs.append((p, p + 1, done))
        return runs

    def epoch(self) -> torch.Tensor:
        """Train each member's next epoch; their mean batch losses (K',) as a device tensor."""
        self.model.train()
        device = self.labels.device
        rows = torch.arange(len(self.alive), device=device).unsqueeze(1)
        perms = torch.stack([
            torch.randperm(self.labels.shape[1], generator=g, device=device)
            for g in self.order_gens
        ])
        total = torch.zeros(len(self.alive), device=device)
        norms: list[torch.Tensor] = []
        runs = self.cohorts()
        batches = torch.split(perms, self.batch_size, dim=1)
        for j, idx in enumerate(batches):
            targets = self.labels.gather(1, idx)
            packed = self._batch_inputs(idx)
            with train_autocast(device, self.amp):
                logits = self.step_forward(packed)
            scores = logits.float()
            scores.retain_grad()
            losses = self.loss(scores, targets)
            self.optimizer.zero_grad()
            # members share no parameters: each gets the gradient of its own loss
            losses.sum().backward()
            self.optimizer.step([(first, end, self.lrs[done * self.steps_per_epoch + j])
                                 for first, end, done in runs])
            total += losses.detach()
            norms.append(torch.linalg.vector_norm(scores.grad, ord=1, dim=-1))
        self.derivative_sums = epoch_derivative_sums(norms, self.derivative_weights[rows, perms])
        self.epochs_done = [done + 1 for done in self.epochs_done]
        return total / len(batches)

    def last_lr(self, position: int) -> float:
        """The learning rate of the member's last step."""
        return self.lrs[self.epochs_done[position] * self.steps_per_epoch - 1]

    def probabilities(self, x: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
        """Softmax probabilities (K', N, C) of the members at `positions` on x (float32)."""
        return self.predict(x, positions, probabilities=True)

    def predict(self, x: torch.Tensor, positions: Sequence[int] | None = None,
                probabilities: bool = False) -> torch.Tensor:
        """The predicted classes of x (K', N) of every member (or those at `positions`)."""
        model = self.model
        if positions is not None and list(positions) != list(range(len(self.alive))):
            model = copy.deepcopy(self.model)  # a few members: don't run everyone's forward
            model.select_members(positions)
        model.eval()
        preds = []
        # K members' activations per example: shrink the chunks to keep memory as a trial's
        chunk = max(1, EVAL_BATCH // model.members)
        # cuDNN autotunes every new input shape of every convolution (seconds each for a
        # wide grouped one): on CUDA a short last chunk is padded to the chunk's size, so
        # evaluation runs one shape (examples are independent in eval mode)
        pad = _pads_evaluation(x.device, model.layout)
        with torch.inference_mode(), train_autocast(x.device, self.amp):
            for part in torch.split(x, chunk):
                size = len(part)
                if pad and size < chunk:
                    part = torch.cat([part, part.new_zeros(chunk - size, *part.shape[1:])])
                logits = model.forward_packed(model.shared_inputs(part))[:, :size]
                preds.append(logits.float().softmax(dim=-1) if probabilities
                             else logits.argmax(dim=-1))
        self.model.train()
        if not preds:
            return torch.empty(model.members, 0, dtype=torch.long, device=x.device)
        return torch.cat(preds, dim=1)

    def accuracies(self, *splits: tuple[torch.Tensor, torch.Tensor]) -> list[list[float]]:
        """Each member's accuracy on every (x, y) split (0.0 on an empty one), one forward.

        Evaluation is per example (eval-mode batch norm), so the splits run as one input.
        """
        pred = self.predict(torch.cat([x for x, _ in splits]))
        out, start = [], 0
        for _, y in splits:
            if len(y) == 0:
                out.append([0.0] * len(self.alive))
                continue
            mine = pred[:, start:start + len(y)]
            out.append((mine == y).float().mean(dim=1).tolist())
            start += len(y)
        return out

    def remove(self, positions: Iterable[int]) -> None:
        """Drop the members at `positions` from every tensor, the optimiser and the loss."""
        gone = set(positions)
        keep = [p for p in range(len(self.alive)) if p not in gone]
        if not keep:
            self._clear()
            return
        self.model.select_members(keep)
        self.optimizer.select(keep)
        self.loss = self.loss.select(keep)
        self.labels = self.labels[keep]
        self.derivative_weights = self.derivative_weights[keep]
        self.derivative_sums = self.derivative_sums[keep]
        self.order_gens = [self.order_gens[p] for p in keep]
        self.aug_gens = [self.aug_gens[p] for p in keep] if self.aug_gens else []
        self.alive = [self.alive[p] for p in keep]
        self.epochs_done = [self.epochs_done[p] for p in keep]
        self.joined = [self.joined[p] for p in keep]


def _pads_evaluation(device: torch.device, layout: str) -> bool:
    """Whether evaluation pads its last chunk to the chunk's size (packed conv nets on
    CUDA, where each new shape is autotuned)."""
    return device.type == "cuda" and layout == "packed"


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
        if where[index] not in positions:  # a member named twice leaves once
            positions.append(where[index])
    return positions


def train_population(
    members: Sequence[Member],
    spec: TrainSpec,
    on_epoch: PopulationCallback | None = None,
    refill: RefillCallback | None = None,
    capacity: int | None = None,
    on_ended: Callable[[MemberResult], None] | None = None,
    probabilities_on: torch.Tensor | None = None,
) -> list[MemberResult]:
    """Train `members` as one model; one MemberResult per member, in member order.

    `spec` is shared (its seed is ignored: each member uses its own). After each epoch,
    `on_epoch(epoch, {index: metrics})` sees the living members' metrics (train_trial's
    keys, plus "epoch": the member's own epoch) and returns the indices to remove (status
    "pruned"), or None; what it raises propagates. A member with a NaN/inf epoch loss is
    removed with status "nonfinite"; a member that trained `spec.epochs` epochs completes.

    `refill(free)`, when given, is asked for up to `free` new members whenever fewer than
    `capacity` (default: len(members)) are training; the members it returns join at their
    first epoch and take the next indices (len(members), len(members) + 1, ...). A member
    that joins late is still a replicate of its own train_trial. The run ends when no
    member is training and refill has none to give. `on_ended(result)` hears of each
    member as it ends (complete, pruned or nonfinite), before the run goes on.
    `probabilities_on` (inputs shaped like x_train): each completed member's softmax
    probabilities on it, in `MemberResult.probabilities` (out-of-fold estimates use it).
    """
    check_train_spec(spec)
    _check_members(members)
    device = torch.device(spec.device)
    data = device_layout(members[0].data.to(device), device)
    cuda_process_settings(device)
    run = _Run(_Population(spec, data, device), data, spec, on_epoch, on_ended)
    if probabilities_on is not None:
        run.probabilities_on = probabilities_on.to(device)
    run.join(members)
    run.train(refill, len(members) if capacity is None else capacity)
    return [run.ended[k] for k in range(len(run.members))]


def _check_members(members: Sequence[Member]) -> None:
    check_shared_inputs(members)
    for k, member in enumerate(members):
        if not isinstance(member.loss, str):
            raise ValueError(f"members[{k}].loss: a registry loss name is needed, got "
                             f"{member.loss!r}")


class _Run:
    """One `train_population` call: every member so far (index = position in `members`),
    their curves, and how each ended."""

    def __init__(self, population: _Population, data: TrialData, spec: TrainSpec,
                 on_epoch: PopulationCallback | None,
                 on_ended: Callable[[MemberResult], None] | None) -> None:
        self.population, self.data, self.spec = population, data, spec
        self.on_epoch, self.on_ended = on_epoch, on_ended
        self.members: list[Member] = []
        self.curves: dict[int, dict[str, list[float]]] = {}
        self.ended: dict[int, MemberResult] = {}
        self.probabilities_on: torch.Tensor | None = None

    def join(self, new: Sequence[Member]) -> None:
        """New members take the next indices and start their first epoch."""
        if self.members:
            _check_members([self.members[0], *new])
        indices = list(range(len(self.members), len(self.members) + len(new)))
        self.members.extend(new)
        self.population.add(new, indices)
        self.curves.update({k: {"val": [], "test": [], "loss": [], "derivative_corrupted": [],
                                "derivative_clean": []} for k in indices})

    def leave(self, positions: list[int], status: MemberStatus,
              reasons: Sequence[str] | None = None) -> None:
        """The members at `positions` end with `status` (and `reasons`) and leave."""
        if not positions:
            return
        results = self._results(positions) if status == "complete" else [None] * len(positions)
        probs = [None] * len(positions)
        if status == "complete" and self.probabilities_on is not None:
            probs = list(self.population.probabilities(self.probabilities_on, positions).cpu())
        for row, p in enumerate(positions):
            index = self.population.alive[p]
            curves = self.curves[index]
            ended = MemberResult(index, status, list(curves["val"]), list(curves["test"]),
                                 list(curves["loss"]), None if reasons is None else reasons[row],
                                 results[row], probs[row])
            self.ended[index] = ended
            if self.on_ended is not None:
                self.on_ended(ended)
        self.population.remove(positions)

    def train(self, refill: RefillCallback | None, capacity: int) -> None:
        """Train until no member is left and `refill` has none to give."""
        population, spec, data = self.population, self.spec, self.data
        epoch = 0
        while True:
            free = capacity - len(population.alive)
            if refill is not None and free > 0:
                joining = list(refill(free))
                if joining:
                    self.join(joining)
            if not population.alive:
                return
            epoch += 1
            train_loss = population.epoch().tolist()  # the one host sync of the epoch
            derivatives = derivative_means(population.derivative_sums,
                                           population.derivative_weights[:, :, 0].sum(dim=1),
                                           population.derivative_weights.shape[1]).tolist()
            broken = [p for p, value in enumerate(train_loss) if not math.isfinite(value)]
            self.leave(broken, "nonfinite", [nonfinite_loss_message(
                train_loss[p], population.epochs_done[p], spec) for p in broken])
            train_loss = [v for p, v in enumerate(train_loss) if p not in broken]
            derivatives = [v for p, v in enumerate(derivatives) if p not in broken]
            if not population.alive:
                continue
            val, test = population.accuracies((data.x_val, data.y_val),
                                              (data.x_test, data.y_test))
            metrics = {}
            now = time.perf_counter()
            for p, index in enumerate(population.alive):
                on_corrupted, on_clean = derivatives[p]
                for key, value in (("val", val[p]), ("test", test[p]), ("loss", train_loss[p]),
                                   ("derivative_corrupted", on_corrupted),
                                   ("derivative_clean", on_clean)):
                    self.curves[index][key].append(value)
                metrics[index] = {
                    "val_accuracy": val[p], "test_accuracy": test[p],
                    "train_loss": train_loss[p], "lr": population.last_lr(p),
                    "seconds": now - population.joined[p], "epoch": population.epochs_done[p],
                    "derivative_corrupted": on_corrupted, "derivative_clean": on_clean,
                }
            if self.on_epoch is not None:
                pruned = _removal_positions(population, self.on_epoch(epoch, metrics))
                self.leave(pruned, "pruned", [f"removed by on_epoch after epoch "
                                              f"{population.epochs_done[p]}" for p in pruned])
            self.leave([p for p, e in enumerate(population.epochs_done) if e >= spec.epochs],
                       "complete")

    def _results(self, positions: list[int]) -> list[TrialResult]:
        """train_trial's results of the members at `positions` (every epoch trained)."""
        population = self.population
        pred = population.predict(self.data.x_train, positions)
        device = pred.device
        now = time.perf_counter()
        results = []
        for row, p in enumerate(positions):
            index = population.alive[p]
            own = self.members[index].data
            fit = noise_fit_fractions(pred[row], own.y_train.to(device),
                                      own.y_train_true.to(device))
            results.append(trial_result(self.curves[index], fit, own,
                                        replace(self.spec, seed=self.members[index].seed),
                                        now - population.joined[p]))
        return results
