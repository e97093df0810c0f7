"""Median seconds per training epoch of the built-in models on CPU.

Prints `RESULT <name> <seconds per epoch> target -` lines:
digits/MLP (1,257 train examples, batch 64), a 32x32 CNN and ResNet-20 on synthetic
32x32 images (2,048 by default, batch 128, crop/flip augmentation on).

    python benchmarks/epoch_time.py            # full run
    python benchmarks/epoch_time.py --quick    # a few epochs, fewer images
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from dm_tune.data import DataSpec, TrialData, prepare_data
from dm_tune.training import TrainSpec, train_trial


def synthetic_images(n: int, seed: int = 0) -> TrialData:
    """n random 3x32x32 images in 10 classes, normalised, with small val/test splits."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=gen)
    y = torch.arange(n) % 10
    k = max(n // 8, 10)
    return TrialData(
        x_train=x, y_train=y, y_train_true=y, x_val=x[:k], y_val=y[:k], x_test=x[:k],
        y_test=y[:k], num_classes=10, input_shape=(3, 32, 32), realised_noise_rate=0.0,
        label_digest="synthetic", is_image=True,
    )


def epoch_seconds(data: TrialData, spec: TrainSpec, loss: str = "cce", **params) -> float:
    """Median wall seconds between epoch ends (the first epoch is warm-up, dropped)."""
    ends: list[float] = []
    train_trial(data, spec, loss=loss, loss_params=params or None, progress=False,
                on_epoch=lambda epoch, m: ends.append(m["seconds"]))
    deltas = np.diff(ends)
    return float(statistics.median(deltas)) if len(deltas) else float(ends[0])


def main() -> None:
    """Run the three measurements and print RESULT lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few epochs, fewer images")
    parser.add_argument("--images", type=int, default=None, help="synthetic image count")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_images = args.images or (512 if args.quick else 2048)
    epochs = 3 if args.quick else 5  # image epochs; the first is warm-up and dropped
    digits = prepare_data(DataSpec("digits", val_fraction=0.125))
    images = synthetic_images(n_images)
    runs = {
        "digits_mlp_epoch_s": (digits, TrainSpec(epochs=10 * epochs)),
        "digits_mlp_dm_epoch_s": (digits, TrainSpec(epochs=10 * epochs)),
        f"cnn32_{n_images}img_epoch_s": (images, TrainSpec(model="cnn", epochs=epochs,
                                                           batch_size=128)),
        f"resnet20_{n_images}img_epoch_s": (images, TrainSpec(model="resnet20", epochs=epochs,
                                                              batch_size=128)),
    }
    for name, (data, spec) in runs.items():
        if "dm" in name:
            value = epoch_seconds(data, spec, "dm", emphasis_mode=1 / 3, emphasis_variance=8.0)
        else:
            value = epoch_seconds(data, spec)
        print(f"RESULT {name} {value:.4f} target -", flush=True)


if __name__ == "__main__":
    main()
