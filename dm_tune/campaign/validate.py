"""Everything about a campaign that can be checked before a database is touched.

The campaign file is parsed by :mod:`dm_tune.config` (keys, types, ranges). This module
checks what needs the data: the dataset loads, every rate is below its noise kind's
bound for the real class count, the model accepts the data's shape and its params, and
augmentation fits the data kind. Errors name the campaign file and the key.
"""

from __future__ import annotations

from collections.abc import Iterator

from dm_tune.campaign.settings import Setting, data_spec, load_setting_data, settings_of
from dm_tune.config import CampaignConfig
from dm_tune.data import TrialData, prepare_data
from dm_tune.errors import CampaignError

__all__ = ["check_model", "checked_settings"]


def _refuse(config: CampaignConfig, key: str, message: str) -> CampaignError:
    return CampaignError(f"{config.source}: {key}: {message}")


def check_model(config: CampaignConfig, data: TrialData) -> None:
    """Build the model on the meta device (no memory, no compute) for the data's shape."""
    import torch

    from dm_tune.models import MODELS, build_model

    name = config.model.name
    if name not in MODELS:
        raise _refuse(config, "model.name", f"unknown {name!r}; expected one of "
                      f"{', '.join(sorted(MODELS))}")
    try:
        with torch.device("meta"):
            build_model(name, data.input_shape, data.num_classes, **dict(config.model.params))
    except (TypeError, ValueError, RuntimeError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise _refuse(config, "model.params", f"model {name!r} with params "
                      f"{dict(config.model.params)} for inputs {tuple(data.input_shape)}: "
                      f"{message}") from None
    if config.training.augment and not data.is_image:
        raise _refuse(config, "training.augment", "crop/flip augmentation needs image data; "
                      f"{config.data.dataset} is tabular")


def _check_noise_bounds(config: CampaignConfig, setting: Setting, data: TrialData) -> None:
    if setting.kind == "human":
        return
    from dm_tune.noise import max_rate

    bound = max_rate(setting.kind, data.num_classes)
    if setting.rate >= bound:
        raise _refuse(config, "noise.rates", f"{setting.kind} rate {setting.rate:g} must be "
                      f"below {bound:.4g} with {data.num_classes} classes")


def checked_settings(config: CampaignConfig) -> Iterator[tuple[Setting, TrialData]]:
    """Each setting with its data, checked; one setting's labels at a time beyond the cache.

    Raises:
        CampaignError: data that does not load, a rate beyond its bound, a model that does
            not fit the data or its params (the message names file and key).
    """
    settings = settings_of(config)
    try:  # the features every setting shares; their errors are the data's, not a setting's
        clean = prepare_data(data_spec(config, Setting("none")))
    except ValueError as error:
        raise _refuse(config, "data", str(error)) from None
    check_model(config, clean)
    for setting in settings:
        _check_noise_bounds(config, setting, clean)
    for setting in settings:
        try:
            data = load_setting_data(config, setting)
        except CampaignError as error:
            raise _refuse(config, "noise", str(error)) from None
        yield setting, data
