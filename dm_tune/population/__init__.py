"""Population engine: K trials trained as one model (stacked or packed layers).

`train_population(members, spec, on_epoch, refill)` trains each `Member` as an exact
replicate of `train_trial(member.data, replace(spec, seed=member.seed), member.loss,
member.loss_params)`, at a fraction of K separate trials' cost; members leave (pruned,
non-finite loss, complete) individually, the survivors' tensors are compacted, and new
members can join in the freed places at their own first epoch.
"""

from __future__ import annotations

from dm_tune.population.engine import (
    Member,
    MemberResult,
    MemberStatus,
    PopulationCallback,
    RefillCallback,
    check_shared_inputs,
    stack_labels,
    train_population,
)
from dm_tune.population.layers import PackedLinear, PopulationModel, StackedLinear
from dm_tune.population.loss import PopulationLoss, batched_dm_loss
from dm_tune.population.optim import StackedSGD

__all__ = [
    "Member",
    "MemberResult",
    "MemberStatus",
    "PackedLinear",
    "PopulationCallback",
    "PopulationLoss",
    "PopulationModel",
    "RefillCallback",
    "StackedLinear",
    "StackedSGD",
    "batched_dm_loss",
    "check_shared_inputs",
    "stack_labels",
    "train_population",
]
