"""Dataset registry, seeded stratified splits and label noise for one trial.

A trial's data is the train split (noisy labels, plus the true ones for the
memorisation figures), a clean validation split (true labels) and a test split
(true labels). Everything is deterministic given a `DataSpec`.

Example:
    >>> data = prepare_data(DataSpec("digits", noise_kind="symmetric", noise_rate=0.4))
    >>> data.x_train.shape[1], data.num_classes
    (64, 10)
"""

from __future__ import annotations

import functools
import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from dm_tune import noise

__all__ = [
    "DATASETS",
    "DataSpec",
    "RawDataset",
    "TrialData",
    "augment_batch",
    "load_raw",
    "prepare_data",
]

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CIFAR10N_FILE = "CIFAR-10_human.pt"
CIFAR100N_FILE = "CIFAR-100_human.pt"
CIFAR10N_LABELS = ("aggre_label", "worse_label", "random_label1", "random_label2", "random_label3")
CIFAR100N_LABELS = ("noisy_label",)


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
class RawDataset:
    """A loaded dataset before splitting (arrays are read-only and shared via the cache)."""

    x: np.ndarray  # features (N, D) float32, or images (N, C, H, W) uint8/float32
    y: np.ndarray  # true labels, int64
    num_classes: int
    is_image: bool
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    noisy_labels: dict[str, np.ndarray] | None = None  # human label sets, aligned with y
    default_noisy: str | None = None
    class_names: tuple[str, ...] | None = None
    noise_map: str | None = None  # dataset name noise.py knows for the asymmetric map
    channel_mean: np.ndarray | None = None  # per-channel stats of x in [0, 1] units
    channel_std: np.ndarray | None = None


@dataclass(frozen=True)
class TrialData:
    """Tensors of one trial: train (noisy and true labels), clean validation, test."""

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


# ---------------------------------------------------------------------------- loaders


def _readonly(a: np.ndarray) -> np.ndarray:
    """Mark a cached array read-only so no trial can alter another trial's data."""
    a.flags.writeable = False
    return a


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of NCHW images, in [0, 1] units, chunked to bound memory."""
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    c = x.shape[1]
    s1, s2, n = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(x), 4096):
        chunk = x[i : i + 4096].astype(np.float64) / scale
        s1 += chunk.sum(axis=(0, 2, 3))
        s2 += (chunk**2).sum(axis=(0, 2, 3))
        n += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 1e-12))
    return mean.astype(np.float32), std.astype(np.float32)


def _image_dataset(x, y, num_classes, x_test=None, y_test=None, **kw) -> RawDataset:
    """Build an image RawDataset with its channel statistics."""
    mean, std = _channel_stats(x)
    return RawDataset(
        x=_readonly(x), y=_readonly(y), num_classes=num_classes, is_image=True,
        x_test=None if x_test is None else _readonly(x_test),
        y_test=None if y_test is None else _readonly(y_test),
        channel_mean=mean, channel_std=std, **kw,
    )


def _load_digits(root: str | None, download: bool) -> RawDataset:
    """sklearn's 8x8 digits (bundled, offline), flattened to 64 features in [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    names = tuple(str(n) for n in bunch.target_names)
    return RawDataset(
        x=_readonly(x), y=_readonly(y), num_classes=10, is_image=False,
        class_names=names, noise_map="digits",
    )


def _unpickle(path: Path) -> dict:
    """Read one CIFAR python pickle batch (byte-string keys, as the archives ship them)."""
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _get(d: dict, key: str):
    """Look a CIFAR pickle key up as bytes or str (archives use bytes, fixtures may not)."""
    return d[key.encode()] if key.encode() in d else d[key]


def _cifar_images(batch: dict) -> np.ndarray:
    """CIFAR rows of 3072 bytes -> uint8 NCHW."""
    return np.asarray(_get(batch, "data"), dtype=np.uint8).reshape(-1, 3, 32, 32)


def _require_root(dataset: str, root: str | None) -> Path:
    """The dataset root as a Path, or a ValueError saying it is needed."""
    if root is None:
        raise ValueError(f"root: dataset {dataset!r} needs root=<folder with its files>")
    return Path(root).expanduser()


def _cifar_folder(dataset: str, root: Path, download: bool, folder: str, files: list[str]) -> Path:
    """The CIFAR folder with all `files`, downloading via torchvision when asked."""
    path = root / folder
    if all((path / f).is_file() for f in files):
        return path
    if not download:
        raise ValueError(
            f"root: {dataset} files not found in {path} (looked for {', '.join(files)}); "
            f"set download=true or place {folder} there"
        )
    from torchvision import datasets

    cls = datasets.CIFAR10 if folder == CIFAR10_DIR else datasets.CIFAR100
    cls(str(root), train=True, download=True)
    cls(str(root), train=False, download=True)
    return path


def _load_cifar10(root: str | None, download: bool) -> RawDataset:
    """CIFAR-10 from the standard python pickle batches (read here, no md5 check)."""
    base = _require_root("cifar10", root)
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    path = _cifar_folder("cifar10", base, download, CIFAR10_DIR, [*train_files, "test_batch"])
    batches = [_unpickle(path / f) for f in train_files]
    test = _unpickle(path / "test_batch")
    names = None
    if (path / "batches.meta").is_file():
        names = tuple(_decode(n) for n in _get(_unpickle(path / "batches.meta"), "label_names"))
    return _image_dataset(
        np.concatenate([_cifar_images(b) for b in batches]),
        np.concatenate([np.asarray(_get(b, "labels"), np.int64) for b in batches]),
        10, _cifar_images(test), np.asarray(_get(test, "labels"), np.int64),
        class_names=names, noise_map="cifar10",
    )


def _load_cifar100(root: str | None, download: bool) -> RawDataset:
    """CIFAR-100 (fine labels) from the standard python pickle files."""
    base = _require_root("cifar100", root)
    path = _cifar_folder("cifar100", base, download, CIFAR100_DIR, ["train", "test"])
    train, test = _unpickle(path / "train"), _unpickle(path / "test")
    names = None
    if (path / "meta").is_file():
        names = tuple(_decode(n) for n in _get(_unpickle(path / "meta"), "fine_label_names"))
    return _image_dataset(
        _cifar_images(train), np.asarray(_get(train, "fine_labels"), np.int64),
        100, _cifar_images(test), np.asarray(_get(test, "fine_labels"), np.int64),
        class_names=names, noise_map="cifar100",
    )


def _decode(name) -> str:
    """A class name from a pickle (bytes or str) as str."""
    return name.decode() if isinstance(name, bytes) else str(name)


def _torch_load_labels(path: Path) -> dict:
    """torch.load with weights_only=True, allowing the numpy arrays CIFAR-N files hold."""
    import numpy.dtypes as npd
    from numpy._core.multiarray import _reconstruct

    safe = [_reconstruct, np.ndarray, np.dtype]
    safe += [getattr(npd, n) for n in dir(npd) if n.endswith("DType")]
    with torch.serialization.safe_globals(safe):
        return torch.load(path, map_location="cpu", weights_only=True)


def _human_labels(dataset, base: RawDataset, root, file, keys, default) -> RawDataset:
    """Attach a CIFAR-N human label file to its CIFAR dataset."""
    path = Path(root).expanduser() / file
    if not path.is_file():
        raise ValueError(f"root: {dataset} needs the human label file {path} (place {file} there)")
    raw = _torch_load_labels(path)
    labels = {}
    for key in keys:
        if key in raw:
            labels[key] = _readonly(_as_labels(raw[key], f"{file}[{key!r}]", len(base.y)))
    if not labels:
        raise ValueError(f"root: {path} holds none of the label sets {', '.join(keys)}")
    for key, lab in labels.items():
        _check_range(lab, base.num_classes, f"{file}[{key!r}]")
    return replace(base, noisy_labels=labels, default_noisy=default)


def _load_cifar10n(root: str | None, download: bool) -> RawDataset:
    """CIFAR-10 images with the CIFAR-10N human label sets."""
    base = _load_cifar10(root, download)
    return _human_labels("cifar10n", base, root, CIFAR10N_FILE, CIFAR10N_LABELS, "worse_label")


def _load_cifar100n(root: str | None, download: bool) -> RawDataset:
    """CIFAR-100 images with the CIFAR-100N human labels."""
    base = _load_cifar100(root, download)
    return _human_labels("cifar100n", base, root, CIFAR100N_FILE, CIFAR100N_LABELS, "noisy_label")


def _as_labels(a, name: str, n: int | None = None) -> np.ndarray:
    """Integer label vector from a tensor/array, or a ValueError naming `name`."""
    arr = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    arr = arr.reshape(-1) if arr.ndim == 2 and 1 in arr.shape else arr
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or _integral_float(arr)):
        raise ValueError(f"{name}: expected 1-d integer labels, got {arr.dtype} {arr.shape}")
    if n is not None and len(arr) != n:
        raise ValueError(f"{name}: expected {n} labels (one per example), got {len(arr)}")
    return arr.astype(np.int64)


def _integral_float(arr: np.ndarray) -> bool:
    """True for float arrays whose values are all whole numbers."""
    return np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.mod(arr, 1) == 0))


def _check_range(y: np.ndarray, num_classes: int, name: str) -> None:
    """Raise ValueError when a label is outside [0, num_classes)."""
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"{name}: labels must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]"
        )


def _to_nchw(x: np.ndarray, name: str) -> np.ndarray:
    """Images as NCHW: NHWC (channels last, 1/3/4 channels) is transposed, NHW gets C=1."""
    if x.ndim == 3:
        return x[:, None]
    if x.shape[1] not in (1, 3, 4) and x.shape[3] in (1, 3, 4):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.shape[1] not in (1, 3, 4):
        raise ValueError(f"{name}: cannot tell the channel axis of images shaped {x.shape}")
    return x


def _load_npz(root: str | None, download: bool) -> RawDataset:
    """A user .npz: x, y, optional noisy_y, class_names, x_test/y_test."""
    path = _require_root("npz", root)
    if not path.is_file():
        raise ValueError(f"root: npz file {path} not found (root must be the path to the .npz)")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ValueError(f"root: {path} lacks array(s) {', '.join(missing)}; expected x and y")
    x, y = arrays["x"], _as_labels(arrays["y"], "y")
    if len(x) != len(y):
        raise ValueError(f"x: {len(x)} examples but y has {len(y)} labels")
    names = tuple(str(n) for n in arrays["class_names"]) if "class_names" in arrays else None
    num_classes = len(names) if names else int(y.max()) + 1
    _check_range(y, num_classes, "y")
    kw = {"class_names": names, "noise_map": None}
    if "noisy_y" in arrays:
        noisy = _as_labels(arrays["noisy_y"], "noisy_y", len(y))
        _check_range(noisy, num_classes, "noisy_y")
        kw |= {"noisy_labels": {"noisy_y": _readonly(noisy)}, "default_noisy": "noisy_y"}
    x_test, y_test = _npz_test(arrays, num_classes)
    if x.ndim in (3, 4):
        x = _to_nchw(x, "x")
        x_test = None if x_test is None else _to_nchw(x_test, "x_test")
        return _image_dataset(x, y, num_classes, x_test, y_test, **kw)
    x = x.reshape(len(x), -1).astype(np.float32)
    x_test = None if x_test is None else x_test.reshape(len(x_test), -1).astype(np.float32)
    return RawDataset(
        x=_readonly(x), y=_readonly(y), num_classes=num_classes, is_image=False,
        x_test=None if x_test is None else _readonly(x_test),
        y_test=None if y_test is None else _readonly(y_test), **kw,
    )


def _npz_test(arrays: dict, num_classes: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The npz's own test split when it has both x_test and y_test."""
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ValueError("x_test: an npz test split needs both x_test and y_test")
    if "x_test" not in arrays:
        return None, None
    y_test = _as_labels(arrays["y_test"], "y_test", len(arrays["x_test"]))
    _check_range(y_test, num_classes, "y_test")
    return arrays["x_test"], y_test


DATASETS: dict[str, Callable[[str | None, bool], RawDataset]] = {
    "digits": _load_digits,
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
    "cifar10n": _load_cifar10n,
    "cifar100n": _load_cifar100n,
    "npz": _load_npz,
}


@functools.lru_cache(maxsize=4)
def _load_cached(dataset: str, root: str | None, download: bool, stamp: str) -> RawDataset:
    """Load once per process: a worker runs many trials on the same data."""
    return DATASETS[dataset](root, download)


def _file_stamp(dataset: str, root: str | None) -> str:
    """Cache key part that changes when an npz file is rewritten (tests, users editing)."""
    if dataset != "npz" or root is None:
        return ""
    p = Path(root).expanduser()
    st = p.stat() if p.is_file() else None
    return "" if st is None else f"{st.st_mtime_ns}-{st.st_size}"


def load_raw(dataset: str, root: str | None = None, download: bool = False) -> RawDataset:
    """Load (cached in-process) the raw dataset `dataset`."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset: unknown {dataset!r}; expected one of {', '.join(DATASETS)}")
    return _load_cached(dataset, root, bool(download), _file_stamp(dataset, root))


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
    rest, out = train_test_split(
        idx, test_size=fraction, stratify=labels, random_state=_split_seed(seed, arg)
    )
    return np.sort(rest), np.sort(out)


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


def _noisy_train_labels(spec: DataSpec, raw: RawDataset, train_idx, y_true) -> tuple:
    """Given labels of the train split and the realised noise rate."""
    if spec.noise_kind == "none":
        return y_true.copy(), 0.0
    if spec.noise_kind == "human":
        sets = raw.noisy_labels or {}
        key = spec.human_label or raw.default_noisy
        if key not in sets:
            have = ", ".join(sets) or "none (this dataset has no human labels)"
            raise ValueError(f"human_label: {key!r} not available for {spec.dataset}; have {have}")
        given = np.array(sets[key][train_idx], dtype=np.int64)
        return given, float(np.mean(given != y_true)) if len(given) else 0.0
    seed = noise.noise_seed(spec.dataset, spec.noise_kind, spec.noise_rate, spec.seed)
    out = noise.corrupt_labels(
        y_true, raw.num_classes, spec.noise_kind, spec.noise_rate, seed,
        dataset=raw.noise_map or spec.dataset,
    )
    return np.asarray(out.labels, dtype=np.int64), float(out.realised_rate)


def _x_tensor(x: np.ndarray, raw: RawDataset) -> torch.Tensor:
    """Features as float32, images normalised per channel (float32 NCHW)."""
    if not raw.is_image:
        return torch.from_numpy(np.array(x, dtype=np.float32))
    t = torch.tensor(x, dtype=torch.float32)  # a copy: x may be the read-only cached array
    if x.dtype == np.uint8:
        t.div_(255.0)
    mean = torch.from_numpy(raw.channel_mean).view(1, -1, 1, 1)
    std = torch.from_numpy(raw.channel_std).view(1, -1, 1, 1)
    return t.sub_(mean).div_(std)


def prepare_data(spec: DataSpec) -> TrialData:
    """Load, split (train / clean val / test), corrupt train labels; CPU tensors."""
    _check_spec(spec)
    raw = load_raw(spec.dataset, spec.root, spec.download)
    idx = np.arange(len(raw.y))
    if raw.x_test is not None:
        x_test, y_test = raw.x_test, raw.y_test
    else:
        idx, test_idx = _stratified_split(
            idx, raw.y, spec.test_fraction, "test_fraction", spec.seed
        )
        x_test, y_test = raw.x[test_idx], raw.y[test_idx]
    train_idx, val_idx = _stratified_split(
        idx, raw.y, spec.val_fraction, "val_fraction", spec.seed
    )
    y_true = np.array(raw.y[train_idx], dtype=np.int64)
    given, rate = _noisy_train_labels(spec, raw, train_idx, y_true)
    x_train = _x_tensor(raw.x[train_idx], raw)
    return TrialData(
        x_train=x_train,
        y_train=torch.from_numpy(given),
        y_train_true=torch.from_numpy(y_true),
        x_val=_x_tensor(raw.x[val_idx], raw),
        y_val=torch.from_numpy(np.array(raw.y[val_idx], dtype=np.int64)),
        x_test=_x_tensor(x_test, raw),
        y_test=torch.from_numpy(np.array(y_test, dtype=np.int64)),
        num_classes=raw.num_classes,
        input_shape=tuple(x_train.shape[1:]),
        realised_noise_rate=rate,
        label_digest=noise.label_digest(given),
        is_image=raw.is_image,
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
