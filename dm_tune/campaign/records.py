"""The stored schema: every study and trial attribute key dm-tune writes, in one place.

Other tools (the dashboard, users' notebooks, ``dm-tune export``) read these names, so
they are part of the public interface: change them only with a schema version.

Studies of a campaign ``C`` and a setting ``S`` (``<kind>-<rate:.2f>``, or
``human-<label set>``):

- ``C/S`` (role ``dm``): the search; params :data:`PARAMS`; objective = final-epoch
  clean-validation accuracy (maximised);
- ``C/S/baselines``: one queued trial per (baseline loss, seed), no params;
- ``C/S/confirm``: re-runs of top DM settings with new seeds (``source_trial``);
- ``C/S/gce_q``: GCE's 1-D search of its ``q`` (param :data:`PARAM_Q`), one queued trial
  per grid point; its best ``q`` is confirmed in ``C/S/baselines``.

A confirmation job (a DM candidate in ``confirm``, a baseline in ``baselines``) carries
``confirmation = True``; a confirmed run below chance + 10 points of clean-validation
accuracy records ``collapsed = True``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "JOB_ATTRS",
    "PARAMS",
    "PARAM_MODE",
    "PARAM_Q",
    "PARAM_VARIANCE",
    "METRIC_NAME",
    "ROLES",
    "ROLE_VERIFY",
    "ROLE_BASELINES",
    "ROLE_CONFIRM",
    "ROLE_DM",
    "ROLE_GCE_Q",
    "StudyKey",
    "TrialKey",
    "WORKER_JOINS",
    "curve_attrs",
    "finite_or_none",
    "partial_attrs",
]

ROLE_DM = "dm"
ROLE_BASELINES = "baselines"
ROLE_CONFIRM = "confirm"
ROLE_GCE_Q = "gce_q"  # GCE's own 1-D search of q (the baselines are tuned too)
ROLE_VERIFY = "verify"  # `recommend --verify`: candidates re-trained at a user's own rate
ROLES = (ROLE_DM, ROLE_BASELINES, ROLE_CONFIRM, ROLE_GCE_Q)

PARAM_MODE = "emphasis_mode"
PARAM_VARIANCE = "emphasis_variance"
PARAMS = (PARAM_MODE, PARAM_VARIANCE)
PARAM_Q = "q"  # GCE's exponent, the one param of a gce_q study
#: the objective's name (Optuna's metric names): every study's objective value is the
#: final-epoch clean-validation accuracy, a fraction; the dashboard labels its axes with it
METRIC_NAME = "clean_val_accuracy"


class StudyKey:
    """Study user attribute keys (written once at creation; ``budget`` may change)."""

    CAMPAIGN = "campaign"
    DATASET = "dataset"
    MODEL = "model"
    NOISE_KIND = "noise_kind"
    NOISE_RATE = "noise_rate"
    BUDGET = "budget"
    CONFIG_HASH = "config_hash"
    LABEL_DIGEST = "label_digest"
    VERSION = "dm_tune_version"
    ROLE = "role"
    SETTING = "setting"
    REALISED_NOISE_RATE = "realised_noise_rate"
    EPOCHS = "epochs"
    LABEL_SET = "label_set"
    NUM_CLASSES = "num_classes"  # chance is 1 / num_classes (a collapse: below it + 10 points)
    #: a confirm study: the DM candidates `run` planned, [[mode, variance, source trial
    #: number or null], ...], written
    #: before their jobs are queued so that a re-run queues exactly the same ones
    CONFIRM_PLAN = "confirm_plan"
    #: a verify study: the candidates `recommend --verify` re-trains at the user's rate,
    #: [[mode, variance, origin], ...], written before their jobs are queued
    VERIFY_PLAN = "verify_plan"
    #: the DM studies: the Slurm job arrays `launch --slurm` submitted for the campaign,
    #: [array job id, ...]; `status` asks Slurm about these jobs only
    SLURM_JOBS = "slurm_jobs"


class TrialKey:
    """Trial user attribute keys (written in one statement when a trial ends)."""

    # the job: what a queued trial must carry to be run again
    LOSS = "loss"
    LOSS_PARAMS = "loss_params"
    SEED = "seed"
    SOURCE_TRIAL = "source_trial"
    CONFIRMATION = "confirmation"  # True on a job queued by the confirmation of `run`
    # where it ran
    WORKER = "worker"
    DEVICE = "device"
    REPLICATE_SEEDS = "replicate_seeds"  # a search trial's S seeds ([search] seeds > 1)
    REPLICATE_VAL_ACCURACIES = "replicate_val_accuracies"
    REPLICATE_TEST_ACCURACIES = "replicate_test_accuracies"
    VAL_ACCURACY_STD = "val_accuracy_std"  # over the replicates; the objective is their mean
    POPULATION_SIZE = "population_size"  # trials trained together as one model (K > 1)
    # results (test accuracy is recorded, never the objective)
    TEST_ACCURACY = "test_accuracy"
    TEST_ACCURACY_AT_BEST_VAL = "test_accuracy_at_best_val"
    BEST_VAL_EPOCH = "best_val_epoch"
    NOISY_TRAIN_ACCURACY = "noisy_train_accuracy"
    MEMORIZED_NOISY_FRACTION = "memorized_noisy_fraction"
    CORRECTED_NOISY_FRACTION = "corrected_noisy_fraction"
    REALISED_NOISE_RATE = "realised_noise_rate"
    SECONDS = "seconds"
    EPOCHS_RUN = "epochs_run"
    VAL_CURVE = "val_accuracy_curve"
    TEST_CURVE = "test_accuracy_curve"
    # per epoch, the mean derivative magnitude on corrupted / clean training examples
    DERIVATIVE_CORRUPTED_CURVE = "derivative_corrupted_curve"
    DERIVATIVE_CLEAN_CURVE = "derivative_clean_curve"
    COLLAPSED = "collapsed"  # a baseline or confirmed run: clean-val below chance + 10 points
    # why it ended early
    PRUNED_REASON = "pruned_reason"
    STOPPED = "stopped"
    ERROR = "error"


#: a system attr of the campaign's first DM study: how many worker processes (`run`,
#: `worker`, each of `launch`'s) joined the campaign; each takes the next number, and
#: its samplers' seeds derive from it, so that no two processes propose the same point
WORKER_JOINS = "dm_tune:worker_joins"

#: user attrs that define a queued job: a re-queued trial carries them and nothing else
JOB_ATTRS = (TrialKey.LOSS, TrialKey.LOSS_PARAMS, TrialKey.SEED, TrialKey.SOURCE_TRIAL,
             TrialKey.CONFIRMATION)


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN: a non-finite float is stored as None."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def curve_attrs(curve: Sequence[Mapping[str, float]]) -> dict[str, list[float]]:
    """The per-epoch validation and test curves, as stored once per trial, and the mean
    derivative magnitudes on corrupted and clean training examples (None: no such
    example, e.g. no noise)."""
    def values(key: str) -> list:
        return [finite_or_none(round(float(m[key]), 6)) for m in curve]

    attrs = {TrialKey.VAL_CURVE: values("val_accuracy"),
             TrialKey.TEST_CURVE: values("test_accuracy")}
    if curve and all("derivative_corrupted" in m for m in curve):
        attrs[TrialKey.DERIVATIVE_CORRUPTED_CURVE] = values("derivative_corrupted")
        attrs[TrialKey.DERIVATIVE_CLEAN_CURVE] = values("derivative_clean")
    return attrs


def partial_attrs(curve: Sequence[Mapping[str, float]], started: float) -> dict[str, Any]:
    """What a trial that ended early (pruned, diverged, stopped) records of its epochs."""
    from dm_tune.training import best_val_epoch

    attrs: dict[str, Any] = {
        TrialKey.SECONDS: time.perf_counter() - started,
        TrialKey.EPOCHS_RUN: len(curve),
        **curve_attrs(curve),
    }
    if curve:
        best_epoch, test_at_best = best_val_epoch(
            [m["val_accuracy"] for m in curve], [m["test_accuracy"] for m in curve]
        )
        attrs.update({
            TrialKey.TEST_ACCURACY: curve[-1]["test_accuracy"],
            TrialKey.TEST_ACCURACY_AT_BEST_VAL: test_at_best,
            TrialKey.BEST_VAL_EPOCH: best_epoch,
        })
    return attrs
