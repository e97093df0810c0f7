"""The predicted-accuracy figure of the Gaussian-process surface (method "surface").

Split from ``plots.py`` (the 600-line module limit); ``plots`` re-exports these names
and inserts the figure after the landscape when the results carry surfaces. Same
two steps as there: a pure data builder (tests check its numbers), then the drawing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from dm_tune.guidelines import CampaignResults, TrendPoint
from dm_tune.plot_style import HEIGHT, colour_range, finish, panel_grid

__all__ = ["SURFACE_FIGURE", "SurfaceData", "SurfacePanel", "surface_data", "surface_figure"]


@dataclass(frozen=True)
class SurfacePanel:
    """The GP's posterior mean over the (mode, variance) grid at one searched rate."""

    noise_kind: str
    modes: list[float]
    variances: list[float]
    mean: list[list[float]]  # mean[i][j] at (modes[i], variances[j])
    optimum: TrendPoint  # Surface.optimum: the recommendation there and its credible set
    collapse: list[list[float]]  # P(one run collapses) at each grid point (risk model)
    #: 1 where the grid point is in the credible set (mean + 1 std reaches the best mean,
    #: as Surface.optimum's band), else 0: drawn as the region's outline, not a box
    credible: list[list[float]] | None = None

    @property
    def credible_share(self) -> float:
        """The fraction of the grid in the credible set (1: the surface cannot tell the
        panel's settings apart)."""
        return float(np.mean(self.credible)) if self.credible is not None else 1.0


@dataclass(frozen=True)
class SurfaceData:
    """Predicted clean-val accuracy per searched rate (empty without surfaces)."""

    panels: list[SurfacePanel]
    chance: float | None = None  # 1 / classes (None: unknown)

    def colour_range(self) -> tuple[float, float]:
        """The colour scale's (low, high): plot_style.colour_range over every panel's mean."""
        return colour_range([v for p in self.panels for row in p.mean for v in row],
                            self.chance)


def surface_data(results: CampaignResults) -> SurfaceData:
    """Compute the surface figure's data from the fitted surfaces."""
    panels = []
    for kind, s in sorted(results.surfaces.items()):
        for r in s.searched_rates:
            modes, variances, mean, std = s.grid(r)
            mm, vv = np.meshgrid(modes, variances, indexing="ij")
            collapse = s.risk.collapse_probability(mm.ravel(), vv.ravel(), r).reshape(mm.shape)
            credible = (mean + std >= mean.max()).astype(float)
            panels.append(SurfacePanel(kind, modes.tolist(), variances.tolist(), mean.tolist(),
                                       s.optimum(r), collapse.tolist(), credible.tolist()))
    classes = [s.num_classes for s in results.settings if s.num_classes]
    return SurfaceData(panels, 1.0 / max(classes) if classes else None)


#: the collapse region drawn on the surface: where one run collapses this often or more
AVOID_PROBABILITY = 0.1


def panel_title(p: SurfacePanel) -> str:
    """'symmetric 0.40 · credible 12%': the share of the grid in the credible set ('all':
    the surface cannot tell the panel's settings apart)."""
    share = p.credible_share
    what = "all" if share >= 0.995 else f"{100 * share:.0f}%"
    return f"{p.noise_kind} {p.optimum.noise_rate:.2f} · credible {what}"


def surface_figure(data: SurfaceData) -> go.Figure:
    """Predicted accuracy contours (percent) per searched rate, the recommendation, and the
    outline of its credible set (the grid points whose mean + 1 std reaches the best)."""
    fig, cols, rows = panel_grid([panel_title(p) for p in data.panels])
    low, high = data.colour_range()
    for k, p in enumerate(data.panels):
        at = {"row": k // cols + 1, "col": k % cols + 1}
        # contour z is indexed [y][x]: variances down, modes across
        # coloring "heatmap": a continuous scale, so the colour bar reads the same in
        # every panel (filled levels would follow the first panel's contour levels)
        contour = go.Contour(x=p.modes, y=p.variances, z=100 * np.asarray(p.mean).T,
                             contours={"coloring": "heatmap"}, line={"width": 0.5},
                             hovertemplate="mode %{x:.3f}<br>variance %{y:.3g}<br>predicted "
                                           "%{z:.1f}%<extra></extra>")
        fig.add_trace(contour.update(coloraxis="coloraxis"), **at)
        if np.max(p.collapse) >= AVOID_PROBABILITY:
            avoid = go.Contour(
                x=p.modes, y=p.variances, z=np.asarray(p.collapse).T, showscale=False,
                name="collapse region", hoverinfo="skip",
                contours={"type": "constraint", "operation": ">=", "value": AVOID_PROBABILITY},
                fillcolor="rgba(200, 0, 0, 0.35)", line={"color": "red", "width": 2})
            fig.add_trace(avoid, **at)
        if p.credible is not None and 0 < p.credible_share < 0.995:
            # an outline only: a filled or boxed set that covers most of the panel would
            # hide the surface it is meant to qualify
            outline = go.Contour(
                x=p.modes, y=p.variances, z=np.asarray(p.credible).T, showscale=False,
                name="credible set", hoverinfo="skip",
                contours={"type": "constraint", "operation": ">=", "value": 0.5},
                fillcolor="rgba(0,0,0,0)", line={"color": "white", "width": 2, "dash": "dash"})
            fig.add_trace(outline, **at)
        o = p.optimum
        star = {"x": [o.emphasis_mode], "y": [o.emphasis_variance], "name": "selection"}
        fig.add_trace(
            go.Scatter(**star, marker={"symbol": "star", "size": 14, "color": "red",
                                       "line": {"color": "white", "width": 1}}), **at
        )
    fig.update_layout(
        coloraxis={"colorscale": "Viridis", "cmin": 100 * low, "cmax": 100 * high,
                   "colorbar": {"title": {"text": "predicted acc %"}, "ticksuffix": "%"}},
        height=max(HEIGHT, 320 * rows),
        showlegend=False,
    )
    fig.update_xaxes(title_text="emphasis_mode")
    fig.update_yaxes(title_text="emphasis_variance")
    return finish(fig, "Predicted clean-val accuracy (star: pick; dashed: credible set; red: "
                       f"P(collapse) >= {AVOID_PROBABILITY:g}; darkest: {100 * low:.0f}% or less)")


#: (stable name, title, data function, figure function), as in ``plots.FIGURES``
SURFACE_FIGURE: tuple[str, str, Callable, Callable] = (
    "surface",
    "Predicted accuracy landscape per rate (GP posterior mean)",
    surface_data,
    surface_figure,
)
