"""The status of a campaign per setting: trial counts, the selection, the baselines."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import optuna

from dm_tune.campaign.progress import StudyProgress, campaign_progress
from dm_tune.campaign.records import ROLE_BASELINES, ROLE_CONFIRM, ROLE_DM, StudyKey
from dm_tune.config import CampaignConfig
from dm_tune.guidelines.results import BaselineResult, Selection
from dm_tune.guidelines.selection import select, summarize_baselines

__all__ = ["CampaignRecord", "StatusRow", "campaign_record", "status_document", "status_rows"]

#: ``dm-tune status --format json``'s ``schema`` and ``schema_version`` (docs/status-json.md)
STATUS_SCHEMA = "dm-tune/status"
STATUS_SCHEMA_VERSION = 1


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


@dataclass(frozen=True)
class CampaignRecord:
    """What the storage holds about a campaign file's studies, before any trial is read.

    ``studies``: the campaign's DM studies that this file names; ``stored_hashes``: the
    config hashes they were created with (one, unless the database was tampered with);
    ``slurm_jobs``: the Slurm job arrays ``launch --slurm`` recorded for the campaign.
    """

    studies: tuple[str, ...]
    stored_hashes: tuple[str, ...]
    slurm_jobs: tuple[str, ...]

    def hash_differs(self, config: CampaignConfig) -> bool:
        """True when the file's config hash is not the one its studies were created with."""
        return any(h != config.config_hash() for h in self.stored_hashes)


def campaign_record(storage: optuna.storages.BaseStorage, config: CampaignConfig
                    ) -> CampaignRecord:
    """The campaign's DM studies in ``storage``, their config hashes and Slurm jobs (a few
    reads of study attributes; works through the gRPC proxy too)."""
    studies, hashes, jobs = [], [], []
    for item in campaign_progress(storage, config):
        if item.role != ROLE_DM:
            continue
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(item.study_name))
        studies.append(item.study_name)
        stored = attrs.get(StudyKey.CONFIG_HASH)
        if stored is not None and str(stored) not in hashes:
            hashes.append(str(stored))
        for job in attrs.get(StudyKey.SLURM_JOBS) or []:
            if str(job) not in jobs:
                jobs.append(str(job))
    return CampaignRecord(tuple(studies), tuple(hashes), tuple(jobs))


def _finite(value: Any) -> Any:
    """JSON has no NaN: a non-finite number is null; containers are walked."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def status_document(
    config: CampaignConfig, rows: list[StatusRow], record: CampaignRecord, database: str,
    slurm_tasks: list[tuple[str, str]] | None,
) -> dict[str, Any]:
    """``dm-tune status --format json``: the shape docs/status-json.md documents.

    Accuracies are fractions (as in the export), never percent; ``slurm_tasks`` is None
    when Slurm was asked and did not answer.
    """
    return _finite({
        "schema": STATUS_SCHEMA,
        "schema_version": STATUS_SCHEMA_VERSION,
        "campaign": config.name,
        "database": database,
        "config_hash": config.config_hash(),
        "stored_config_hashes": list(record.stored_hashes),
        "config_hash_matches": not record.hash_differs(config),
        "settings": [
            {
                "setting": row.setting,
                "budget": row.budget,
                "complete": row.complete,
                "pruned": row.pruned,
                "failed": row.failed,
                "running": row.running,
                "confirmed": row.confirmed,
                "selected": asdict(row.selected) if row.selected is not None else None,
                "baselines": {loss: asdict(b) for loss, b in row.baselines.items()},
            }
            for row in rows
        ],
        "slurm_jobs": list(record.slurm_jobs),
        "slurm_tasks": (None if slurm_tasks is None else
                        [{"id": job_id, "state": state} for job_id, state in slurm_tasks]),
    })
