"""dm-tune: hyperparameter search for Derivative Manipulation (DM) on noisy labels.

Example:
    >>> import dm_tune
    >>> loss = dm_tune.DMLoss(emphasis_mode=1 / 3, emphasis_variance=8.0)
    >>> noisy = dm_tune.corrupt_labels([0, 1, 2, 3] * 25, 4, "symmetric", 0.2, seed=0)

Public names are imported on first use (PEP 562), so ``import dm_tune`` and the CLI's
start-up do not pay for torch or Optuna until they are needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "dm_density": "dm_tune.emphasis",
    "derivative_magnitude": "dm_tune.emphasis",
    "from_paper": "dm_tune.emphasis",
    "to_paper": "dm_tune.emphasis",
    "DMLoss": "dm_tune.losses",
    "dm_loss": "dm_tune.losses",
    "get_loss": "dm_tune.losses",
    "corrupt_labels": "dm_tune.noise",
    "transition_matrix": "dm_tune.noise",
    "label_digest": "dm_tune.noise",
    "DataSpec": "dm_tune.data",
    "prepare_data": "dm_tune.data",
    "build_model": "dm_tune.models",
    "TrainSpec": "dm_tune.training",
    "train_trial": "dm_tune.training",
    "load_campaign_config": "dm_tune.config",
    "open_storage": "dm_tune.storage",
    "create_campaign": "dm_tune.campaign",
    "run_worker": "dm_tune.campaign",
    "load_campaign": "dm_tune.guidelines",
    "recommend": "dm_tune.guidelines",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dm_tune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
