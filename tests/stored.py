"""What a storage holds, read back for assertions: every study's trials by study name."""

from __future__ import annotations

import optuna


def trials_by_study(storage: str | optuna.storages.BaseStorage
                    ) -> dict[str, list[optuna.trial.FrozenTrial]]:
    """Every study's trials, by study name; a URL is opened and its engine disposed."""
    if not isinstance(storage, str):
        return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
                .get_trials() for s in storage.get_all_studies()}
    opened = optuna.storages.RDBStorage(storage)
    try:
        return trials_by_study(opened)
    finally:
        opened.engine.dispose()
