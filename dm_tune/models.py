"""Model registry: an MLP for feature vectors, a small CNN, the CIFAR ResNets and fastnet.

Example:
    >>> model = build_model("resnet", (3, 32, 32), 10, depth=20)
    >>> sum(p.numel() for p in model.parameters())
    269722
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MODELS", "build_model", "register_model", "MLP", "SmallCNN", "CifarResNet", "FastNet",
]

ModelFactory = Callable[..., nn.Module]
MODELS: dict[str, ModelFactory] = {}


def register_model(name: str, factory: ModelFactory) -> None:
    """Add `factory(input_shape, num_classes, **params)` to the registry (e.g. fastnet)."""
    MODELS[name] = factory


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, **params
) -> nn.Module:
    """Instantiate registered model `name` for inputs of `input_shape` and `num_classes`."""
    if name not in MODELS:
        raise ValueError(f"model: unknown {name!r}; expected one of {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](tuple(input_shape), int(num_classes), **params)
    except TypeError as exc:  # an unexpected keyword: say which model rejected it
        raise ValueError(f"model_params: {name!r} rejected {params}: {exc}") from exc


# -------------------------------------------------------------------------------- MLP


class MLP(nn.Module):
    """Fully connected ReLU network over flattened inputs."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch."""
        return self.net(x)


def _mlp(input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int] = (256, 256)):
    """MLP over the flattened input (digits: 64-256-256-10)."""
    return MLP(math.prod(input_shape), num_classes, tuple(hidden))


# -------------------------------------------------------------------------------- CNN


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    """3x3 conv, batch norm, ReLU."""
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class SmallCNN(nn.Module):
    """Three conv blocks (width w, 2w, 4w) with pooling, global average pool, linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn(in_channels, w), *_conv_bn(w, w), nn.MaxPool2d(2),
            *_conv_bn(w, 2 * w), *_conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
            *_conv_bn(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch."""
        return self.head(self.features(x))


def _image_channels(input_shape: tuple[int, ...], name: str) -> int:
    """Channel count of a (C, H, W) input shape, or a ValueError."""
    if len(input_shape) != 3:
        raise ValueError(f"model: {name!r} needs image inputs (C, H, W), got shape {input_shape}")
    return input_shape[0]


def _cnn(input_shape: tuple[int, ...], num_classes: int, width: int = 32):
    """Small CNN for any image size (global average pooling)."""
    return SmallCNN(_image_channels(input_shape, "cnn"), num_classes, width)


# ----------------------------------------------------------------------------- ResNet


class _BasicBlock(nn.Module):
    """Two 3x3 convs with a shortcut (He et al. 2016, CIFAR variant)."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.pad = 0
        self.stride = stride
        # models packed side by side on the channel axis (dm_tune.population): option A
        # pads each member's channel block, not the ends of the whole channel axis
        self.packed_members = 1
        self.proj: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            if shortcut == "A":  # parameter-free: subsample and zero-pad channels
                self.pad = c_out - c_in
            else:  # "B": 1x1 projection
                self.proj = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
                )

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            return self.proj(x)
        if self.stride != 1 or self.pad:
            x = x[:, :, :: self.stride, :: self.stride]
            half = self.pad // 2
            if self.packed_members == 1:
                return F.pad(x, (0, 0, 0, 0, half, self.pad - half))
            n, channels, h, w = x.shape
            blocks = x.reshape(n, self.packed_members, channels // self.packed_members, h, w)
            x = F.pad(blocks, (0, 0, 0, 0, half, self.pad - half)).flatten(1, 2)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet (6n+2 layers, stages of 16/32/64 channels)."""

    def __init__(self, in_channels: int, num_classes: int, depth: int = 20, shortcut: str = "A"):
        super().__init__()
        n = (depth - 2) // 6
        self.stem = nn.Sequential(*_conv_bn(in_channels, 16))
        blocks: list[nn.Module] = []
        c_in = 16
        for stage, c_out in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_BasicBlock(c_in, c_out, stride, shortcut))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(64, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He init for convs as in the paper; the torch default is tuned for other nets
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch."""
        out = self.blocks(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


RESNET_DEPTHS = (20, 32, 44, 56)


def _resnet(
    input_shape: tuple[int, ...], num_classes: int, depth: int = 20, shortcut: str = "A"
):
    """CIFAR ResNet of `depth` in {20, 32, 44, 56}, option A or B shortcuts."""
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"depth: expected one of {RESNET_DEPTHS}, got {depth!r}")
    if shortcut not in ("A", "B"):
        raise ValueError(f"shortcut: expected 'A' or 'B', got {shortcut!r}")
    return CifarResNet(_image_channels(input_shape, "resnet"), num_classes, depth, shortcut)


def _resnet_alias(depth: int) -> ModelFactory:
    """Factory for the fixed-depth alias `resnet<depth>`."""

    def factory(input_shape: tuple[int, ...], num_classes: int, shortcut: str = "A"):
        return _resnet(input_shape, num_classes, depth, shortcut)

    factory.__doc__ = f"CIFAR ResNet-{depth}."
    return factory


# ---------------------------------------------------------------------------- fastnet


class _FastBlock(nn.Module):
    """conv -> max pool -> BN -> ReLU, then optionally x + (conv-BN-ReLU x2)(x) (ResNet-9)."""

    def __init__(self, c_in: int, c_out: int, residual: bool):
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        )
        self.res = nn.Sequential(*_conv_bn(c_out, c_out), *_conv_bn(c_out, c_out)) \
            if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output (half the spatial size)."""
        x = self.down(x)
        return x + self.res(x) if self.res is not None else x


class FastNet(nn.Module):
    """A small fast network for 32x32 images, after the CIFAR-10 speed-run networks.

    Page's ResNet-9 / airbench style: a conv-BN-ReLU stem, three blocks of conv + max
    pool + BN + ReLU (with a residual pair of convs when ``residual``), a global max
    pool and a linear layer whose logits are multiplied by ``scale``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int] = (64, 256, 256, 256),
        residual: bool = True,
        scale: float = 0.125,
    ):
        super().__init__()
        if len(widths) != 4 or any(int(w) < 1 for w in widths):
            raise ValueError(f"width: expected 4 positive widths (stem, 3 blocks), got {widths}")
        w = [int(v) for v in widths]
        self.stem = nn.Sequential(*_conv_bn(in_channels, w[0]))
        self.blocks = nn.Sequential(*(_FastBlock(w[i], w[i + 1], residual) for i in range(3)))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(w[3], num_classes, bias=False)
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch."""
        out = self.pool(self.blocks(self.stem(x)))
        return self.head(torch.flatten(out, 1)) * self.scale


def _fastnet(
    input_shape: tuple[int, ...],
    num_classes: int,
    width: int | Sequence[int] = 64,
    residual: bool = True,
    scale: float = 0.125,
):
    """fastnet; ``width`` w gives widths (w, 4w, 4w, 4w), or pass the 4 widths."""
    if isinstance(width, int):
        widths: Sequence[int] = (width, 4 * width, 4 * width, 4 * width)
    else:
        widths = tuple(width)
    channels = _image_channels(input_shape, "fastnet")
    if min(input_shape[1:]) < 8:
        raise ValueError(f"model: 'fastnet' pools three times and needs images of at least "
                         f"8x8, got shape {input_shape}")
    return FastNet(channels, num_classes, widths, residual, scale)


register_model("mlp", _mlp)
register_model("cnn", _cnn)
register_model("resnet", _resnet)
register_model("fastnet", _fastnet)
for _depth in RESNET_DEPTHS:
    register_model(f"resnet{_depth}", _resnet_alias(_depth))
