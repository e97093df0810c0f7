"""DM's manipulated derivative and the baseline losses, in PyTorch.

The DM loss is a surrogate whose logit gradient is exactly (DESIGN.md section 1)::

    dL/dz_i = (w_i / sum_j w_j) * (p_i - e_{y_i}) / ||p_i - e_{y_i}||_1

Every quantity is derived from the *other-class margin*
``s_i = logsumexp_{k != y_i} z_ik - z_{i y_i}``:

- ``1 - p_i = sigmoid(s_i)`` and ``log p_i = logsigmoid(-s_i)``, exact even when
  ``p_i`` rounds to 1 (computing ``1 - p_i`` by subtraction loses everything there);
- the gradient of ``s_i`` is ``(p_i - e_y) / (1 - p_i)``, whose L1 norm is exactly 2,
  so weighting ``s_i`` by ``w_i / (2 sum_j w_j)`` gives DM's derivative with no division
  by ``1 - p_i`` (cross-entropy's own gradient has ``p_y - 1 == 0`` in float32 for
  confident examples and would halve their norm).

``norm_epsilon`` keeps the official layer's ``+1e-6`` in the normaliser, i.e. the
derivative is ``(w_i / sum_j w_j) (p_i - e_y) / (||p_i - e_y||_1 + eps)``. It is not a
rounding guard: with ``eps = 0`` (the exact Eq. 7) every example keeps its full push
however well it is fitted, logit margins grow without bound and training diverges within
~20 epochs on digits (measured: chance accuracy at 40% noise). With ``eps = 1e-6`` the
push fades once ``1 - p_i`` drops below ~eps, which bounds the margins near ln(C / eps).

Example:
    >>> import torch
    >>> logits = torch.randn(8, 10, requires_grad=True)
    >>> targets = torch.randint(0, 10, (8,))
    >>> dm_loss(logits, targets, emphasis_mode=0.5, emphasis_variance=8.0).backward()
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dm_tune.emphasis import (
    LOSS_NAMES,
    SCE_LOG_CLIP,
    check_loss_params,
    emphasis_lambda,
    validate_emphasis,
)

__all__ = [
    "BASELINE_LOSSES",
    "DEFAULT_NORM_EPSILON",
    "BaselineLoss",
    "DMLoss",
    "ForwardLoss",
    "baseline_loss",
    "dm_loss",
    "dm_weights",
    "forward_loss",
    "get_loss",
    "loss_names",
    "other_class_margin",
]


def _check_inputs(logits: Tensor, targets: Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (batch, classes), got {tuple(logits.shape)}")
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"targets must have shape ({logits.shape[0]},) to match logits "
            f"{tuple(logits.shape)}, got {tuple(targets.shape)}"
        )
    if logits.shape[1] < 2:
        raise ValueError(f"logits must have at least 2 classes, got {logits.shape[1]}")
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")


def _compute_dtype(logits: Tensor) -> Tensor:
    # Low-precision logits (bf16 autocast) are promoted: the weights need float32 range.
    if logits.dtype in (torch.float16, torch.bfloat16):
        return logits.float()
    return logits


def other_class_margin(logits: Tensor, targets: Tensor) -> Tensor:
    """s_i = logsumexp over the other classes minus the labelled logit (1 - p_y = sigmoid(s))."""
    index = targets.long().unsqueeze(1)
    labelled = logits.gather(1, index).squeeze(1)
    others = logits.scatter(1, index, float("-inf"))
    return torch.logsumexp(others, dim=1) - labelled


#: the official CaffeMex layer's constant in ||p - e_y||_1 + eps (see the module docstring)
DEFAULT_NORM_EPSILON = 1e-6


def _check_norm_epsilon(norm_epsilon: float) -> None:
    if not (isinstance(norm_epsilon, int | float) and 0.0 <= norm_epsilon < float("inf")):
        raise ValueError(f"norm_epsilon must be a finite number >= 0, got {norm_epsilon!r}")


def _normalised_weights(margin: Tensor, emphasis_mode: float, emphasis_variance: float) -> Tensor:
    lam = emphasis_lambda(emphasis_mode)
    log_one_minus_p = F.logsigmoid(margin)
    # log p = logsigmoid(-s) = logsigmoid(s) - s: finite for every finite margin
    emphasis = torch.exp(torch.add(log_one_minus_p, log_one_minus_p - margin, alpha=lam))
    # w_i / sum_j w_j = softmax(beta * emphasis): no overflow for any variance.
    return torch.softmax(emphasis_variance * emphasis, dim=0)


def dm_weights(
    logits: Tensor, targets: Tensor, emphasis_mode: float, emphasis_variance: float
) -> Tensor:
    """Each example's normalised DM weight w_i / sum_j w_j (no gradient)."""
    validate_emphasis(emphasis_mode, emphasis_variance)
    _check_inputs(logits, targets)
    with torch.no_grad():
        margin = other_class_margin(_compute_dtype(logits), targets)
        return _normalised_weights(margin, emphasis_mode, float(emphasis_variance))


_NEG_INF = float("-inf")


def _emphasis_exponent(log_one_minus_p: Tensor, log_p: Tensor, lam) -> Tensor:
    # log((1 - p)^(1 + lam) p^lam) without a division; lam a float or a 0-d tensor
    if isinstance(lam, float):
        return torch.add(log_one_minus_p, log_p, alpha=lam)
    return log_one_minus_p + lam * log_p


def _dm_terms(logits: Tensor, index: Tensor, lam, beta, log_scale) -> tuple[Tensor, Tensor,
                                                                            Tensor]:
    """(normalised weights, log p_y, the logit gradient of the loss) in one pass.

    The gradient is whole at forward time (the weights carry no gradient), so the
    backward only scales it by grad_output: one softmax over the classes (the shifted
    exponentials of the other classes, reused as the direction), one over the batch (the
    weights), no second pass over the logits. ``lam``, ``beta``, ``log_scale`` are floats
    (eager) or 0-d tensors (the compiled CUDA path: one graph for every trial's values).
    """
    others = logits.scatter(1, index, _NEG_INF)
    # logsumexp by hand (aten's checks for infinities cost more than the math here);
    # the shifted exponentials are the backward's direction too
    top = others.amax(dim=1, keepdim=True)
    shifted = torch.exp(others - top)
    total = shifted.sum(dim=1, keepdim=True)
    margin = (total.log() + top - logits.gather(1, index)).squeeze(1)
    log_one_minus_p = F.logsigmoid(margin)
    log_p = log_one_minus_p - margin
    emphasis = torch.exp(_emphasis_exponent(log_one_minus_p, log_p, lam))
    weights = torch.softmax(beta * emphasis, dim=0)
    # The direction (p - e_y) / (1 - p_y) has L1 norm 2: halve the weights.
    if log_scale is None:
        coefficients = 0.5 * weights
    else:
        # l1 / (l1 + eps) = sigmoid(log l1 - log eps), l1 = 2 (1 - p_y)
        coefficients = torch.sigmoid(log_one_minus_p + log_scale) * weights * 0.5
    # p_k / (1 - p_y) for k != y (exact for any margin), -1 at the label, times the
    # example's coefficient: written into `shifted`, no new full-size tensor
    grad = shifted.div_(total).scatter_(1, index, -1.0).mul_(coefficients.unsqueeze(1))
    return weights, log_p, grad


#: where `_ManipulatedDerivative` runs `_dm_terms` through torch.compile: "cuda" (CUDA
#: logits: a step-bound GPU loop pays ~15 us of launch per eager op, ~20 ops here),
#: "always" (tests check the compiled terms on CPU) or "never"
FUSED_DM = "cuda"
_compiled_terms = None


def _fused_terms(logits: Tensor, index: Tensor, lam: float, beta: float,
                 log_scale: float | None):
    """`_dm_terms` compiled (one graph for all hyperparameters), or None if unavailable."""
    global _compiled_terms, FUSED_DM
    if _compiled_terms is None:
        _compiled_terms = torch.compile(_dm_terms, fullgraph=True)
    params = _device_params(logits.device, logits.dtype, lam, beta, log_scale)
    try:
        return _compiled_terms(logits, index, *params)
    except Exception as error:  # no Triton / no compiler: eager, once said
        import warnings

        warnings.warn(f"dm_loss: torch.compile of the fused DM loss failed ({error!r:.200}); "
                      "using the eager loss", RuntimeWarning, stacklevel=3)
        FUSED_DM = "never"
        return None


@functools.lru_cache(maxsize=256)
def _device_params(device: torch.device, dtype: torch.dtype, lam: float, beta: float,
                   log_scale: float | None):
    # 0-d tensors on the logits' device, in their dtype (as eager casts a float): graph
    # inputs, not constants baked into the graph (a float would recompile for every
    # trial's emphasis mode and variance)
    values = [torch.tensor(v, dtype=dtype, device=device) for v in (lam, beta)]
    return (*values, None if log_scale is None
            else torch.tensor(log_scale, dtype=dtype, device=device))


class _ManipulatedDerivative(torch.autograd.Function):
    """Value: mean_i (1 - p_{i,y_i}) (see :func:`dm_loss`). Gradient: DM's manipulated
    derivative, set by ``backward`` (the value is for logging and is not differentiated).

    One autograd node instead of the ~10 a composed surrogate needs: on a digits-sized
    MLP the loss's per-op overhead is most of DM's extra cost over fused cross-entropy.
    On CUDA the terms run compiled (`FUSED_DM`): a few fused kernels instead of ~20.
    """

    @staticmethod
    def forward(ctx, logits, targets, lam: float, beta: float, log_scale: float | None):
        index = targets.long().unsqueeze(1)
        terms = None
        if FUSED_DM == "always" or (FUSED_DM == "cuda" and logits.is_cuda):
            terms = _fused_terms(logits, index, lam, beta, log_scale)
        if terms is None:
            terms = _dm_terms(logits, index, lam, beta, log_scale)
        weights, log_p, grad = terms
        # on ctx, not save_for_backward: no version-counter bookkeeping
        ctx.grad = grad
        # logged: the mean probability off the given label, which falls as the fit improves
        # (DM's weighted cross-entropy rises then: its weight moves to the unfitted examples)
        return -torch.expm1(log_p).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        grad = ctx.grad
        del ctx.grad
        return grad.mul_(grad_output), None, None, None, None


def _log_scale(norm_epsilon: float) -> float | None:
    return None if norm_epsilon == 0.0 else math.log(2.0 / norm_epsilon)


def dm_loss(
    logits: Tensor,
    targets: Tensor,
    emphasis_mode: float,
    emphasis_variance: float,
    *,
    norm_epsilon: float = DEFAULT_NORM_EPSILON,
) -> Tensor:
    """Derivative Manipulation loss: CCE's direction, DM's emphasis density as magnitude.

    Args:
        logits: (batch, classes) unnormalised scores.
        targets: (batch,) given (possibly noisy) labels.
        emphasis_mode: psi in [0, 1), the p_y at which the emphasis density peaks.
        emphasis_variance: beta, how concentrated the emphasis is (0: uniform).
        norm_epsilon: eps in the normaliser ||p_i - e_y||_1 + eps (official layer: 1e-6;
            0: the exact Eq. 7, whose gradient norms are exactly w_i / sum_j w_j).

    Returns:
        A scalar to log and call ``backward()`` on: the batch's mean probability *off*
        the given label, ``mean_i (1 - p_{i,y_i})`` (in [0, 1]; it falls as the model
        fits the labels, towards about the noise rate on noisy labels, since DM leaves
        the corrupted examples unfitted). Its logit gradient is DM's manipulated
        derivative, exactly, not the derivative of that value (the weights carry no
        gradient). DM's own weighted cross-entropy ``sum_i w_i CE_i / sum_j w_j`` (what
        it returned before) rises while accuracy rises (the weights move to the examples
        still unfitted, mostly the corrupted ones), which reads as divergence in a log.
    """
    validate_emphasis(emphasis_mode, emphasis_variance)
    _check_norm_epsilon(norm_epsilon)
    _check_inputs(logits, targets)
    return _ManipulatedDerivative.apply(
        _compute_dtype(logits), targets, emphasis_lambda(emphasis_mode),
        float(emphasis_variance), _log_scale(norm_epsilon),
    )


class DMLoss(nn.Module):
    """``nn.Module`` holding DM's hyperparameters; the logic lives in :func:`dm_loss`.

    ``loss = DMLoss(1 / 3, 8.0)(logits, targets)`` returns the batch's mean probability
    off the given label, ``mean_i (1 - p_{i,y_i})``, a number in [0, 1] that falls as the
    fit improves (log it as the training loss); ``loss.backward()`` gives the logits DM's
    manipulated derivative exactly (not the gradient of that value).
    """

    def __init__(
        self,
        emphasis_mode: float,
        emphasis_variance: float,
        norm_epsilon: float = DEFAULT_NORM_EPSILON,
    ) -> None:
        super().__init__()
        validate_emphasis(emphasis_mode, emphasis_variance)
        _check_norm_epsilon(norm_epsilon)
        self.emphasis_mode = float(emphasis_mode)
        self.emphasis_variance = float(emphasis_variance)
        self.norm_epsilon = float(norm_epsilon)

        self._lambda = emphasis_lambda(self.emphasis_mode)
        self._log_scale = _log_scale(self.norm_epsilon)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        # hyperparameters were validated once in __init__; the step path stays lean
        _check_inputs(logits, targets)
        return _ManipulatedDerivative.apply(
            _compute_dtype(logits), targets, self._lambda, self.emphasis_variance,
            self._log_scale,
        )

    def extra_repr(self) -> str:
        return (f"emphasis_mode={self.emphasis_mode}, emphasis_variance={self.emphasis_variance}"
                f", norm_epsilon={self.norm_epsilon}")


def _cce(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits, targets.long())


def _mae(logits: Tensor, targets: Tensor) -> Tensor:
    return torch.sigmoid(other_class_margin(logits, targets)).mean()


def _mse(logits: Tensor, targets: Tensor) -> Tensor:
    return torch.sigmoid(other_class_margin(logits, targets)).square().mean()


def _gce(logits: Tensor, targets: Tensor, q: float) -> Tensor:
    log_p = F.logsigmoid(-other_class_margin(logits, targets))
    return (-torch.expm1(q * log_p) / q).mean()


def _sce(logits: Tensor, targets: Tensor, alpha: float, beta: float) -> Tensor:
    margin = other_class_margin(logits, targets)
    # RCE with log(0) clipped to A: -A * (1 - p_y).
    return (alpha * F.softplus(margin) + beta * abs(SCE_LOG_CLIP) * torch.sigmoid(margin)).mean()


def _taylor(logits: Tensor, targets: Tensor, order: float) -> Tensor:
    one_minus_p = torch.sigmoid(other_class_margin(logits, targets))
    terms = [one_minus_p.pow(k) / k for k in range(1, int(order) + 1)]
    return torch.stack(terms).sum(0).mean()


def _poly1(logits: Tensor, targets: Tensor, epsilon: float) -> Tensor:
    margin = other_class_margin(logits, targets)
    return (F.softplus(margin) + epsilon * torch.sigmoid(margin)).mean()


BASELINE_LOSSES: dict[str, Callable[..., Tensor]] = dict(
    zip(LOSS_NAMES, (_cce, _mae, _mse, _gce, _sce, _taylor, _poly1), strict=True)
)


def baseline_loss(name: str, logits: Tensor, targets: Tensor, **params: float) -> Tensor:
    """Mean of baseline loss ``name`` over the batch (parameters as in ``emphasis.py``)."""
    merged = check_loss_params(name, params)
    _check_inputs(logits, targets)
    return BASELINE_LOSSES[name](_compute_dtype(logits), targets, **merged)


class BaselineLoss(nn.Module):
    """A baseline loss by name with its parameters (see ``emphasis.LOSS_DEFAULTS``)."""

    def __init__(self, name: str, **params: float) -> None:
        super().__init__()
        self.params = check_loss_params(name, params)
        self.name = name
        self._fn = BASELINE_LOSSES[name]

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        _check_inputs(logits, targets)
        return self._fn(_compute_dtype(logits), targets, **self.params)

    def extra_repr(self) -> str:
        return ", ".join([repr(self.name)] + [f"{k}={v}" for k, v in self.params.items()])


def forward_loss(logits: Tensor, targets: Tensor, transition: Tensor) -> Tensor:
    """Forward correction (Patrini et al., CVPR 2017, Theorem 2): ``-log (p T)_y``, mean.

    ``T[i, j] = P(given j | true i)`` (dm_tune.noise's convention), ``p = softmax(z)``.
    ``log (p T)_y = logsumexp_k (log p_k + log T_ky)``: exact for confident examples and
    for the zeros of a pairflip T (log 0 = -inf drops out of the logsumexp). The logit
    gradient is ``p - r``, ``r_k = p_k T_ky / (p T)_y`` (DESIGN.md section 1.2).
    """
    log_p = F.log_softmax(logits, dim=1)
    log_columns = torch.log(transition.to(log_p.dtype)).T  # row y: log T_{k, y} over k
    return -torch.logsumexp(log_p + log_columns[targets.long()], dim=1).mean()


class ForwardLoss(nn.Module):
    """Forward correction with a fixed transition matrix (validated; not trained)."""

    name = "forward"

    def __init__(self, transition) -> None:
        super().__init__()
        from dm_tune.noise import check_transition_matrix

        matrix = check_transition_matrix(transition)
        singular = [int(k) for k in range(len(matrix)) if matrix[:, k].max() <= 0.0]
        if singular:
            raise ValueError(f"forward: no true class gives label {singular[0]} "
                             "(a zero column of the transition matrix)")
        self.register_buffer("transition", torch.as_tensor(matrix, dtype=torch.float64))
        self.key = matrix.tobytes()  # members with the same T share one vmapped call

    @property
    def num_classes(self) -> int:
        return int(self.transition.shape[0])

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        _check_inputs(logits, targets)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"forward: logits have {logits.shape[1]} classes, the transition "
                             f"matrix {self.num_classes}")
        return forward_loss(_compute_dtype(logits), targets, self.transition)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"


def loss_names() -> tuple[str, ...]:
    """Every name :func:`get_loss` accepts."""
    return ("dm", *BASELINE_LOSSES, "forward")


def get_loss(name: str, **params: float) -> nn.Module:
    """A loss module by name: ``"dm"`` (emphasis_mode, emphasis_variance) or a baseline.

    Example:
        >>> get_loss("dm", emphasis_mode=1 / 3, emphasis_variance=8.0)
        DMLoss(emphasis_mode=0.3333333333333333, emphasis_variance=8.0, norm_epsilon=1e-06)
    """
    if name == "dm":
        missing = {"emphasis_mode", "emphasis_variance"} - set(params)
        extra = set(params) - {"emphasis_mode", "emphasis_variance", "norm_epsilon"}
        if missing or extra:
            raise ValueError(
                "loss 'dm' takes emphasis_mode, emphasis_variance and optionally norm_epsilon; "
                f"missing: {sorted(missing) or 'none'}, unknown: {sorted(extra) or 'none'}"
            )
        values = {k: params[k] for k in params}
        if not all(isinstance(v, int | float) for v in values.values()):
            raise ValueError("emphasis_mode, emphasis_variance and norm_epsilon must be numbers")
        return DMLoss(**{k: float(v) for k, v in values.items()})
    if name == "forward":
        if set(params) != {"transition"}:
            raise ValueError("loss 'forward' takes exactly one parameter, transition "
                             "(a C x C matrix, T[i, j] = P(given j | true i))")
        return ForwardLoss(params["transition"])
    if name not in BASELINE_LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(loss_names())}")
    return BaselineLoss(name, **params)

