"""Confirmation: re-train each setting's top DM trials with new seeds."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from dm_tune.campaign.create import lock_name
from dm_tune.campaign.locks import campaign_lock
from dm_tune.campaign.records import PARAMS, ROLE_CONFIRM, StudyKey, TrialKey
from dm_tune.campaign.settings import Setting, settings_of
from dm_tune.config import CampaignConfig
from dm_tune.errors import CampaignError

__all__ = ["CONFIRM_SEED_OFFSET", "create_confirmations"]

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
    name = setting.study_name(config.name, ROLE_CONFIRM)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                load_if_exists=True)
    for key, value in dm_study.user_attrs.items():
        if key not in study.user_attrs:
            study.set_user_attr(key, value)
    study.set_user_attr(StudyKey.ROLE, ROLE_CONFIRM)
    queued = {(t.user_attrs.get(TrialKey.SOURCE_TRIAL), t.user_attrs.get(TrialKey.SEED))
              for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL}
    for trial in top:
        for offset in range(seeds):
            seed = config.campaign.seed + CONFIRM_SEED_OFFSET + offset
            if (trial.number, seed) in queued:
                continue
            study.enqueue_trial(
                {k: trial.params[k] for k in PARAMS},
                user_attrs={TrialKey.SEED: seed, TrialKey.SOURCE_TRIAL: trial.number},
            )
            queued.add((trial.number, seed))
    study.set_user_attr(StudyKey.BUDGET, len(queued))
    return name
