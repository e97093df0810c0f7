"""Campaign files: a TOML schema validated by pydantic, with errors that name key and file.

Example (abridged; ``studies/digits-quick.toml`` is a whole one)::

    [campaign]
    name = "digits-quick"

    [[noise]]
    kind = "symmetric"
    rates = [0.2, 0.4, 0.6]        # or: rate_range = [0.2, 0.6] with rate_step = 0.1

    [search]
    trials = 16
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from dm_tune.errors import ConfigError

__all__ = [
    "BaselinesConfig",
    "CampaignConfig",
    "ConfirmConfig",
    "ConfigError",
    "MAX_POPULATION",
    "load_campaign_config",
    "parse_campaign_config",
    "with_population",
]

#: the most trials one worker trains at once (``[search] population``)
MAX_POPULATION = 1024
NoiseKind = Literal["symmetric", "pairflip", "asymmetric", "human"]
PAPER_WARM_START: tuple[tuple[float, float], ...] = (
    # The DM paper's best (lambda, beta) per CIFAR setting, as (emphasis_mode, variance):
    # (0.5, 12) at 20%, (1, 16) at 40%, (2, 12) at 60-80%, CIFAR-100's (0.5, 6), and CCE-like.
    (1 / 3, 12.0),
    (0.5, 16.0),
    (2 / 3, 12.0),
    (1 / 3, 6.0),
    (0.0, 4.0),
)




class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CampaignSection(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80)]
    seed: Annotated[int, Field(ge=0)] = 0
    description: str = ""


class DataSection(_Strict):
    dataset: str = "digits"
    root: str | None = None
    download: bool = False
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2


class ModelSection(_Strict):
    name: str = "mlp"
    params: dict[str, Any] = Field(default_factory=dict)


class TrainingSection(_Strict):
    epochs: Annotated[int, Field(ge=1, le=10_000)] = 100
    batch_size: Annotated[int, Field(ge=1)] = 64
    lr: Annotated[float, Field(gt=0.0)] = 0.1
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    weight_decay: Annotated[float, Field(ge=0.0)] = 5e-4
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    augment: bool | None = None
    compile: bool = False
    #: the forward's autocast: "fp32" or "bf16"; absent: the device's default (bf16 on
    #: CUDA, fp32 on CPU), and the campaign's identity is the same as before the option
    precision: Literal["fp32", "bf16"] | None = None


#: the most rates one ``rate_range`` may expand to (each is a study with its own budget)
MAX_RANGE_RATES = 41


class NoiseSection(_Strict):
    kind: NoiseKind
    rates: list[Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    #: ``rate_range = [low, high]``: the search covers every ``rate_step`` from low to high
    #: (one study per rate, sharing the workers' populations); instead of ``rates``
    rate_range: tuple[float, float] | None = None
    rate_step: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _expand_range(cls, data: Any) -> Any:
        """A ``rate_range`` becomes its ``rates`` grid; the range stays for display."""
        if not isinstance(data, dict) or data.get("rate_range") is None:
            if isinstance(data, dict) and data.get("rate_step") is not None:
                raise ValueError("`rate_step` goes with `rate_range`")
            return data
        bounds, step = data["rate_range"], data.get("rate_step", 0.05)
        if not (isinstance(bounds, list | tuple) and len(bounds) == 2
                and all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)):
            raise ValueError("`rate_range` is [low, high]")
        low, high = (float(b) for b in bounds)
        if not (isinstance(step, int | float) and not isinstance(step, bool)
                and math.isfinite(step) and step >= 0.01 and abs(step - round(step, 2)) < 1e-9):
            raise ValueError("`rate_step` must be a number >= 0.01 with at most 2 decimals")
        if not (0.0 <= low < high < 1.0) or any(abs(b - round(b, 2)) > 1e-9 for b in (low, high)):
            raise ValueError("`rate_range` needs 0 <= low < high < 1, each with at most 2 "
                             "decimals")
        count = int(math.floor((high - low) / step + 1e-9)) + 1
        rates = sorted({round(low + i * step, 2) for i in range(count)} | {round(high, 2)})
        if len(rates) > MAX_RANGE_RATES:
            raise ValueError(f"`rate_range` with `rate_step` {step:g} makes {len(rates)} rates "
                             f"(at most {MAX_RANGE_RATES}): take a larger step")
        given = data.get("rates")
        # a dumped config holds both (the expansion): taken back as it is
        if given and [round(float(r), 2) for r in given] != rates:
            raise ValueError("give `rates` or `rate_range`, not both")
        return {**data, "rates": rates, "rate_range": (low, high), "rate_step": float(step)}

    @model_validator(mode="after")
    def _rates_or_labels(self) -> NoiseSection:
        if self.kind == "human":
            if not self.labels or self.rates:
                raise ValueError("human noise takes `labels` (label sets), not `rates`")
        else:
            if not self.rates or self.labels:
                raise ValueError(f"{self.kind} noise takes a non-empty `rates` list")
            rounded = [round(r, 2) for r in self.rates]
            if len(set(rounded)) != len(rounded):
                raise ValueError("`rates` must differ at 2 decimals (they name the studies)")
            if any(abs(r - round(r, 2)) > 1e-9 for r in self.rates):
                raise ValueError("`rates` must have at most 2 decimals (they name the studies)")
        return self


class Range(_Strict):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"need finite low < high, got [{self.low}, {self.high}]")
        return self


class SearchSection(_Strict):
    emphasis_mode: Range = Range(low=0.0, high=0.8)
    emphasis_variance: Range = Range(low=0.0, high=24.0)
    sampler: Literal["tpe", "gp", "cmaes", "random", "grid"] = "tpe"
    pruner: Literal["hyperband", "median", "none"] = "hyperband"
    trials: Annotated[int, Field(ge=1, le=100_000)] = 30
    warm_start: Literal["paper", "none"] | list[tuple[float, float]] = "paper"
    grid_modes: list[float] = Field(default_factory=lambda: [0.0, 1 / 3, 0.5, 2 / 3])
    grid_variances: list[float] = Field(default_factory=lambda: [2.0, 4.0, 8.0, 12.0, 16.0, 20.0])
    min_epochs: Annotated[int, Field(ge=1)] = 3
    startup_trials: Annotated[int, Field(ge=0)] = 6
    max_failures: Annotated[int, Field(ge=1)] = 5
    #: trials a worker claims and trains together as one model (1: one trial at a time)
    population: Annotated[int, Field(ge=1, le=MAX_POPULATION)] = 1
    seeds: Annotated[int, Field(ge=1, le=64)] = 1  # replicate seeds per search trial

    @field_validator("emphasis_mode", "emphasis_variance", mode="before")
    @classmethod
    def _range_from_pair(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            if len(value) != 2:
                raise ValueError("a range is [low, high]")
            return {"low": value[0], "high": value[1]}
        return value

    @model_validator(mode="after")
    def _mode_inside_unit_interval(self) -> SearchSection:
        if self.emphasis_mode.low < 0.0 or self.emphasis_mode.high >= 1.0:
            raise ValueError("emphasis_mode range must lie in [0, 1)")
        if self.emphasis_variance.low < 0.0:
            raise ValueError("emphasis_variance range must be >= 0 (it scales the density)")
        if self.sampler == "grid" and not (self.grid_modes and self.grid_variances):
            raise ValueError("the grid sampler needs non-empty grid_modes and grid_variances")
        if isinstance(self.warm_start, list):
            outside = [p for p in self.warm_start if tuple(map(float, p)) not in
                       self.warm_start_points()]
            if outside:
                raise ValueError(f"warm_start points {outside} lie outside the search ranges")
        for mode, _ in self.warm_start_points():
            if not 0.0 <= mode < 1.0:
                raise ValueError(f"warm_start emphasis_mode {mode} is outside [0, 1)")
        if self.sampler == "grid" and any(not 0 <= m < 1 for m in self.grid_modes):
            raise ValueError("grid_modes must lie in [0, 1)")
        return self

    def warm_start_points(self) -> list[tuple[float, float]]:
        """(emphasis_mode, emphasis_variance) points evaluated first, clipped to the space."""
        if self.warm_start == "none":
            return []
        points = PAPER_WARM_START if self.warm_start == "paper" else self.warm_start
        inside = []
        for mode, variance in points:
            in_mode = self.emphasis_mode.low <= mode <= self.emphasis_mode.high
            in_variance = self.emphasis_variance.low <= variance <= self.emphasis_variance.high
            if in_mode and in_variance:
                inside.append((float(mode), float(variance)))
        return inside

    def budget(self) -> int:
        """DM trials per setting: the grid size for the grid sampler, else ``trials``."""
        if self.sampler == "grid":
            return len(self.grid_modes) * len(self.grid_variances)
        return self.trials


class BaselinesConfig(_Strict):
    losses: list[str] = Field(default_factory=lambda: ["cce"])
    seeds: Annotated[int, Field(ge=1, le=100)] = 1
    params: dict[str, dict[str, float]] = Field(default_factory=dict)
    #: an estimate file (`dm-tune estimate-noise`) whose matrix Forward uses in every
    #: setting; without it Forward uses each synthetic setting's own (known) matrix
    forward_estimate: str | None = None

    @model_validator(mode="after")
    def _known_losses(self) -> BaselinesConfig:
        from dm_tune.emphasis import check_loss_params

        for loss in self.losses:
            check_loss_params(loss, self.params.get(loss, {}))
        unused = set(self.params) - set(self.losses)
        if unused:
            raise ValueError(f"params given for losses not in `losses`: {sorted(unused)}")
        if self.forward_estimate is not None:
            if "forward" not in self.losses:
                raise ValueError("forward_estimate is given but `forward` is not in `losses`")
            from dm_tune.estimate import read_estimate

            read_estimate(self.forward_estimate)  # a bad file is refused before any trial
        return self


#: DM settings per rate that a confirmation re-trains with new seeds, one default for both
#: ways in: `run`'s confirmation (the surface's argmax and ``[confirm] candidates`` =
#: CONFIRM_SETTINGS - 1 more) and `dm-tune confirm --top-k` (the top CONFIRM_SETTINGS)
CONFIRM_SETTINGS = 3
#: new seeds per confirmed setting: ``[confirm] seeds`` and `dm-tune confirm --seeds`
CONFIRM_SEEDS = 3


class ConfirmConfig(_Strict):
    """``[confirm]``: what ``dm-tune run`` re-trains with new seeds once the search is done.

    ``seeds`` (R) new seeds for the surface's argmax and ``candidates`` more distinct
    settings per rate, and for every baseline; 0 disables the confirmation. GCE's ``q``
    gets a 1-D study of ``gce_q_trials`` trials per setting (0: GCE keeps its configured
    ``q``), whose best ``q`` is then confirmed like the other baselines.
    """

    seeds: Annotated[int, Field(ge=0, le=64)] = CONFIRM_SEEDS
    # the argmax counts as one: CONFIRM_SETTINGS settings in all, as `confirm --top-k`
    candidates: Annotated[int, Field(ge=0, le=32)] = CONFIRM_SETTINGS - 1
    gce_q_trials: Annotated[int, Field(ge=0, le=1000)] = 6


class CampaignConfig(_Strict):
    campaign: CampaignSection
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    training: TrainingSection = TrainingSection()
    noise: list[NoiseSection]
    search: SearchSection = SearchSection()
    baselines: BaselinesConfig = BaselinesConfig()
    confirm: ConfirmConfig = ConfirmConfig()
    _source: str = PrivateAttr(default="<config>")

    @model_validator(mode="after")
    def _consistent(self) -> CampaignConfig:
        if not self.noise:
            raise ValueError("at least one [[noise]] table is needed")
        for section in self.noise:
            if section.kind == "human" and not self.data.dataset.endswith("n"):
                raise ValueError("human noise needs a dataset with human labels (cifar10n, ...)")
            if section.kind == "human" and "forward" in self.baselines.losses \
                    and self.baselines.forward_estimate is None:
                raise ValueError("the forward baseline under human noise needs "
                                 "[baselines] forward_estimate (its transition matrix is "
                                 "unknown; `dm-tune estimate-noise` writes one)")
        return self

    @property
    def name(self) -> str:
        return self.campaign.name

    @property
    def source(self) -> str:
        """The campaign file this config was read from (errors name it)."""
        return self._source

    def config_hash(self) -> str:
        """sha256 of what defines the experiment a study belongs to.

        Left out, so that a campaign can grow without a new identity: the noise list (new
        settings get new studies), the trial budget, the sampler and pruner, the warm start,
        the baselines, the confirmation and the description.
        """
        identity = {
            "campaign": {"name": self.campaign.name, "seed": self.campaign.seed},
            "data": self.data.model_dump(),
            "model": self.model.model_dump(),
            # an unset precision leaves the hash of campaigns made before the option
            "training": self.training.model_dump(
                exclude={"precision"} if self.training.precision is None else None),
            "search_space": {
                "emphasis_mode": self.search.emphasis_mode.model_dump(),
                "emphasis_variance": self.search.emphasis_variance.model_dump(),
            },
        }
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _describe(error: ValidationError, path: Path | str) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    extra = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{path}: {location}: {message}{extra}"


def parse_campaign_config(data: dict[str, Any], source: Path | str = "<config>") -> CampaignConfig:
    """Validate an already parsed TOML document."""
    try:
        config = CampaignConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None
    config._source = str(source)
    return config


#: the largest campaign file read (a campaign file is a few KiB; more is not one)
MAX_CAMPAIGN_BYTES = 1024 * 1024


def load_campaign_config(path: Path | str) -> CampaignConfig:
    """Read and validate a campaign file; ``ConfigError`` names the file and the key."""
    path = Path(path)
    try:
        with path.open("rb") as file:  # at most the cap: /dev/zero is a "file" too
            raw = file.read(MAX_CAMPAIGN_BYTES + 1)
        if len(raw) > MAX_CAMPAIGN_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CAMPAIGN_BYTES / 2**20:g} MiB, not a "
                              "campaign file (they are a few KiB of TOML)")
        # as read_text does: universal newlines
        text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except FileNotFoundError:
        raise ConfigError(f"{path}: campaign file not found") from None
    except UnicodeDecodeError as error:  # TOML is UTF-8; name the byte, not the codec
        line = error.object[: error.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text: byte 0x{error.object[error.start]:02x} "
                          f"on line {line} (TOML files are UTF-8)") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return parse_campaign_config(data, path)


def with_population(config: CampaignConfig, population: int) -> CampaignConfig:
    """``config`` with ``[search] population`` replaced (not part of the campaign identity:
    how many trials a worker trains at once changes no trial)."""
    if not 1 <= population <= MAX_POPULATION:
        raise ConfigError(f"population: must be 1 to {MAX_POPULATION}, got {population}")
    if population == config.search.population:
        return config
    search = config.search.model_copy(update={"population": population})
    copy = config.model_copy(update={"search": search})
    copy._source = config.source
    return copy
