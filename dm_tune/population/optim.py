"""SGD over a population's stacked parameters, each member at its own learning rate.

Members that joined the population at different times sit at different steps of the
learning-rate schedule, so one learning rate per tensor (a torch optimizer's param group)
does not fit. SGD acts elementwise, so member k's update only reads member k's block of
each tensor (its parameters, gradient and momentum buffer): `StackedSGD.step` applies
torch's own functional SGD (`torch.optim.sgd.sgd`, fused: one pass per tensor) to each
*cohort*, a run of neighbouring members at the same step, through views of their blocks.

A member's momentum buffer starts at zero, which gives torch SGD's first step exactly
(buffer = 0 * momentum + gradient), so a member that joins late is updated as its own
optimizer would update it. It also avoids `torch.optim.Optimizer`, whose constructor
imports `torch._dynamo` (about a second and a half of a worker's start-up on a CPU).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor
from torch.optim.sgd import sgd

from dm_tune.population.layers import select_members

__all__ = ["Cohort", "StackedSGD", "member_rows"]

#: (first member position, end position, learning rate): members [first, end) step together
Cohort = tuple[int, int, float]


def member_rows(tensor: Tensor, members: int) -> int:
    """How many leading-dimension rows one member owns in a member-major tensor."""
    rows, left = divmod(tensor.shape[0], members)
    if left or rows == 0:
        raise ValueError(f"a member-major tensor of {tensor.shape[0]} rows cannot hold "
                         f"{members} members")
    return rows


class StackedSGD:
    """torch SGD (momentum, weight decay, nesterov) per member of member-major tensors."""

    def __init__(
        self,
        params: Iterable[Tensor],
        members: int,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        self.params = list(params)
        self.members = members
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.nesterov = nesterov and momentum > 0
        for param in self.params:
            member_rows(param, members)
        # zeros: the first step's buffer is then the gradient, as torch SGD's clone
        self.buffers = [torch.zeros_like(p) if momentum else None for p in self.params]

    def zero_grad(self) -> None:
        """Drop every gradient (set_to_none, as train_trial's optimiser)."""
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self, cohorts: Sequence[Cohort]) -> None:
        """Update members [first, end) of every tensor with their cohort's learning rate."""
        params = [p for p in self.params if p.grad is not None]
        buffers = [b for p, b in zip(self.params, self.buffers, strict=True) if p.grad is not None]
        for first, end, lr in cohorts:
            if first == 0 and end == self.members:  # everyone: the whole tensors
                views = (params, [p.grad for p in params], buffers)
            else:
                views = self._views(params, buffers, first, end)
            sgd(views[0], views[1], list(views[2]), fused=True, lr=lr,
                momentum=self.momentum, weight_decay=self.weight_decay, dampening=0.0,
                nesterov=self.nesterov, maximize=False)

    def _views(self, params: list[Tensor], buffers: list[Tensor | None], first: int,
               end: int) -> tuple[list[Tensor], list[Tensor], list[Tensor | None]]:
        """Members [first, end)'s blocks of the parameters, gradients and buffers."""
        out: tuple[list[Tensor], list[Tensor], list[Tensor | None]] = ([], [], [])
        for param, buffer in zip(params, buffers, strict=True):
            rows = member_rows(param, self.members)
            block = slice(first * rows, end * rows)
            out[0].append(param[block])
            out[1].append(param.grad[block])
            out[2].append(None if buffer is None else buffer[block])
        return out

    def select(self, keep: Sequence[int]) -> None:
        """Keep members `keep` (positions, in order) of every momentum buffer."""
        index = torch.as_tensor(list(keep), dtype=torch.long, device=self.params[0].device)
        self.buffers = [None if b is None else select_members(b, index, self.members)
                        for b in self.buffers]
        self.members = index.numel()

    def extend(self, added: int) -> None:
        """Zero buffers for `added` members appended to every parameter (after the model)."""
        members = self.members + added
        grown = []
        for param, buffer in zip(self.params, self.buffers, strict=True):
            member_rows(param, members)
            if buffer is None:
                grown.append(None)
                continue
            new = torch.zeros_like(param)  # keeps the parameter's memory format
            new[: buffer.shape[0]] = buffer
            grown.append(new)
        self.buffers = grown
        self.members = members
