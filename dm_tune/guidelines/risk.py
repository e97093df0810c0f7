"""Risk-aware advice: the distribution of one run's accuracy at a setting, not only its mean.

The surface (``surface.py``) predicts the mean objective of a smooth landscape; it is
fitted on each rate's values raised to the rate's lower fence, so it does not see DM's
collapse cliff (a large variance with a low mode collapses on some draws at higher
noise). A user who bets a GPU week on one setting needs the tail: how often a run at
that setting falls off, and how low its bad runs go.

Model (one per noise kind), a kernel estimate of the *residuals* around the surface:

- every observation i (COMPLETE search trial, confirm replicate, verify run; raw values,
  not floored) has a residual ``r_i = value_i - mean(x_i)``: seed-to-seed noise for most,
  a large negative number for a run that collapsed;
- at a query x (mode, variance, rate) the outcome is the mixture
  ``sum_i w_i N(mean(x) + r_i, s(x)^2)``, with ``w_i`` a Gaussian kernel in (scaled mode,
  scaled variance, rate) plus a prior mass :data:`PRIOR_MASS` spread over every
  observation of nearby rates (rate kernel only), and ``s(x)`` the surface's latent
  posterior std (its uncertainty about the mean, seed noise excluded: the residuals carry
  that) with a floor :data:`SMOOTHING`;
- from the mixture: the expected accuracy, its :data:`TAIL_QUANTILE` quantile (``low``)
  and the probability of a collapse (below chance + ``COLLAPSE_MARGIN``).

Why a residual mixture rather than a second GP or a classifier: the cliff is a few
collapsed runs among many good ones, which a stationary GP smooths away and a classifier
needs a threshold for; the mixture keeps each observed fall as it was, weighted by how
close it is. A setting far from every observation gets mostly the prior, which carries
every fall seen at that rate: unexplored settings are risky by construction, and settings
with replicates near them are trusted by evidence. The falls come mostly from PRUNED
search trials (``selection.fallen_points``): Hyperband stops a collapsing run at its first
rung, so COMPLETE trials hold almost none.

Measured (benchmarks/guideline_heldout.py on the kept digits campaigns, 3 campaign seeds x
4 unsearched rates x 6 fresh draws): centring the mixture on the surface's mean alone (the
residuals' local mean taken out, against the winner's curse) picked an unexplored grid
setting beside the cliff when the falls were missing (one pick lost 17 points), while this
form, which keeps a candidate's own runs in its estimate, lost at most 1.5 points either
way; with the falls in, both lost at most 1.4. Pure numpy: no storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

__all__ = [
    "BANDWIDTH",
    "COLLAPSE_MARGIN",
    "PRIOR_MASS",
    "TAIL_QUANTILE",
    "RiskEstimate",
    "RiskModel",
]

#: the quantile that ``low`` reports (a 1-in-10 bad run)
TAIL_QUANTILE = 0.1
#: a run below chance + this margin has collapsed (as campaign/run_trial.py records it)
COLLAPSE_MARGIN = 0.10
#: kernel bandwidths: mode and variance in units of their searched span (the variance on
#: the surface's scale, log or log1p), the noise rate in absolute units
BANDWIDTH = (0.1, 0.1, 0.08)
#: pseudo-observations of the rate's whole distribution added at every query: what is
#: believed of a setting with no evidence near it
PRIOR_MASS = 1.0
#: the smallest std of one mixture component (accuracy units): a kernel density, not spikes
SMOOTHING = 0.005


@dataclass(frozen=True)
class RiskEstimate:
    """What one run at a setting is predicted to score (clean-validation accuracy)."""

    expected: float
    low: float  # the TAIL_QUANTILE quantile of one run's accuracy
    collapse_probability: float
    evidence: float  # kernel-weighted count of observations near the setting


class RiskModel:
    """The residual mixture of one kind (see the module doc).

    ``mean_fn(modes, variances, rate) -> (mean, latent_std)`` is the surface's mean and
    its uncertainty about it; ``scale_fn(modes, variances)`` maps to the [0, 1] scaled
    (mode, variance) coordinates the kernel measures distance in.
    """

    def __init__(
        self,
        modes: np.ndarray,
        variances: np.ndarray,
        rates: np.ndarray,
        values: np.ndarray,
        mean_fn,
        scale_fn,
        chance: float | None = None,
        bandwidth: Sequence[float] = BANDWIDTH,
        prior_mass: float = PRIOR_MASS,
    ) -> None:
        self._mean_fn = mean_fn
        self._scale_fn = scale_fn
        self._h = np.asarray(bandwidth, dtype=float)
        self._prior_mass = float(prior_mass)
        self.rates = np.asarray(rates, dtype=float)
        self.values = np.asarray(values, dtype=float)
        modes, variances = np.asarray(modes, dtype=float), np.asarray(variances, dtype=float)
        fitted = np.empty_like(self.values)
        for rate in np.unique(self.rates):
            at = self.rates == rate
            fitted[at] = self._mean(modes[at], variances[at], rate)[0]
        #: each run against the (capped) mean where it ran: the shape the mixture carries
        self.residuals = self.values - fitted
        self._z = scale_fn(modes, variances)
        self.threshold = (chance or 0.0) + COLLAPSE_MARGIN

    def _weights(self, modes: np.ndarray, variances: np.ndarray, rate: float):
        """(normalised weights [q, i], local evidence [q])."""
        z = self._scale_fn(modes, variances)  # [q, 2]
        d2 = (((z[:, None, :] - self._z[None, :, :]) / self._h[:2]) ** 2).sum(-1)
        dr2 = ((self.rates - rate) / self._h[2]) ** 2
        local = np.exp(-0.5 * (d2 + dr2[None, :]))
        prior = np.exp(-0.5 * dr2)
        prior = self._prior_mass * prior / prior.sum()
        weights = local + prior[None, :]
        total = np.maximum(weights.sum(1, keepdims=True), np.finfo(float).tiny)
        return weights / total, local.sum(1)

    def _mean(self, modes: np.ndarray, variances: np.ndarray, rate: float):
        """The surface's mean, capped at the best run observed within two rate bandwidths.

        An unbounded GP overshoots between rates (1.02 predicted where no run beat 0.96 on
        digits); a run scoring above every run near its rate is an artefact, not advice."""
        mean, latent = self._mean_fn(modes, variances, rate)
        near = np.abs(self.rates - rate) <= 2 * self._h[2]
        ceiling = self.values[near].max() if near.any() else self.values.max()
        return np.minimum(np.asarray(mean, dtype=float), ceiling), latent

    def _mixture(self, modes, variances, rate: float):
        """(weights [q, i], centres [q, i], component std [q, 1], evidence [q])."""
        modes = np.atleast_1d(np.asarray(modes, dtype=float))
        variances = np.atleast_1d(np.asarray(variances, dtype=float))
        mean, latent = self._mean(modes, variances, rate)
        spread = np.sqrt(np.asarray(latent, dtype=float) ** 2 + SMOOTHING**2)[:, None]
        weights, evidence = self._weights(modes, variances, float(rate))
        centres = np.asarray(mean, dtype=float)[:, None] + self.residuals[None, :]
        return weights, centres, spread, evidence

    def estimate(self, modes, variances, rate: float) -> list[RiskEstimate]:
        """One estimate per (mode, variance) at ``rate``."""
        weights, centres, spread, evidence = self._mixture(modes, variances, rate)

        def cdf(x: np.ndarray) -> np.ndarray:
            return (weights * ndtr((x[:, None] - centres) / spread)).sum(1)

        lo = np.full(len(centres), -0.5)
        hi = np.full(len(centres), 1.5)
        for _ in range(40):  # bisection on the mixture's CDF, all queries at once
            mid = 0.5 * (lo + hi)
            below = cdf(mid) < TAIL_QUANTILE
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
        expected = (weights * centres).sum(1)
        collapse = cdf(np.full(len(centres), self.threshold))
        return [
            RiskEstimate(float(np.clip(e, 0, 1)), float(np.clip(q, 0, 1)), float(c), float(n))
            for e, q, c, n in zip(expected, 0.5 * (lo + hi), collapse, evidence, strict=True)
        ]

    def collapse_probability(self, modes, variances, rate: float) -> np.ndarray:
        """P(collapse) only (no quantile): cheap enough for a whole grid."""
        weights, centres, spread, _ = self._mixture(modes, variances, rate)
        return (weights * ndtr((self.threshold - centres) / spread)).sum(1)
