"""Dataset registry, seeded stratified splits and label noise for one trial.

A trial's data is the train split (noisy labels, plus the true ones for the
memorisation figures), a clean validation split (true labels) and a test split
(true labels). Everything is deterministic given a `DataSpec`.

Memory: the features are loaded, converted to float32, normalised and split once per
(dataset, root, download, split fractions, seed) and shared, as the same tensors, by the
`TrialData` of every noise setting; only the noisy train labels, the realised rate and
the digest differ between settings. The features are built in chunks straight into
their split tensors (an npz's images are streamed from the file) and the raw arrays are
released once they are built. `clear_data_cache()` drops what this module caches.

Example:
    >>> data = prepare_data(DataSpec("digits", noise_kind="symmetric", noise_rate=0.4))
    >>> data.x_train.shape[1], data.num_classes
    (64, 10)
"""

from __future__ import annotations

import functools
import hashlib
import threading
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from dm_tune import noise
from dm_tune.datasets import (
    DATASETS,
    RawDataset,
    check_dataset,
    file_stamp,
    load_cached,
    load_npz,
    load_raw,
    row_chunks,
    rows_per_chunk,
)
from dm_tune.stratified import stratified_holdout

__all__ = [
    "DATASETS",
    "DataSpec",
    "RawDataset",
    "TrialData",
    "augment_batch",
    "clear_data_cache",
    "load_raw",
    "prepare_data",
]


@dataclass(frozen=True)
class DataSpec:
    """What data a trial uses: dataset, location, split fractions, label noise, seed."""

    dataset: str = "digits"
    root: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    noise_kind: str = "none"
    noise_rate: float = 0.0
    human_label: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class TrialData:
    """Tensors of one trial: train (noisy and true labels), clean validation, test.

    Every tensor but `y_train` is shared with the other noise settings of the same data
    (see `clear_data_cache`): never modify them in place.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    y_train_true: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    realised_noise_rate: float
    label_digest: str
    is_image: bool

    def to(self, device: str | torch.device) -> TrialData:
        """Return a copy with every tensor on `device` (no copy when already there)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)



# ----------------------------------------------------------------------------- splits


def _split_seed(seed: int, stage: str) -> int:
    """A 32-bit seed for one split stage, stable across machines."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{stage}".encode()).digest()[:4], "little")


def _stratified_split(
    idx: np.ndarray, y: np.ndarray, fraction: float, arg: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split `idx` (labels y[idx]) into (rest, held-out fraction), stratified by label."""
    labels = y[idx]
    classes, counts = np.unique(labels, return_counts=True)
    n_out = int(np.ceil(fraction * len(idx)))  # sklearn's rounding for test_size
    if counts.min() < 2:
        c = classes[counts.argmin()]
        raise ValueError(
            f"{arg}: class {c} has only {counts.min()} example(s) left; the stratified "
            f"{arg.removesuffix('_fraction')} split needs at least 2 per class"
        )
    if n_out < len(classes) or len(idx) - n_out < len(classes):
        raise ValueError(
            f"{arg}={fraction} gives {n_out} of {len(idx)} examples to the split; a "
            f"stratified split needs at least {len(classes)} (one per class) on each side"
        )
    held = np.zeros(len(idx), dtype=bool)
    held[stratified_holdout(labels, n_out, _split_seed(seed, arg))] = True
    return np.sort(idx[~held]), np.sort(idx[held])


def _check_spec(spec: DataSpec) -> None:
    """Validate the numeric and categorical fields of a DataSpec."""
    for name in ("val_fraction", "test_fraction"):
        v = getattr(spec, name)
        if not 0.0 < v < 1.0:
            raise ValueError(f"{name}: must lie strictly between 0 and 1, got {v}")
    kinds = ("none", *noise.NOISE_KINDS, "human")
    if spec.noise_kind not in kinds:
        raise ValueError(f"noise_kind: unknown {spec.noise_kind!r}; expected one of {kinds}")
    if not 0.0 <= spec.noise_rate <= 1.0:
        raise ValueError(f"noise_rate: must lie in [0, 1], got {spec.noise_rate}")
    if spec.noise_kind == "none" and spec.noise_rate != 0.0:
        raise ValueError(f"noise_rate: {spec.noise_rate} given with noise_kind='none'")


@dataclass(frozen=True)
class _SharedSplit:
    """The noise-free part of a TrialData, built once and shared by every noise setting."""

    x_train: torch.Tensor
    y_train_true: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_idx: np.ndarray  # rows of the source arrays, for the human label sets
    num_classes: int
    is_image: bool
    noise_map: str | None
    noisy_labels: dict[str, np.ndarray] | None  # label arrays only, never the images
    default_noisy: str | None


def _check_finite(
    outs: list[torch.Tensor], parts: list[np.ndarray], step: int, name: str
) -> None:
    """Refuse NaN or inf features (in float32: a float64 beyond its range is inf too).

    They would make every trial's loss NaN, and every trial pruned as if the lr were wrong.
    """
    bad: list[np.ndarray] = []
    for out, idx in zip(outs, parts, strict=True):
        for first in range(0, len(out), step):
            part = out[first : first + step]
            if not bool(torch.isfinite(part).all()):
                rows = ~torch.isfinite(part.reshape(len(part), -1)).all(dim=1).numpy()
                bad.append(idx[first + np.flatnonzero(rows)])
    if bad:
        rows = np.sort(np.concatenate(bad))
        raise ValueError(f"{name}: {len(rows)} example(s) with NaN or inf features (first: "
                         f"row {rows[0]}); drop or fix them")


def _x_tensors(
    x, parts: list[np.ndarray], raw: RawDataset, name: str = "x"
) -> list[torch.Tensor]:
    """Rows `parts[k]` of `x` as new float32 tensors, images normalised per channel.

    One pass over x in chunks of a few MiB scatters each chunk's rows into their split
    tensor (numpy's cast, as np.array(..., float32)); images are then normalised in
    place, chunk by chunk. The only large allocations are the outputs themselves.
    Float features are checked to be finite (`name` names them in the error).
    """
    outs = [torch.empty((len(idx), *x.shape[1:]), dtype=torch.float32) for idx in parts]
    part_of = np.full(len(x), -1, dtype=np.int64)
    row_of = np.zeros(len(x), dtype=np.int64)
    for k, idx in enumerate(parts):
        part_of[idx], row_of[idx] = k, np.arange(len(idx))
    step = rows_per_chunk(x, 4)
    for start, chunk in row_chunks(x, step):
        which, rows = part_of[start : start + len(chunk)], row_of[start : start + len(chunk)]
        for k, out in enumerate(outs):
            mask = which == k
            if mask.any():
                out.numpy()[rows[mask]] = chunk[mask]
    if x.dtype.kind == "f":  # integer pixels are always finite
        _check_finite(outs, parts, step, name)
    if raw.is_image:
        mean = torch.from_numpy(raw.channel_mean).view(1, -1, 1, 1)
        std = torch.from_numpy(raw.channel_std).view(1, -1, 1, 1)
        for out in outs:
            for part in torch.split(out, step):
                if x.dtype == np.uint8:
                    part.div_(255.0)
                part.sub_(mean).div_(std)
    return outs


def _build_split(
    dataset: str, root: str | None, download: bool, val_fraction: float, test_fraction: float,
    seed: int,
) -> _SharedSplit:
    """Load (uncached), split and convert; the raw arrays die with this call."""
    loader = DATASETS[dataset]
    if loader is load_npz:
        loader = functools.partial(load_npz, stream=True)
    raw = loader(root, download)
    source = f"root: {Path(root).expanduser()}: " if root else ""
    idx = np.arange(len(raw.y))
    test_idx = None
    if raw.x_test is not None:
        y_test = raw.y_test
    else:
        idx, test_idx = _stratified_split(idx, raw.y, test_fraction, "test_fraction", seed)
        y_test = raw.y[test_idx]
    train_idx, val_idx = _stratified_split(idx, raw.y, val_fraction, "val_fraction", seed)
    if test_idx is None:
        x_train, x_val = _x_tensors(raw.x, [train_idx, val_idx], raw, f"{source}x")
        (x_test,) = _x_tensors(raw.x_test, [np.arange(len(raw.x_test))], raw,
                               f"{source}x_test")
    else:
        x_train, x_val, x_test = _x_tensors(raw.x, [train_idx, val_idx, test_idx], raw,
                                            f"{source}x")
    return _SharedSplit(
        x_train=x_train,
        y_train_true=torch.from_numpy(np.array(raw.y[train_idx], dtype=np.int64)),
        x_val=x_val,
        y_val=torch.from_numpy(np.array(raw.y[val_idx], dtype=np.int64)),
        x_test=x_test,
        y_test=torch.from_numpy(np.array(y_test, dtype=np.int64)),
        train_idx=train_idx,
        num_classes=raw.num_classes,
        is_image=raw.is_image,
        noise_map=raw.noise_map,
        noisy_labels=raw.noisy_labels,
        default_noisy=raw.default_noisy,
    )


_SPLIT_LOCK = threading.Lock()  # two threads asking for the same data build it once


@functools.lru_cache(maxsize=2)
def _cached_split(
    dataset: str, root: str | None, download: bool, val_fraction: float, test_fraction: float,
    seed: int, stamp: str,
) -> _SharedSplit:
    """One split per data identity (everything in a DataSpec but the noise)."""
    return _build_split(dataset, root, download, val_fraction, test_fraction, seed)


def _shared_split(spec: DataSpec) -> _SharedSplit:
    """The features and clean labels of `spec`'s data, built on first use."""
    check_dataset(spec.dataset)
    stamp = file_stamp(spec.dataset, spec.root)
    with _SPLIT_LOCK:
        return _cached_split(
            spec.dataset, spec.root, bool(spec.download), float(spec.val_fraction),
            float(spec.test_fraction), int(spec.seed), stamp,
        )


def clear_data_cache() -> None:
    """Drop the cached features and raw datasets of this module.

    Their memory is freed once no `TrialData` built from them is referenced any more
    (callers that cache TrialData, such as the campaign code, must drop theirs too).
    """
    with _SPLIT_LOCK:
        _cached_split.cache_clear()
    load_cached.cache_clear()


def _noisy_train_labels(spec: DataSpec, split: _SharedSplit, y_true: np.ndarray) -> tuple:
    """Given labels of the train split and the realised noise rate."""
    if spec.noise_kind == "none":
        return y_true.copy(), 0.0
    if spec.noise_kind == "human":
        sets = split.noisy_labels or {}
        key = spec.human_label or split.default_noisy
        if key not in sets:
            have = ", ".join(sets) or "none (this dataset has no human labels)"
            raise ValueError(f"human_label: {key!r} not available for {spec.dataset}; have {have}")
        given = np.array(sets[key][split.train_idx], dtype=np.int64)
        return given, float(np.mean(given != y_true)) if len(given) else 0.0
    seed = noise.noise_seed(spec.dataset, spec.noise_kind, spec.noise_rate, spec.seed)
    out = noise.corrupt_labels(
        y_true, split.num_classes, spec.noise_kind, spec.noise_rate, seed,
        dataset=split.noise_map or spec.dataset,
    )
    return np.asarray(out.labels, dtype=np.int64), float(out.realised_rate)


def prepare_data(spec: DataSpec) -> TrialData:
    """Split (train / clean val / test) and corrupt train labels; CPU tensors.

    The features and clean labels are built on the first call for a data identity
    (dataset, root, download, fractions, seed) and shared by every later call that
    differs only in the noise; `clear_data_cache()` drops them.
    """
    _check_spec(spec)
    split = _shared_split(spec)
    y_true = split.y_train_true.numpy()
    given, rate = _noisy_train_labels(spec, split, y_true)
    return TrialData(
        x_train=split.x_train,
        y_train=torch.from_numpy(given),
        y_train_true=split.y_train_true,
        x_val=split.x_val,
        y_val=split.y_val,
        x_test=split.x_test,
        y_test=split.y_test,
        num_classes=split.num_classes,
        input_shape=tuple(split.x_train.shape[1:]),
        realised_noise_rate=rate,
        label_digest=noise.label_digest(given),
        is_image=split.is_image,
    )


# ------------------------------------------------------------------------ augmentation


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero pad `pad`) and horizontal flip of a NCHW batch, batched on x's device."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=x.device)
    flip = torch.rand(n, 1, generator=generator, device=x.device) < 0.5
    rows = dy + torch.arange(h, device=x.device)  # (n, h)
    cols = torch.arange(w, device=x.device)
    # a flip is a reversed column index, so crop and flip are one gather
    cols = torch.where(flip, cols.flip(0), cols) + dx  # (n, w)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=_memory_format(x))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """Keep channels_last inputs channels_last (CUDA image models use it)."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1:
        return torch.channels_last
    return torch.contiguous_format
