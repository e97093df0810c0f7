"""Dataset loaders, splits, label noise and augmentation (dm_tune.data)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import (
    cifar10_train_labels,
    decode_index,
    write_cifar10,
    write_cifar10n,
    write_cifar100,
    write_cifar100n,
    write_npz,
)
from sklearn.datasets import load_digits

from dm_tune import noise
from dm_tune.data import DataSpec, TrialData, augment_batch, load_raw, prepare_data

DIGITS_40 = DataSpec("digits", val_fraction=0.125, noise_kind="symmetric", noise_rate=0.4)


@pytest.fixture(scope="module")
def digits_lookup() -> dict[bytes, set[int]]:
    """sklearn's digits: feature row bytes (as data.py scales them) -> the labels it has."""
    bunch = load_digits()
    table: dict[bytes, set[int]] = {}
    for row, label in zip((bunch.data / 16.0).astype(np.float32), bunch.target, strict=True):
        table.setdefault(row.tobytes(), set()).add(int(label))
    return table


def _source_labels_match(x: torch.Tensor, y: torch.Tensor, table: dict) -> bool:
    return all(int(lab) in table[row.tobytes()] for row, lab in zip(x.numpy(), y, strict=True))


@pytest.fixture(scope="module")
def digits40() -> TrialData:
    return prepare_data(DIGITS_40)


# ------------------------------------------------------------------------------- digits


def test_digits_split_sizes_match_design(digits40: TrialData) -> None:
    assert (len(digits40.y_train), len(digits40.y_val), len(digits40.y_test)) == (1257, 180, 360)
    assert digits40.input_shape == (64,) and digits40.num_classes == 10
    assert not digits40.is_image
    assert digits40.x_train.dtype == torch.float32
    assert 0.0 <= digits40.x_train.min() and digits40.x_train.max() <= 1.0


def test_digits_val_and_test_keep_true_labels(digits40: TrialData, digits_lookup) -> None:
    assert _source_labels_match(digits40.x_val, digits40.y_val, digits_lookup)
    assert _source_labels_match(digits40.x_test, digits40.y_test, digits_lookup)
    assert _source_labels_match(digits40.x_train, digits40.y_train_true, digits_lookup)


def test_digits_noise_touches_train_only_at_the_rate(digits40: TrialData) -> None:
    changed = (digits40.y_train != digits40.y_train_true).float().mean().item()
    assert 0.36 < changed < 0.44
    assert digits40.realised_noise_rate == pytest.approx(changed)
    assert digits40.label_digest == noise.label_digest(digits40.y_train.numpy())


def test_digits_noise_uses_the_noise_seed(digits40: TrialData) -> None:
    seed = noise.noise_seed("digits", "symmetric", 0.4, 0)
    expected = noise.corrupt_labels(
        digits40.y_train_true.numpy(), 10, "symmetric", 0.4, seed, dataset="digits"
    )
    assert np.array_equal(expected.labels, digits40.y_train.numpy())


def test_splits_are_disjoint_and_cover_digits(digits40: TrialData) -> None:
    x = torch.cat([digits40.x_train, digits40.x_val, digits40.x_test])
    assert len(x) == 1797
    # digits has a few duplicate images, so compare multisets of rows with the source
    rows = Counter(r.tobytes() for r in x.numpy())
    source = Counter(r.tobytes() for r in (load_digits().data / 16.0).astype(np.float32))
    assert rows == source


def test_splits_are_stratified(digits40: TrialData) -> None:
    counts = np.bincount(digits40.y_val.numpy(), minlength=10)
    assert counts.min() >= 16 and counts.max() <= 20


def test_prepare_data_is_deterministic_and_seeded(digits40: TrialData) -> None:
    again = prepare_data(DIGITS_40)
    assert torch.equal(again.x_val, digits40.x_val)
    assert torch.equal(again.y_train, digits40.y_train)
    assert again.label_digest == digits40.label_digest
    other = prepare_data(DataSpec(**{**DIGITS_40.__dict__, "seed": 1}))
    assert not torch.equal(other.x_val, digits40.x_val)
    assert other.label_digest != digits40.label_digest


def test_clean_spec_has_no_noise() -> None:
    data = prepare_data(DataSpec("digits"))
    assert torch.equal(data.y_train, data.y_train_true)
    assert data.realised_noise_rate == 0.0


def test_pairflip_and_asymmetric_run_on_digits() -> None:
    for kind in ("pairflip", "asymmetric"):
        data = prepare_data(DataSpec("digits", noise_kind=kind, noise_rate=0.3))
        assert 0.0 < data.realised_noise_rate < 0.35


def test_to_moves_every_tensor(digits40: TrialData) -> None:
    moved = digits40.to("cpu")
    assert moved.x_train is digits40.x_train  # no copy on the same device
    assert moved.num_classes == 10


# -------------------------------------------------------------------------------- CIFAR


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root)
    write_cifar100(root)
    return root


def test_cifar10_reads_the_pickle_batches(cifar_root: Path) -> None:
    data = prepare_data(DataSpec("cifar10", root=str(cifar_root), val_fraction=0.2))
    assert data.is_image and data.input_shape == (3, 32, 32)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (80, 20, 30)
    assert data.x_train.dtype == torch.float32
    raw = load_raw("cifar10", str(cifar_root))
    assert raw.class_names[3] == "cat"
    # labels of every split are the source labels of the decoded rows
    labels = cifar10_train_labels(cifar_root)
    for x, y in ((data.x_train, data.y_train), (data.x_val, data.y_val)):
        assert np.array_equal(labels[decode_index(x, raw.channel_mean, raw.channel_std)], y)
    assert np.array_equal(data.y_test.numpy(), raw.y_test)
    # normalised per channel with the training statistics
    all_x = torch.cat([data.x_train, data.x_val])
    assert all_x.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert torch.allclose(all_x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-2)


def test_cifar100_reads_the_pickle_files(cifar_root: Path) -> None:
    data = prepare_data(
        DataSpec(
            "cifar100",
            root=str(cifar_root),
            val_fraction=0.2,
            noise_kind="symmetric",
            noise_rate=0.2,
        )
    )
    assert data.num_classes == 100
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (800, 200, 200)
    assert 0.1 < data.realised_noise_rate < 0.3
    assert torch.bincount(data.y_val, minlength=100).min() == 2


def test_cifar10n_human_labels(cifar_root: Path) -> None:
    sets = write_cifar10n(cifar_root)
    raw = load_raw("cifar10n", str(cifar_root))
    for key, default in (
        (None, "worse_label"),
        ("aggre_label", "aggre_label"),
        ("random_label2", "random_label2"),
    ):
        data = prepare_data(
            DataSpec(
                "cifar10n",
                root=str(cifar_root),
                val_fraction=0.2,
                noise_kind="human",
                human_label=key,
            )
        )
        idx = decode_index(data.x_train, raw.channel_mean, raw.channel_std)
        assert np.array_equal(data.y_train.numpy(), sets[default][idx])
        assert np.array_equal(data.y_train_true.numpy(), sets["clean_label"][idx])
        assert data.realised_noise_rate == pytest.approx(
            float(np.mean(sets[default][idx] != sets["clean_label"][idx]))
        )
        # clean validation keeps the true labels
        vidx = decode_index(data.x_val, raw.channel_mean, raw.channel_std)
        assert np.array_equal(data.y_val.numpy(), sets["clean_label"][vidx])


def test_cifar100n_human_labels(cifar_root: Path) -> None:
    noisy = write_cifar100n(cifar_root)
    raw = load_raw("cifar100n", str(cifar_root))
    data = prepare_data(
        DataSpec("cifar100n", root=str(cifar_root), val_fraction=0.2, noise_kind="human")
    )
    idx = decode_index(data.x_train, raw.channel_mean, raw.channel_std)
    assert np.array_equal(data.y_train.numpy(), noisy[idx])
    assert 0.3 < data.realised_noise_rate < 0.5


# ---------------------------------------------------------------------------------- npz


def test_npz_features_with_own_test_split(tmp_path: Path) -> None:
    path = tmp_path / "f.npz"
    arrays = write_npz(
        path,
        x_test=np.zeros((8, 6), np.float32),
        y_test=np.arange(8) % 4,
        class_names=np.array(["a", "b", "c", "d"]),
    )
    data = prepare_data(DataSpec("npz", root=str(path), val_fraction=0.25))
    assert not data.is_image and data.input_shape == (6,)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (90, 30, 8)
    assert data.num_classes == 4
    assert torch.equal(data.y_test, torch.arange(8) % 4)
    rows = {r.tobytes(): int(lab) for r, lab in zip(arrays["x"], arrays["y"], strict=True)}
    assert all(
        rows[r.tobytes()] == int(lab) for r, lab in zip(data.x_val.numpy(), data.y_val, strict=True)
    )


def test_npz_nhwc_images_and_noisy_labels(tmp_path: Path) -> None:
    path = tmp_path / "img.npz"
    rng = np.random.default_rng(3)
    arrays = write_npz(path, n=200, images=True, noisy_y=rng.integers(0, 4, 200))
    data = prepare_data(DataSpec("npz", root=str(path), noise_kind="human"))
    assert data.is_image and data.input_shape == (3, 8, 8)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (144, 16, 40)
    raw = load_raw("npz", str(path))
    # NHWC -> NCHW: compare a train image with its source, un-normalised
    pix = data.x_train * torch.from_numpy(raw.channel_std).view(1, 3, 1, 1)
    pix = torch.round((pix + torch.from_numpy(raw.channel_mean).view(1, 3, 1, 1)) * 255)
    src = torch.from_numpy(arrays["x"]).permute(0, 3, 1, 2).float()
    match = (pix[:, None] == src[None]).flatten(2).all(-1)  # (train, source)
    assert torch.all(match.sum(1) >= 1)
    owner = match.float().argmax(1).numpy()
    assert np.array_equal(arrays["noisy_y"][owner], data.y_train.numpy())
    assert np.array_equal(arrays["y"][owner], data.y_train_true.numpy())


def test_npz_nchw_images_kept(tmp_path: Path) -> None:
    path = tmp_path / "nchw.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((60, 1, 5, 7)).astype(np.float32), y=np.arange(60) % 3)
    data = prepare_data(DataSpec("npz", root=str(path), val_fraction=0.2))
    assert data.input_shape == (1, 5, 7)


# ------------------------------------------------------------------------- augmentation


def _all_views(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Every crop (and its flip) of each image: (n, 2 * (2 pad + 1)^2, C, H, W)."""
    _, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    views = [
        padded[:, :, dy : dy + h, dx : dx + w]
        for dy in range(2 * pad + 1)
        for dx in range(2 * pad + 1)
    ]
    views += [v.flip(3) for v in views]
    return torch.stack(views, 1)


def test_augment_crops_and_flips_each_image() -> None:
    x = torch.randn(64, 3, 8, 8)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    views = _all_views(x)
    hits = (views == out[:, None]).flatten(2).all(-1)  # (n, views)
    assert torch.all(hits.any(1))  # every output is a crop or a flipped crop of its input
    which = hits.float().argmax(1)
    assert (which >= 81).any() and (which < 81).any()  # some flipped, some not
    assert len(set((which % 81).tolist())) > 10  # many different offsets
    assert not torch.equal(out, x)


def test_augment_is_deterministic_per_generator() -> None:
    x = torch.randn(16, 3, 32, 32)
    a = augment_batch(x, torch.Generator().manual_seed(5))
    b = augment_batch(x, torch.Generator().manual_seed(5))
    c = augment_batch(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------- bad input


def _npz(tmp_path: Path, **arrays) -> str:
    # a new name per case: the loader cache keys on path, mtime and size
    path = tmp_path / f"bad{len(list(tmp_path.iterdir()))}.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    ("spec", "word"),
    [
        (DataSpec("imagenet"), "dataset"),
        (DataSpec("cifar10"), "root"),
        (DataSpec("npz"), "root"),
        (DataSpec("digits", val_fraction=0.0), "val_fraction"),
        (DataSpec("digits", val_fraction=1.0), "val_fraction"),
        (DataSpec("digits", val_fraction=-0.1), "val_fraction"),
        (DataSpec("digits", test_fraction=1.5), "test_fraction"),
        (DataSpec("digits", val_fraction=0.001), "val_fraction"),
        (DataSpec("digits", noise_kind="gaussian"), "noise_kind"),
        (DataSpec("digits", noise_kind="symmetric", noise_rate=1.5), "noise_rate"),
        (DataSpec("digits", noise_rate=0.2), "noise_rate"),
        (DataSpec("digits", noise_kind="human"), "human_label"),
    ],
)
def test_bad_specs_name_the_input(spec: DataSpec, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        prepare_data(spec)


def test_missing_cifar_files_say_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="root") as info:
        prepare_data(DataSpec("cifar10", root=str(tmp_path)))
    msg = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "download=true" in msg
    assert "\n" not in msg
    with pytest.raises(ValueError, match="cifar-100-python"):
        prepare_data(DataSpec("cifar100", root=str(tmp_path)))


def test_missing_human_label_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    with pytest.raises(ValueError, match="CIFAR-10_human.pt"):
        prepare_data(DataSpec("cifar10n", root=str(tmp_path), noise_kind="human"))


def test_unknown_human_label_key(cifar_root: Path) -> None:
    write_cifar10n(cifar_root)
    with pytest.raises(ValueError, match="human_label"):
        prepare_data(
            DataSpec(
                "cifar10n",
                root=str(cifar_root),
                val_fraction=0.2,
                noise_kind="human",
                human_label="best_label",
            )
        )


def test_npz_bad_inputs(tmp_path: Path) -> None:
    x, y = np.zeros((40, 3), np.float32), np.arange(40) % 2
    cases = [
        ({"x": x}, "y"),
        ({"y": y}, "x"),
        ({"x": x, "y": y - 1}, "y"),  # labels out of range (negative)
        ({"x": x, "y": y, "class_names": np.array(["one"])}, "y"),  # label 1 >= 1 class
        ({"x": x, "y": y, "noisy_y": y + 5}, "noisy_y"),
        ({"x": x, "y": y.astype(float) + 0.5}, "y"),  # not integer labels
        ({"x": x[:30], "y": y}, "x"),
        ({"x": x, "y": np.r_[y[:-1], 2]}, "class 2"),  # a class with one example
        ({"x": x, "y": y, "x_test": x}, "x_test"),
    ]
    for arrays, word in cases:
        with pytest.raises(ValueError, match=word):
            prepare_data(DataSpec("npz", root=_npz(tmp_path, **arrays)))
    with pytest.raises(ValueError, match="root"):
        prepare_data(DataSpec("npz", root=str(tmp_path / "absent.npz")))
