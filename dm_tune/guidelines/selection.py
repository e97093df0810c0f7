"""One selection: which trial or confirmed setting stands for a noise setting.

``status``, ``export``, ``report`` and ``recommend`` all name the best setting through
:func:`select`: the confirmed setting with the best mean clean-validation accuracy over
its seeds when confirmations exist, else the best search trial; non-finite values are
skipped. A confirmed selection carries the standard deviation over its seeds (the
sample one, ddof = 1; None for one seed) and ``collapsed`` when a replicate recorded
``collapsed = True`` (below chance + 10 points); a collapsed replicate still counts in
the mean, so a setting that sometimes collapses is not flattered. Pure: it reads frozen
trials, never a storage.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from dm_tune.campaign.records import PARAM_MODE, PARAM_VARIANCE, TrialKey
from dm_tune.guidelines.results import BaselineResult, Selection, TrialPoint

__all__ = ["FALL", "dm_points", "fallen_points", "float_attr", "mean", "select", "std",
           "summarize_baselines"]


def select(
    dm_trials: Iterable[FrozenTrial], confirm_trials: Iterable[FrozenTrial] = ()
) -> Selection | None:
    """The setting's selection: confirmed results preferred, else the best search trial."""
    confirmed = _selection_from_confirm(confirm_trials)
    if confirmed is not None:
        return confirmed
    ranked = rank(dm_points(dm_trials))
    return _selection_from_trial(ranked[0]) if ranked else None


def rank(points: Iterable[TrialPoint]) -> list[TrialPoint]:
    """Points by clean-validation accuracy, best first (trial number breaks ties)."""
    return sorted(points, key=lambda t: (-t.val_accuracy, t.number))


def _complete(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """Keep COMPLETE trials with a finite objective."""
    return [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
    ]


def float_attr(trial: FrozenTrial, name: str) -> float | None:
    """Read a numeric user attr; None when missing or not a finite number."""
    value = trial.user_attrs.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def dm_points(trials: Iterable[FrozenTrial]) -> list[TrialPoint]:
    """Turn COMPLETE DM trials (those with both parameters) into TrialPoints."""
    return [_to_point(t) for t in complete_with_params(trials)]


#: a PRUNED search trial whose last reported clean-val accuracy sits this far below the
#: median of its setting's COMPLETE trials has fallen off (collapsed or collapsing)
FALL = 0.10


def fallen_points(trials: Iterable[FrozenTrial]) -> list[TrialPoint]:
    """PRUNED DM trials that fell off, valued at their last reported accuracy.

    Hyperband prunes a collapsing run at its first rung, so the COMPLETE trials of a
    campaign hold almost none of DM's collapses: its cliff is in the pruned ones. A pruned
    run merely below the median is censored (its final value is unknown and left out);
    one :data:`FALL` or more below the median of the COMPLETE trials is a fall that the
    risk model must see (the rest of the schedule does not lift a run from 0.2 to 0.9).
    """
    trials = list(trials)
    done = [t.value for t in _complete(trials)]
    if not done:
        return []
    bar = float(np.median(done)) - FALL
    fallen = []
    for t in trials:
        if (t.state != TrialState.PRUNED or not t.intermediate_values
                or PARAM_MODE not in t.params or PARAM_VARIANCE not in t.params):
            continue
        last = t.intermediate_values[max(t.intermediate_values)]
        if math.isfinite(last) and last < bar:
            fallen.append(_to_point_values(t, float(last)))
    return fallen


def complete_with_params(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """COMPLETE trials that carry both DM parameters."""
    return [t for t in _complete(trials) if PARAM_MODE in t.params and PARAM_VARIANCE in t.params]


def _to_point(t: FrozenTrial) -> TrialPoint:
    """One trial's parameters, objective and outcomes."""
    return _to_point_values(t, float(t.value))


def _to_point_values(t: FrozenTrial, value: float) -> TrialPoint:
    """A trial's parameters and outcomes with ``value`` as its clean-val accuracy."""
    return TrialPoint(
        number=t.number,
        emphasis_mode=float(t.params[PARAM_MODE]),
        emphasis_variance=float(t.params[PARAM_VARIANCE]),
        val_accuracy=value,
        test_accuracy=float_attr(t, TrialKey.TEST_ACCURACY),
        test_accuracy_at_best_val=float_attr(t, TrialKey.TEST_ACCURACY_AT_BEST_VAL),
        memorized_noisy_fraction=float_attr(t, TrialKey.MEMORIZED_NOISY_FRACTION),
        source_trial=_int_attr(t, TrialKey.SOURCE_TRIAL),
    )


def _int_attr(t: FrozenTrial, key: str) -> int | None:
    value = t.user_attrs.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_POINT_FIELDS = ("emphasis_mode", "emphasis_variance", "val_accuracy", "test_accuracy",
                 "test_accuracy_at_best_val", "memorized_noisy_fraction")


def _selection_from_trial(point: TrialPoint) -> Selection:
    """Select the best search trial."""
    shared = {name: getattr(point, name) for name in _POINT_FIELDS}
    return Selection(
        **shared,
        source="search",
        trial_number=point.number,
    )


def _selection_from_confirm(trials: Iterable[FrozenTrial]) -> Selection | None:
    """Select the confirmed parameters with the best mean clean-val accuracy over seeds."""
    groups: dict[tuple[float, float], list[TrialPoint]] = defaultdict(list)
    sources: dict[tuple[float, float], int | None] = {}
    collapsed: set[tuple[float, float]] = set()
    for run in ended_runs(trials):
        trial = run.trial
        if PARAM_MODE not in trial.params or PARAM_VARIANCE not in trial.params:
            continue
        point = replace(_to_point_values(trial, run.value), test_accuracy=run.test_accuracy)
        key = (point.emphasis_mode, point.emphasis_variance)
        groups[key].append(point)
        source = trial.user_attrs.get(TrialKey.SOURCE_TRIAL)
        sources.setdefault(key, int(source) if isinstance(source, int | float) else None)
        if run.collapsed:
            collapsed.add(key)
    if not groups:
        return None
    key, points = max(
        groups.items(), key=lambda kv: (mean([p.val_accuracy for p in kv[1]]), kv[0])
    )
    return Selection(
        emphasis_mode=key[0],
        emphasis_variance=key[1],
        val_accuracy=mean([p.val_accuracy for p in points]),
        test_accuracy=mean([p.test_accuracy for p in points]),
        test_accuracy_at_best_val=mean([p.test_accuracy_at_best_val for p in points]),
        memorized_noisy_fraction=mean([p.memorized_noisy_fraction for p in points]),
        source="confirm",
        trial_number=sources[key],
        n_seeds=len(points),
        val_accuracy_std=std([p.val_accuracy for p in points]),
        test_accuracy_std=std([p.test_accuracy for p in points]),
        collapsed=key in collapsed,
    )


def _collapsed(trial: FrozenTrial) -> bool:
    return trial.user_attrs.get(TrialKey.COLLAPSED) is True


@dataclass(frozen=True)
class EndedRun:
    """One run of a study that never prunes (confirm, baselines), as it counts."""

    trial: FrozenTrial
    value: float  # clean-validation accuracy
    test_accuracy: float | None
    collapsed: bool


def ended_runs(trials: Iterable[FrozenTrial]) -> list[EndedRun]:
    """Every finished run of a confirm or baselines study, diverged ones included.

    Those studies have no pruner, so a PRUNED run there is one whose loss went non-finite
    (``pruned_reason``). It counts as a collapsed replicate valued at its last finite
    clean-validation accuracy (0 without one), and its recorded test accuracy (else that
    value): a seed that diverges weighs against its setting instead of vanishing from
    the mean and leaving the luckier seeds to speak for it.
    """
    runs = []
    for t in trials:
        if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value):
            runs.append(EndedRun(t, float(t.value), float_attr(t, TrialKey.TEST_ACCURACY),
                                 _collapsed(t)))
        elif t.state == TrialState.PRUNED:
            curve = t.user_attrs.get(TrialKey.VAL_CURVE) or []
            finite = [float(v) for v in curve if isinstance(v, int | float)
                      and not isinstance(v, bool) and math.isfinite(v)]
            value = finite[-1] if finite else 0.0
            test = float_attr(t, TrialKey.TEST_ACCURACY)
            runs.append(EndedRun(t, value, value if test is None else test, True))
    return runs


def mean(values: Sequence[float | None]) -> float | None:
    """Mean of the known values; None when none is known."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def std(values: Sequence[float | None]) -> float | None:
    """Sample standard deviation (ddof = 1) of the known values; None below two."""
    known = [v for v in values if v is not None]
    return float(np.std(known, ddof=1)) if len(known) > 1 else None


def _params(trial: FrozenTrial) -> dict[str, float]:
    raw = trial.user_attrs.get(TrialKey.LOSS_PARAMS) or {}
    return {str(k): float(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def _baseline_runs(trials: list[EndedRun]) -> list[EndedRun]:
    """The runs that stand for one loss: its confirmation when there is one, else all.

    Confirmed runs (``confirmation = True``, R new seeds) are preferred because DM's
    selection is confirmed the same way: tuned against tuned, seeds against seeds. When
    they hold several loss params (GCE confirmed once at its configured q and once at
    its tuned q, say), the params with the most runs win, then the best mean
    clean-validation accuracy (never test).
    """
    confirmed = [r for r in trials if r.trial.user_attrs.get(TrialKey.CONFIRMATION) is True]
    if not confirmed:
        return trials
    by_params: dict[tuple[tuple[str, float], ...], list[EndedRun]] = defaultdict(list)
    for r in confirmed:
        by_params[tuple(sorted(_params(r.trial).items()))].append(r)
    return max(by_params.values(),
               key=lambda rs: (len(rs), mean([r.value for r in rs]) or 0.0))


def summarize_baselines(trials: Iterable[FrozenTrial]) -> dict[str, BaselineResult]:
    """Each baseline loss's mean (and std) over its seeds, keyed by the loss name.

    A loss with confirmed runs (the confirmation that ends ``dm-tune run``) is summarised
    from them only: R new seeds, like DM's confirmed selection. GCE whose ``q`` was tuned
    (a ``gce_q`` study per setting) is the entry ``"gce"`` with ``params = {"q": best}``:
    its confirmed runs supersede the single-seed run at the configured q, so the table
    compares tuned DM against tuned GCE. ``params`` is the loss params of the runs
    summarised (``{}`` for the loss defaults, or when they differ). ``collapsed``: a run
    recorded ``collapsed = True``, or diverged (:func:`ended_runs`); it still counts in
    the mean.
    """
    by_loss: dict[str, list[EndedRun]] = defaultdict(list)
    for run in ended_runs(trials):
        by_loss[str(run.trial.user_attrs.get(TrialKey.LOSS, "unknown"))].append(run)
    out = {}
    for loss, everything in sorted(by_loss.items()):
        runs = _baseline_runs(everything)
        ts = [r.trial for r in runs]
        params = [_params(t) for t in ts]
        out[loss] = BaselineResult(
            loss=loss,
            n=len(runs),
            val_accuracy=mean([r.value for r in runs]),
            test_accuracy=mean([r.test_accuracy for r in runs]),
            test_accuracy_at_best_val=mean(
                [float_attr(t, TrialKey.TEST_ACCURACY_AT_BEST_VAL) for t in ts]
            ),
            memorized_noisy_fraction=mean(
                [float_attr(t, TrialKey.MEMORIZED_NOISY_FRACTION) for t in ts]
            ),
            val_accuracy_std=std([r.value for r in runs]),
            test_accuracy_std=std([r.test_accuracy for r in runs]),
            params=params[0] if all(p == params[0] for p in params) else {},
            collapsed=any(r.collapsed for r in runs),
        )
    return out
