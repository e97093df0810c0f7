"""What ``dm-tune dashboard`` shows of a storage: each study's role, and dm-tune's selection.

optuna-dashboard lists every study in one list by name and marks the trial with the best
objective as "best". A campaign has up to five kinds of studies per setting (search,
baselines, confirm, q-grid, verify), and dm-tune's selection is the confirmed setting
with the best mean over seeds, not the single luckiest search trial. So the dashboard is
served a read-through view of the storage that, for display only (nothing is written):

- prefixes each dm-tune study's name with its role, ``[search] C/symmetric-0.40``,
  ``[confirm] C/symmetric-0.40/confirm`` (the dashboard's search box then finds all
  search studies with ``[search]``), and lists them grouped by role, search first;
- adds two study user attributes to each search study, shown in the dashboard's "Study
  User Attributes": ``dm_tune_selected_trial`` (the search trial dm-tune selected, or
  the trial its confirmed setting came from) and ``dm_tune_selection`` (one line: the
  parameters and the number to trust, the confirmed mean over seeds).

Every other call goes to the storage unchanged: studies keep their stored names (the
dashboard loads them by id), and a study without dm-tune's ``role`` is shown as it is.

Example:
    >>> app = optuna_dashboard.wsgi(DashboardView(storage))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

from optuna.storages import BaseStorage

from dm_tune.campaign._optuna import frozen_study_id
from dm_tune.campaign.records import (
    ROLE_BASELINES,
    ROLE_CONFIRM,
    ROLE_DM,
    ROLE_GCE_Q,
    ROLE_VERIFY,
    StudyKey,
)
from dm_tune.guidelines.results import Selection
from dm_tune.guidelines.rows import percent
from dm_tune.guidelines.selection import select

__all__ = [
    "ROLE_LABELS",
    "SELECTED_TRIAL_ATTR",
    "SELECTION_ATTR",
    "DashboardView",
    "labelled_name",
    "selection_text",
]

#: the label shown before a study's name, per stored role, in the dashboard's list order
ROLE_LABELS = {
    ROLE_DM: "search",
    ROLE_CONFIRM: "confirm",
    ROLE_BASELINES: "baselines",
    ROLE_GCE_Q: "q-grid",
    ROLE_VERIFY: "verify",
}
#: display-only study user attributes of a search study (docs/DESIGN.md section 5)
SELECTED_TRIAL_ATTR = "dm_tune_selected_trial"
SELECTION_ATTR = "dm_tune_selection"
#: seconds a computed selection is reused: the dashboard polls every few seconds
SELECTION_TTL = 10.0


def labelled_name(name: str, role: object) -> str:
    """``[search] name`` for a dm-tune study, ``name`` for any other."""
    label = ROLE_LABELS.get(role) if isinstance(role, str) else None
    return f"[{label}] {name}" if label else name


def selection_text(sel: Selection | None) -> str:
    """One line for the dashboard: what dm-tune selected and which number to trust."""
    if sel is None:
        return "no COMPLETE search trial yet"
    params = f"mode {sel.emphasis_mode:.3g}, variance {sel.emphasis_variance:.3g}"
    if sel.source == "confirm":
        origin = (f"trial {sel.trial_number}" if sel.trial_number is not None
                  else "a confirmed candidate")
        spread = "" if sel.val_accuracy_std is None else f" ± {100 * sel.val_accuracy_std:.1f}"
        return (f"{origin} ({params}): confirmed mean clean-val accuracy "
                f"{percent(sel.val_accuracy, unit='%')}{spread} over {sel.n_seeds} seeds. "
                "Trust this mean, not the best trial's single run (the maximum of many noisy "
                "runs).")
    return (f"trial {sel.trial_number} ({params}): the best search trial, one run at "
            f"{percent(sel.val_accuracy, unit='%')}; not confirmed yet (dm-tune confirm), so "
            "expect less.")


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: DashboardView, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._inner, name)(*args, **kwargs)

    method.__name__ = name
    return method


# Every method of the storage interface goes to the wrapped storage; DashboardView then
# overrides the one the dashboard lists studies with.
_Delegating: type[BaseStorage] = type(
    "_Delegating",
    (BaseStorage,),
    {name: _delegate(name) for name, value in vars(BaseStorage).items()
     if callable(value) and not name.startswith("__")},
)


class DashboardView(_Delegating):  # type: ignore[misc, valid-type]
    """A storage for optuna-dashboard: role-labelled study names, the selection marked."""

    def __init__(self, inner: BaseStorage, ttl: float = SELECTION_TTL) -> None:
        self._inner = inner
        self._ttl = ttl
        self._lock = threading.Lock()
        self._cache: dict[int, tuple[float, dict[str, Any]]] = {}

    def __getattr__(self, name: str) -> Any:
        # anything beyond the interface (an RDB storage's engine) is the wrapped storage's
        return getattr(self.__dict__["_inner"], name)

    def get_all_studies(self) -> list:
        """Every study, labelled and grouped by role (search first), the search studies
        with dm-tune's selection among their user attributes."""
        studies = self._inner.get_all_studies()
        ids = {s.study_name: frozen_study_id(s) for s in studies}
        shown = []
        for study in studies:
            role = study.user_attrs.get(StudyKey.ROLE)
            view = copy.copy(study)
            view.study_name = labelled_name(study.study_name, role)
            if role == ROLE_DM:
                confirm_id = ids.get(f"{study.study_name}/{ROLE_CONFIRM}")
                view.user_attrs = {**study.user_attrs,
                                   **self._selection_attrs(frozen_study_id(study), confirm_id)}
            shown.append(view)
        order = list(ROLE_LABELS)

        def rank(s: Any) -> tuple[int, int]:
            role = s.user_attrs.get(StudyKey.ROLE)
            return (order.index(role) if role in order else len(order), frozen_study_id(s))

        # The dashboard shows the list reversed by default (newest first): hand it over
        # reversed so that it reads search, confirm, baselines, q-grid, verify, others.
        return sorted(shown, key=rank, reverse=True)

    def _selection_attrs(self, study_id: int, confirm_id: int | None) -> dict[str, Any]:
        """The selection's attributes, recomputed at most every ``ttl`` seconds."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(study_id)
            if cached is not None and now - cached[0] < self._ttl:
                return cached[1]
        trials = self._inner.get_all_trials(study_id, deepcopy=False)
        confirm = [] if confirm_id is None else self._inner.get_all_trials(confirm_id,
                                                                          deepcopy=False)
        sel = select(trials, confirm)
        attrs = {SELECTED_TRIAL_ATTR: None if sel is None else sel.trial_number,
                 SELECTION_ATTR: selection_text(sel)}
        with self._lock:
            self._cache[study_id] = (now, attrs)
        return attrs
