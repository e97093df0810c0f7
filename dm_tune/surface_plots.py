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
from dm_tune.plots import _HEIGHT, _finish, _panel_grid

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


@dataclass(frozen=True)
class SurfaceData:
    """Predicted clean-val accuracy per searched rate (empty without surfaces)."""

    panels: list[SurfacePanel]


def surface_data(results: CampaignResults) -> SurfaceData:
    """Compute the surface figure's data from the fitted surfaces."""
    panels = []
    for kind, s in sorted(results.surfaces.items()):
        for r in s.searched_rates:
            modes, variances, mean, _ = s.grid(r)
            mm, vv = np.meshgrid(modes, variances, indexing="ij")
            collapse = s.risk.collapse_probability(mm.ravel(), vv.ravel(), r).reshape(mm.shape)
            panels.append(SurfacePanel(kind, modes.tolist(), variances.tolist(), mean.tolist(),
                                       s.optimum(r), collapse.tolist()))
    return SurfaceData(panels)


#: the collapse region drawn on the surface: where one run collapses this often or more
AVOID_PROBABILITY = 0.1


def surface_figure(data: SurfaceData) -> go.Figure:
    """Predicted accuracy contours per searched rate, the recommendation and its credible box."""
    titles = [f"{p.noise_kind} {p.optimum.noise_rate:.2f}" for p in data.panels]
    fig, cols, rows = _panel_grid(titles)
    for k, p in enumerate(data.panels):
        at = {"row": k // cols + 1, "col": k % cols + 1}
        # contour z is indexed [y][x]: variances down, modes across
        contour = go.Contour(x=p.modes, y=p.variances, z=np.asarray(p.mean).T)
        fig.add_trace(contour.update(coloraxis="coloraxis"), **at)
        if np.max(p.collapse) >= AVOID_PROBABILITY:
            avoid = go.Contour(
                x=p.modes, y=p.variances, z=np.asarray(p.collapse).T, showscale=False,
                name="collapse region", hoverinfo="skip",
                contours={"type": "constraint", "operation": ">=", "value": AVOID_PROBABILITY},
                fillcolor="rgba(200, 0, 0, 0.35)", line={"color": "red", "width": 2})
            fig.add_trace(avoid, **at)
        o = p.optimum
        m0, m1 = o.emphasis_mode_low, o.emphasis_mode_high
        v0, v1 = o.emphasis_variance_low, o.emphasis_variance_high
        box = {"x": [m0, m1, m1, m0, m0], "y": [v0, v0, v1, v1, v0], "name": "credible set"}
        fig.add_trace(
            go.Scatter(**box, mode="lines", line={"color": "white", "dash": "dash"}), **at
        )
        star = {"x": [o.emphasis_mode], "y": [o.emphasis_variance], "name": "selection"}
        fig.add_trace(
            go.Scatter(**star, marker={"symbol": "star", "size": 14, "color": "red"}), **at
        )
    fig.update_layout(
        coloraxis={"colorscale": "Viridis", "colorbar": {"title": {"text": "predicted acc"}}},
        height=max(_HEIGHT, 320 * rows),
        showlegend=False,
    )
    fig.update_xaxes(title_text="emphasis_mode")
    fig.update_yaxes(title_text="emphasis_variance")
    return _finish(fig, "GP posterior mean of clean-val accuracy (star: recommendation; box: "
                        f"credible set; red: avoid, P(collapse) >= {AVOID_PROBABILITY:g})")


#: (stable name, title, data function, figure function), as in ``plots.FIGURES``
SURFACE_FIGURE: tuple[str, str, Callable, Callable] = (
    "surface",
    "Predicted accuracy landscape per rate (GP posterior mean)",
    surface_data,
    surface_figure,
)
