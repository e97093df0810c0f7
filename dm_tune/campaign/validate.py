"""Everything about a campaign that can be checked before a database is touched.

The campaign file is parsed by :mod:`dm_tune.config` (keys, types, ranges). This module
checks what needs the data: the dataset loads, every rate is below its noise kind's
bound for the real class count, the model accepts the data's shape and its params, and
augmentation fits the data kind. Errors name the campaign file and the key.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from dm_tune.campaign.settings import Setting, data_spec, load_setting_data, settings_of
from dm_tune.config import CampaignConfig
from dm_tune.data import TrialData, prepare_data
from dm_tune.errors import CampaignError

__all__ = ["available_memory", "check_model", "checked_settings", "trial_memory"]

#: bytes a float32 parameter costs while it trains: the weight, its gradient, and the
#: optimizer's state (SGD's momentum; Adam's two moments), counted as four copies
BYTES_PER_PARAMETER = 16


def _refuse(config: CampaignConfig, key: str, message: str) -> CampaignError:
    return CampaignError(f"{config.source}: {key}: {message}")


def _gib(size: float) -> str:
    return f"{size / 2**30:,.1f} GiB"


def _host_available() -> int | None:
    """Bytes this process may still allocate: MemAvailable, or less under a cgroup limit
    (Slurm's --mem, a Kubernetes limit); None where neither can be read."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def available_memory(device: str) -> tuple[int | None, str]:
    """(bytes free for a trial on ``device``, where): the GPU's free memory for cuda,
    else this machine's (see :func:`_host_available`)."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            free, _total = torch.cuda.mem_get_info(torch.device(device))
            return int(free), f"{device} has {_gib(free)} free"
    free = _host_available()
    return free, f"this machine has {_gib(free)} available" if free is not None else ""


def trial_memory(parameters: int, config: CampaignConfig, data: TrialData,
                 device: str) -> int:
    """A lower bound of the bytes the trials of one worker need at once: every member of
    its population (``[search] population`` x ``seeds``) trains its own parameters
    (:data:`BYTES_PER_PARAMETER` each); on a GPU the data is copied there too (on the CPU
    it is loaded already). Activations come on top."""
    members = config.search.population * config.search.seeds
    needed = BYTES_PER_PARAMETER * parameters * members
    if device.startswith("cuda"):
        needed += sum(t.numel() * t.element_size()
                      for t in (data.x_train, data.x_val, data.x_test))
    return needed


def _check_memory(config: CampaignConfig, data: TrialData, parameters: int,
                  device: str) -> None:
    needed = trial_memory(parameters, config, data, device)
    free, where = available_memory(device)
    if free is None or needed <= free:
        return
    members = config.search.population * config.search.seeds
    group = (f"a population of {members} trials" if members > 1 else "one trial")
    raise _refuse(config, "model", f"{config.model.name} has {parameters:,} parameters: "
                  f"{group} needs at least {_gib(needed)} (weights, gradients, optimizer "
                  f"state), but {where}; use a smaller model, fewer features or a smaller "
                  "[search] population")


def check_model(config: CampaignConfig, data: TrialData, device: str | None = None) -> None:
    """Build the model on the meta device (no memory, no compute) for the data's shape;
    with ``device``, refuse trials whose parameters alone cannot fit its free memory."""
    import torch

    from dm_tune.models import MODELS, build_model

    name = config.model.name
    if name not in MODELS:
        raise _refuse(config, "model.name", f"unknown {name!r}; expected one of "
                      f"{', '.join(sorted(MODELS))}")
    try:
        with torch.device("meta"):
            model = build_model(name, data.input_shape, data.num_classes,
                                **dict(config.model.params))
    except (TypeError, ValueError, RuntimeError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise _refuse(config, "model.params", f"model {name!r} with params "
                      f"{dict(config.model.params)} for inputs {tuple(data.input_shape)}: "
                      f"{message}") from None
    if config.training.augment and not data.is_image:
        raise _refuse(config, "training.augment", "crop/flip augmentation needs image data; "
                      f"{config.data.dataset} is tabular")
    if device is not None:
        _check_memory(config, data, sum(p.numel() for p in model.parameters()), device)


def _check_noise_bounds(config: CampaignConfig, setting: Setting, data: TrialData) -> None:
    if setting.kind == "human":
        return
    from dm_tune.noise import max_rate

    bound = max_rate(setting.kind, data.num_classes)
    if setting.rate >= bound:
        raise _refuse(config, "noise.rates", f"{setting.kind} rate {setting.rate:g} must be "
                      f"below {bound:.4g} with {data.num_classes} classes")


def checked_settings(config: CampaignConfig,
                     device: str | None = None) -> Iterator[tuple[Setting, TrialData]]:
    """Each setting with its data, checked; one setting's labels at a time beyond the cache.
    With ``device``, the trials must fit its memory too (:func:`check_model`).

    Raises:
        CampaignError: data that does not load, a rate beyond its bound, a model that does
            not fit the data or its params (the message names file and key).
    """
    settings = settings_of(config)
    try:  # the features every setting shares; their errors are the data's, not a setting's
        clean = prepare_data(data_spec(config, Setting("none")))
    except ValueError as error:
        raise _refuse(config, "data", str(error)) from None
    check_model(config, clean, device)
    for setting in settings:
        _check_noise_bounds(config, setting, clean)
    for setting in settings:
        try:
            data = load_setting_data(config, setting)
        except CampaignError as error:
            raise _refuse(config, "noise", str(error)) from None
        yield setting, data
