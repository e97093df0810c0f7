"""Per-member losses of a population: logits (K, B, C), targets (K, B) -> losses (K,).

DM members share one autograd node (`_BatchedManipulatedDerivative`): the computation of
`dm_loss` with a member axis in front, each member's emphasis mode, variance and
`norm_epsilon` broadcast along its row, and each member's weights normalised within its
own batch (softmax over the batch axis). Baseline members are grouped by loss name and
parameters; each group runs the registry's own loss function under `torch.func.vmap`
over the member axis, so the per-member value and gradient are the registry's.

Summing the returned losses and calling backward gives every member the gradient of its
own loss (the members share no parameters).

Example:
    >>> from dm_tune.losses import get_loss
    >>> loss = PopulationLoss([get_loss("dm", emphasis_mode=0.5, emphasis_variance=8.0),
    ...                        get_loss("cce")])
    >>> loss(torch.randn(2, 16, 10), torch.randint(0, 10, (2, 16))).shape
    torch.Size([2])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dm_tune.emphasis import emphasis_lambda
from dm_tune.losses import BASELINE_LOSSES, BaselineLoss, DMLoss, ForwardLoss, forward_loss

__all__ = ["PopulationLoss", "batched_dm_loss"]

_NEG_INF = float("-inf")


class _BatchedManipulatedDerivative(torch.autograd.Function):
    """`losses._ManipulatedDerivative` for K members at once (member axis first).

    Value: per member mean_i (1 - p_{i,y_i}), as `dm_loss` logs. Gradient: DM's
    manipulated derivative, each member's weights normalised over its own batch.
    """

    @staticmethod
    def forward(ctx, logits, targets, lam, beta, log_scale, exact):
        # logits (K, B, C); targets (K, B); lam, beta, log_scale, exact: (K, 1) or None
        index = targets.long().unsqueeze(-1)
        others = logits.scatter(-1, index, _NEG_INF)
        top = others.amax(dim=-1, keepdim=True)
        shifted = torch.exp(others - top)
        total = shifted.sum(dim=-1, keepdim=True)
        margin = (total.log() + top - logits.gather(-1, index)).squeeze(-1)  # (K, B)
        log_one_minus_p = F.logsigmoid(margin)
        log_p = log_one_minus_p - margin
        emphasis = torch.exp(torch.addcmul(log_one_minus_p, log_p, lam))
        weights = torch.softmax(beta * emphasis, dim=-1)  # per member, over its batch
        if log_scale is None:  # every member has norm_epsilon = 0 (the exact Eq. 7)
            coefficients = 0.5 * weights
        else:
            # l1 / (l1 + eps) = sigmoid(log l1 - log eps), l1 = 2 (1 - p_y); members with
            # eps = 0 ("exact") keep the plain 0.5 (their log_scale is a placeholder)
            scale = torch.sigmoid(log_one_minus_p + log_scale)
            if exact is not None:
                scale = torch.where(exact, 1.0, scale)
            coefficients = scale.mul_(weights).mul_(0.5)
        ctx.direction_terms = (shifted, total, coefficients, index)
        return torch.exp(log_one_minus_p).mean(dim=-1)  # as losses._ManipulatedDerivative

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        shifted, total, coefficients, index = ctx.direction_terms
        del ctx.direction_terms
        # p_k / (1 - p_y) for k != y, -1 at the label (as in the one-model Function)
        grad = shifted.div(total).scatter_(-1, index, -1.0)
        grad.mul_((coefficients * grad_output.unsqueeze(-1)).unsqueeze(-1))
        return grad, None, None, None, None, None


def batched_dm_loss(
    logits: Tensor,
    targets: Tensor,
    emphasis_mode: Sequence[float],
    emphasis_variance: Sequence[float],
    norm_epsilon: Sequence[float],
) -> Tensor:
    """Per-member `dm_loss` of logits (K, B, C) and targets (K, B): a (K,) tensor."""
    return _DMGroup(emphasis_mode, emphasis_variance, norm_epsilon)(logits, targets)


class _DMGroup:
    """The DM members of a population: their hyperparameters as (K, 1) columns."""

    def __init__(
        self,
        emphasis_mode: Sequence[float],
        emphasis_variance: Sequence[float],
        norm_epsilon: Sequence[float],
    ) -> None:
        self.lam = [emphasis_lambda(m) for m in emphasis_mode]
        self.beta = [float(v) for v in emphasis_variance]
        if any(not math.isfinite(v) for v in self.beta):
            raise ValueError(f"emphasis_variance must be finite, got {list(emphasis_variance)}")
        if any(not (0.0 <= e < float("inf")) for e in norm_epsilon):
            raise ValueError(f"norm_epsilon must be finite and >= 0, got {list(norm_epsilon)}")
        # log(2 / eps), as losses._log_scale; 0.0 stands in for eps = 0 (masked)
        self.log_scale = [0.0 if e == 0 else math.log(2.0 / e) for e in norm_epsilon]
        self.exact = [e == 0 for e in norm_epsilon]
        self._columns: dict[tuple, tuple] = {}

    def columns(self, like: Tensor) -> tuple:
        """(lam, beta, log_scale, exact) as (K, 1) tensors of like's dtype and device."""
        key = (like.dtype, like.device)
        if key not in self._columns:
            def column(values, dtype=like.dtype):
                return torch.tensor(values, dtype=dtype, device=like.device).unsqueeze(1)

            log_scale = None if all(self.exact) else column(self.log_scale)
            exact = column(self.exact, torch.bool) if any(self.exact) and log_scale is not None \
                else None
            self._columns[key] = (column(self.lam), column(self.beta), log_scale, exact)
        return self._columns[key]

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-member DM losses (K,)."""
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # as dm_loss: the weights need float32 range
        return _BatchedManipulatedDerivative.apply(logits, targets, *self.columns(logits))


class _BaselineGroup:
    """Members with the same baseline loss and parameters, run as one vmapped call."""

    def __init__(self, name: str, params: dict[str, float]) -> None:
        function = BASELINE_LOSSES[name]
        self.per_member = torch.func.vmap(lambda z, y: function(z, y, **params))

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return self.per_member(logits, targets)


class _ForwardGroup:
    """Forward-correction members with the same transition matrix, one vmapped call."""

    def __init__(self, transition: Tensor) -> None:
        self.transition = transition
        self.per_member = torch.func.vmap(lambda z, y: forward_loss(z, y, self.transition))

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        if self.transition.device != logits.device:
            self.transition = self.transition.to(logits.device)
        return self.per_member(logits, targets)


class PopulationLoss:
    """Training losses of K members (`get_loss` modules, DM and baselines mixed)."""

    def __init__(self, losses: Sequence[nn.Module]) -> None:
        if not losses:
            raise ValueError("losses: a population needs at least one member")
        self.losses = list(losses)
        groups: dict[tuple, list[int]] = {}
        for k, loss in enumerate(self.losses):
            if isinstance(loss, DMLoss):
                key: tuple = ("dm",)
            elif isinstance(loss, BaselineLoss):
                key = (loss.name, tuple(sorted(loss.params.items())))
            elif isinstance(loss, ForwardLoss):
                key = ("forward", loss.key)
            else:
                raise ValueError(f"loss: a population member needs a registry loss (DMLoss, "
                                 f"BaselineLoss or ForwardLoss), got {type(loss).__name__}")
            groups.setdefault(key, []).append(k)
        self._groups = [(members, self._group(key, members)) for key, members in groups.items()]
        order = [k for members, _ in self._groups for k in members]
        # the groups' outputs concatenated are in `order`; this puts them back in member order
        self._inverse = None if order == list(range(len(order))) else \
            torch.tensor(order).argsort()
        self._index: dict[torch.device, list[Tensor]] = {}

    def _group(self, key: tuple, members: list[int]):
        """The callable computing one group's per-member losses."""
        if key[0] == "dm":
            dm = [self.losses[k] for k in members]
            return _DMGroup([m.emphasis_mode for m in dm], [m.emphasis_variance for m in dm],
                           [m.norm_epsilon for m in dm])
        if key[0] == "forward":
            return _ForwardGroup(self.losses[members[0]].transition)
        return _BaselineGroup(key[0], dict(key[1]))

    def __len__(self) -> int:
        return len(self.losses)

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-member losses (K,) of logits (K, B, C) and targets (K, B)."""
        if len(self._groups) == 1:  # one loss for all: no gathering
            return self._groups[0][1](logits, targets)
        if logits.device not in self._index:
            self._index[logits.device] = [
                torch.tensor(members, device=logits.device) for members, _ in self._groups
            ]
            if self._inverse is not None:
                self._index[logits.device].append(self._inverse.to(logits.device))
        indices = self._index[logits.device]
        values = [
            group(logits.index_select(0, index), targets.index_select(0, index))
            for index, (_, group) in zip(indices, self._groups, strict=False)
        ]
        stacked = torch.cat(values)
        return stacked if self._inverse is None else stacked.index_select(0, indices[-1])

    def select(self, keep: Sequence[int]) -> PopulationLoss:
        """The loss of members `keep` (positions, in order)."""
        return PopulationLoss([self.losses[k] for k in keep])
