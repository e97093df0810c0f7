"""The status of a campaign per setting: trial counts, the selection, the baselines."""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from dm_tune.campaign.progress import StudyProgress, campaign_progress
from dm_tune.campaign.records import ROLE_BASELINES, ROLE_CONFIRM, ROLE_DM
from dm_tune.config import CampaignConfig
from dm_tune.guidelines.results import BaselineResult, Selection
from dm_tune.guidelines.selection import select, summarize_baselines

__all__ = ["StatusRow", "status_rows"]


@dataclass(frozen=True)
class StatusRow:
    """One setting's DM study counts, its selection (as export names it) and baselines."""

    setting: str
    budget: int
    complete: int
    pruned: int
    failed: int
    running: int
    confirmed: int
    selected: Selection | None
    baselines: dict[str, BaselineResult]


def _trials(storage: optuna.storages.BaseStorage, progress: StudyProgress | None) -> list:
    if progress is None:
        return []
    study_id = storage.get_study_id_from_name(progress.study_name)
    return storage.get_all_trials(study_id, deepcopy=False)


def status_rows(
    storage: optuna.storages.RDBStorage, config: CampaignConfig
) -> list[StatusRow]:
    """One row per created setting, with the same selection as export and report."""
    by_setting: dict[str, dict[str, StudyProgress]] = {}
    for item in campaign_progress(storage, config):
        by_setting.setdefault(item.setting, {})[item.role] = item
    rows = []
    for setting, roles in by_setting.items():
        dm = roles.get(ROLE_DM)
        if dm is None:
            continue
        confirm = roles.get(ROLE_CONFIRM)
        rows.append(StatusRow(
            setting=setting, budget=dm.budget, complete=dm.counts.get("COMPLETE", 0),
            pruned=dm.counts.get("PRUNED", 0), failed=dm.failed, running=dm.running,
            confirmed=confirm.done if confirm else 0,
            selected=select(_trials(storage, dm), _trials(storage, confirm)),
            baselines=summarize_baselines(_trials(storage, roles.get(ROLE_BASELINES))),
        ))
    return rows
