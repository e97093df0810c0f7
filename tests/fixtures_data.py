"""Tiny on-disk dataset fixtures in the real formats (CIFAR pickles, CIFAR-N .pt, npz).

Every image encodes its own index in the first two pixels of channel 0 (index % 256,
index // 256), so tests can map a loaded, normalised example back to its source row.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch


def _images(n: int, offset: int, rng: np.random.Generator) -> np.ndarray:
    """n random CIFAR rows (3072 bytes) whose first pixels encode offset + row index."""
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    idx = np.arange(offset, offset + n)
    data[:, 0] = idx % 256
    data[:, 1] = idx // 256
    return data


def _labels(n: int, num_classes: int, rng: np.random.Generator) -> list[int]:
    """Balanced labels in shuffled order."""
    return rng.permutation(np.arange(n) % num_classes).tolist()


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 30, seed: int = 0) -> Path:
    """cifar-10-batches-py with data_batch_1..5, test_batch and batches.meta under root."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for b in range(5):
        _dump(
            folder / f"data_batch_{b + 1}",
            {
                b"batch_label": f"training batch {b + 1} of 5".encode(),
                b"labels": _labels(per_batch, 10, rng),
                b"data": _images(per_batch, b * per_batch, rng),
            },
        )
    _dump(
        folder / "test_batch",
        {b"labels": _labels(n_test, 10, rng), b"data": _images(n_test, 0, rng)},
    )
    names = [
        n.encode() for n in ("airplane automobile bird cat deer dog frog horse ship truck").split()
    ]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return folder


def write_cifar100(root: Path, n_train: int = 1000, n_test: int = 200, seed: int = 0) -> Path:
    """cifar-100-python with train, test and meta under root."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = _labels(n, 100, rng)
        _dump(
            folder / name,
            {
                b"fine_labels": fine,
                b"coarse_labels": [f // 5 for f in fine],
                b"data": _images(n, 0, rng),
            },
        )
    _dump(folder / "meta", {b"fine_label_names": [f"class{i}".encode() for i in range(100)]})
    return folder


def cifar10_train_labels(root: Path) -> np.ndarray:
    """True training labels of a written CIFAR-10 fixture, in loader order."""
    folder = root / "cifar-10-batches-py"
    out = []
    for b in range(5):
        with open(folder / f"data_batch_{b + 1}", "rb") as f:
            out += pickle.load(f, encoding="bytes")[b"labels"]
    return np.asarray(out, dtype=np.int64)


def write_cifar10n(root: Path, rate: float = 0.4, seed: int = 1) -> dict[str, np.ndarray]:
    """CIFAR-10_human.pt with the CIFAR-10N keys (mixed numpy arrays and tensors)."""
    rng = np.random.default_rng(seed)
    clean = cifar10_train_labels(root)
    sets: dict[str, np.ndarray] = {"clean_label": clean}
    for key, r in (
        ("aggre_label", rate / 4),
        ("worse_label", rate),
        ("random_label1", rate / 2),
        ("random_label2", rate / 2),
        ("random_label3", rate / 2),
    ):
        flip = rng.random(len(clean)) < r
        sets[key] = np.where(flip, (clean + rng.integers(1, 10, len(clean))) % 10, clean)
    saved = {k: (torch.from_numpy(v) if k.startswith("random") else v) for k, v in sets.items()}
    torch.save(saved, root / "CIFAR-10_human.pt")
    return sets


def write_cifar100n(root: Path, rate: float = 0.4, seed: int = 1) -> np.ndarray:
    """CIFAR-100_human.pt with key noisy_label."""
    rng = np.random.default_rng(seed)
    with open(root / "cifar-100-python" / "train", "rb") as f:
        clean = np.asarray(pickle.load(f, encoding="bytes")[b"fine_labels"], dtype=np.int64)
    flip = rng.random(len(clean)) < rate
    noisy = np.where(flip, (clean + rng.integers(1, 100, len(clean))) % 100, clean)
    torch.save({"noisy_label": noisy, "clean_label": clean}, root / "CIFAR-100_human.pt")
    return noisy


def decode_index(x: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Source row index of normalised NCHW images written by this module."""
    px = x[:, 0, 0, :2].numpy() * std[0] + mean[0]
    lo, hi = np.rint(px[:, 0] * 255).astype(int), np.rint(px[:, 1] * 255).astype(int)
    return lo + 256 * hi


def write_npz(
    path: Path, n: int = 120, num_classes: int = 4, images: bool = False, seed: int = 0, **extra
) -> dict[str, np.ndarray]:
    """An npz with x (features, or NHWC uint8 8x8x3 images), y, plus `extra` arrays."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % num_classes)
    if images:
        x = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    else:
        # class-dependent means so a model can learn the task
        x = (rng.normal(size=(n, 6)) + 3.0 * np.eye(num_classes, 6)[y]).astype(np.float32)
    arrays = {"x": x, "y": y, **extra}
    np.savez(path, **arrays)
    return arrays
