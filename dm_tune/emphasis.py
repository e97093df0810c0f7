"""Emphasis densities and loss derivative magnitudes (pure numpy, no I/O).

Every loss in this module has a logit gradient along ``p - e_y``; the L1 norm of that
gradient, ``w(p_y)``, is the loss's implicit example weight (the "derivative magnitude").
DM replaces it with an *emphasis density* (DM paper, arXiv 1905.11233, Eq. 12)::

    w(p) = exp(emphasis_variance * p**lam * (1 - p)),   lam = psi / (1 - psi)

whose peak sits at ``p = psi = emphasis_mode``.

Example:
    >>> import numpy as np
    >>> p = np.linspace(0.0, 1.0, 5)
    >>> dm_density(p, emphasis_mode=0.5, emphasis_variance=8.0).argmax()
    2
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "LOSS_DEFAULTS",
    "SCE_LOG_CLIP",
    "check_loss_params",
    "derivative_magnitude",
    "dm_density",
    "emphasis_lambda",
    "forward_magnitude",
    "from_paper",
    "loss_names",
    "mode_from_lambda",
    "pencil_magnitude",
    "to_paper",
    "validate_emphasis",
]

#: log of the clipped one-hot target used by SCE's reverse cross-entropy (A = log 1e-4).
SCE_LOG_CLIP = math.log(1e-4)

#: default parameters of each loss's derivative magnitude
LOSS_DEFAULTS: dict[str, dict[str, float]] = {
    "cce": {},
    "mae": {},
    "mse": {},
    "gce": {"q": 0.7},
    "sce": {"alpha": 0.1, "beta": 1.0},
    "taylor": {"order": 2},
    "poly1": {"epsilon": 1.0},
}


def validate_emphasis(emphasis_mode: float, emphasis_variance: float) -> None:
    """Raise ``ValueError`` unless 0 <= emphasis_mode < 1 and emphasis_variance is finite."""
    mode = float(emphasis_mode)
    if not (0.0 <= mode < 1.0):
        raise ValueError(f"emphasis_mode must be in [0, 1), got {emphasis_mode!r}")
    if not math.isfinite(float(emphasis_variance)):
        raise ValueError(
            f"emphasis_variance must be a finite number, got {emphasis_variance!r}"
        )


def emphasis_lambda(emphasis_mode: float) -> float:
    """The paper's lambda for an emphasis mode psi: lambda = psi / (1 - psi)."""
    validate_emphasis(emphasis_mode, 0.0)
    return float(emphasis_mode) / (1.0 - float(emphasis_mode))


def mode_from_lambda(lam: float) -> float:
    """The emphasis mode psi = lambda / (lambda + 1) of the paper's lambda >= 0."""
    if not (math.isfinite(lam) and lam >= 0.0):
        raise ValueError(f"lambda must be a finite number >= 0, got {lam!r}")
    return lam / (lam + 1.0)


def to_paper(emphasis_mode: float, emphasis_variance: float) -> tuple[float, float]:
    """(emphasis_mode, emphasis_variance) -> the paper's (lambda, beta)."""
    validate_emphasis(emphasis_mode, emphasis_variance)
    return emphasis_lambda(emphasis_mode), float(emphasis_variance)


def from_paper(lam: float, beta: float) -> tuple[float, float]:
    """The paper's (lambda, beta) -> (emphasis_mode, emphasis_variance)."""
    if not math.isfinite(beta):
        raise ValueError(f"beta (emphasis_variance) must be finite, got {beta!r}")
    return mode_from_lambda(lam), float(beta)


def _as_probability(p: ArrayLike) -> NDArray[np.float64]:
    arr = np.asarray(p, dtype=np.float64)
    if np.any((arr < 0.0) | (arr > 1.0)) or not np.all(np.isfinite(arr)):
        raise ValueError("p must hold probabilities in [0, 1]")
    return arr


def dm_density(
    p: ArrayLike, emphasis_mode: float, emphasis_variance: float
) -> NDArray[np.float64]:
    """DM's emphasis density exp(beta * p**lambda * (1 - p)), unnormalised."""
    validate_emphasis(emphasis_mode, emphasis_variance)
    prob = _as_probability(p)
    lam = emphasis_lambda(emphasis_mode)
    # 0**0 is 1 in numpy, which is the right limit for emphasis_mode = 0 (CCE-like).
    return np.exp(float(emphasis_variance) * np.power(prob, lam) * (1.0 - prob))


def _cce(p: NDArray[np.float64]) -> NDArray[np.float64]:
    return 2.0 * (1.0 - p)


def _mae(p: NDArray[np.float64]) -> NDArray[np.float64]:
    return 2.0 * p * (1.0 - p)


def _mse(p: NDArray[np.float64]) -> NDArray[np.float64]:
    return 4.0 * p * (1.0 - p) ** 2


def _gce(p: NDArray[np.float64], q: float) -> NDArray[np.float64]:
    return 2.0 * np.power(p, q) * (1.0 - p)


def _sce(p: NDArray[np.float64], alpha: float, beta: float) -> NDArray[np.float64]:
    return 2.0 * (1.0 - p) * (alpha + beta * abs(SCE_LOG_CLIP) * p)


def _taylor(p: NDArray[np.float64], order: int) -> NDArray[np.float64]:
    return 2.0 * (1.0 - p) * (1.0 - np.power(1.0 - p, order))


def _poly1(p: NDArray[np.float64], epsilon: float) -> NDArray[np.float64]:
    return 2.0 * (1.0 - p) * (1.0 + epsilon * p)


#: the baseline losses, in one order: dm_tune.losses registers its torch versions by it
LOSS_NAMES = ("cce", "mae", "mse", "gce", "sce", "taylor", "poly1")
_MAGNITUDES: dict[str, Callable[..., NDArray[np.float64]]] = dict(
    zip(LOSS_NAMES, (_cce, _mae, _mse, _gce, _sce, _taylor, _poly1), strict=True)
)


def loss_names() -> tuple[str, ...]:
    """Names of the losses whose derivative magnitude is known here."""
    return tuple(_MAGNITUDES)


#: losses whose parameter is the noise transition matrix (no scalar parameters)
TRANSITION_LOSSES = ("forward",)


def check_loss_params(name: str, params: dict[str, float]) -> dict[str, float]:
    """Merge ``params`` over the defaults of loss ``name``; refuse unknown or bad values."""
    if name in TRANSITION_LOSSES:
        if params:
            raise ValueError(f"loss {name!r} takes no scalar parameters (its transition matrix "
                             "comes from the noise setting or [baselines] forward_estimate)")
        return {}
    if name not in LOSS_DEFAULTS:
        known = ", ".join([*LOSS_DEFAULTS, *TRANSITION_LOSSES])
        raise ValueError(f"unknown loss {name!r}; known: {known}")
    allowed = LOSS_DEFAULTS[name]
    unknown = set(params) - set(allowed)
    if unknown:
        names = ", ".join(sorted(allowed)) or "none"
        raise ValueError(
            f"loss {name!r} got unknown parameter(s) {', '.join(sorted(unknown))}; "
            f"allowed: {names}"
        )
    merged = {**allowed, **params}
    for key, value in merged.items():
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"loss {name!r} parameter {key} must be a finite number")
    if name == "gce" and not (0.0 < merged["q"] <= 1.0):
        raise ValueError(f"gce parameter q must be in (0, 1], got {merged['q']!r}")
    if name == "sce" and (merged["alpha"] < 0 or merged["beta"] < 0):
        raise ValueError("sce parameters alpha and beta must be >= 0")
    if name == "taylor" and (int(merged["order"]) != merged["order"] or merged["order"] < 1):
        raise ValueError(f"taylor parameter order must be an integer >= 1, got {merged['order']!r}")
    if name == "poly1" and merged["epsilon"] < -1:
        raise ValueError(f"poly1 parameter epsilon must be >= -1, got {merged['epsilon']!r}")
    return merged


def derivative_magnitude(name: str, p: ArrayLike, **params: float) -> NDArray[np.float64]:
    """L1 norm of loss ``name``'s logit gradient at p_y = p (its implicit example weight).

    Example:
        >>> float(derivative_magnitude("mae", 0.5))
        0.5
    """
    merged = check_loss_params(name, params)
    if name == "taylor":
        merged["order"] = int(merged["order"])
    return _MAGNITUDES[name](_as_probability(p), **merged)


def forward_magnitude(p: ArrayLike, rate: float, num_classes: int) -> NDArray[np.float64]:
    """Forward correction's derivative magnitude under symmetric noise at ``rate``.

    Forward (Patrini et al., CVPR 2017) minimises ``-log (p T)_y``; its logit gradient is
    ``p - r`` with ``r_j = p_j T_jy / (p T)_y`` (the posterior of the true class given the
    noisy label). For the symmetric T (``1 - rate`` on the diagonal, ``rate / (C - 1)``
    elsewhere) its L1 norm depends on ``p_y`` only::

        w(p) = 2 p (1 - p) (1 - rate C / (C - 1)) / (p (1 - rate) + (1 - p) rate / (C - 1))

    ``rate = 0`` gives CCE's ``2 (1 - p)``; any ``rate > 0`` sends ``w(0)`` to 0, so a
    confidently contradicted label stops pushing (DESIGN.md section 1.2).

    Example:
        >>> float(forward_magnitude(0.5, 0.0, 10))
        1.0
    """
    prob = _as_probability(p)
    c = int(num_classes)
    if c < 2 or not (0.0 <= rate < (c - 1) / c):
        raise ValueError(f"forward needs num_classes >= 2 and 0 <= rate < (C-1)/C, "
                         f"got {num_classes!r}, {rate!r}")
    off = rate / (c - 1)
    q_y = prob * (1.0 - rate) + (1.0 - prob) * off
    # p / q_y -> 1 / (1 - rate) as p -> 0 when rate = 0 (CCE's limit, not 0 / 0)
    ratio = np.divide(prob, q_y, out=np.full_like(prob, 1.0 / (1.0 - rate)), where=q_y > 0)
    return 2.0 * (1.0 - prob) * (1.0 - rate - off) * ratio


#: PENCIL's label-distribution initialisation constant K (Yi and Wu, CVPR 2019, Sec. 3.3)
PENCIL_LABEL_SCALE = 10.0


def pencil_magnitude(
    p: ArrayLike, num_classes: int, label_scale: float = PENCIL_LABEL_SCALE
) -> NDArray[np.float64]:
    """L1 norm of PENCIL's classification-loss logit gradient at its initial labels.

    PENCIL (Yi and Wu, CVPR 2019) trains on ``L_c = KL(f || y^d)`` with a learned label
    distribution ``y^d = softmax(y~)``, ``y~`` initialised to ``K e_y``. Its logit
    gradient is ``f_j (log(f_j / y^d_j) - L_c)``, which is *not* along ``p - e_y``; its
    L1 norm is evaluated with the other classes sharing ``1 - p`` equally and ``y^d`` at
    its initial value (before the label distributions move).
    """
    prob = _as_probability(p)
    c = int(num_classes)
    if c < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
    tiny = np.finfo(np.float64).tiny
    denominator = math.exp(label_scale) + c - 1
    log_yd_y = label_scale - math.log(denominator)
    log_yd_o = -math.log(denominator)
    f_y = prob
    f_o = (1.0 - prob) / (c - 1)
    a_y = np.log(np.maximum(f_y, tiny)) - log_yd_y
    a_o = np.log(np.maximum(f_o, tiny)) - log_yd_o
    kl = f_y * a_y + (c - 1) * f_o * a_o
    return np.abs(f_y * (a_y - kl)) + (c - 1) * np.abs(f_o * (a_o - kl))
