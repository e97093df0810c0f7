"""dm_tune.data's memory behaviour: one copy of the features per dataset, shared by noise.

The noise settings of one dataset share the same feature and clean-label tensors; only
the noisy train labels differ. Label digests are pinned to the values measured before
the features were shared (a change there would orphan every existing study).
"""

from __future__ import annotations

import functools
import gc
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import write_cifar10, write_cifar10n, write_npz

from dm_tune import datasets as datasets_module
from dm_tune import noise
from dm_tune.data import DataSpec, clear_data_cache, prepare_data

ROOT = Path(__file__).resolve().parent.parent
SHARED = ("x_train", "y_train_true", "x_val", "y_val", "x_test", "y_test")

# label_digest and realised rate of these specs, measured on the code before this change
PINNED = [
    (DataSpec("digits"), "252ab25e5cd324804ddfa3eaba9a535d78e813ae82a172eeac5f9229b7855eca"),
    (DataSpec("digits", val_fraction=0.125, noise_kind="symmetric", noise_rate=0.4),
     "89499438e86b5dc5d0dbab97e71be454b499237440ce0bf1a3b0fd1a7e832f79"),
    (DataSpec("digits", noise_kind="pairflip", noise_rate=0.3),
     "c65fbd570c0946c7570075f38d558b030a2bf796cac878f5108b02f0bd13a343"),
    (DataSpec("digits", noise_kind="asymmetric", noise_rate=0.3),
     "592c972969ed6822a185d863b6ac9c0d0393a3cc9d17052343065a8ed4c17fd4"),
    (DataSpec("digits", val_fraction=0.125, noise_kind="symmetric", noise_rate=0.4, seed=1),
     "ffe226e1c939db06917f97180189e3bc7156943b6b37ff1f53e4bffd9a7f425a"),
]


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@pytest.mark.parametrize(("spec", "digest"), PINNED)
def test_digests_are_unchanged(spec: DataSpec, digest: str) -> None:
    assert prepare_data(spec).label_digest == digest


def test_cifar_digests_are_unchanged(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    write_cifar10n(tmp_path)
    root = str(tmp_path)
    asym = prepare_data(DataSpec("cifar10", root=root, val_fraction=0.2,
                                 noise_kind="asymmetric", noise_rate=0.4))
    assert asym.label_digest == "d38fb2c14cca8642caeda900d5214a97721138b5be5f980bda42025eb68ddd6a"
    human = prepare_data(DataSpec("cifar10n", root=root, val_fraction=0.2, noise_kind="human"))
    assert human.label_digest == (
        "a81f7095eb885479750d3dab8c4b35a9327203beb3e217aea1d7555c20136a0c"
    )
    assert human.realised_noise_rate == pytest.approx(0.3875)


def test_npz_image_digests_and_features_are_unchanged(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "img.npz"
    write_npz(path, n=200, images=True)
    for kind, rate, digest in (
        ("symmetric", 0.2, "61e2524909161b2e333b91183bee2f36922118a1c71909c33e76e2298b9cbe25"),
        ("pairflip", 0.4, "0d0a9812795374a244c3784150cd35638df60aa380601099cf160c3399e96982"),
    ):
        data = prepare_data(DataSpec("npz", root=str(path), noise_kind=kind, noise_rate=rate))
        assert data.label_digest == digest
        x_hash = hashlib.sha256(data.x_train.numpy().tobytes()).hexdigest()
        assert x_hash.startswith("f3d64309ea00ab78")  # normalised features, bit for bit


def test_noise_settings_share_the_features() -> None:
    sym = prepare_data(DataSpec("digits", noise_kind="symmetric", noise_rate=0.4, seed=5))
    pair = prepare_data(DataSpec("digits", noise_kind="pairflip", noise_rate=0.3, seed=5))
    clean = prepare_data(DataSpec("digits", seed=5))
    for name in SHARED:
        assert getattr(sym, name) is getattr(pair, name) is getattr(clean, name), name
    assert sym.x_train.data_ptr() == pair.x_train.data_ptr()
    # only the noisy labels differ, each as its own noise says
    assert not torch.equal(sym.y_train, pair.y_train)
    assert not _same_storage(sym.y_train, pair.y_train)
    assert not _same_storage(clean.y_train, clean.y_train_true)
    for data, kind, rate in ((sym, "symmetric", 0.4), (pair, "pairflip", 0.3)):
        seed = noise.noise_seed("digits", kind, rate, 5)
        expected = noise.corrupt_labels(data.y_train_true.numpy(), 10, kind, rate, seed,
                                        dataset="digits")
        assert np.array_equal(expected.labels, data.y_train.numpy())
        assert data.realised_noise_rate == pytest.approx(expected.realised_rate)
    assert torch.equal(clean.y_train, clean.y_train_true)


def test_other_split_parameters_get_their_own_features() -> None:
    base = prepare_data(DataSpec("digits", noise_kind="symmetric", noise_rate=0.2))
    for other in (DataSpec("digits", seed=3), DataSpec("digits", val_fraction=0.2),
                  DataSpec("digits", test_fraction=0.3)):
        assert not _same_storage(prepare_data(other).x_train, base.x_train)


def test_npz_image_settings_share_one_copy(tmp_path: Path) -> None:
    path = tmp_path / "img.npz"
    write_npz(path, n=200, images=True, noisy_y=np.arange(200) % 4)
    specs = [DataSpec("npz", root=str(path), noise_kind=kind, noise_rate=rate)
             for kind, rate in (("symmetric", 0.2), ("symmetric", 0.4), ("pairflip", 0.3))]
    specs.append(DataSpec("npz", root=str(path), noise_kind="human"))
    got = [prepare_data(spec) for spec in specs]
    assert len({d.x_train.data_ptr() for d in got}) == 1
    assert len({d.x_test.data_ptr() for d in got}) == 1
    assert len({d.label_digest for d in got}) == len(got)


def test_clear_data_cache_rebuilds_equal_features() -> None:
    spec = DataSpec("digits", noise_kind="symmetric", noise_rate=0.2, seed=7)
    first = prepare_data(spec)
    clear_data_cache()
    again = prepare_data(spec)
    assert not _same_storage(first.x_train, again.x_train)
    for name in (*SHARED, "y_train"):
        assert torch.equal(getattr(first, name), getattr(again, name)), name
    assert first.label_digest == again.label_digest


def test_trial_data_keeps_no_raw_arrays_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = []

    def spy(root, download):
        raw = datasets_module._load_digits(root, download)
        loaded.append(weakref.ref(raw.x))
        return raw

    monkeypatch.setitem(datasets_module.DATASETS, "digits", spy)
    clear_data_cache()
    kept = prepare_data(DataSpec("digits", noise_kind="symmetric", noise_rate=0.2, seed=11))
    gc.collect()
    assert len(loaded) == 1 and loaded[0]() is None  # the raw features are gone ...
    assert kept.x_train.shape == (1293, 64)  # ... while the trial's tensors live on
    clear_data_cache()


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nhw"])
def test_streamed_npz_equals_the_whole_array_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressed: bool, layout: str
) -> None:
    rng = np.random.default_rng(4)
    shape = {"nhwc": (300, 6, 5, 3), "nchw": (300, 3, 6, 5), "nhw": (300, 6, 5)}[layout]
    arrays = {"x": rng.integers(0, 256, shape, dtype=np.uint8), "y": np.arange(300) % 5,
              "x_test": rng.integers(0, 256, (20, *shape[1:]), dtype=np.uint8),
              "y_test": np.arange(20) % 5}
    path = tmp_path / f"{layout}.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    spec = DataSpec("npz", root=str(path), noise_kind="symmetric", noise_rate=0.3)
    monkeypatch.setattr(datasets_module, "CHUNK_BYTES", 1000)  # many small chunks
    clear_data_cache()
    streamed = prepare_data(spec)
    assert streamed.input_shape == (3 if layout != "nhw" else 1, 6, 5)
    # the same loader, but not recognised as the npz loader: the whole-array path
    monkeypatch.setattr(datasets_module, "CHUNK_BYTES", 1 << 22)
    monkeypatch.setitem(datasets_module.DATASETS, "npz",
                        functools.partial(datasets_module.load_npz, stream=False))
    clear_data_cache()
    whole = prepare_data(spec)
    for name in (*SHARED, "y_train"):
        assert torch.equal(getattr(streamed, name), getattr(whole, name)), name
    assert streamed.label_digest == whole.label_digest
    clear_data_cache()


def test_truncated_npz_member_is_a_clear_error(tmp_path: Path) -> None:
    import io
    import zipfile

    def npy(arr: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr)
        return buf.getvalue()

    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("y.npy", npy(np.arange(40) % 2))
        archive.writestr("x.npy", npy(np.zeros((40, 4, 4, 3), np.uint8))[:-100])
    with pytest.raises(ValueError, match="truncated"):
        prepare_data(DataSpec("npz", root=str(path)))


@pytest.mark.slow
def test_memory_benchmark_quick_runs() -> None:
    done = subprocess.run([sys.executable, "benchmarks/memory.py", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    names = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("RESULT")}
    assert {"create_peak_copies", "worker_peak_copies"} <= names
