"""A tell whose reply is lost after the server committed it is not a failure."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from dm_tune.campaign import run_trial
from dm_tune.campaign.claims import ClaimedTrial

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _claimed(tmp_path) -> ClaimedTrial:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 't.db'}", study_name="s")
    return ClaimedTrial(study=study, trial=study.ask(), setting=None, role="dm")


def _commit_then_drop(study: optuna.Study, calls: list[int]):
    """study.tell that commits, then loses the connection before its reply (once)."""
    tell = study.tell

    def flaky(trial, value=None, state=None):
        calls.append(1)
        tell(trial, value, state=state)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError(
                "COMMIT", {}, Exception("server closed the connection unexpectedly"))

    return flaky


@pytest.mark.parametrize("value, state", [(0.9, None), (None, TrialState.PRUNED)])
def test_a_committed_tell_whose_reply_was_lost_is_accepted(tmp_path, monkeypatch, value, state):
    claimed = _claimed(tmp_path)
    calls: list[int] = []
    monkeypatch.setattr(claimed.study, "tell", _commit_then_drop(claimed.study, calls))
    monkeypatch.setattr("dm_tune.campaign.retry.time.sleep", lambda s: None, raising=False)
    run_trial._tell(claimed, value, state)  # the retry finds it told: no error
    assert len(calls) == 2
    (stored,) = claimed.study.get_trials()
    assert stored.state == (state or TrialState.COMPLETE)


def test_a_first_tell_of_a_finished_trial_still_fails(tmp_path):
    claimed = _claimed(tmp_path)
    claimed.study.tell(claimed.trial, 0.5)
    with pytest.raises(ValueError, match="Cannot tell"):
        run_trial._tell(claimed, 0.9)  # no lost reply: a real double tell is a bug
