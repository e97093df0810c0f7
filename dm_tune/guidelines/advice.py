"""The advice at any rate: the candidate with the best risk-aware accuracy, never a blend.

A recommendation used to be the surface's optimum at a searched rate and, between searched
rates, a linear blend of its neighbours' optima. Re-trained on fresh draws, a blend of two
picks that sit in different basins landed beside DM's collapse cliff (2 of 15 such picks
lost 4-7 points). Now the advice at rate r is one of the settings the campaign has real
evidence for, ranked at r by the risk model
(``risk.py``):

- candidates: every confirmed setting of the kind (any rate), the best
  :data:`TOP_TRIALS` search trials of each searched rate within :data:`NEAR_RATES` of r,
  and the verify runs' settings: only settings the campaign trained. The surface's own
  argmax at r was a candidate too, until the held-out benchmark measured it: on the kept
  digits campaigns the worst pick lost 1.5 points with it and 1.0 without, on the
  synthetic ones 7.5 and 7.2 (mean 2.6 and 2.2); an untried grid point carries the GP's
  extrapolation, not evidence;
- rank: the :data:`~dm_tune.guidelines.risk.TAIL_QUANTILE` quantile of one run's accuracy
  at r (``low``), then the expected accuracy; a setting no evidence is near gets the
  rate's whole distribution as its prior, falls included, and so ranks low;
- measured beats predicted: at a searched rate with a confirmed selection, that selection
  stands first (the one selection that status, export and report show); at a rate that
  ``recommend --verify`` re-trained, its verified candidates ranked by their mean there,
  where a candidate displaces the risk-aware pick only by a lead larger than seed noise
  (:func:`order_verified`).

Parameters are never interpolated between rates: the advice is always a setting that was
trained. Pure: reads results, never a storage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dm_tune.guidelines.results import SettingResult, TrialPoint
from dm_tune.guidelines.surface import Surface

__all__ = [
    "NEAR_RATES",
    "TOLERANCE",
    "TOP_TRIALS",
    "Advice",
    "Determination",
    "VERIFY_MARGIN",
    "advise",
    "determination",
    "order_verified",
]

Key = tuple[float, float]  # (emphasis_mode, emphasis_variance), rounded to 6 places

TOP_TRIALS = 5
NEAR_RATES = 0.2
#: "not determined": every grid setting within this much (accuracy units) of the best
#: posterior mean spans at least half of the searched range of that parameter
TOLERANCE = 0.005
#: a verified candidate displaces the risk-aware pick only when its mean over the verify
#: seeds leads by more than this many standard errors of the difference of the two means.
#: Three seeds' means differ by a point on digits from seed noise alone; taking the raw
#: best mean made the held-out benchmark's verified pick 0.14 points worse than the
#: unverified one at symmetric 0.5 (mean over three campaigns)
VERIFY_MARGIN = 1.0


@dataclass(frozen=True)
class Advice:
    """One ranked candidate at a rate."""

    noise_kind: str
    noise_rate: float
    emphasis_mode: float
    emphasis_variance: float
    origin: str  # "confirm@0.4", "search@0.4#12", "verify@0.45"
    expected_accuracy: float
    low_accuracy: float  # the risk model's TAIL_QUANTILE quantile of one run
    collapse_probability: float
    evidence: float  # kernel-weighted observations near it


@dataclass(frozen=True)
class Determination:
    """How much the surface pins each parameter down at a rate."""

    noise_rate: float
    mode_interval: tuple[float, float]  # grid settings within TOLERANCE of the best mean
    variance_interval: tuple[float, float]
    mode_determined: bool
    variance_determined: bool

    def sentences(self) -> list[str]:
        """What is not determined, in words (empty when both are)."""
        out = []
        points = round(100 * TOLERANCE, 2)
        if not self.mode_determined:
            lo, hi = self.mode_interval
            out.append(f"the mode is not determined at this rate: anything in "
                       f"[{lo:.2f}, {hi:.2f}] is within {points:g} points")
        if not self.variance_determined:
            lo, hi = self.variance_interval
            out.append(f"the variance is not determined at this rate: anything in "
                       f"[{lo:.3g}, {hi:.3g}] is within {points:g} points")
        return out


def _candidates(
    settings: Sequence[SettingResult], rate: float,
    verified: Sequence[tuple[float, TrialPoint]] = (),
) -> list[tuple[float, float, str]]:
    """(mode, variance, origin) of every candidate, each setting once (first origin kept);
    with no searched rate within NEAR_RATES, the nearest searched rate's best trials."""
    found: dict[tuple[float, float], str] = {}

    def add(mode: float, variance: float, origin: str) -> None:
        found.setdefault((round(float(mode), 6), round(float(variance), 6)), origin)

    for r, t in verified:
        add(t.emphasis_mode, t.emphasis_variance, f"verify@{r:g}")
    for s in settings:
        for t in s.confirm_trials:
            add(t.emphasis_mode, t.emphasis_variance, f"confirm@{s.noise_rate:g}")
    searched = [s for s in settings if s.trials]
    gap = min((abs(s.noise_rate - rate) for s in searched), default=0.0)
    for s in searched:
        if abs(s.noise_rate - rate) <= max(NEAR_RATES, gap) + 1e-9:
            best = sorted(s.trials, key=lambda t: (-t.val_accuracy, t.number))[:TOP_TRIALS]
            for t in best:
                add(t.emphasis_mode, t.emphasis_variance, f"search@{s.noise_rate:g}#{t.number}")
    return [(m, v, origin) for (m, v), origin in found.items()]


def advise(
    surface: Surface, settings: Sequence[SettingResult], rate: float,
    verified: Sequence[tuple[float, TrialPoint]] = (),
) -> list[Advice]:
    """Every candidate at ``rate``, best first (``low``, then ``expected``, then origin).

    Where ``recommend --verify`` re-trained candidates at exactly this rate, those are
    the candidates and the best mean clean-validation accuracy over their runs ranks them
    (the confirmation's rule): measured at the rate beats predicted at it.
    """
    here = [(r, t) for r, t in verified if abs(r - rate) <= 1e-6]
    if here:
        return _verified_ranking(surface, here, rate)
    candidates = _candidates(settings, rate, verified)
    confirmed = next((s.selected for s in settings if abs(s.noise_rate - rate) <= 1e-6
                      and s.selected is not None and s.selected.source == "confirm"), None)
    estimates = surface.risk.estimate([c[0] for c in candidates], [c[1] for c in candidates],
                                      rate)
    ranked = [
        Advice(surface.noise_kind, float(rate), m, v, origin, e.expected, e.low,
               e.collapse_probability, e.evidence)
        for (m, v, origin), e in zip(candidates, estimates, strict=True)
    ]
    # rounded so that a thousandth of a point of model noise does not decide the order
    ranked.sort(key=lambda a: (-round(a.low_accuracy, 4), -round(a.expected_accuracy, 4), a.origin))
    if confirmed is None:
        return ranked
    # a searched rate's confirmed selection was measured there over seeds: it stands first,
    # as it does in status, export and report (one selection everywhere)
    key = (round(confirmed.emphasis_mode, 6), round(confirmed.emphasis_variance, 6))
    first = [a for a in ranked if (round(a.emphasis_mode, 6), round(a.emphasis_variance, 6)) == key]
    return first + [a for a in ranked if a not in first]


def order_verified(
    groups: Mapping[Key, Sequence[float]], incumbent: Key | None,
    margin: float = VERIFY_MARGIN,
) -> list[Key]:
    """Verified settings best first: the ``incumbent`` (the risk-aware pick before the
    check) stays first unless another's mean clean-val leads it by more than ``margin``
    standard errors of the difference; then the rest by their means.

    With fewer than two runs on either side the lead's noise is unknown, so it counts only
    when it is positive and ``margin`` is 0.
    """
    def mean(k: Key) -> float:
        return float(np.mean(groups[k]))

    by_mean = sorted(groups, key=lambda k: (-mean(k), k))
    if incumbent is None or incumbent not in groups:
        return by_mean
    challengers = [k for k in by_mean if k != incumbent and _leads(groups[k], groups[incumbent],
                                                                    margin)]
    first = challengers[0] if challengers else incumbent
    return [first] + [k for k in by_mean if k != first]


def _leads(challenger: Sequence[float], incumbent: Sequence[float], margin: float) -> bool:
    lead = float(np.mean(challenger)) - float(np.mean(incumbent))
    if len(challenger) < 2 or len(incumbent) < 2:
        return lead > 0 and margin == 0
    se = float(np.sqrt(np.var(challenger, ddof=1) / len(challenger)
                       + np.var(incumbent, ddof=1) / len(incumbent)))
    return lead > margin * se and lead > 0


def _verified_ranking(
    surface: Surface, runs: Sequence[tuple[float, TrialPoint]], rate: float
) -> list[Advice]:
    """The settings verified at ``rate``, best first (:func:`order_verified`); the
    incumbent is the plan's first candidate (its jobs carry source index 0)."""
    groups: dict[Key, list[float]] = {}
    sources: dict[Key, int] = {}
    for _, t in runs:
        key = (round(t.emphasis_mode, 6), round(t.emphasis_variance, 6))
        groups.setdefault(key, []).append(t.val_accuracy)
        if t.source_trial is not None:
            sources[key] = min(sources.get(key, t.source_trial), t.source_trial)
    incumbent = min(sources, key=lambda k: (sources[k], k)) if sources else None
    keys = order_verified(groups, incumbent)
    estimates = surface.risk.estimate([k[0] for k in keys], [k[1] for k in keys], rate)
    return [
        Advice(surface.noise_kind, float(rate), m, v, f"verify@{rate:g}", e.expected, e.low,
               e.collapse_probability, e.evidence)
        for (m, v), e in zip(keys, estimates, strict=True)
    ]


def determination(surface: Surface, rate: float, tolerance: float = TOLERANCE) -> Determination:
    """The ranges of mode and variance whose posterior mean is within ``tolerance``."""
    modes, variances, mean, _ = surface.grid(rate)
    near = mean >= mean.max() - tolerance
    rows, cols = np.nonzero(near)
    mode_lo, mode_hi = float(modes[rows].min()), float(modes[rows].max())
    var_lo, var_hi = float(variances[cols].min()), float(variances[cols].max())
    mode_span = modes[-1] - modes[0]
    tv = surface.scaled(np.zeros(2), np.array([var_lo, var_hi]))[:, 1]
    return Determination(
        noise_rate=float(rate),
        mode_interval=(mode_lo, mode_hi),
        variance_interval=(var_lo, var_hi),
        mode_determined=bool(mode_span <= 0 or (mode_hi - mode_lo) < 0.5 * mode_span),
        variance_determined=bool(tv[1] - tv[0] < 0.5),
    )
