"""The terminal tables: status and recommendations, built from the shared row cells."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from dm_tune.guidelines.results import BaselineResult, CampaignResults
from dm_tune.guidelines.rows import baseline_text, fmt, source_text, value_of
from dm_tune.guidelines.status import StatusRow

__all__ = ["recommendation_table", "status_table"]

_TEXT_COLUMNS = {"setting", "noise", "from", "best baseline", "baselines val/test"}


def _table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for header in headers:
        table.add_column(header, justify="left" if header in _TEXT_COLUMNS else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _baselines_cell(baselines: dict[str, BaselineResult]) -> str:
    parts = [f"{b.loss} {fmt(b.val_accuracy, '.3f')}/{fmt(b.test_accuracy, '.3f')}"
             for b in baselines.values()]
    return ", ".join(parts) or "-"


def status_table(campaign: str, rows: Sequence[StatusRow]) -> Table:
    """The ``dm-tune status`` table: counts, the selection export names, the baselines."""
    headers = ("setting", "trials", "complete", "pruned", "failed", "running", "val",
               "mode", "variance", "test", "from", "baselines val/test")
    cells = [
        (row.setting, f"{row.complete + row.pruned}/{row.budget}", str(row.complete),
         str(row.pruned), str(row.failed), str(row.running),
         fmt(value_of(row.selected, "val_accuracy"), ".3f"),
         fmt(value_of(row.selected, "emphasis_mode"), ".3f"),
         fmt(value_of(row.selected, "emphasis_variance"), ".2f"),
         fmt(value_of(row.selected, "test_accuracy"), ".3f"),
         source_text(row.selected), _baselines_cell(row.baselines))
        for row in rows
    ]
    return _table(f"campaign {campaign}", headers, cells)


def recommendation_table(results: CampaignResults) -> Table:
    """One row per setting: kind, rate, mode, variance, val/test acc, best baseline."""
    headers = ("noise", "rate", "mode", "variance", "val acc", "test acc", "from",
               "best baseline")
    cells = []
    for s in results.settings:
        sel = s.selected
        cells.append((
            s.noise_kind, f"{s.noise_rate:.2f}", fmt(value_of(sel, "emphasis_mode"), ".3f"),
            fmt(value_of(sel, "emphasis_variance"), ".3g"),
            fmt(value_of(sel, "val_accuracy")), fmt(value_of(sel, "test_accuracy")),
            source_text(sel), baseline_text(s.best_baseline()),
        ))
    return _table(f"DM recommendations: {results.campaign}", headers, cells)
