"""The study driver: one Optuna study per noise setting, exact budgets, the objective.

A campaign file (``config.py``) expands into *settings* (noise kind x rate). Each
setting owns three studies in the shared database:

- ``<campaign>/<setting>``: DM trials; params ``emphasis_mode``, ``emphasis_variance``;
  searched by the configured sampler, pruned per epoch, objective = final-epoch
  clean-validation accuracy (test accuracy is a user attr, never the objective);
- ``<campaign>/<setting>/baselines``: one trial per (baseline loss, seed), enqueued at
  creation so that baselines never enter the sampler's history;
- ``<campaign>/<setting>/confirm``: re-runs of top settings with new seeds (``confirm``).

Claiming and running trials lives in :mod:`dm_tune.trials`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

from dm_tune import __version__
from dm_tune.config import CampaignConfig
from dm_tune.data import DataSpec, TrialData, prepare_data
from dm_tune.errors import CampaignError, DigestMismatchError
from dm_tune.locks import campaign_lock
from dm_tune.training import TrainSpec

__all__ = [
    "CampaignError",
    "DigestMismatchError",
    "Setting",
    "StudyProgress",
    "campaign_progress",
    "check_campaign",
    "create_campaign",
    "data_spec",
    "settings_of",
    "train_spec",
]

ROLE_DM = "dm"
ROLE_BASELINES = "baselines"
ROLE_CONFIRM = "confirm"
PARAMS = ("emphasis_mode", "emphasis_variance")
#: user attrs that define a queued job (baseline loss, confirmation seed and source):
#: a re-queued trial must carry them, and nothing else from the failed run
JOB_ATTRS = ("loss", "loss_params", "seed", "source_trial")

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class Setting:
    """One noise setting of a campaign: a kind and a rate (or a human label set)."""

    kind: str
    rate: float = 0.0
    label_set: str | None = None

    @property
    def name(self) -> str:
        if self.kind == "human":
            return f"human-{self.label_set}"
        return f"{self.kind}-{self.rate:.2f}"

    def study_name(self, campaign: str, role: str = ROLE_DM) -> str:
        base = f"{campaign}/{self.name}"
        return base if role == ROLE_DM else f"{base}/{role}"


def settings_of(config: CampaignConfig) -> list[Setting]:
    """Every noise setting of the campaign, in file order."""
    found: list[Setting] = []
    for section in config.noise:
        if section.kind == "human":
            found.extend(Setting("human", 0.0, label) for label in section.labels)
        else:
            found.extend(Setting(section.kind, float(rate)) for rate in section.rates)
    names = [s.name for s in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CampaignError(f"noise setting(s) listed twice: {', '.join(duplicates)}")
    return found


def data_spec(config: CampaignConfig, setting: Setting) -> DataSpec:
    """The data of a setting: the split and the noise are seeded by the campaign seed."""
    return DataSpec(
        dataset=config.data.dataset,
        root=config.data.root,
        download=config.data.download,
        val_fraction=config.data.val_fraction,
        test_fraction=config.data.test_fraction,
        noise_kind=setting.kind,
        noise_rate=setting.rate,
        human_label=setting.label_set,
        seed=config.campaign.seed,
    )


def train_spec(config: CampaignConfig, device: str, seed: int) -> TrainSpec:
    """How a trial trains on ``device`` with ``seed``."""
    training = config.training
    return TrainSpec(
        model=config.model.name,
        model_params=dict(config.model.params),
        epochs=training.epochs,
        batch_size=training.batch_size,
        lr=training.lr,
        momentum=training.momentum,
        weight_decay=training.weight_decay,
        schedule=training.schedule,
        seed=seed,
        device=device,
        augment=training.augment,
        compile=training.compile,
    )


@functools.lru_cache(maxsize=16)
def _cached_data(spec: DataSpec) -> TrialData:
    return prepare_data(spec)


def load_setting_data(config: CampaignConfig, setting: Setting) -> TrialData:
    """The setting's tensors (cached per process: a worker trains many trials on them)."""
    try:
        return _cached_data(data_spec(config, setting))
    except ValueError as error:
        raise CampaignError(f"setting {setting.name}: {error}") from None


# ----------------------------------------------------------------------------- creation


def _study_attrs(
    config: CampaignConfig, setting: Setting, role: str, data: TrialData, budget: int
) -> dict[str, Any]:
    rate = setting.rate if setting.kind != "human" else round(data.realised_noise_rate, 4)
    return {
        "campaign": config.name,
        "dataset": config.data.dataset,
        "model": config.model.name,
        "noise_kind": setting.kind,
        "noise_rate": rate,
        "budget": budget,
        "config_hash": config.config_hash(),
        "label_digest": data.label_digest,
        "dm_tune_version": __version__,
        "role": role,
        "setting": setting.name,
        "realised_noise_rate": data.realised_noise_rate,
        "epochs": config.training.epochs,
        "label_set": setting.label_set,
    }


def _baseline_jobs(config: CampaignConfig) -> list[dict[str, Any]]:
    jobs = []
    for loss in config.baselines.losses:
        for offset in range(config.baselines.seeds):
            jobs.append({
                "loss": loss,
                "loss_params": dict(config.baselines.params.get(loss, {})),
                "seed": config.campaign.seed + offset,
            })
    return jobs


def _initial_points(config: CampaignConfig) -> list[tuple[float, float]]:
    search = config.search
    if search.sampler == "grid":
        return [(m, v) for m in search.grid_modes for v in search.grid_variances]
    return search.warm_start_points()[: search.trials]


def check_study_matches(study: optuna.Study, config: CampaignConfig, data: TrialData) -> None:
    """Refuse a study made from another configuration or other noisy labels."""
    attrs = study.user_attrs
    if attrs.get("config_hash") != config.config_hash():
        raise CampaignError(
            f"study {study.study_name} was created from another configuration (config hash "
            f"{attrs.get('config_hash')} != {config.config_hash()}); never mix two experiments "
            "in one study: rename the campaign or use another database"
        )
    if attrs.get("label_digest") != data.label_digest:
        raise DigestMismatchError(
            f"study {study.study_name}: this machine's noisy labels (digest "
            f"{data.label_digest[:12]}) differ from the study's "
            f"({str(attrs.get('label_digest'))[:12]})"
        )


def _ensure_study(
    storage: optuna.storages.RDBStorage,
    config: CampaignConfig,
    setting: Setting,
    role: str,
    data: TrialData,
    budget: int,
) -> tuple[optuna.Study, bool]:
    name = setting.study_name(config.name, role)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        for key, value in _study_attrs(config, setting, role, data, budget).items():
            study.set_user_attr(key, value)
        return study, True
    if study.user_attrs.get("budget") != budget:
        study.set_user_attr("budget", budget)  # the budget may grow or shrink between runs
    return study, False


def create_campaign(config: CampaignConfig, storage: optuna.storages.RDBStorage) -> list[str]:
    """Create every missing study of the campaign (idempotent); return the study names.

    All data is prepared and every existing study checked before anything is written, so
    a refused campaign leaves the database as it was.
    """
    for setting in settings_of(config):
        load_setting_data(config, setting)  # slow for CIFAR: load (and cache) outside the lock
    names = []
    with campaign_lock(storage.engine, f"dm-tune/{config.name}"):
        prepared = check_campaign(storage, config)
        for setting, data in prepared.items():
            names.extend(_create_setting(storage, config, setting, data))
    return names


def check_campaign(
    storage: optuna.storages.RDBStorage, config: CampaignConfig, require_created: bool = False
) -> dict[Setting, TrialData]:
    """Every setting's data, once each existing study is checked against this machine's.

    Raises:
        CampaignError: a rate beyond its noise kind's bound, a study made from another
            configuration, or (``require_created``) a study that does not exist yet.
        DigestMismatchError: this machine's noisy labels differ from a study's.
    """
    prepared = {setting: load_setting_data(config, setting) for setting in settings_of(config)}
    existing = {summary.study_name for summary in storage.get_all_studies()}
    for setting, data in prepared.items():
        _check_noise_bounds(setting, data)
        for role in (ROLE_DM, ROLE_BASELINES):
            name = setting.study_name(config.name, role)
            if name in existing:
                check_study_matches(optuna.load_study(study_name=name, storage=storage), config,
                                    data)
            elif require_created and role == ROLE_DM:
                raise CampaignError(
                    f"study {name} does not exist; run `dm-tune create` for this campaign first"
                )
    return prepared


def _check_noise_bounds(setting: Setting, data: TrialData) -> None:
    if setting.kind == "human":
        return
    from dm_tune.noise import max_rate

    bound = max_rate(setting.kind, data.num_classes)
    if setting.rate >= bound:
        raise CampaignError(
            f"setting {setting.name}: rate must be below {bound:.4g} for {setting.kind} noise "
            f"with {data.num_classes} classes"
        )


def _create_setting(storage, config: CampaignConfig, setting: Setting, data: TrialData):
    dm_study, created = _ensure_study(
        storage, config, setting, ROLE_DM, data, config.search.budget()
    )
    if created:
        for mode, variance in _initial_points(config):
            dm_study.enqueue_trial({"emphasis_mode": mode, "emphasis_variance": variance})
    jobs = _baseline_jobs(config)
    names = [dm_study.study_name]
    if jobs:
        baseline_study, _ = _ensure_study(storage, config, setting, ROLE_BASELINES, data,
                                          len(jobs))
        queued = {
            (t.user_attrs.get("loss"), t.user_attrs.get("seed"))
            for t in baseline_study.get_trials(deepcopy=False)
            if t.state != TrialState.FAIL
        }
        for job in jobs:
            if (job["loss"], job["seed"]) not in queued:
                baseline_study.enqueue_trial({}, user_attrs=job)
        names.append(baseline_study.study_name)
    return names


# ----------------------------------------------------------------------------- progress


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


def _state_counts(engine: sqlalchemy.engine.Engine) -> dict[str, dict[str, int]]:
    # One GROUP BY instead of loading every trial of every study: claims stay cheap.
    query = sqlalchemy.text(
        "SELECT s.study_name, t.state, COUNT(*) FROM trials t "
        "JOIN studies s ON s.study_id = t.study_id GROUP BY s.study_name, t.state"
    )
    counts: dict[str, dict[str, int]] = {}
    with engine.connect() as connection:
        for study_name, state, count in connection.execute(query):
            state_name = state.name if hasattr(state, "name") else str(state)
            counts.setdefault(study_name, {})[state_name] = int(count)
    return counts


def campaign_progress(
    storage: optuna.storages.RDBStorage, config: CampaignConfig
) -> list[StudyProgress]:
    """Counts per study of the campaign (studies not created yet are left out)."""
    counts = _state_counts(storage.engine)
    budgets = _budgets(storage.engine)
    progress = []
    for setting in settings_of(config):
        for role in (ROLE_DM, ROLE_BASELINES, ROLE_CONFIRM):
            name = setting.study_name(config.name, role)
            if name not in budgets:
                continue
            progress.append(
                StudyProgress(name, role, setting.name, budgets[name], counts.get(name, {}))
            )
    return progress


def _budgets(engine: sqlalchemy.engine.Engine) -> dict[str, int]:
    # The `budget` study attr of every study in one query (Optuna's get_all_studies
    # builds full summaries: several queries per claim for a number we need).
    query = sqlalchemy.text(
        "SELECT s.study_name, a.value_json FROM studies s JOIN study_user_attributes a "
        "ON a.study_id = s.study_id WHERE a.key = 'budget'"
    )
    with engine.connect() as connection:
        return {name: int(json.loads(value)) for name, value in connection.execute(query)}


# ----------------------------------------------------------------------------- confirmation


def create_confirmations(
    storage: optuna.storages.RDBStorage, config: CampaignConfig, top_k: int, seeds: int
) -> list[str]:
    """Queue each setting's top-k DM settings for re-training with ``seeds`` new seeds."""
    if top_k < 1 or seeds < 1:
        raise CampaignError("--top-k and --seeds must be at least 1")
    names = []
    with campaign_lock(storage.engine, f"dm-tune/{config.name}"):
        existing = {s.study_name for s in storage.get_all_studies()}
        for setting in settings_of(config):
            dm_name = setting.study_name(config.name)
            if dm_name not in existing:
                raise CampaignError(f"study {dm_name} does not exist; run the campaign first")
            dm_study = optuna.load_study(study_name=dm_name, storage=storage)
            complete = [t for t in dm_study.get_trials(deepcopy=False,
                                                      states=(TrialState.COMPLETE,))]
            if not complete:
                continue
            top = sorted(complete, key=lambda t: t.value, reverse=True)[:top_k]
            names.append(_queue_confirmations(storage, config, setting, dm_study, top, seeds))
    if not names:
        raise CampaignError("no finished DM trials to confirm; run the campaign first")
    return names


def _queue_confirmations(storage, config, setting, dm_study, top, seeds) -> str:
    name = setting.study_name(config.name, ROLE_CONFIRM)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                load_if_exists=True)
    for key, value in dm_study.user_attrs.items():
        if key not in study.user_attrs:
            study.set_user_attr(key, value)
    study.set_user_attr("role", ROLE_CONFIRM)
    queued = {(t.user_attrs.get("source_trial"), t.user_attrs.get("seed"))
              for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL}
    for trial in top:
        for offset in range(seeds):
            seed = config.campaign.seed + 1000 + offset  # never the search seed
            if (trial.number, seed) in queued:
                continue
            study.enqueue_trial(
                {k: trial.params[k] for k in PARAMS},
                user_attrs={"seed": seed, "source_trial": trial.number},
            )
            queued.add((trial.number, seed))
    study.set_user_attr("budget", len(queued))
    return name


def study_names(config: CampaignConfig, settings: Iterable[Setting] | None = None) -> list[str]:
    """Names of the DM and baseline studies of the campaign."""
    names = []
    for setting in settings or settings_of(config):
        names.append(setting.study_name(config.name))
        if config.baselines.losses:
            names.append(setting.study_name(config.name, ROLE_BASELINES))
    return names
