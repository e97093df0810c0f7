"""Evidence for DM's premise: per epoch, the mean derivative magnitude on the training
examples whose label dm-tune corrupted versus the clean ones, per loss.

Every trial records both curves (trial user attrs ``derivative_corrupted_curve`` and
``derivative_clean_curve``; ``training.derivative_sums`` defines the magnitude: the L1
norm of the loss's logit gradient times the batch size, CCE's ``2 (1 - p_y)``). Per
setting this module takes DM's best search trial (highest clean-validation accuracy) and
each baseline's first finished run, and the report draws them (``premise_plots.py``).

Example:
    >>> curves = load_premise("sqlite:///dm_tune.db", "digits-quick")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from dm_tune.campaign.records import ROLE_BASELINES, ROLE_DM, StudyKey, TrialKey

__all__ = ["PremiseCurve", "load_premise"]


@dataclass(frozen=True)
class PremiseCurve:
    """One trial's per-epoch mean derivative magnitudes on corrupted and clean examples."""

    noise_kind: str
    noise_rate: float
    loss: str
    trial_number: int
    corrupted: list[float | None]
    clean: list[float | None]


def _has_curves(trial: FrozenTrial) -> bool:
    attrs = trial.user_attrs
    return trial.state == TrialState.COMPLETE and bool(
        attrs.get(TrialKey.DERIVATIVE_CORRUPTED_CURVE)) and any(
        v is not None for v in attrs[TrialKey.DERIVATIVE_CORRUPTED_CURVE])


def _curve(kind: str, rate: float, loss: str, trial: FrozenTrial) -> PremiseCurve:
    attrs = trial.user_attrs
    return PremiseCurve(kind, rate, loss, trial.number,
                        list(attrs[TrialKey.DERIVATIVE_CORRUPTED_CURVE]),
                        list(attrs[TrialKey.DERIVATIVE_CLEAN_CURVE]))


def load_premise(storage: Any, campaign: str) -> list[PremiseCurve]:
    """Per setting: DM's best trial and every baseline's first run, with their curves
    (settings without corrupted examples, and trials from before the curves were
    recorded, are left out). Sorted by (kind, rate, loss)."""
    from dm_tune.guidelines.loading import _open

    store = _open(storage)
    curves: list[PremiseCurve] = []
    for study in store.get_all_studies():
        attrs = study.user_attrs
        if attrs.get(StudyKey.CAMPAIGN) != campaign or StudyKey.NOISE_KIND not in attrs:
            continue
        role = str(attrs.get(StudyKey.ROLE, ROLE_DM))
        if role not in (ROLE_DM, ROLE_BASELINES):
            continue
        kind, rate = str(attrs[StudyKey.NOISE_KIND]), round(float(attrs[StudyKey.NOISE_RATE]), 6)
        trials = [t for t in store.get_all_trials(store.get_study_id_from_name(
            study.study_name), deepcopy=False) if _has_curves(t)]
        if role == ROLE_DM and trials:
            best = max(trials, key=lambda t: (t.value, -t.number))
            curves.append(_curve(kind, rate, "dm", best))
        elif role == ROLE_BASELINES:
            first: dict[str, FrozenTrial] = {}
            for trial in sorted(trials, key=lambda t: t.number):
                first.setdefault(str(trial.user_attrs.get(TrialKey.LOSS)), trial)
            curves.extend(_curve(kind, rate, loss, t) for loss, t in first.items())
    return sorted(curves, key=lambda c: (c.noise_kind, c.noise_rate, c.loss))
