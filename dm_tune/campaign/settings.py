"""A campaign's noise settings and what each trial of them trains on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dm_tune.campaign.records import ROLE_DM
from dm_tune.config import CampaignConfig
from dm_tune.errors import CampaignError

if TYPE_CHECKING:  # they import torch, which `status` does not need
    from dm_tune.data import DataSpec, TrialData
    from dm_tune.training import TrainSpec

__all__ = ["Setting", "data_spec", "forward_transition", "load_setting_data", "settings_of",
           "train_spec"]


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
    from dm_tune.data import DataSpec

    data = config.data
    return DataSpec(
        dataset=data.dataset, root=data.root, download=data.download,
        val_fraction=data.val_fraction, test_fraction=data.test_fraction,
        noise_kind=setting.kind, noise_rate=setting.rate, human_label=setting.label_set,
        seed=config.campaign.seed,
    )


def train_spec(config: CampaignConfig, device: str, seed: int) -> TrainSpec:
    """How a trial trains on ``device`` with ``seed``."""
    from dm_tune.training import TrainSpec

    training = config.training
    return TrainSpec(
        model=config.model.name, model_params=dict(config.model.params),
        epochs=training.epochs, batch_size=training.batch_size, lr=training.lr,
        momentum=training.momentum, weight_decay=training.weight_decay,
        schedule=training.schedule, seed=seed, device=device, augment=training.augment,
        compile=training.compile, precision=training.precision,
    )


def load_setting_data(config: CampaignConfig, setting: Setting) -> TrialData:
    """The setting's tensors; the features are shared by every setting (dm_tune.data caches
    them), so a call costs only the setting's noisy labels (~2 ms for 14,400)."""
    from dm_tune.data import prepare_data

    try:
        return prepare_data(data_spec(config, setting))
    except ValueError as error:
        raise CampaignError(f"setting {setting.name}: {error}") from None


def forward_transition(config: CampaignConfig, setting: Setting, num_classes: int) -> list:
    """The transition matrix the forward baseline trains with in ``setting``: the
    campaign's ``[baselines] forward_estimate`` if given, else the setting's own
    synthetic matrix (noise.transition_matrix; known because dm-tune drew the noise)."""
    from dm_tune import noise
    from dm_tune.estimate import read_estimate

    path = config.baselines.forward_estimate
    try:
        if path is not None:
            matrix = noise.check_transition_matrix(read_estimate(path)["transition"],
                                                   num_classes, tolerance=1e-4)
            return matrix.tolist()
        if setting.kind not in noise.NOISE_KINDS:
            raise ValueError(f"forward needs a transition matrix for {setting.kind} noise: "
                             "set [baselines] forward_estimate")
        return noise.transition_matrix(setting.kind, num_classes, setting.rate,
                                       dataset=config.data.dataset).tolist()
    except ValueError as error:
        raise CampaignError(f"setting {setting.name}: {error}") from None
