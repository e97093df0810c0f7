"""Dataset loaders: digits (ships with scikit-learn), CIFAR-10/100, CIFAR-N, npz files.

Each loader returns a :class:`RawDataset` of read-only arrays. Datasets that need a
download keep their real loading code; the tests run them on small fixtures they write.
npz images can be streamed from the file in chunks (:class:`NpzRows`) so that the
uint8 array never sits in memory next to its float32 copy.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pickle
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

__all__ = ["CHUNK_BYTES", "DATASETS", "RawDataset", "check_dataset", "file_stamp", "load_cached",
           "load_npz", "load_raw", "row_chunks", "rows_per_chunk"]


CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CIFAR10N_FILE = "CIFAR-10_human.pt"
CIFAR100N_FILE = "CIFAR-100_human.pt"
CIFAR10N_LABELS = ("aggre_label", "worse_label", "random_label1", "random_label2", "random_label3")
CIFAR100N_LABELS = ("noisy_label",)

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


# ---------------------------------------------------------------------------- loaders


def _readonly(a: np.ndarray) -> np.ndarray:
    """Mark a cached array read-only so no trial can alter another trial's data."""
    if isinstance(a, np.ndarray):  # a streamed npz array (_NpzRows) has no memory to mark
        a.flags.writeable = False
    return a


#: bytes of the temporary arrays of one chunk while building features and statistics
CHUNK_BYTES = 1 << 22


def rows_per_chunk(x: np.ndarray, itemsize: int) -> int:
    """How many rows of `x` make a chunk of about CHUNK_BYTES at `itemsize` bytes a value."""
    per_row = itemsize * int(np.prod(x.shape[1:], dtype=np.int64))
    return max(1, CHUNK_BYTES // max(1, per_row))


def row_chunks(x, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, x[first row : first row + rows]) over x, an array or a streamed npz array."""
    if isinstance(x, _NpzRows):
        yield from x.chunks(rows)
        return
    for start in range(0, len(x), rows):
        yield start, x[start : start + rows]


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of NCHW images, in [0, 1] units, chunked to bound memory.

    NaN/inf pixels are refused when the features are built (dm_tune.data); meanwhile they
    only make these statistics NaN, without numpy's warning lines.
    """
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    c = x.shape[1]
    s1, s2, n = np.zeros(c), np.zeros(c), 0
    with np.errstate(invalid="ignore", over="ignore"):
        for _, rows in row_chunks(x, rows_per_chunk(x, 8)):
            chunk = rows.astype(np.float64)
            chunk /= scale
            s1 += chunk.sum(axis=(0, 2, 3))
            chunk *= chunk
            s2 += chunk.sum(axis=(0, 2, 3))
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


def _digits_file() -> Path | None:
    """scikit-learn's bundled digits.csv.gz, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")  # a top-level package: nothing is run
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(pixels 0-16, float64 (1797, 64); labels) as `sklearn.datasets.load_digits` gives.

    It reads the CSV that ships inside scikit-learn directly: `load_digits` would import
    scikit-learn and SciPy (about a second of every worker's start-up) for one file.
    """
    path = _digits_file()
    if path is None:  # another layout: let scikit-learn find its file
        from sklearn.datasets import load_digits

        return load_digits(return_X_y=True)
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


def _load_digits(root: str | None, download: bool) -> RawDataset:
    """sklearn's 8x8 digits (bundled, offline), flattened to 64 features in [0, 1]."""
    pixels, labels = _digits_arrays()
    x = (pixels / 16.0).astype(np.float32)
    y = labels.astype(np.int64)
    names = tuple(str(n) for n in range(10))
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


def _nchw_layout(shape: tuple[int, ...], name: str) -> str:
    """How stored images become NCHW: "nhw" (C=1 added), "nhwc" (transposed) or "nchw"."""
    if len(shape) == 3:
        return "nhw"
    if shape[1] not in (1, 3, 4) and shape[3] in (1, 3, 4):
        return "nhwc"
    if shape[1] not in (1, 3, 4):
        raise ValueError(f"{name}: cannot tell the channel axis of images shaped {shape}")
    return "nchw"


def _as_nchw(x: np.ndarray, layout: str) -> np.ndarray:
    """Stored images (or a chunk of them) as NCHW, per `_nchw_layout`."""
    if layout == "nhw":
        return x[:, None]
    if layout == "nhwc":
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x


def _to_nchw(x, name: str):
    """Images as NCHW: NHWC (channels last, 1/3/4 channels) is transposed, NHW gets C=1."""
    layout = _nchw_layout(x.shape, name)
    if isinstance(x, _NpzRows):
        return replace(x, layout=layout)
    return _as_nchw(x, layout)


@dataclass(frozen=True)
class _NpzRows:
    """An image array of an .npz file, read chunk by chunk and never whole.

    prepare_data streams the images of an npz twice (channel statistics, then the
    float32 conversion straight into the split tensors), so the uint8 array is never
    resident next to its float32 copy. `load_raw` reads the arrays whole as before.
    """

    path: Path
    member: str  # the zip member, e.g. "x.npy"
    stored_shape: tuple[int, ...]
    dtype: np.dtype
    layout: str = "stored"  # "stored", or how chunks become NCHW (see _nchw_layout)

    @property
    def shape(self) -> tuple[int, ...]:
        s = self.stored_shape
        if self.layout == "nhw":
            return (s[0], 1, *s[1:])
        if self.layout == "nhwc":
            return (s[0], s[3], s[1], s[2])
        return s

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.stored_shape[0]

    def chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows as NCHW) chunks of `rows` rows, read from the file in order."""
        row_bytes = self.dtype.itemsize * int(np.prod(self.stored_shape[1:], dtype=np.int64))
        with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as f:
            _npy_header(f)
            for start in range(0, len(self), rows):
                n = min(rows, len(self) - start)
                try:
                    buf = f.read(n * row_bytes)
                except (zipfile.BadZipFile, zlib.error, EOFError) as error:  # bad CRC, data
                    raise ValueError(f"root: {self.path}: {self.member} is corrupt: "
                                     f"{_first_line(error)}") from None
                if len(buf) != n * row_bytes:
                    raise ValueError(f"root: {self.path}: {self.member} is truncated")
                chunk = np.frombuffer(buf, dtype=self.dtype).reshape(n, *self.stored_shape[1:])
                yield start, chunk if self.layout == "stored" else _as_nchw(chunk, self.layout)


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """(shape, fortran_order, dtype) from an open .npy stream, None for another version."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    return None


def _npz_streams(path: Path, keys: list[str]) -> dict[str, _NpzRows]:
    """The image arrays x / x_test of an npz that can be streamed (C order, plain dtype)."""
    found = {}
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        for key in ("x", "x_test"):
            member = f"{key}.npy"
            if key not in keys or member not in names:
                continue
            with archive.open(member) as f:
                header = _npy_header(f)
            if header is None:
                continue
            shape, fortran, dtype = header
            if not fortran and not dtype.hasobject and len(shape) in (3, 4) and dtype.itemsize:
                found[key] = _NpzRows(path, member, tuple(shape), dtype)
    return found


#: what numpy and zipfile raise for a file that is not a readable npz
_BROKEN_NPZ = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """np.load of an .npz archive, or a ValueError naming the file (never a traceback)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except _BROKEN_NPZ as error:
        reason = _first_line(error)
        if "pickled" in reason:  # numpy's guess for any file that is neither npy nor zip
            reason = "neither a zip archive nor an .npy array"
        raise ValueError(f"root: {path}: not an .npz file ({reason})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"root: {path}: holds one .npy array; save x and y with np.savez")
    return loaded


def load_npz(root: str | None, download: bool, stream: bool = False) -> RawDataset:
    """A user .npz: x, y, optional noisy_y, class_names, num_classes, x_test/y_test.

    The class count is the one declared (`num_classes`, a scalar, or the length of
    `class_names`; both must agree), else the largest label + 1. Refused: labels outside
    [0, count), fewer than 2 classes in y, and a class of [0, count) without an example
    in y (a declared class never seen would still receive noisy labels, and its accuracy
    is undefined: relabel to 0..K-1 or fix the declaration). Non-finite features are
    refused when the features are built (`dm_tune.data`).
    `stream`: image arrays are left in the file as `_NpzRows` (prepare_data's use).
    """
    path = _require_root("npz", root)
    if not path.is_file():
        raise ValueError(f"root: npz file {path} not found (root must be the path to the .npz)")
    archive = _open_npz(path)
    try:
        with archive as z:
            streamed = _npz_streams(path, z.files) if stream else {}
            arrays = {k: z[k] for k in z.files if k not in streamed}
    except _BROKEN_NPZ as error:  # a truncated or corrupt member, object arrays
        raise ValueError(f"root: {path}: cannot read the .npz: {_first_line(error)}") from None
    arrays |= streamed
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ValueError(f"root: {path} lacks array(s) {', '.join(missing)}; expected x and y")
    x, y = arrays["x"], _as_labels(arrays["y"], "y")
    if len(x) != len(y):
        raise ValueError(f"x: {len(x)} examples but y has {len(y)} labels")
    names = tuple(str(n) for n in arrays["class_names"]) if "class_names" in arrays else None
    num_classes = _npz_classes(arrays, names, y, path)
    kw = {"class_names": names, "noise_map": None}
    if "noisy_y" in arrays:
        noisy = _as_labels(arrays["noisy_y"], "noisy_y", len(y))
        _check_range(noisy, num_classes, "noisy_y")
        kw |= {"noisy_labels": {"noisy_y": _readonly(noisy)}, "default_noisy": "noisy_y"}
    x_test, y_test = _npz_test(arrays, num_classes)
    _check_example_shapes(x, x_test, path)
    if x.ndim in (3, 4):
        x = _to_nchw(x, "x")
        x_test = None if x_test is None else _to_nchw(x_test, "x_test")
        if x_test is not None and tuple(x_test.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"root: {path}: x_test: images of shape {tuple(x_test.shape[1:])} "
                             f"(as NCHW) but x's are {tuple(x.shape[1:])}")
        return _image_dataset(x, y, num_classes, x_test, y_test, **kw)
    with np.errstate(over="ignore"):  # beyond float32: inf, refused with the NaNs by data.py
        x = x.reshape(len(x), -1).astype(np.float32)
        x_test = None if x_test is None else x_test.reshape(len(x_test), -1).astype(np.float32)
    return RawDataset(
        x=_readonly(x), y=_readonly(y), num_classes=num_classes, is_image=False,
        x_test=None if x_test is None else _readonly(x_test),
        y_test=None if y_test is None else _readonly(y_test), **kw,
    )


def _check_example_shapes(x, x_test, path: Path) -> None:
    """Refuse degenerate arrays and a test split shaped unlike the training examples:
    x must be 2-d features (examples x features) or 3/4-d images, with no empty axis;
    x_test the same per example (images are compared again as NCHW)."""
    shape = tuple(x.shape)
    if len(shape) not in (2, 3, 4):
        raise ValueError(f"root: {path}: x: expected examples x features (2-d) or images "
                         f"(3-d or 4-d), got shape {shape}")
    if 0 in shape[1:]:
        raise ValueError(f"root: {path}: x: examples of shape {shape[1:]} hold no value "
                         "(an axis of length 0)")
    if x_test is None:
        return
    test = tuple(x_test.shape)
    if len(test) == 0 or test[0] == 0:
        raise ValueError(f"root: {path}: x_test is empty; drop x_test/y_test to split the "
                         "test examples from x")
    if len(shape) == 2:
        width = int(np.prod(test[1:], dtype=np.int64))
        if len(test) < 2 or width != shape[1]:
            raise ValueError(f"root: {path}: x_test: {width if len(test) >= 2 else 0} "
                             f"feature(s) per example but x has {shape[1]}")
    elif len(test) != len(shape):
        raise ValueError(f"root: {path}: x_test: images of shape {test[1:]} but x's are "
                         f"{shape[1:]}")


def _few(values: list[int], shown: int = 5) -> str:
    """Up to `shown` numbers, comma-separated, and how many more."""
    more = f" (+{len(values) - shown} more)" if len(values) > shown else ""
    return ", ".join(str(v) for v in values[:shown]) + more


def _npz_classes(arrays: dict, names: tuple[str, ...] | None, y: np.ndarray, path: Path) -> int:
    """The npz's class count (declared, else max label + 1), checked against its labels."""
    declared: dict[str, int] = {}
    if "num_classes" in arrays:
        value = np.asarray(arrays["num_classes"])
        if value.size != 1 or not np.issubdtype(value.dtype, np.integer):
            raise ValueError(f"root: {path}: num_classes must be one integer, got "
                             f"{value.dtype} {value.shape}")
        declared["num_classes"] = int(value.reshape(-1)[0])
    if names is not None:
        declared["class_names"] = len(names)
    if len(set(declared.values())) > 1:
        raise ValueError(f"root: {path}: num_classes is {declared['num_classes']} but "
                         f"class_names has {declared['class_names']} names")
    if len(y) == 0:
        raise ValueError(f"root: {path}: y is empty; a dataset needs examples")
    by = " and ".join(declared)
    num_classes = next(iter(declared.values())) if declared else int(y.max()) + 1
    if y.min() < 0 or y.max() >= num_classes:
        source = f"{num_classes} classes declared by {by}" if by else "labels are class ids"
        raise ValueError(f"root: {path}: y: labels must lie in [0, {num_classes}) ({source}), "
                         f"got range [{y.min()}, {y.max()}]")
    present = np.unique(y)
    if len(present) < 2:
        raise ValueError(f"root: {path}: y: every label is class {present[0]}; a classifier "
                         "needs examples of at least 2 classes")
    missing = sorted(set(range(num_classes)) - {int(c) for c in present})
    if missing:
        source = f"declared by {by}" if by else "0 .. largest label"
        raise ValueError(f"root: {path}: y: class(es) {_few(missing)} of the {num_classes} "
                         f"({source}) have no example; relabel to 0..K-1"
                         f"{' or fix ' + by if by else ''}")
    return num_classes


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
    "npz": load_npz,
}


@functools.lru_cache(maxsize=4)
def load_cached(dataset: str, root: str | None, download: bool, stamp: str) -> RawDataset:
    """`load_raw`'s cache (prepare_data does not use it: it keeps no raw arrays alive)."""
    return DATASETS[dataset](root, download)


def file_stamp(dataset: str, root: str | None) -> str:
    """Cache key part that changes when an npz file is rewritten (tests, users editing)."""
    if dataset != "npz" or root is None:
        return ""
    p = Path(root).expanduser()
    st = p.stat() if p.is_file() else None
    return "" if st is None else f"{st.st_mtime_ns}-{st.st_size}"


def check_dataset(dataset: str) -> None:
    """Raise ValueError for a dataset name DATASETS does not know."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset: unknown {dataset!r}; expected one of {', '.join(DATASETS)}")


def load_raw(dataset: str, root: str | None = None, download: bool = False) -> RawDataset:
    """Load (cached in-process until `clear_data_cache`) the raw dataset `dataset`."""
    check_dataset(dataset)
    return load_cached(dataset, root, bool(download), file_stamp(dataset, root))


