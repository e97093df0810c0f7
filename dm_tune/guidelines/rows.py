"""One row per setting, formatted once: the status and recommendation tables and the
HTML report render these cells, each in its own markup."""

from __future__ import annotations

from typing import Any

from dm_tune.guidelines.compare import params_pairs
from dm_tune.guidelines.results import BaselineResult, Selection

__all__ = ["baseline_text", "fmt", "percent", "percent_spread", "source_text", "value_of"]


def value_of(obj: object, name: str) -> Any:
    """``obj.name``, or None when there is no ``obj`` (a setting without a selection)."""
    return None if obj is None else getattr(obj, name)


def fmt(value: float | None, spec: str = ".4f", missing: str = "-") -> str:
    """A number formatted with ``spec``; ``missing`` when unknown."""
    return missing if value is None else format(value, spec)


def source_text(selection: Selection | None, missing: str = "-") -> str:
    """Where a selection comes from: 'confirm (3 seeds)' or 'trial 12'."""
    if selection is None:
        return missing
    if selection.source == "confirm":
        return f"confirm ({selection.n_seeds} seeds)"
    return f"trial {selection.trial_number}"


def baseline_text(base: BaselineResult | None, missing: str = "-") -> str:
    """'gce q=0.46 79.0' (test accuracy in percent of the best baseline by clean
    validation, with its tuned params) or ``missing``."""
    if base is None:
        return missing
    params = f" {params_pairs(base.params)}" if base.params else ""
    return f"{base.loss}{params} {percent_spread(base.test_accuracy, None, missing)}"


def percent(value: float | None, missing: str = "-", unit: str = "") -> str:
    """An accuracy (a fraction) in percent with one decimal, the unit of every table and
    sentence: '90.5' (then ``unit``, e.g. '%'), or ``missing`` when unknown."""
    return missing if value is None else f"{100 * value:.1f}{unit}"


def percent_spread(mean: float | None, std: float | None, missing: str = "-") -> str:
    """An accuracy as percent with its spread over seeds: '90.5±1.4', '90.5' (one seed).

    Percent with one decimal keeps a mean +- std cell at 8 characters, so the status
    table with DM and every baseline side by side fits 100 columns.
    """
    if mean is None or std is None:
        return percent(mean, missing)
    return f"{100 * mean:.1f}±{100 * std:.1f}"
