"""The terminal tables: status and recommendations, built from the shared row cells."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.table import Table

from dm_tune.guidelines.compare import compare, params_pairs, sentence
from dm_tune.guidelines.results import (
    BaselineResult,
    CampaignResults,
    Recommendation,
    Selection,
)
from dm_tune.guidelines.rows import baseline_text, fmt, percent_spread, source_text, value_of
from dm_tune.guidelines.status import StatusRow

__all__ = ["STATUS_KEY", "advice_table", "recommendation_table", "status_sentences",
           "status_table"]

_TEXT_COLUMNS = {"setting", "noise", "from", "best baseline (test %)", "baselines test %"}
#: the status table's key, printed under it
STATUS_KEY = (
    "accuracy in %, mean±std over seeds (DM: its confirmed seeds; one number: one seed); "
    "! a replicate collapsed (below chance + 10 points); p/f/r: pruned/failed/running"
)


def _table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], compact: bool = False
) -> Table:
    # compact: no vertical rules or outer padding, so the status table fits 100 columns
    table = Table(title=title, title_justify="left", caption_justify="left",
                  **({"box": box.SIMPLE_HEAD, "pad_edge": False, "padding": (0, 1, 0, 0)}
                     if compact else {}))
    for header in headers:
        table.add_column(header, justify="left" if header in _TEXT_COLUMNS else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _flag(collapsed: bool) -> str:
    return "!" if collapsed else ""


def _dm_test_cell(sel: Selection | None) -> str:
    """DM's test accuracy, mean±std over its seeds, flagged when a replicate collapsed."""
    if sel is None:
        return "-"
    return percent_spread(sel.test_accuracy, sel.test_accuracy_std) + _flag(sel.collapsed)


def _baselines_cell(baselines: dict[str, BaselineResult]) -> str:
    """One line per baseline: 'gce 79.0±1.4 q=0.4' (test accuracy, tuned params)."""
    lines = []
    for b in baselines.values():
        params = params_pairs(b.params)
        cell = f"{b.loss} {percent_spread(b.test_accuracy, b.test_accuracy_std)}"
        lines.append(f"{cell}{_flag(b.collapsed)}{' ' + params if params else ''}")
    return "\n".join(lines) or "-"


def _from_cell(sel: Selection | None) -> str:
    """'3 seeds' (confirmed) or 'trial 12' (one search trial)."""
    if sel is None:
        return "-"
    return f"{sel.n_seeds} seeds" if sel.source == "confirm" else f"trial {sel.trial_number}"


def status_sentences(rows: Sequence[StatusRow]) -> list[str]:
    """Where a baseline is as good as or better than DM (one sentence each, compare.py's
    rule), then one line naming the settings where DM is better than every baseline."""
    lines, dm_better = [], []
    for row in rows:
        comparisons = compare(row.selected, row.baselines)
        if any(c.baseline_as_good for c in comparisons):
            lines.append(sentence(row.setting, comparisons, percent=True))
        elif comparisons:
            dm_better.append(row.setting)
    if dm_better:
        lines.append(f"DM is better than every baseline at {', '.join(dm_better)}.")
    return lines


def status_table(campaign: str, rows: Sequence[StatusRow], sentences: bool = True) -> Table:
    """The ``dm-tune status`` table: counts, the selection export names, DM's test
    accuracy (mean±std over confirmed seeds) beside each baseline's; the key and (unless
    ``sentences`` is False: `run` prints them after its recommendations) the baseline
    sentences under it."""
    headers = ("setting", "trials", "p/f/r", "mode", "var", "from", "val %", "DM test %",
               "baselines test %")
    cells = [
        (row.setting, f"{row.complete + row.pruned}/{row.budget}",
         f"{row.pruned}/{row.failed}/{row.running}",
         fmt(value_of(row.selected, "emphasis_mode"), ".3f"),
         fmt(value_of(row.selected, "emphasis_variance"), ".3g"),
         _from_cell(row.selected),
         percent_spread(value_of(row.selected, "val_accuracy"),
                        value_of(row.selected, "val_accuracy_std")),
         _dm_test_cell(row.selected), _baselines_cell(row.baselines))
        for row in rows
    ]
    table = _table(f"campaign {campaign}", headers, cells, compact=True)
    table.caption = "\n".join([STATUS_KEY, *(status_sentences(rows) if sentences else [])])
    return table


def recommendation_table(results: CampaignResults) -> Table:
    """One row per setting: kind, rate, mode, variance, val/test accuracy (percent, as
    every CLI table and the report), best baseline."""
    headers = ("noise", "rate", "mode", "variance", "val %", "test %", "from",
               "best baseline (test %)")
    cells = []
    for s in results.settings:
        sel = s.selected
        cells.append((
            s.noise_kind, f"{s.noise_rate:.2f}", fmt(value_of(sel, "emphasis_mode"), ".3f"),
            fmt(value_of(sel, "emphasis_variance"), ".3g"),
            percent_spread(value_of(sel, "val_accuracy"), None),
            percent_spread(value_of(sel, "test_accuracy"), None),
            source_text(sel), baseline_text(s.best_baseline()),
        ))
    return _table(f"DM recommendations: {results.campaign}", headers, cells)


def advice_table(rows: Sequence[Recommendation]) -> Table:
    """The advice between searched rates: one pick per rate with one run's risk figures."""
    headers = ("noise", "rate", "mode", "variance", "from", "expected %", "10th pct %",
               "P(collapse)")
    cells = [
        (r.noise_kind, f"{r.noise_rate:.2f}", f"{r.emphasis_mode:.3f}",
         f"{r.emphasis_variance:.3g}", r.origin or "-",
         fmt(None if r.expected_accuracy is None else 100 * r.expected_accuracy, ".1f"),
         fmt(None if r.low_accuracy is None else 100 * r.low_accuracy, ".1f"),
         fmt(r.collapse_probability, ".2f"))
        for r in rows
    ]
    table = _table("advice at any rate (risk-aware; one run's clean-val accuracy)", headers,
                   cells)
    notes = sorted({f"{r.noise_kind} {r.noise_rate:g}: {n}" for r in rows for n in r.notes
                    if r.noise_rate in _searched(rows, r.noise_kind)})
    table.caption = "\n".join(notes) if notes else None
    return table


def _searched(rows: Sequence[Recommendation], kind: str) -> set[float]:
    """The rates whose row came from one searched rate (notes shown there only: the
    table stays short)."""
    return {r.noise_rate for r in rows if r.noise_kind == kind and len(r.nearest_rates) == 1}
