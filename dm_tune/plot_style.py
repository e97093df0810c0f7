"""What every figure of the report shares: colours, line styles, units and the colour scale.

One place for the choices a reader compares across figures: each noise kind keeps its
colour and dash everywhere; accuracies are drawn in percent, as the CLI prints them; a
colour scale spans the data that matter (``colour_range``), not a collapsed run's 10 %.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

__all__ = [
    "COLLAPSE_MARGIN",
    "COLOUR_FLOOR_PERCENTILE",
    "HEIGHT",
    "colour",
    "colour_range",
    "dash",
    "finish",
    "none_to_nan",
    "panel_grid",
    "percent",
    "rgba",
]

PALETTE = qualitative.Plotly
#: one dash per series index, so two series stay apart even where their colours blend
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
HEIGHT = 460
#: a colour scale starts at this percentile of the runs that did not collapse: collapsed
#: runs near chance would otherwise take most of the scale and squeeze the settings worth
#: choosing between (0.65-0.9 on digits) into one hue
COLOUR_FLOOR_PERCENTILE = 25.0
#: a run below chance + this collapsed (the project's definition, campaign/records.py)
COLLAPSE_MARGIN = 0.10


def colour(i: int) -> str:
    """A stable colour per index."""
    return PALETTE[i % len(PALETTE)]


def dash(i: int) -> str:
    """A stable line dash per index."""
    return DASHES[i % len(DASHES)]


def rgba(hex_colour: str, alpha: float) -> str:
    """Hex colour -> rgba() string (bands are the line colour, translucent)."""
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def none_to_nan(values: Sequence[float | None]) -> list[float]:
    """Plotly breaks a line at NaN; None would too, but NaN keeps arrays numeric."""
    return [math.nan if v is None else float(v) for v in values]


def percent(values: Sequence[float | None]) -> list[float]:
    """Fractions -> percent (NaN where unknown): the report speaks percent, as the CLI."""
    return [math.nan if v is None else 100.0 * float(v) for v in values]


def colour_range(values: Sequence[float], chance: float | None = None) -> tuple[float, float]:
    """(low, high) of a colour scale over ``values``: from the COLOUR_FLOOR_PERCENTILE-th
    percentile of the values above chance + COLLAPSE_MARGIN (all values when chance is
    unknown or none is above) to the maximum. Lower values share the lowest colour."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return 0.0, 1.0
    high = float(finite.max())
    kept = finite if chance is None else finite[finite > chance + COLLAPSE_MARGIN]
    low = float(np.percentile(kept if kept.size else finite, COLOUR_FLOOR_PERCENTILE))
    if not low < high:
        low = float(finite.min())
    return low, high


def finish(fig: go.Figure, title: str) -> go.Figure:
    """Common layout: title, white template, fixed height for static export."""
    fig.update_layout(title={"text": title}, template="plotly_white")
    if fig.layout.height is None:
        fig.update_layout(height=HEIGHT)
    return fig


def panel_grid(titles: list[str]) -> tuple[go.Figure, int, int]:
    """Subplots for one panel per title, up to three a row; returns (fig, cols, rows)."""
    cols = min(3, max(len(titles), 1))
    rows = math.ceil(max(len(titles), 1) / cols)
    spacing = {"horizontal_spacing": 0.08, "vertical_spacing": 0.16 if rows > 1 else 0.1}
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, **spacing)
    return fig, cols, rows
