"""Confirmation: re-train each setting's top DM trials with new seeds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from dm_tune.campaign.create import lock_name, name_metric
from dm_tune.campaign.locks import campaign_lock
from dm_tune.campaign.records import PARAMS, ROLE_CONFIRM, StudyKey, TrialKey
from dm_tune.campaign.settings import Setting, settings_of
from dm_tune.config import CampaignConfig
from dm_tune.errors import CampaignError

__all__ = ["CONFIRM_SEED_OFFSET", "confirm_study", "create_confirmations", "queue_replicates"]

#: confirmation seeds start here above the campaign seed: never a search seed
CONFIRM_SEED_OFFSET = 1000


def create_confirmations(
    storage: optuna.storages.RDBStorage, config: CampaignConfig, top_k: int, seeds: int
) -> list[str]:
    """Queue each setting's top-k DM settings for re-training with ``seeds`` new seeds."""
    if top_k < 1 or seeds < 1:
        raise CampaignError("--top-k and --seeds must be at least 1")
    names = []
    with campaign_lock(storage, lock_name(config)):
        existing = {s.study_name for s in storage.get_all_studies()}
        for setting in settings_of(config):
            dm_name = setting.study_name(config.name)
            if dm_name not in existing:
                raise CampaignError(f"study {dm_name} does not exist; run the campaign first")
            dm_study = optuna.load_study(study_name=dm_name, storage=storage)
            complete = dm_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not complete:
                continue
            top = sorted(complete, key=lambda t: t.value, reverse=True)[:top_k]
            names.append(_queue(storage, config, setting, dm_study, top, seeds))
    if not names:
        raise CampaignError("no finished DM trials to confirm; run the campaign first")
    return names


def _queue(
    storage: optuna.storages.RDBStorage, config: CampaignConfig, setting: Setting,
    dm_study: optuna.Study, top: list[FrozenTrial], seeds: int,
) -> str:
    study = confirm_study(storage, config, setting, dm_study)
    first = config.campaign.seed + CONFIRM_SEED_OFFSET
    queue_replicates(study, [({k: t.params[k] for k in PARAMS}, t.number) for t in top],
                     range(first, first + seeds))
    return study.study_name


def confirm_study(
    storage: optuna.storages.RDBStorage, config: CampaignConfig, setting: Setting,
    dm_study: optuna.Study,
) -> optuna.Study:
    """The setting's confirm study; created (or completed) with the DM study's attributes."""
    study = optuna.create_study(study_name=setting.study_name(config.name, ROLE_CONFIRM),
                                storage=storage, direction="maximize", load_if_exists=True)
    name_metric(study)
    for key, value in dm_study.user_attrs.items():
        if key not in study.user_attrs:
            study.set_user_attr(key, value)
    study.set_user_attr(StudyKey.ROLE, ROLE_CONFIRM)
    return study


def queue_replicates(
    study: optuna.Study, jobs: Sequence[tuple[dict[str, float], int | None]],
    seeds: Iterable[int], **attrs: Any,
) -> int:
    """Queue each (params, source trial) job once per seed; the number of jobs added.

    A job is known by (source trial, seed), so a re-run queues nothing twice; a failed
    trial does not count (it was re-queued or gave up). The study's budget becomes the
    number of jobs it holds. ``attrs`` are extra user attributes of every new job.
    """
    queued = {(t.user_attrs.get(TrialKey.SOURCE_TRIAL), t.user_attrs.get(TrialKey.SEED))
              for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL}
    seeds = list(seeds)
    added = 0
    for params, source in jobs:
        for seed in seeds:
            if (source, seed) in queued:
                continue
            study.enqueue_trial(dict(params), user_attrs={
                TrialKey.SEED: seed, TrialKey.SOURCE_TRIAL: source, **attrs})
            queued.add((source, seed))
            added += 1
    study.set_user_attr(StudyKey.BUDGET, len(queued))
    return added
