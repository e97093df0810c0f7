"""Trial counts of a campaign's studies against their budgets (two queries in all)."""

from __future__ import annotations

from dataclasses import dataclass, field

import optuna

from dm_tune.campaign import _optuna
from dm_tune.campaign.records import ROLES, StudyKey
from dm_tune.campaign.settings import settings_of
from dm_tune.config import CampaignConfig

__all__ = ["StudyProgress", "campaign_progress"]


@dataclass
class StudyProgress:
    """Trial counts of one study against its budget."""

    study_name: str
    role: str
    setting: str
    budget: int
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return self.counts.get("COMPLETE", 0) + self.counts.get("PRUNED", 0)

    @property
    def running(self) -> int:
        return self.counts.get("RUNNING", 0)

    @property
    def waiting(self) -> int:
        return self.counts.get("WAITING", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("FAIL", 0)

    @property
    def remaining(self) -> int:
        """Trials still to start: the budget less the done and running ones."""
        return max(0, self.budget - self.done - self.running)


def campaign_progress(
    storage: optuna.storages.RDBStorage, config: CampaignConfig
) -> list[StudyProgress]:
    """Counts per study of the campaign (studies not created yet are left out).

    A storage with ``state_counts()``/``budgets(key)`` methods (the gRPC proxy client)
    answers them itself; otherwise two queries run on its engine.
    """
    if callable(getattr(storage, "state_counts", None)) and callable(
        getattr(storage, "budgets", None)
    ):
        counts = storage.state_counts()
        budgets = storage.budgets(StudyKey.BUDGET)
    else:
        counts = _optuna.state_counts(storage.engine)
        budgets = _optuna.budgets(storage.engine, StudyKey.BUDGET)
    progress = []
    for setting in settings_of(config):
        for role in ROLES:
            name = setting.study_name(config.name, role)
            if name in budgets:
                progress.append(
                    StudyProgress(name, role, setting.name, budgets[name], counts.get(name, {}))
                )
    return progress
