"""Creating a campaign's studies, and checking existing ones against this machine's data.

A campaign file expands into settings (noise kind x rate); each owns a DM study and,
with baselines, a baselines study whose jobs are enqueued at creation so that baselines
never enter the sampler's history. Creation is idempotent and all-or-nothing: every
setting's data is prepared and every existing study checked before anything is written.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

from dm_tune import __version__
from dm_tune.campaign.locks import campaign_lock
from dm_tune.campaign.records import (
    METRIC_NAME,
    PARAM_MODE,
    PARAM_VARIANCE,
    ROLE_BASELINES,
    ROLE_DM,
    StudyKey,
    TrialKey,
)
from dm_tune.campaign.settings import Setting, settings_of
from dm_tune.campaign.validate import checked_settings
from dm_tune.config import CampaignConfig
from dm_tune.data import TrialData
from dm_tune.errors import CampaignError, DigestMismatchError

__all__ = ["check_campaign", "check_study_matches", "create_campaign", "study_names"]


def lock_name(config: CampaignConfig) -> str:
    """The name of the campaign's claim lock (one per campaign, whatever the database)."""
    return f"dm-tune/{config.name}"


def study_attrs(
    config: CampaignConfig, setting: Setting, role: str, data: TrialData, budget: int
) -> dict[str, Any]:
    """The user attrs a study of ``setting`` is created with."""
    rate = setting.rate if setting.kind != "human" else round(data.realised_noise_rate, 4)
    return {
        StudyKey.CAMPAIGN: config.name,
        StudyKey.DATASET: config.data.dataset,
        StudyKey.MODEL: config.model.name,
        StudyKey.NOISE_KIND: setting.kind,
        StudyKey.NOISE_RATE: rate,
        StudyKey.BUDGET: budget,
        StudyKey.CONFIG_HASH: config.config_hash(),
        StudyKey.LABEL_DIGEST: data.label_digest,
        StudyKey.VERSION: __version__,
        StudyKey.ROLE: role,
        StudyKey.SETTING: setting.name,
        StudyKey.REALISED_NOISE_RATE: data.realised_noise_rate,
        StudyKey.EPOCHS: config.training.epochs,
        StudyKey.LABEL_SET: setting.label_set,
        StudyKey.NUM_CLASSES: data.num_classes,
    }


def _baseline_jobs(config: CampaignConfig) -> list[dict[str, Any]]:
    return [
        {TrialKey.LOSS: loss,
         TrialKey.LOSS_PARAMS: dict(config.baselines.params.get(loss, {})),
         TrialKey.SEED: config.campaign.seed + offset}
        for loss in config.baselines.losses
        for offset in range(config.baselines.seeds)
    ]


def _initial_points(config: CampaignConfig) -> list[tuple[float, float]]:
    search = config.search
    if search.sampler == "grid":
        return [(m, v) for m in search.grid_modes for v in search.grid_variances]
    return search.warm_start_points()[: search.trials]


def check_study_matches(study: optuna.Study, config: CampaignConfig, data: TrialData) -> None:
    """Refuse a study made from another configuration or other noisy labels."""
    attrs = study.user_attrs
    if attrs.get(StudyKey.CONFIG_HASH) != config.config_hash():
        raise CampaignError(
            f"study {study.study_name} was created from another configuration (config hash "
            f"{attrs.get(StudyKey.CONFIG_HASH)} != {config.config_hash()}); never mix two "
            "experiments in one study: rename the campaign or use another database"
        )
    if attrs.get(StudyKey.LABEL_DIGEST) != data.label_digest:
        raise DigestMismatchError(
            f"study {study.study_name}: this machine's noisy labels (digest "
            f"{data.label_digest[:12]}) differ from the study's "
            f"({str(attrs.get(StudyKey.LABEL_DIGEST))[:12]})"
        )


def ensure_study(
    storage: optuna.storages.BaseStorage, name: str, attrs: dict[str, Any]
) -> tuple[optuna.Study, bool]:
    """Load study ``name`` or create it with ``attrs``; a changed budget is updated.

    The objective is named (``METRIC_NAME``) at creation, and on a study of an older
    version that has no name yet, so that the dashboard's axes do not say "Objective 0".
    """
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        name_metric(study)
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        return study, True
    name_metric(study)
    budget = attrs[StudyKey.BUDGET]
    if study.user_attrs.get(StudyKey.BUDGET) != budget:
        study.set_user_attr(StudyKey.BUDGET, budget)  # budgets may grow or shrink between runs
    return study, False


def name_metric(study: optuna.Study) -> None:
    """Name the objective ``METRIC_NAME`` unless the study has a name for it already."""
    if study.metric_names is None:
        with warnings.catch_warnings():
            # experimental since Optuna 3.2, stable in use; the warning would reach every user
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC_NAME])


def create_campaign(config: CampaignConfig, storage: optuna.storages.RDBStorage) -> list[str]:
    """Create every missing study of the campaign (idempotent); return the study names.

    All data is prepared and every existing study checked before anything is written, so
    a refused campaign leaves the database as it was.
    """
    check_campaign(storage, config)  # slow for CIFAR: load (and cache) outside the lock
    names = []
    with campaign_lock(storage, lock_name(config)):
        for setting, data in check_campaign(storage, config):
            names.extend(_create_setting(storage, config, setting, data))
    return names


def check_campaign(
    storage: optuna.storages.RDBStorage, config: CampaignConfig, require_created: bool = False
) -> list[tuple[Setting, TrialData]]:
    """Every setting with its data, once each existing study is checked against this machine's.

    Raises:
        CampaignError: a rate beyond its noise kind's bound, a study made from another
            configuration, or (``require_created``) a study that does not exist yet.
        DigestMismatchError: this machine's noisy labels differ from a study's.
    """
    existing = {summary.study_name for summary in storage.get_all_studies()}
    checked = []
    for setting, data in checked_settings(config):
        for role in (ROLE_DM, ROLE_BASELINES):
            name = setting.study_name(config.name, role)
            if name in existing:
                check_study_matches(optuna.load_study(study_name=name, storage=storage), config,
                                    data)
            elif require_created and role == ROLE_DM:
                raise CampaignError(
                    f"study {name} does not exist; run `dm-tune create` for this campaign first"
                )
        checked.append((setting, data))
    return checked


def _create_setting(
    storage: optuna.storages.RDBStorage, config: CampaignConfig, setting: Setting,
    data: TrialData,
) -> list[str]:
    dm_name = setting.study_name(config.name, ROLE_DM)
    attrs = study_attrs(config, setting, ROLE_DM, data, config.search.budget())
    dm_study, created = ensure_study(storage, dm_name, attrs)
    if created:
        for mode, variance in _initial_points(config):
            dm_study.enqueue_trial({PARAM_MODE: mode, PARAM_VARIANCE: variance})
    jobs = _baseline_jobs(config)
    names = [dm_name]
    if jobs:
        name = setting.study_name(config.name, ROLE_BASELINES)
        # the confirmation's jobs (`run`, campaign/confirm_run.py) count on top of the
        # configured ones, so that re-creating the campaign never drops them from the budget
        budget = len(jobs) + _confirmation_jobs(storage, name)
        baseline_study, _ = ensure_study(
            storage, name, study_attrs(config, setting, ROLE_BASELINES, data, budget)
        )
        queued = {
            (t.user_attrs.get(TrialKey.LOSS), t.user_attrs.get(TrialKey.SEED))
            for t in baseline_study.get_trials(deepcopy=False)
            if t.state != TrialState.FAIL and not t.user_attrs.get(TrialKey.CONFIRMATION)
        }
        for job in jobs:
            if (job[TrialKey.LOSS], job[TrialKey.SEED]) not in queued:
                baseline_study.enqueue_trial({}, user_attrs=job)
        names.append(name)
    return names


def _confirmation_jobs(storage: optuna.storages.BaseStorage, name: str) -> int:
    """The non-failed confirmation jobs of study ``name`` (0 when it does not exist)."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return 0
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state != TrialState.FAIL and t.user_attrs.get(TrialKey.CONFIRMATION))


def study_names(config: CampaignConfig) -> list[str]:
    """Names of the DM and baseline studies of the campaign."""
    names = []
    for setting in settings_of(config):
        names.append(setting.study_name(config.name))
        if config.baselines.losses:
            names.append(setting.study_name(config.name, ROLE_BASELINES))
    return names
