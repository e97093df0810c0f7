"""Running one claimed trial: train, report at the pruning rungs, record, tell.

The objective is the final-epoch clean-validation accuracy; test accuracy and the other
results are trial user attrs, written in one statement when the trial ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from dm_tune.campaign import _optuna
from dm_tune.campaign.claims import ClaimedTrial
from dm_tune.campaign.locks import campaign_lock
from dm_tune.campaign.records import (
    JOB_ATTRS,
    PARAM_MODE,
    PARAM_Q,
    PARAM_VARIANCE,
    ROLE_BASELINES,
    ROLE_CONFIRM,
    ROLE_DM,
    ROLE_GCE_Q,
    ROLE_VERIFY,
    TrialKey,
    curve_attrs,
    finite_or_none,
    partial_attrs,
)
from dm_tune.campaign.retry import cause_of, is_transient, note_outage, retrying
from dm_tune.campaign.settings import forward_transition, load_setting_data, train_spec
from dm_tune.config import CampaignConfig
from dm_tune.data import TrialData
from dm_tune.training import NonFiniteLossError, TrialResult, train_trial

TrainFn = Callable[..., TrialResult]

__all__ = [
    "TrialOutcome",
    "TrialStopped",
    "TrialTakenOver",
    "base_attrs",
    "collapse_attrs",
    "end_complete",
    "end_failed",
    "end_pruned",
    "end_stopped",
    "report_epochs",
    "run_claimed_trial",
    "suggest_job",
    "taken_over",
]

_logger = logging.getLogger(__name__)
EpochHook = Callable[[ClaimedTrial, int, dict[str, float]], None]
#: the range of GCE's q searched by a gce_q study (q -> 0 is CCE, q = 1 is MAE)
GCE_Q_RANGE = (0.1, 1.0)
#: a confirmed run counts as collapsed below chance + this many accuracy points
COLLAPSE_MARGIN = 0.10


class TrialStopped(Exception):
    """The worker was asked to stop; the trial is failed and re-queued."""


class TrialTakenOver(Exception):
    """Another worker failed this trial as heartbeat-stale.

    It happens when this worker could not reach the storage for longer than the grace
    period: its heartbeats stopped, so the trial looked like a dead worker's. The trial's
    job runs again as the retry (queued once); this worker drops its result and goes on.
    """


def _stored_state(claimed: ClaimedTrial) -> TrialState:
    return retrying(lambda: _optuna.frozen_trial(claimed.trial).state, "reading a trial")


@contextmanager
def _unless_taken_over(claimed: ClaimedTrial) -> Iterator[None]:
    """A write this worker's RUNNING trial refuses as finished: TrialTakenOver when it is
    FAIL (the stale-trial sweep is the only other writer of a RUNNING trial's state)."""
    try:
        yield
    except optuna.exceptions.UpdateFinishedTrialError:
        if _stored_state(claimed) == TrialState.FAIL:
            raise TrialTakenOver from None
        raise


def taken_over(claimed: ClaimedTrial) -> TrialOutcome:
    """Say that the trial was taken over; its job queued once; its outcome here (FAIL).

    The stale-trial callback queues the retry unless the job used up its retries; this
    worker was alive, so the job is queued then too (queued-only studies need it).
    """
    _logger.warning(
        "trial %d of %s was failed as heartbeat-stale by another worker while this one could "
        "not reach the storage; its result is dropped and its job runs again as a retry",
        claimed.trial.number, claimed.study.study_name)
    _requeue(claimed)
    return TrialOutcome(TrialState.FAIL)


def suggest_job(claimed: ClaimedTrial, config: CampaignConfig) -> tuple[str, dict[str, Any], int]:
    """:func:`loss_of` through outages (suggesting writes the params, so a trial failed as
    stale before it began raises TrialTakenOver here)."""
    with _unless_taken_over(claimed):
        loss, params, seed = retrying(lambda: loss_of(claimed, config), "suggesting parameters")
    if loss == "forward":  # its matrix is the setting's, never stored with the trial
        classes = load_setting_data(config, claimed.setting).num_classes
        params = {**params, "transition": forward_transition(config, claimed.setting, classes)}
    return loss, params, seed


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended and its objective (None unless COMPLETE)."""

    state: TrialState
    value: float | None = None


def report_epochs(config: CampaignConfig) -> frozenset[int]:
    """Epochs at which a DM trial reports to the pruner (each report is a DB write).

    Hyperband and successive halving only ever compare trials at the rungs
    ``min_epochs * 3**k``; the median pruner at every ``min_epochs``-th epoch. The final
    epoch is always reported; the whole validation curve is stored once at the end.
    """
    search, epochs = config.search, config.training.epochs
    if search.pruner == "median":
        marks = set(range(search.min_epochs, epochs + 1, search.min_epochs))
    elif search.pruner == "hyperband":
        marks, rung = set(), search.min_epochs
        while rung < epochs:
            marks.add(rung)
            rung *= 3
    else:
        marks = set()
    return frozenset(marks | {epochs})


def loss_of(claimed: ClaimedTrial, config: CampaignConfig) -> tuple[str, dict[str, Any], int]:
    """The trial's loss, loss params and seed (a DM trial suggests its two params here)."""
    trial = claimed.trial
    if claimed.role == ROLE_BASELINES:
        attrs = trial.user_attrs
        return (str(attrs[TrialKey.LOSS]), dict(attrs.get(TrialKey.LOSS_PARAMS, {})),
                int(attrs[TrialKey.SEED]))
    if claimed.role == ROLE_GCE_Q:
        # GCE's own search: the queued grid point fixes q; the seed is the campaign's, as
        # for DM's search trials (the q values differ only in q)
        low, high = GCE_Q_RANGE
        q = trial.suggest_float(PARAM_Q, low, high)
        return "gce", {PARAM_Q: q}, int(trial.user_attrs.get(TrialKey.SEED, config.campaign.seed))
    search = config.search
    mode = trial.suggest_float(PARAM_MODE, search.emphasis_mode.low, search.emphasis_mode.high)
    variance = trial.suggest_float(PARAM_VARIANCE, search.emphasis_variance.low,
                                   search.emphasis_variance.high)
    # search trials share the campaign seed (common random numbers: trials differ only in
    # their hyperparameters); confirmation trials carry their own seed
    seed = int(trial.user_attrs.get(TrialKey.SEED, config.campaign.seed))
    return "dm", {PARAM_MODE: mode, PARAM_VARIANCE: variance}, seed


def _record(claimed: ClaimedTrial, attrs: dict[str, Any]) -> None:
    clean = {k: finite_or_none(v) for k, v in attrs.items()}
    with _unless_taken_over(claimed):
        retrying(lambda: _optuna.set_trial_user_attrs(claimed.trial, clean), "recording a trial")


#: what a write to a finished trial raises (tell says "Cannot tell a FAIL trial.")
_FINISHED_ERRORS = (ValueError, optuna.exceptions.UpdateFinishedTrialError)


def _already_told(
    claimed: ClaimedTrial, state: TrialState
) -> Callable[[BaseException], bool | None]:
    """Accept a retried tell's error when its first attempt committed (the goal is met).

    The connection can die after the server committed the tell and before the reply
    came: the retry then finds the trial finished. Optuna says so with
    ``UpdateFinishedTrialError`` or, from ``study.tell``, a plain ``ValueError``
    ("Cannot tell a COMPLETE trial."), so the stored state decides, not the message.
    """

    def accept(error: BaseException) -> bool | None:
        if isinstance(error, _FINISHED_ERRORS) and \
                _optuna.frozen_trial(claimed.trial).state == state:
            return True
        return None

    return accept


def _tell(claimed: ClaimedTrial, value: float | None = None,
          state: TrialState | None = None) -> None:
    intended = state or TrialState.COMPLETE
    try:
        retrying(lambda: claimed.study.tell(claimed.trial, value, state=state), "tell",
                 accept=_already_told(claimed, intended))
    except _FINISHED_ERRORS:
        if _stored_state(claimed) != TrialState.FAIL:
            raise  # a real double tell
        if intended != TrialState.FAIL:
            raise TrialTakenOver from None
        # failed as stale first: FAIL all the same (re-queueing checks for a copy)


def _requeue(claimed: ClaimedTrial) -> None:
    """Queue the trial's job again, once: not when a copy stands in for it already (the
    stale-trial sweep's retry, which runs under the same lock, or an earlier attempt)."""

    def once() -> None:
        with campaign_lock(_optuna.lock_target(claimed.trial), claimed.lock):
            if not _optuna.has_retry(claimed.study, claimed.trial.number):
                _optuna.requeue(claimed.study, claimed.trial, JOB_ATTRS)

    retrying(once, "re-queue")


def report_and_prune(claimed: ClaimedTrial, value: float, epoch: int) -> bool:
    """Report ``value`` at ``epoch``; whether the study's pruner stops the trial (DM only)."""
    trial = claimed.trial
    with _unless_taken_over(claimed):
        retrying(lambda: trial.report(value, epoch), "trial.report")
        # Hyperband's should_prune writes the rung (a system attr): refused the same way
        return claimed.role == ROLE_DM and retrying(trial.should_prune, "should_prune")


def beat_failed(trial: optuna.Trial) -> Callable[[BaseException], None]:
    """What a failed heartbeat says: one line per outage, with the driver's own reason."""

    def warn(error: BaseException) -> None:
        if is_transient(error):
            note_outage(f"the heartbeat of trial {trial.number}", error)
        else:
            _logger.warning("heartbeat of trial %d failed: %s", trial.number, cause_of(error))

    return warn


def run_claimed_trial(
    claimed: ClaimedTrial,
    config: CampaignConfig,
    device: str,
    worker: str,
    stop: threading.Event | None = None,
    on_epoch: EpochHook | None = None,
    train: TrainFn = train_trial,
) -> TrialOutcome:
    """Train the claimed trial, report at the rungs, prune, and tell the study the result.

    A stop request fails the trial and re-queues it with the same parameters. ``train``
    has :func:`dm_tune.training.train_trial`'s signature (benchmarks time it; tests fake it).
    """
    trial = claimed.trial
    data = load_setting_data(config, claimed.setting)
    try:
        loss, loss_params, seed = suggest_job(claimed, config)
    except TrialTakenOver:
        return taken_over(claimed)
    # written once with the results: every user-attr write is a database transaction
    base = base_attrs(worker, device, data, loss, seed)
    curve: list[dict[str, float]] = []
    started = time.perf_counter()
    reported = report_epochs(config)

    def epoch_callback(epoch: int, metrics: dict[str, float]) -> None:
        curve.append(dict(metrics))
        if on_epoch is not None:
            on_epoch(claimed, epoch, metrics)
        if stop is not None and stop.is_set():
            raise TrialStopped
        if epoch in reported:
            if report_and_prune(claimed, float(metrics["val_accuracy"]), epoch):
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    spec = train_spec(config, device, seed)
    with _optuna.heartbeat(trial, on_failure=beat_failed(trial)):
        try:
            result: TrialResult = train(data, spec, loss, loss_params,
                                        on_epoch=epoch_callback, progress=False)
        except optuna.TrialPruned:
            return end_pruned(claimed, {**base, **partial_attrs(curve, started)})
        except NonFiniteLossError as error:
            return end_pruned(claimed, {**base, **partial_attrs(curve, started),
                                        TrialKey.PRUNED_REASON: str(error)})
        except TrialStopped:
            return end_stopped(claimed, {**base, **partial_attrs(curve, started)})
        except TrialTakenOver:  # found at a pruning rung's report
            return taken_over(claimed)
        except BaseException as error:
            end_failed(claimed, base, error)
            raise
    collapse = collapse_attrs(claimed.role, data.num_classes, result.val_accuracy)
    return end_complete(claimed, {**base, **curve_attrs(curve), **collapse}, result)


def base_attrs(worker: str, device: str, data: TrialData, loss: str, seed: int) -> dict[str, Any]:
    """The attrs every ended trial records: its job and where it ran."""
    return {TrialKey.LOSS: loss, TrialKey.SEED: seed, TrialKey.WORKER: worker,
            TrialKey.DEVICE: device, TrialKey.REALISED_NOISE_RATE: data.realised_noise_rate}


def collapse_attrs(role: str, num_classes: int, val_accuracy: float) -> dict[str, Any]:
    """``collapsed`` for a confirmed run (confirm and baselines roles): whether its final
    clean-validation accuracy is below chance (1 / classes) + :data:`COLLAPSE_MARGIN`.

    Search trials are left out: a collapse there is the search's business (the surface and
    the pruner see it); a confirmation reports it because its mean is what users read.
    """
    if role not in (ROLE_CONFIRM, ROLE_BASELINES, ROLE_VERIFY):
        return {}
    return {TrialKey.COLLAPSED: bool(val_accuracy < 1.0 / num_classes + COLLAPSE_MARGIN)}


def end_pruned(claimed: ClaimedTrial, attrs: dict[str, Any]) -> TrialOutcome:
    """Record a pruned (or diverged) trial's attrs and tell it PRUNED."""
    try:
        _record(claimed, attrs)
        _tell(claimed, state=TrialState.PRUNED)
    except TrialTakenOver:
        return taken_over(claimed)
    return TrialOutcome(TrialState.PRUNED)


def end_stopped(claimed: ClaimedTrial, attrs: dict[str, Any]) -> TrialOutcome:
    """A stop request: record, tell FAIL and re-queue the same job (unless taken over:
    then the retry is queued already)."""
    try:
        _record(claimed, {**attrs, TrialKey.STOPPED: "worker stop"})
    except TrialTakenOver:
        return taken_over(claimed)
    _tell(claimed, state=TrialState.FAIL)
    _requeue(claimed)
    return TrialOutcome(TrialState.FAIL)


def end_failed(claimed: ClaimedTrial, base: dict[str, Any], error: BaseException) -> None:
    """An error: record it and tell FAIL (a KeyboardInterrupt re-queues the job)."""
    try:
        _record(claimed, {**base, TrialKey.ERROR: f"{type(error).__name__}: {error}"[:500]})
        _tell(claimed, state=TrialState.FAIL)
    except TrialTakenOver:
        taken_over(claimed)  # failed already, and its retry queued: the error still propagates
        return
    if isinstance(error, KeyboardInterrupt):
        _requeue(claimed)


def end_complete(claimed: ClaimedTrial, attrs: dict[str, Any],
                 result: TrialResult) -> TrialOutcome:
    """Record a finished trial (``attrs`` below the result's own) and tell its objective."""
    try:
        _record(claimed, {**attrs, **result.user_attrs()})
        _tell(claimed, result.val_accuracy)
    except TrialTakenOver:
        return taken_over(claimed)
    return TrialOutcome(TrialState.COMPLETE, result.val_accuracy)
