"""The result data of a campaign: what the guideline commands, plots and report read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dm_tune

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_METHOD",
    "METHODS",
    "DEFAULT_RESAMPLES",
    "DEFAULT_TOP_K",
    "BaselineResult",
    "CampaignResults",
    "Provenance",
    "RateCheck",
    "Recommendation",
    "Selection",
    "SettingResult",
    "Trend",
    "TrendPoint",
    "TrialPoint",
]

DEFAULT_TOP_K = 5
DEFAULT_RESAMPLES = 200
DEFAULT_INTERVAL = 0.9
#: "top-k": rank-weighted top-k trials per rate with a bootstrap band (export v1);
#: "surface": a Gaussian-process response surface per kind (export v3, surface.py), the
#: default; a kind with too few finished trials falls back to top-k (``fallbacks``)
METHODS = ("top-k", "surface")
DEFAULT_METHOD = "surface"


@dataclass(frozen=True)
class TrialPoint:
    """One COMPLETE DM trial: its parameters, objective and recorded outcomes."""

    number: int
    emphasis_mode: float
    emphasis_variance: float
    val_accuracy: float
    test_accuracy: float | None = None
    test_accuracy_at_best_val: float | None = None
    memorized_noisy_fraction: float | None = None
    # the job's source: a confirmation's searched trial, a verification's candidate index
    source_trial: int | None = None


@dataclass(frozen=True)
class Selection:
    """The DM parameters selected for one setting (on clean validation only)."""

    emphasis_mode: float
    emphasis_variance: float
    val_accuracy: float
    test_accuracy: float | None
    test_accuracy_at_best_val: float | None
    memorized_noisy_fraction: float | None
    source: str  # "search" (best DM trial) or "confirm" (best mean over seeds)
    trial_number: int | None
    n_seeds: int = 1
    val_accuracy_std: float | None = None  # over the confirmed seeds (None: one seed)
    test_accuracy_std: float | None = None
    collapsed: bool = False  # a confirmed replicate fell below chance + 10 points


@dataclass(frozen=True)
class BaselineResult:
    """Mean outcomes of one baseline loss over its seeds."""

    loss: str
    n: int
    val_accuracy: float | None
    test_accuracy: float | None
    test_accuracy_at_best_val: float | None
    memorized_noisy_fraction: float | None
    val_accuracy_std: float | None = None  # over its seeds (None: one seed)
    test_accuracy_std: float | None = None
    params: dict[str, float] = field(default_factory=dict)  # e.g. GCE's tuned q
    collapsed: bool = False  # a replicate fell below chance + 10 points


@dataclass
class SettingResult:
    """Everything known about one (noise kind, rate) setting."""

    noise_kind: str
    noise_rate: float
    setting: str
    study_name: str
    trial_counts: dict[str, int]
    trials: list[TrialPoint]
    top_k: list[TrialPoint]
    selected: Selection | None
    baselines: dict[str, BaselineResult] = field(default_factory=dict)
    variance_log: bool = False  # the search space sampled the variance on a log scale
    #: the searched emphasis_mode range (the search space's bounds; None: unknown)
    mode_range: tuple[float, float] | None = None
    confirm_trials: list[TrialPoint] = field(default_factory=list)  # one per seed run
    num_classes: int | None = None  # None: a campaign created before it was recorded
    #: PRUNED search trials that fell off (selection.fallen_points): the cliff's evidence
    fallen: list[TrialPoint] = field(default_factory=list)

    def best_baseline(self) -> BaselineResult | None:
        """Return the baseline with the best mean clean-val accuracy (never test)."""
        scored = [b for b in self.baselines.values() if b.val_accuracy is not None]
        return max(scored, key=lambda b: (b.val_accuracy, b.loss), default=None)


@dataclass(frozen=True)
class TrendPoint:
    """The fitted recommendation at one rate, with its band.

    Top-k method: rank-weighted centre and bootstrap band; the predictions are None.
    Surface method: the argmax of posterior mean - 1 std and the credible-set ranges; ``k`` and
    ``n_trials`` count the observations at this rate (search trials and confirm runs).
    """

    noise_rate: float
    emphasis_mode: float
    emphasis_mode_low: float
    emphasis_mode_high: float
    emphasis_variance: float
    emphasis_variance_low: float
    emphasis_variance_high: float
    n_trials: int
    k: int
    predicted_accuracy: float | None = None  # surface: posterior mean at the selection
    predicted_std: float | None = None  # surface: posterior std there


@dataclass(frozen=True)
class RateCheck:
    """Leave-one-rate-out: the surface refitted without ``noise_rate``, asked there."""

    noise_kind: str
    noise_rate: float
    emphasis_mode: float  # recommended without this rate's trials
    emphasis_variance: float
    predicted_accuracy: float  # the full surface's mean at that recommendation
    selected_accuracy: float  # confirmed mean if confirmed, else the full surface's best
    selected_source: str  # "confirm" or "surface"
    gap: float  # selected_accuracy - predicted_accuracy (>0: the held-out guess lost)


@dataclass(frozen=True)
class Trend:
    """Recommended parameters against the noise rate for one noise kind."""

    noise_kind: str
    points: tuple[TrendPoint, ...]  # sorted by rate

    @property
    def rates(self) -> list[float]:
        """Return the searched rates."""
        return [p.noise_rate for p in self.points]


@dataclass(frozen=True)
class Provenance:
    """Where the numbers come from."""

    campaign: str
    config_hash: str | None
    dm_tune_version: str | None
    dataset: str | None
    model: str | None
    trial_counts: dict[str, int]
    created: str
    exported_by: str = dm_tune.__version__


@dataclass
class CampaignResults:
    """Aggregated results of one campaign."""

    provenance: Provenance
    settings: list[SettingResult]
    trends: dict[str, Trend]
    top_k: int = DEFAULT_TOP_K
    resamples: int = DEFAULT_RESAMPLES
    interval: float = DEFAULT_INTERVAL
    seed: int = 0
    method: str = DEFAULT_METHOD
    surfaces: dict[str, Any] = field(default_factory=dict)  # kind -> surface.Surface
    checks: list[RateCheck] = field(default_factory=list)  # leave-one-rate-out rows
    # surface method: kind -> why it got the top-k trend instead (too few observations)
    fallbacks: dict[str, str] = field(default_factory=dict)
    # kind -> (rate, run) of every COMPLETE `recommend --verify` run (any rate)
    verified: dict[str, list[tuple[float, TrialPoint]]] = field(default_factory=dict)

    @property
    def campaign(self) -> str:
        """Return the campaign name."""
        return self.provenance.campaign

    def kinds(self) -> list[str]:
        """Return the noise kinds in a stable order."""
        return sorted({s.noise_kind for s in self.settings})

    def settings_of(self, kind: str) -> list[SettingResult]:
        """Return one kind's settings sorted by rate."""
        return sorted(
            (s for s in self.settings if s.noise_kind == kind), key=lambda s: s.noise_rate
        )


@dataclass(frozen=True)
class Recommendation:
    """DM parameters recommended for a noise kind and rate."""

    noise_kind: str
    noise_rate: float
    emphasis_mode: float
    emphasis_variance: float
    # the band; None outside the searched rates where no model says how sure the pick is
    emphasis_mode_low: float | None
    emphasis_mode_high: float | None
    emphasis_variance_low: float | None
    emphasis_variance_high: float | None
    nearest_rates: tuple[float, ...]
    extrapolated: bool
    predicted_accuracy: float | None = None  # surface method only
    predicted_std: float | None = None
    # the risk model's view of one run at the pick (surface method; None for top-k)
    expected_accuracy: float | None = None
    low_accuracy: float | None = None  # its 10th percentile
    collapse_probability: float | None = None
    origin: str | None = None  # which candidate: confirm@0.4, search@0.4#12, verify@0.45
    notes: tuple[str, ...] = ()  # what is not determined at this rate, in words

    @property
    def emphasis_lambda(self) -> float:
        """Return the paper's lambda = psi / (1 - psi)."""
        return self.emphasis_mode / (1.0 - self.emphasis_mode)
