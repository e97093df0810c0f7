"""The write side: creating a campaign's studies, claiming and running trials, workers.

Modules, in the order a trial meets them:

- ``settings``: noise settings, their data and training specs;
- ``records``: every stored study and trial attribute key (the schema);
- ``create`` / ``confirm``: studies and the jobs queued in them;
- ``candidates`` / ``confirm_run``: what the confirmation that ends ``run`` re-trains;
- ``progress``: counts against budgets; ``locks``: the claim lock;
- ``claims`` / ``run_trial`` / ``worker``: the worker loop; ``launcher``: processes;
- ``population_run``: K claimed trials trained as one model (``[search] population``);
- ``_optuna``: the only place that touches Optuna's private API or its tables.

Names are imported on first use, so reading the schema does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Setting": "settings",
    "data_spec": "settings",
    "load_setting_data": "settings",
    "settings_of": "settings",
    "train_spec": "settings",
    "check_campaign": "create",
    "create_campaign": "create",
    "create_confirmations": "confirm",
    "confirm_candidates": "candidates",
    "queue_confirmations": "confirm_run",
    "queue_tuned_gce": "confirm_run",
    "StudyProgress": "progress",
    "campaign_progress": "progress",
    "ClaimedTrial": "claims",
    "claim_trial": "claims",
    "worker_name": "claims",
    "TrialStopped": "run_trial",
    "report_epochs": "run_trial",
    "run_claimed_trial": "run_trial",
    "claim_trials": "population_run",
    "run_claimed_population": "population_run",
    "WorkerSummary": "worker",
    "run_worker": "worker",
    "stop_signals": "worker",
    "Slot": "launcher",
    "launch_workers": "launcher",
    "plan_slots": "launcher",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
