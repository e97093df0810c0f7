"""K member networks as one module: stacked (MLP) or packed (conv nets) layers.

Two layouts, chosen by the architecture:

- **stacked** (MLP): activations are (K, B, features) and each `StackedLinear` applies the
  K members' weight matrices with one `torch.baddbmm`;
- **packed** (CNN, ResNet, fastnet): activations are (B, K * C, H, W) with member k owning
  channels [k * C, (k + 1) * C). Every convolution has `groups = K` (times its own groups;
  `PackedConv2d`, which on CUDA runs a wide one as K dense convolutions instead),
  batch norm runs over K * C channels, which gives per-member batch statistics and running
  averages by construction, and the linear head is a `PackedLinear`. ReLU, pooling and
  residual additions act per channel, so the models' own `forward` methods run unchanged.

A `PopulationModel` is built from K models initialised exactly as `train_trial` builds
them (their tensors are copied in), exports member k's state dict under the original
names, drops members in place (`select_members`), so the survivors run at the cost of K'
members, and takes new ones in (`extend`).

Example:
    >>> from dm_tune.models import build_model
    >>> population = PopulationModel.from_models([build_model("mlp", (64,), 10)] * 3)
    >>> population(torch.zeros(3, 5, 64)).shape
    torch.Size([3, 5, 10])
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dm_tune.models import MLP, CifarResNet, FastNet, SmallCNN, _BasicBlock, _FastBlock

__all__ = ["PackedConv2d", "PackedLinear", "PopulationModel", "StackedLinear",
           "select_members"]

# Modules whose forward acts per channel (or only composes children), so they run as is on
# packed activations. Anything else with a forward of its own is refused, not guessed at.
_CHANNELWISE = (
    nn.Sequential, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
    nn.Flatten, nn.Identity, SmallCNN, CifarResNet, FastNet, _BasicBlock, _FastBlock,
)
_ELEMENTWISE = (nn.Sequential, nn.ReLU, nn.Identity, MLP)


def select_members(tensor: Tensor, keep: Tensor, members: int) -> Tensor:
    """The rows of members `keep` of a member-major tensor (leading dim K * per-member)."""
    return _layout_of(tensor, tensor.unflatten(0, (members, -1))[keep].flatten(0, 1))


def _layout_of(like: Tensor, tensor: Tensor) -> Tensor:
    """`tensor` in `like`'s memory format (CUDA image models keep conv weights
    channels_last; indexing and concatenation return contiguous tensors)."""
    if like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(
        memory_format=torch.channels_last
    ):
        return tensor.contiguous(memory_format=torch.channels_last)
    return tensor


class _StackedLinearFunction(torch.autograd.Function):
    """x (K, B, in) @ weight (K, out, in)^T + bias (K, 1, out), with the weight gradient
    formed as grad^T @ x: (K, out, in), contiguous, in the GEMM shape that is fast when
    `out` is small. Autograd's own backward of the transposed view forms x^T @ grad,
    (K, in, out) then transposed, which for a 10-class head on a CPU is 4-5x slower, and
    leaves a strided gradient to copy."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(bias, x, weight.transpose(1, 2))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_weight = torch.bmm(grad.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(1, keepdim=True) if ctx.has_bias and ctx.needs_input_grad[2] \
            else None
        return grad_x, grad_weight, grad_bias


class StackedLinear(nn.Module):
    """K linear layers: (K, B, in) -> (K, B, out) by one batched matmul."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)  # (K, out, in): nn.Linear's layout per member
        self.bias = None if bias is None else nn.Parameter(bias)  # (K, 1, out)

    @classmethod
    def from_linears(cls, linears: Sequence[nn.Linear]) -> StackedLinear:
        """Stack the members' nn.Linear layers (their tensors are copied)."""
        weight = torch.stack([m.weight.detach() for m in linears]).contiguous()
        bias = None
        if linears[0].bias is not None:
            bias = torch.stack([m.bias.detach() for m in linears]).unsqueeze(1).contiguous()
        return cls(weight, bias)

    def forward(self, x: Tensor) -> Tensor:
        """(K, B, in) -> (K, B, out)."""
        if torch.is_autocast_enabled(x.device.type):
            # autocast (CUDA's bf16) casts the ops' inputs: torch's own ops and backward
            weight = self.weight.transpose(1, 2)
            if self.bias is None:
                return torch.bmm(x, weight)
            return torch.baddbmm(self.bias, x, weight)
        return _StackedLinearFunction.apply(x, self.weight, self.bias)

    def member_state(self, k: int) -> dict[str, Tensor]:
        """Member k's tensors under nn.Linear's names."""
        state = {"weight": self.weight.detach()[k]}
        if self.bias is not None:
            state["bias"] = self.bias.detach()[k, 0]
        return state

    def extra_repr(self) -> str:
        members, width_out, width_in = self.weight.shape
        return f"members={members}, in_features={width_in}, out_features={width_out}"


class PackedLinear(StackedLinear):
    """K linear heads on packed features: (B, K * in) -> (B, K * out)."""

    def forward(self, x: Tensor) -> Tensor:
        """(B, K * in) -> (B, K * out), member k's outputs in block k."""
        members = self.weight.shape[0]
        stacked = x.unflatten(1, (members, -1)).transpose(0, 1)  # (K, B, in)
        return super().forward(stacked).transpose(0, 1).flatten(1)


#: when `PackedConv2d` runs its members as K dense convolutions: "auto" (CUDA, members
#: with >= SPLIT_MIN_CHANNELS output channels), "always" or "never" (one grouped conv)
SPLIT_CONVS = "auto"
#: a member this wide already fills a GPU's tensor cores alone (fastnet: 256 channels
#: after its 64-channel stem; the CIFAR ResNets, at most 64, are launch-bound and gain
#: from the grouped convolution)
SPLIT_MIN_CHANNELS = 128


class PackedConv2d(nn.Conv2d):
    """The members' convolutions side by side: one grouped convolution (groups = K times
    a member's own), or K dense ones over the members' channel blocks (`SPLIT_CONVS`).

    Why split: cuDNN's grouped convolutions of wide members measured no faster than the
    members one after another (fastnet K = 16 on an H200: 2.84 s an epoch vs 16 x 0.17 s)
    while autotuning each new shape of them took minutes (172 s of set-up); K dense
    convolutions all have a member's own shape, so cuDNN tunes that shape once (as for
    one trial) and runs its dense kernels. The parameters are the same either way.
    """

    #: a member's own groups (1 for every model here); K = groups // member_groups
    member_groups: int = 1

    @property
    def members(self) -> int:
        return self.groups // self.member_groups

    def splits(self, x: Tensor) -> bool:
        """Whether this call runs as K dense convolutions."""
        if self.members == 1 or self.padding_mode != "zeros" or SPLIT_CONVS == "never":
            return False
        if SPLIT_CONVS == "always":
            return True
        return x.is_cuda and self.out_channels // self.members >= SPLIT_MIN_CHANNELS

    def forward(self, x: Tensor) -> Tensor:
        if not self.splits(x):
            return super().forward(x)
        members = self.members
        biases = [None] * members if self.bias is None else self.bias.chunk(members)
        outputs = [
            F.conv2d(part, weight, bias, self.stride, self.padding, self.dilation,
                     self.member_groups)
            for part, weight, bias in zip(x.chunk(members, dim=1), self.weight.chunk(members),
                                          biases, strict=True)
        ]
        return torch.cat(outputs, dim=1)


def _packed_conv(convs: Sequence[nn.Conv2d]) -> nn.Conv2d:
    """One packed convolution equal to the members' convolutions side by side."""
    first, members = convs[0], len(convs)
    packed = PackedConv2d(
        first.in_channels * members, first.out_channels * members, first.kernel_size,
        first.stride, first.padding, first.dilation, first.groups * members,
        first.bias is not None, first.padding_mode,
        device=first.weight.device, dtype=first.weight.dtype,
    )
    packed.member_groups = first.groups
    # member k's output channels (and so its groups) are block k of the concatenation
    with torch.no_grad():
        weight = torch.cat([c.weight for c in convs])
        if first.weight.is_contiguous(memory_format=torch.channels_last):
            weight = weight.contiguous(memory_format=torch.channels_last)
        packed.weight = nn.Parameter(weight)
        if first.bias is not None:
            packed.bias = nn.Parameter(torch.cat([c.bias for c in convs]))
    return packed


def _packed_batch_norm(norms: Sequence[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    """One batch norm over the members' channels side by side (statistics stay per channel)."""
    first = norms[0]
    packed = copy.deepcopy(first)
    packed.num_features = first.num_features * len(norms)
    with torch.no_grad():
        for name in ("weight", "bias"):
            if getattr(first, name) is not None:
                setattr(packed, name, nn.Parameter(torch.cat([getattr(n, name) for n in norms])))
        for name in ("running_mean", "running_var"):
            if getattr(first, name) is not None:
                setattr(packed, name, torch.cat([getattr(n, name) for n in norms]))
    return packed


def _flatten_for_stacked(flatten: nn.Flatten) -> nn.Flatten:
    """The same flatten with the member axis in front of the batch axis."""
    end = flatten.end_dim if flatten.end_dim < 0 else flatten.end_dim + 1
    return nn.Flatten(flatten.start_dim + 1, end)


def _convert(models: Sequence[nn.Module], layout: str) -> tuple[nn.Module, list[str]]:
    """The population module of `models` and the paths of its per-member layers."""
    body = copy.deepcopy(models[0])
    if not isinstance(body, _CHANNELWISE if layout == "packed" else _ELEMENTWISE):
        raise ValueError(f"model: no population layout for {type(body).__name__} (its forward "
                         f"is not known to act per member)")
    members = [dict(m.named_modules()) for m in models]
    packed_paths: list[str] = []
    for path, module in list(body.named_modules()):
        if not path:
            continue
        same = [m[path] for m in members]
        if isinstance(module, nn.Linear):
            layer = StackedLinear if layout == "stacked" else PackedLinear
            body.set_submodule(path, layer.from_linears(same))
        elif layout == "packed" and isinstance(module, nn.Conv2d):
            body.set_submodule(path, _packed_conv(same))
        elif layout == "packed" and isinstance(module, nn.BatchNorm2d):
            body.set_submodule(path, _packed_batch_norm(same))
        elif layout == "stacked" and isinstance(module, nn.Flatten):
            body.set_submodule(path, _flatten_for_stacked(module))
            continue
        elif isinstance(module, _CHANNELWISE if layout == "packed" else _ELEMENTWISE):
            if isinstance(module, _BasicBlock):
                module.packed_members = len(models)
            continue
        elif isinstance(module, nn.Linear | nn.Conv2d | nn.BatchNorm2d | nn.Flatten):
            raise ValueError(f"model: cannot pack {type(module).__name__} {path!r} in the "
                             f"{layout} layout")
        else:
            raise ValueError(f"model: no population layout for {type(module).__name__} "
                             f"{path!r}")
        packed_paths.append(path)
    return body, packed_paths


def _layout(model: nn.Module) -> str:
    """'stacked' for MLPs, 'packed' for conv nets."""
    return "stacked" if isinstance(model, MLP) else "packed"


class PopulationModel(nn.Module):
    """K same-architecture models as one module: (K, B, *input) -> (K, B, classes) logits."""

    def __init__(self, body: nn.Module, layout: str, members: int, paths: list[str]) -> None:
        super().__init__()
        self.body = body
        self.layout = layout
        self.members = members
        self._paths = paths
        self._channels_last: bool | None = None

    @classmethod
    def from_models(cls, models: Sequence[nn.Module]) -> PopulationModel:
        """Pack `models` (same architecture and shapes; their tensors are copied)."""
        if not models:
            raise ValueError("models: a population needs at least one model")
        kinds = {type(m) for m in models}
        if len(kinds) != 1:
            raise ValueError(f"models: members must share one architecture, got {kinds}")
        layout = _layout(models[0])
        body, paths = _convert(models, layout)
        population = cls(body, layout, len(models), paths)
        population.train(models[0].training)
        return population

    @property
    def channels_last(self) -> bool:
        """Whether the packed convolutions run channels_last (CUDA image models)."""
        if self._channels_last is None:  # fixed at packing; compaction keeps the layout
            conv = next((m for m in self.body.modules() if isinstance(m, nn.Conv2d)), None)
            self._channels_last = conv is not None and not conv.weight.is_contiguous() \
                and conv.weight.is_contiguous(memory_format=torch.channels_last)
        return self._channels_last

    def pack_inputs(self, x: Tensor) -> Tensor:
        """Member inputs (K, B, *input) in this model's layout."""
        if self.layout == "stacked":
            return x
        packed = x.transpose(0, 1).flatten(1, 2)  # (B, K * C, H, W), member k in block k
        if self.channels_last:
            return packed.contiguous(memory_format=torch.channels_last)
        return packed

    def shared_inputs(self, x: Tensor) -> Tensor:
        """The same inputs (B, *input) for every member, in this model's layout."""
        if self.layout == "stacked":
            return x.unsqueeze(0).expand(self.members, *x.shape)
        packed = x.repeat(1, self.members, *([1] * (x.dim() - 2)))
        if self.channels_last:
            return packed.contiguous(memory_format=torch.channels_last)
        return packed

    def forward_packed(self, packed: Tensor) -> Tensor:
        """Logits (K, B, classes) from inputs already in this model's layout."""
        out = self.body(packed)
        if self.layout == "stacked":
            return out
        return out.unflatten(1, (self.members, -1)).transpose(0, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (K, B, classes) of member inputs (K, B, *input)."""
        return self.forward_packed(self.pack_inputs(x))

    def member_state(self, k: int) -> dict[str, Tensor]:
        """Member k's parameters and buffers under the original model's state-dict names.

        Scalar buffers (batch norm's num_batches_tracked) are the population's own: a
        member that joined late shows the population's count (batch norm with a momentum,
        as every model here, does not read it).
        """
        state: dict[str, Tensor] = {}
        packed = set(self._paths)
        for path, module in self.body.named_modules():
            if path not in packed:
                continue
            if isinstance(module, StackedLinear):
                tensors = module.member_state(k)
            else:  # grouped conv, batch norm: member k's block of every tensor
                tensors = {
                    name: t if t.dim() == 0 else select_members(
                        t.detach(), torch.tensor([k], device=t.device), self.members
                    )
                    for name, t in module.state_dict().items()
                }
            state.update({f"{path}.{name}": t for name, t in tensors.items()})
        return state

    def select_members(self, keep: Sequence[int]) -> None:
        """Keep only members `keep` (positions, in order): every per-member tensor shrinks.

        Parameters keep their identity (their .data is replaced) and lose their gradients;
        an optimiser's per-member state is cut by its own `select` (`StackedSGD`).
        """
        device = next(self.parameters()).device
        index = torch.as_tensor(list(keep), dtype=torch.long, device=device)
        if index.numel() == 0:
            raise ValueError("keep: a population needs at least one member")
        old = self.members
        for module in self.body.modules():
            _resize_module(module, lambda t, _: select_members(t, index, old), old,
                           index.numel())
        self.members = index.numel()

    def extend(self, other: PopulationModel) -> None:
        """Append `other`'s members (same architecture) after this model's own."""
        if type(other.body) is not type(self.body) or other.layout != self.layout:
            raise ValueError("other: a population extends only with the same architecture")
        theirs = list(other.body.modules())
        mine = list(self.body.modules())
        if len(theirs) != len(mine):
            raise ValueError("other: a population extends only with the same architecture")
        new = self.members + other.members
        for module, same in zip(mine, theirs, strict=True):
            _resize_module(module, _concat_members, self.members, new, same)
        self.members = new


def _concat_members(mine: Tensor, theirs: Tensor | None) -> Tensor:
    """Member-major `mine` with `theirs`' members after its own (memory format kept)."""
    return _layout_of(mine, torch.cat([mine, theirs.to(mine.device)]))


def _resize_module(
    module: nn.Module,
    resize: Callable[[Tensor, Tensor | None], Tensor],
    old: int,
    new: int,
    other: nn.Module | None = None,
) -> None:
    """Give one module's per-member tensors `new` members and fix its channel counts.

    `resize(tensor, other's same tensor or None)` makes each new tensor from the old one.
    """
    if isinstance(module, _BasicBlock):
        module.packed_members = new
    if not isinstance(module, StackedLinear | nn.Conv2d | nn.BatchNorm2d):
        return
    theirs = dict(other.named_parameters(recurse=False)) if other is not None else {}
    for name, param in module.named_parameters(recurse=False):
        param.data = resize(param.data, theirs[name].data if theirs else None)
        param.grad = None
    their_buffers = dict(other.named_buffers(recurse=False)) if other is not None else {}
    for name, buffer in module.named_buffers(recurse=False):
        if buffer is not None and buffer.dim() > 0:
            setattr(module, name, resize(buffer, their_buffers.get(name)))
    if isinstance(module, nn.Conv2d):
        module.in_channels = module.in_channels // old * new
        module.out_channels = module.out_channels // old * new
        module.groups = module.groups // old * new
    elif isinstance(module, nn.BatchNorm2d):
        module.num_features = module.num_features // old * new
