"""One response surface per noise kind: a Gaussian process of the objective.

The objective (final-epoch clean-validation accuracy) of every COMPLETE DM trial of a
noise kind, search and confirm runs alike, is modelled as one smooth function of
(emphasis_mode, transformed emphasis_variance, noise rate). The selection at a rate is
read from the surface, not from the best noisy observation: the grid setting with the best
posterior mean minus one std (why, below); the band is the credible set around it.

Why scikit-learn's :class:`~sklearn.gaussian_process.GaussianProcessRegressor`:

- the data are small (tens to hundreds of trials per kind), so exact GP inference is
  cheap (a fit of ~200 points takes about a second of one core, ~0.1 s for 75)
  and needs no approximation;
- a :class:`~sklearn.gaussian_process.kernels.WhiteKernel` learns the seed-to-seed noise
  of the objective, so noisy single-seed trials and confirm replicates are pooled
  instead of trusting the luckiest one;
- scikit-learn is already a dependency. BoTorch/GPyTorch would add torch-side machinery
  for no gain at this size, and Optuna's GP lives in a private module
  (``optuna._gp``) whose API may change without notice.

Model: inputs scaled to [0, 1] per dimension (the variance first log-transformed: ``log``
when the search sampled it on a log scale, else ``log1p``); kernel
``ConstantKernel * Matern(nu=2.5, one length scale per input) + WhiteKernel``;
``normalize_y``; a fixed ``random_state``; one optimizer restart (runtime: the fit
runs on one BLAS thread). A search trial averaged over replicate seeds enters once,
with its mean (the objective); the noise kernel absorbs the rest. A kind searched at
one rate gets a GP over (mode, variance).

Two choices depart from a textbook GP, both forced by real campaigns (the demo's
database, digits, 61 symmetric and 70 pairflip observations):

- **Each rate's outliers below are raised to its lower Tukey fence** (Q1 - 1.5 IQR of
  that rate's values) before fitting. DM settings fall off cliffs (a high variance with
  the wrong mode collapses training to 0.1-0.4 clean accuracy beside neighbours at
  0.95); a stationary GP fitted to such cliffs overshoots between them. Fitted raw, it
  predicted 1.03 accuracy, and its optimum at symmetric 0.4, confirmed with 3 seeds,
  scored 0.29. Below the fence a value only says "bad", which the floor keeps; the
  ranking near the top, the part a guideline uses, is untouched, and an objective
  without low outliers is not changed at all (tests/test_surface.py). Per rate, because
  accuracy levels differ by rate (0.97 at symmetric 0.2, 0.88 at 0.6).
- **The selection is the argmax of the lower bound, posterior mean minus one std**, not
  of the mean alone: the mean's argmax drifts to the edges of the explored region where
  the posterior is both high and unsure (at symmetric 0.6 it picked variance 1.1, where
  no trial of that rate had finished). The lower bound picks where the surface is high
  *and* has evidence. On the demo's database both changes together put every rate's
  selection beside the best confirmed setting (e.g. symmetric 0.4: (0.319, 10.5) vs
  confirmed (0.333, 12.0) at 0.948).

Credible set at a rate: the grid settings whose posterior upper bound (mean + one std)
reaches the best posterior mean; the band is its (min, max) of mode and of variance.
Pure numpy / scikit-learn: no storage.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from threadpoolctl import threadpool_limits

from dm_tune.guidelines.results import SettingResult, Trend, TrendPoint, TrialPoint

__all__ = [
    "GRID_POINTS",
    "METHOD",
    "MIN_OBSERVATIONS",
    "RATE_STEP",
    "Observations",
    "Surface",
    "confirmed_anchors",
    "fit_surface",
    "fit_surfaces",
    "kind_observations",
    "rate_grid",
    "surface_trends",
]

GRID_POINTS = 41  # per axis of the (mode, variance) grid searched at each rate
RATE_STEP = 0.01  # the exported recommendation grid between searched rates
RANDOM_STATE = 0
RESTARTS = 1
#: each rate's objective is raised to its lower Tukey fence, Q1 - FENCE * IQR, before the fit
FENCE = 1.5
#: Fewer observations of a kind than this and it gets the top-k trend instead. The GP
#: learns five hyperparameters (signal, three length scales, noise); with a handful of
#: points they are not identified and the posterior mean is mostly the prior's shape,
#: so its argmax would be an artefact, not a finding.
MIN_OBSERVATIONS = 10

#: how the surface was fitted, as written into the export's provenance
METHOD = {
    "trend": "gaussian-process surface",
    "kernel": "ConstantKernel * Matern(nu=2.5, anisotropic) + WhiteKernel",
    "inputs": "emphasis_mode, log(variance) if searched on a log scale else log1p(variance), "
    "noise_rate; each scaled to [0, 1]",
    "normalize_y": True,
    "objective_floor": f"per rate, at its lower Tukey fence Q1 - {FENCE:g} IQR",
    "selection": "at a searched rate: its confirmed selection if any, else the grid's "
    "argmax of posterior mean - 1 std",
    "random_state": RANDOM_STATE,
    "n_restarts_optimizer": RESTARTS,
    "grid": [GRID_POINTS, GRID_POINTS],
    "credible_set": "grid settings whose posterior mean + 1 std reaches the best posterior mean",
    "rate_step": RATE_STEP,
    "interpolation": "between searched rates: the neighbouring searched rates' points, "
    "linearly; constant outside the searched rates",
}


@dataclass(frozen=True)
class Observations:
    """One kind's observations: parallel arrays, one entry per trial or replicate."""

    modes: np.ndarray
    variances: np.ndarray
    rates: np.ndarray
    values: np.ndarray

    def without_rate(self, rate: float) -> Observations:
        """The observations of every rate but ``rate``."""
        keep = ~np.isclose(self.rates, rate, atol=1e-9)
        return Observations(
            self.modes[keep], self.variances[keep], self.rates[keep], self.values[keep]
        )

    def __len__(self) -> int:
        return len(self.values)

    def floored(self, fence: float = FENCE) -> Observations:
        """Each rate's values raised to its lower fence Q1 - fence * IQR (cliffs cut)."""
        values = self.values.copy()
        for rate in np.unique(self.rates):
            at = np.isclose(self.rates, rate, atol=1e-9)
            q1, q3 = np.quantile(values[at], [0.25, 0.75])
            values[at] = np.maximum(values[at], q1 - fence * (q3 - q1))
        return Observations(self.modes, self.variances, self.rates, values)


def kind_observations(
    settings: Sequence[SettingResult], verified: Sequence[tuple[float, TrialPoint]] = ()
) -> Observations:
    """Every COMPLETE search trial, fallen PRUNED one (at its last value) and confirm run
    of the given settings, and the verify runs (rate, point) of ``recommend --verify``."""
    rows = [
        (t.emphasis_mode, t.emphasis_variance, s.noise_rate, t.val_accuracy)
        for s in settings
        for t in (*s.trials, *s.fallen, *s.confirm_trials)
    ]
    rows += [(t.emphasis_mode, t.emphasis_variance, rate, t.val_accuracy)
             for rate, t in verified]
    arr = np.array(rows, dtype=float).reshape(-1, 4)
    return Observations(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3])


class Surface:
    """A fitted GP of one kind's objective over (mode, variance[, rate])."""

    def __init__(
        self,
        noise_kind: str,
        obs: Observations,
        *,
        variance_log: bool = False,
        grid_points: int = GRID_POINTS,
        random_state: int = RANDOM_STATE,
        anchors: Mapping[float, tuple[float, float]] | None = None,
        chance: float | None = None,
        searched_rates: Sequence[float] | None = None,
    ) -> None:
        if len(obs) == 0:
            raise ValueError(f"no observation to fit a surface for {noise_kind!r}")
        self.noise_kind = noise_kind
        self.variance_log = variance_log
        # rounded once, so that 0.30000000000000004 and 0.3 are one rate everywhere
        obs = Observations(obs.modes, obs.variances, np.round(obs.rates, 6), obs.values)
        # the settings' rates (verify runs add observations at other rates, not settings)
        self.searched_rates = tuple(sorted({round(float(r), 6) for r in (
            searched_rates if searched_rates is not None else np.unique(obs.rates))}))
        searched = set(self.searched_rates)
        #: searched rate -> the confirmed (mode, variance) that stands for it
        self.anchors = {round(float(r), 6): (float(m), float(v))
                        for r, (m, v) in (anchors or {}).items() if round(float(r), 6) in searched}
        self.n_observations = len(obs)
        #: the raw observations (not floored): the risk model's residuals come from them
        self.observations = obs
        #: 1 / classes when known (a collapse is below chance + 10 points), else None
        self.chance = chance
        self._risk = None
        self._counts = {r: int((obs.rates == r).sum()) for r in self.searched_rates}
        self.mode_bounds = (float(obs.modes.min()), float(obs.modes.max()))
        self.variance_bounds = (float(obs.variances.min()), float(obs.variances.max()))
        tv = self._tv(obs.variances)
        self._lo = np.array([obs.modes.min(), tv.min(), obs.rates.min()])
        self._span = np.array([np.ptp(obs.modes), np.ptp(tv), np.ptp(obs.rates)])
        self._use = self._span > 0  # a constant input (one rate) carries no information
        self._span[~self._use] = 1.0
        g = np.linspace(0.0, 1.0, grid_points)
        self._grid_modes = self.mode_bounds[0] + g * (self.mode_bounds[1] - self.mode_bounds[0])
        self._grid_variances = self._untv(tv.min() + g * np.ptp(tv))
        self._gp = self._fit(obs.floored(), random_state)
        #: grid predictions per rate: an optimum between rates needs its neighbours' grids,
        #: and a dense export asks for the searched rates' over and over
        self._grids: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    # ---------------------------------------------------------------- transforms

    def _tv(self, v: np.ndarray) -> np.ndarray:
        """The variance on the scale the GP sees."""
        v = np.asarray(v, dtype=float)
        return np.log(np.maximum(v, 1e-12)) if self.variance_log else np.log1p(v)

    def _untv(self, t: np.ndarray) -> np.ndarray:
        """Back from the GP's variance scale."""
        return np.exp(t) if self.variance_log else np.expm1(t)

    def _x(self, modes, variances, rates) -> np.ndarray:
        """Scaled inputs, constant columns dropped."""
        raw = np.column_stack(
            [
                np.asarray(modes, dtype=float).ravel(),
                self._tv(variances).ravel(),
                np.asarray(rates, dtype=float).ravel(),
            ]
        )
        return ((raw - self._lo) / self._span)[:, self._use]

    def _fit(self, obs: Observations, random_state: int) -> GaussianProcessRegressor | None:
        """Fit the GP; None when every input is constant (one distinct setting)."""
        dims = int(self._use.sum())
        if dims == 0:
            self._constant = float(np.mean(obs.values))
            return None
        kernel = ConstantKernel(1.0, (1e-3, 1e5)) * Matern(
            length_scale=np.full(dims, 0.3), length_scale_bounds=(0.05, 50.0), nu=2.5
        ) + WhiteKernel(0.1, (1e-6, 1.0))
        gp = GaussianProcessRegressor(
            kernel=kernel,
            normalize_y=True,
            n_restarts_optimizer=RESTARTS,
            random_state=random_state,
        )
        # One BLAS thread: matrices of a few hundred rows gain nothing from threads, and
        # on a shared CPU threaded BLAS made the fit 10-40x slower.
        with warnings.catch_warnings(), threadpool_limits(1, "blas"):
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(self._x(obs.modes, obs.variances, obs.rates), obs.values)
        return gp

    # -------------------------------------------------------------- predictions

    def predict(self, modes, variances, rate) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and std of the objective at (mode, variance) pairs and a rate."""
        modes = np.atleast_1d(np.asarray(modes, dtype=float))
        variances = np.atleast_1d(np.asarray(variances, dtype=float))
        rates = np.broadcast_to(np.asarray(rate, dtype=float), modes.shape)
        if self._gp is None:
            return np.full(modes.shape, self._constant), np.zeros(modes.shape)
        with threadpool_limits(1, "blas"):
            mean, std = self._gp.predict(self._x(modes, variances, rates), return_std=True)
        return mean.reshape(modes.shape), std.reshape(modes.shape)

    def predict_latent(self, modes, variances, rate) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and the std of the *mean* (the learnt seed noise taken out)."""
        mean, std = self.predict(modes, variances, rate)
        if self._gp is None:
            return mean, std
        white = self._gp.kernel_.k2.noise_level * float(np.ravel(self._gp._y_train_std)[0]) ** 2
        return mean, np.sqrt(np.maximum(std**2 - white, 0.0))

    def scaled(self, modes, variances) -> np.ndarray:
        """[n, 2] (mode, variance) in units of the searched spans (variance on the GP's scale)."""
        raw = np.column_stack([np.asarray(modes, dtype=float).ravel(),
                               self._tv(variances).ravel()])
        return (raw - self._lo[:2]) / self._span[:2]

    @property
    def risk(self):
        """The kind's :class:`~dm_tune.guidelines.risk.RiskModel` (built on first use)."""
        if self._risk is None:
            from dm_tune.guidelines.risk import RiskModel

            obs = self.observations
            self._risk = RiskModel(obs.modes, obs.variances, obs.rates, obs.values,
                                   self.predict_latent, self.scaled, chance=self.chance)
        return self._risk

    def grid(self, rate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(modes, variances, mean, std) over the grid at ``rate``; mean[i, j] at modes[i].

        Computed once per rate (callers must not modify the arrays)."""
        key = round(float(rate), 6)
        if key not in self._grids:
            mm, vv = np.meshgrid(self._grid_modes, self._grid_variances, indexing="ij")
            mean, std = self.predict(mm.ravel(), vv.ravel(), rate)
            self._grids[key] = (self._grid_modes, self._grid_variances, mean.reshape(mm.shape),
                                std.reshape(mm.shape))
        return self._grids[key]

    def clamp(self, rate: float) -> float:
        """The rate itself inside the searched range, else the nearest searched rate."""
        return float(np.clip(rate, self.searched_rates[0], self.searched_rates[-1]))

    def optimum(self, rate: float) -> TrendPoint:
        """The recommendation at ``rate`` (clamped to the searched range), with its band.

        At a searched rate: its confirmed setting (an anchor) when it has one, else the
        grid's argmax of mean - std. Between searched rates: the two neighbouring searched
        rates' points, interpolated linearly. The band is the credible set at ``rate``.
        """
        rate = self.clamp(rate)
        key = round(rate, 6)
        if key in self.anchors:
            return self._point(rate, *self.anchors[key])
        if any(np.isclose(rate, r, atol=1e-9) for r in self.searched_rates):
            modes, variances, mean, std = self.grid(rate)
            i, j = np.unravel_index(int(np.argmax(mean - std)), mean.shape)
            return self._point(rate, float(modes[i]), float(variances[j]))
        below = max(r for r in self.searched_rates if r < rate)
        above = min(r for r in self.searched_rates if r > rate)
        lo, hi = self.optimum(below), self.optimum(above)
        w = (rate - below) / (above - below)
        return self._point(
            rate,
            (1 - w) * lo.emphasis_mode + w * hi.emphasis_mode,
            (1 - w) * lo.emphasis_variance + w * hi.emphasis_variance,
        )

    def _point(self, rate: float, mode: float, variance: float) -> TrendPoint:
        """(mode, variance) at ``rate`` with the credible-set band and the prediction there."""
        modes, variances, mean, std = self.grid(rate)
        ci, cj = np.nonzero(mean + std >= mean.max())
        predicted, predicted_std = self.predict([mode], [variance], rate)
        n = self._counts.get(round(rate, 6), 0)
        return TrendPoint(
            noise_rate=rate,
            emphasis_mode=float(mode),
            emphasis_mode_low=float(min(modes[ci].min(), mode)),
            emphasis_mode_high=float(max(modes[ci].max(), mode)),
            emphasis_variance=float(variance),
            emphasis_variance_low=float(min(variances[cj].min(), variance)),
            emphasis_variance_high=float(max(variances[cj].max(), variance)),
            n_trials=n,
            k=n,
            predicted_accuracy=float(predicted[0]),
            predicted_std=float(predicted_std[0]),
        )


def fit_surface(
    noise_kind: str, obs: Observations, *, variance_log: bool = False, **kwargs
) -> Surface:
    """Fit one kind's surface (see :class:`Surface`)."""
    return Surface(noise_kind, obs, variance_log=variance_log, **kwargs)


def _by_kind(settings: Sequence[SettingResult]) -> dict[str, list[SettingResult]]:
    """Each kind's settings, sorted by rate."""
    return {
        kind: sorted((s for s in settings if s.noise_kind == kind), key=lambda s: s.noise_rate)
        for kind in sorted({s.noise_kind for s in settings})
    }


def fit_surfaces(
    settings: Sequence[SettingResult], min_observations: int = MIN_OBSERVATIONS,
    verified: Mapping[str, Sequence[tuple[float, TrialPoint]]] | None = None,
) -> tuple[dict[str, Surface], dict[str, str]]:
    """One surface per noise kind with at least ``min_observations`` observations, and
    kind -> why not (one line) for the kinds that have some but get none: too few, or a
    fit that failed. Those kinds use the top-k trend."""
    surfaces, fallbacks = {}, {}
    for kind, mine in _by_kind(settings).items():
        obs = kind_observations(mine, (verified or {}).get(kind, ()))
        n = len(kind_observations(mine))
        if n == 0:
            continue
        if n < min_observations:
            fallbacks[kind] = (
                f"{n} finished trial{'s' if n != 1 else ''} (fewer than {min_observations}): "
                "too few for the Gaussian-process surface, top-k trend used"
            )
            continue
        try:
            classes = {s.num_classes for s in mine if s.num_classes}
            surfaces[kind] = fit_surface(kind, obs, variance_log=any(s.variance_log for s in mine),
                                         anchors=confirmed_anchors(mine),
                                         chance=1.0 / min(classes) if classes else None,
                                         searched_rates=[s.noise_rate for s in mine])
        except (ValueError, np.linalg.LinAlgError) as error:
            fallbacks[kind] = f"the Gaussian-process fit failed ({error}); top-k trend used"
    return surfaces, fallbacks


def confirmed_anchors(settings: Sequence[SettingResult]) -> dict[float, tuple[float, float]]:
    """Rate -> (mode, variance) of each setting whose selection was confirmed."""
    return {
        s.noise_rate: (s.selected.emphasis_mode, s.selected.emphasis_variance)
        for s in settings
        if s.selected is not None and s.selected.source == "confirm"
    }


def surface_trends(surfaces: dict[str, Surface]) -> dict[str, Trend]:
    """The surfaces' optima at their searched rates, as trends."""
    return {
        kind: Trend(kind, tuple(s.optimum(r) for r in s.searched_rates))
        for kind, s in sorted(surfaces.items())
    }


def rate_grid(surface: Surface, step: float = RATE_STEP) -> list[float]:
    """The multiples of ``step`` between the lowest and highest searched rates, plus the
    searched rates, rounded to 6 decimals (so 0.5 is exactly 0.5)."""
    lo, hi = surface.searched_rates[0], surface.searched_rates[-1]
    first, last = int(np.ceil(lo / step - 1e-9)), int(np.floor(hi / step + 1e-9))
    rates = {round(i * step, 6) for i in range(first, last + 1)} | set(surface.searched_rates)
    return sorted(r for r in rates if lo <= r <= hi)
