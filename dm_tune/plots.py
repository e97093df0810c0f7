"""Plotly figures of a campaign's results.

Each figure is built in two steps, after Optuna's visualisation module: a pure function
computes a plain data object from :class:`~dm_tune.guidelines.CampaignResults` (tests
check its numbers), then a ``*_figure`` function draws it. :func:`build_figures`
returns every figure under a stable name.

Example:
    >>> data = trend_data(results)  # doctest: +SKIP
    >>> trend_figure(data).show()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dm_tune.emphasis import (
    derivative_magnitude,
    dm_density,
    forward_magnitude,
    pencil_magnitude,
)
from dm_tune.guidelines import CampaignResults, TrendPoint
from dm_tune.guidelines.rows import value_of
from dm_tune.outcome_plots import (
    AccuracyData,
    KindLines,
    MemorisationData,
    accuracy_data,
    accuracy_figure,
    memorisation_data,
    memorisation_figure,
)
from dm_tune.plot_style import (
    HEIGHT,
    colour,
    colour_range,
    dash,
    finish,
    none_to_nan,
    panel_grid,
    rgba,
)

__all__ = [
    "FIGURES",
    "UNIFIED_VIEW_LOSSES",
    "AccuracyData",
    "BandSeries",
    "DensityCurve",
    "KindLines",
    "LandscapeData",
    "LandscapePanel",
    "MemorisationData",
    "TrendPlotData",
    "UnifiedViewData",
    "accuracy_data",
    "accuracy_figure",
    "build_figures",
    "figures_of",
    "landscape_data",
    "landscape_figure",
    "memorisation_data",
    "memorisation_figure",
    "trend_data",
    "trend_figure",
    "unified_view_data",
    "unified_view_figure",
]

#: the losses drawn beside DM in the unified view (DESIGN.md section 1)
UNIFIED_VIEW_LOSSES = ("cce", "mae", "mse", "gce", "sce")
#: Forward's and PENCIL's magnitudes depend on T and C: drawn for 10 classes, Forward with
#: the symmetric T at this rate, PENCIL at its initial label distributions (emphasis.py)
UNIFIED_VIEW_CLASSES = 10
UNIFIED_VIEW_FORWARD_RATE = 0.4


# -------------------------------------------------------------- (a) trend vs rate


@dataclass(frozen=True)
class BandSeries:
    """A line with a band (low/high) over noise rates."""

    name: str
    x: list[float]
    y: list[float]
    low: list[float]
    high: list[float]


@dataclass(frozen=True)
class TrendPlotData:
    """Recommended mode and variance against rate, per noise kind."""

    kinds: list[str]
    mode: dict[str, BandSeries]
    variance: dict[str, BandSeries]
    # selected (best / confirmed) parameters per rate, drawn as markers over the trend
    selected_mode: dict[str, list[float | None]] = field(default_factory=dict)
    selected_variance: dict[str, list[float | None]] = field(default_factory=dict)
    band: str = "bootstrap interval"


def trend_data(results: CampaignResults) -> TrendPlotData:
    """Compute figure (a)'s data from the fitted trends.

    A kind with a GP surface is drawn on the surface's rate grid (every 0.01 between the
    searched rates: the argmax and credible set at each), so the line between searched
    rates is the surface's own recommendation, not a straight join; a top-k kind is drawn
    at its searched rates. The selected parameters are markers at the searched rates.
    """
    mode, variance, sel_mode, sel_var = {}, {}, {}, {}
    for kind, trend in results.trends.items():
        pts = _curve(results, kind) or list(trend.points)
        rates = [p.noise_rate for p in pts]
        mode[kind] = _band(kind, rates, pts, "emphasis_mode")
        variance[kind] = _band(kind, rates, pts, "emphasis_variance")
        selected = {s.noise_rate: s.selected for s in results.settings_of(kind)}
        sel_mode[kind] = [value_of(selected.get(r), "emphasis_mode") for r in rates]
        sel_var[kind] = [value_of(selected.get(r), "emphasis_variance") for r in rates]
    band = _band_text(results)
    return TrendPlotData(list(results.trends), mode, variance, sel_mode, sel_var, band)


def _curve(results: CampaignResults, kind: str) -> list[TrendPoint]:
    """The surface's optima on its rate grid ([] without a surface for ``kind``)."""
    surface = results.surfaces.get(kind)
    if surface is None:
        return []
    from dm_tune.guidelines.surface import rate_grid  # lazy: scikit-learn

    return [surface.optimum(r) for r in rate_grid(surface)]


def _band_text(results: CampaignResults) -> str:
    """What the band is: the GP's credible set, the bootstrap interval, or both (a kind
    with too few trials fell back to top-k: named, never silently)."""
    if not results.surfaces:
        return "bootstrap interval"
    if not results.fallbacks:
        return "credible set of the GP surface"
    return f"credible set; bootstrap interval for {', '.join(sorted(results.fallbacks))} (top-k)"


def _band(kind: str, rates: list[float], points: list, param: str) -> BandSeries:
    """One parameter's centre line and band (``<param>``, ``_low``, ``_high``) per rate."""
    return BandSeries(
        kind,
        rates,
        [getattr(p, param) for p in points],
        [getattr(p, f"{param}_low") for p in points],
        [getattr(p, f"{param}_high") for p in points],
    )


def _add_band(fig: go.Figure, s: BandSeries, style: dict, row: int, col: int, legend: bool):
    """Draw a band as one filled outline around the centre line, then the line.

    The band is a single closed polygon (high forwards, low backwards), edged in the
    kind's colour and dash, so two kinds' bands stay apart where they overlap; a kind
    searched at one rate has no area to fill and gets an error bar instead.
    """
    c = style["color"]
    single = len(s.x) == 1
    if not single:
        fig.add_trace(
            go.Scatter(
                x=[*s.x, *reversed(s.x)],
                y=[*s.high, *reversed(s.low)],
                mode="lines",
                fill="toself",
                fillcolor=rgba(c, 0.12),
                line={"color": rgba(c, 0.6), "width": 1, "dash": style["dash"]},
                name=f"{s.name} band",
                legendgroup=s.name,
                showlegend=False,
                hoverinfo="skip",
            ),
            row,
            col,
        )
    error = {
        "type": "data",
        "symmetric": False,
        "array": [h - y for h, y in zip(s.high, s.y, strict=True)],
        "arrayminus": [y - lo for lo, y in zip(s.low, s.y, strict=True)],
        "color": c,
        "thickness": 1.5,
    }
    fig.add_trace(
        go.Scatter(
            x=s.x,
            y=s.y,
            name=s.name,
            legendgroup=s.name,
            showlegend=legend,
            mode="lines+markers" if single else "lines",
            line={"color": c, "width": 2.5, "dash": style["dash"]},
            error_y=error if single else None,
        ),
        row,
        col,
    )


#: a marker per noise kind for its selections, beside its colour and dash
_SYMBOLS = ("x", "diamond", "triangle-up", "square", "cross", "star")


def kind_style(i: int) -> dict:
    """The colour, dash and marker of the ``i``-th noise kind (distinct in each)."""
    return {"color": colour(i), "dash": dash(i), "symbol": _SYMBOLS[i % len(_SYMBOLS)]}


def trend_figure(data: TrendPlotData) -> go.Figure:
    """Figure (a): recommended emphasis mode and variance vs noise rate, with bands."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("emphasis mode", "emphasis variance"))
    for i, kind in enumerate(data.kinds):
        style = kind_style(i)
        _add_band(fig, data.mode[kind], style, 1, 1, legend=True)
        _add_band(fig, data.variance[kind], style, 1, 2, legend=False)
        for col, selected in ((1, data.selected_mode), (2, data.selected_variance)):
            fig.add_trace(
                go.Scatter(
                    x=data.mode[kind].x,
                    y=none_to_nan(selected.get(kind, [])),
                    mode="markers",
                    marker={"symbol": style["symbol"], "color": style["color"], "size": 10,
                            "line": {"color": "white", "width": 1}},
                    name=f"{kind} selected",
                    legendgroup=kind,
                    showlegend=col == 1,
                ),
                1,
                col,
            )
    fig.update_xaxes(title_text="noise rate")
    fig.update_yaxes(title_text="emphasis_mode (psi)", row=1, col=1)
    fig.update_yaxes(title_text="emphasis_variance (beta)", row=1, col=2)
    return finish(fig, f"Recommended DM parameters vs noise rate (band: {data.band})")


# ----------------------------------------------------------------- (b) landscape


@dataclass(frozen=True)
class LandscapePanel:
    """One setting's COMPLETE trials in (mode, variance) space."""

    title: str
    noise_kind: str
    noise_rate: float
    modes: list[float]
    variances: list[float]
    accuracies: list[float]
    trial_numbers: list[int]
    selected: tuple[float, float] | None
    variance_log: bool
    mode_range: tuple[float, float] | None = None  # the searched range: the x axis


@dataclass(frozen=True)
class LandscapeData:
    """Clean-val accuracy landscapes, one panel per setting, on one colour scale.

    ``accuracy_min``/``accuracy_max``: the data's range; ``colour_min``/``colour_max``:
    the colour scale's (``plot_style.colour_range``: from the 25th percentile of the runs
    that did not collapse).
    """

    panels: list[LandscapePanel]
    accuracy_min: float
    accuracy_max: float
    colour_min: float = 0.0
    colour_max: float = 1.0


def landscape_data(results: CampaignResults) -> LandscapeData:
    """Compute figure (b)'s data: every COMPLETE DM trial per setting."""
    panels = []
    for s in results.settings:
        sel = s.selected
        panels.append(
            LandscapePanel(
                title=f"{s.noise_kind} {s.noise_rate:.2f}",
                noise_kind=s.noise_kind,
                noise_rate=s.noise_rate,
                modes=[t.emphasis_mode for t in s.trials],
                variances=[t.emphasis_variance for t in s.trials],
                accuracies=[t.val_accuracy for t in s.trials],
                trial_numbers=[t.number for t in s.trials],
                selected=(sel.emphasis_mode, sel.emphasis_variance) if sel else None,
                variance_log=s.variance_log,
                mode_range=s.mode_range,
            )
        )
    accs = [a for p in panels for a in p.accuracies] or [0.0, 1.0]
    classes = [s.num_classes for s in results.settings if s.num_classes]
    chance = 1.0 / max(classes) if classes else None
    low, high = colour_range(accs, chance)
    return LandscapeData(panels, float(min(accs)), float(max(accs)), low, high)


def landscape_figure(data: LandscapeData) -> go.Figure:
    """Figure (b): trials as points coloured by clean-val accuracy (percent), one panel per
    setting; the colour scale spans the accuracies worth telling apart (lower ones share
    its darkest colour); each x axis is the searched mode range."""
    fig, cols, rows = panel_grid([p.title for p in data.panels])
    for i, panel in enumerate(data.panels):
        row, col = divmod(i, cols)
        _add_landscape_panel(fig, panel, row + 1, col + 1)
    low = 100 * data.colour_min
    floor = " or less" if data.colour_min > data.accuracy_min else ""
    fig.update_layout(
        coloraxis={
            "colorscale": "Viridis",
            "cmin": low,
            "cmax": 100 * data.colour_max,
            "colorbar": {"title": {"text": "clean-val acc %"}, "ticksuffix": "%"},
        },
        height=max(HEIGHT, 320 * rows),
        showlegend=False,
    )
    return finish(fig, "Clean-val accuracy of each trial (star: selected; darkest: "
                       f"{low:.0f}%{floor})")


def axis_range(bounds: tuple[float, float] | None, values: list[float]) -> list[float]:
    """An axis over the searched range (else the values'), with a 2 % margin each side."""
    lo, hi = bounds if bounds else (min(values, default=0.0), max(values, default=1.0))
    pad = 0.02 * (hi - lo) if hi > lo else 0.05
    return [lo - pad, hi + pad]


def _add_landscape_panel(fig: go.Figure, panel: LandscapePanel, row: int, col: int) -> None:
    """Draw one setting's trials and mark the selected parameters."""
    fig.add_trace(
        go.Scatter(
            x=panel.modes,
            y=panel.variances,
            mode="markers",
            marker={"color": [100 * a for a in panel.accuracies], "coloraxis": "coloraxis",
                    "size": 8},
            customdata=np.column_stack([panel.trial_numbers,
                                        [100 * a for a in panel.accuracies]]),
            hovertemplate=(
                "trial %{customdata[0]}<br>mode %{x:.3f}<br>variance %{y:.3g}"
                "<br>val acc %{customdata[1]:.1f}%<extra></extra>"
            ),
            name=panel.title,
        ),
        row,
        col,
    )
    if panel.selected:
        fig.add_trace(
            go.Scatter(
                x=[panel.selected[0]],
                y=[panel.selected[1]],
                mode="markers",
                name="selected",
                marker={
                    "symbol": "star",
                    "size": 16,
                    "color": "rgba(0,0,0,0)",
                    "line": {"color": "red", "width": 2},
                },
                hovertemplate="selected<extra></extra>",
            ),
            row,
            col,
        )
    fig.update_xaxes(title_text="emphasis_mode", range=axis_range(panel.mode_range, panel.modes),
                     row=row, col=col)
    fig.update_yaxes(
        title_text="emphasis_variance",
        type="log" if panel.variance_log else "linear",
        row=row,
        col=col,
    )


# -------------------------------------------------------------- (c) unified view


@dataclass(frozen=True)
class DensityCurve:
    """DM's emphasis density at one rate's recommended parameters, max 1."""

    noise_kind: str
    noise_rate: float
    emphasis_mode: float
    emphasis_variance: float
    weights: list[float]


@dataclass(frozen=True)
class UnifiedViewData:
    """Normalised derivative magnitudes of the baselines beside DM's densities."""

    p: list[float]
    losses: dict[str, list[float]]
    densities: list[DensityCurve]

    @property
    def kinds(self) -> list[str]:
        """Noise kinds with at least one density, in order of appearance."""
        return list(dict.fromkeys(d.noise_kind for d in self.densities))


def _normalised(w: np.ndarray) -> list[float]:
    """Scale to max 1 (shapes are compared, not scales)."""
    top = float(np.max(w))
    return (w / top).tolist() if top > 0 else w.tolist()


def unified_view_data(results: CampaignResults, points: int = 201) -> UnifiedViewData:
    """Compute figure (c)'s data over p in [0, 1]."""
    p = np.linspace(0.0, 1.0, points)
    losses = {name: _normalised(derivative_magnitude(name, p)) for name in UNIFIED_VIEW_LOSSES}
    losses[f"forward (symmetric {UNIFIED_VIEW_FORWARD_RATE:g})"] = _normalised(
        forward_magnitude(p, UNIFIED_VIEW_FORWARD_RATE, UNIFIED_VIEW_CLASSES))
    losses["pencil"] = _normalised(pencil_magnitude(p, UNIFIED_VIEW_CLASSES))
    densities = [
        DensityCurve(
            kind,
            pt.noise_rate,
            pt.emphasis_mode,
            pt.emphasis_variance,
            _normalised(dm_density(p, pt.emphasis_mode, pt.emphasis_variance)),
        )
        for kind, trend in results.trends.items()
        for pt in trend.points
    ]
    return UnifiedViewData(p.tolist(), losses, densities)


def unified_view_figure(data: UnifiedViewData) -> go.Figure:
    """Figure (c): the losses' derivative magnitudes beside DM's recommended densities."""
    kinds = data.kinds
    titles = ["baseline losses: derivative magnitude"] + [f"DM ({k}) by noise rate" for k in kinds]
    fig = make_subplots(rows=1, cols=1 + len(kinds), subplot_titles=titles, shared_yaxes=True)
    for i, (name, w) in enumerate(data.losses.items()):
        fig.add_trace(
            go.Scatter(
                x=data.p,
                y=w,
                name=name.upper(),
                mode="lines",
                line={"color": colour(i), "dash": "dot"},
            ),
            1,
            1,
        )
    for col, kind in enumerate(kinds, start=2):
        curves = [d for d in data.densities if d.noise_kind == kind]
        for j, d in enumerate(curves):
            # Darker for higher rates: the paper's view is the mode moving right with noise.
            shade = 0.35 + 0.65 * (j + 1) / len(curves)
            fig.add_trace(
                go.Scatter(
                    x=data.p,
                    y=d.weights,
                    mode="lines",
                    name=f"DM {kind} {d.noise_rate:.2f} (psi {d.emphasis_mode:.2f}, "
                    f"beta {d.emphasis_variance:.3g})",
                    line={"color": f"rgba(200,30,30,{shade:.2f})"},
                ),
                1,
                col,
            )
    fig.update_xaxes(title_text="p (probability of the given label)", range=[0, 1])
    fig.update_yaxes(title_text="weight (max 1)", row=1, col=1)
    return finish(fig, "Unified view: example weight as a function of p")


# --------------------------------------------------------------------- registry


#: (stable name, title, data function, figure function) in report order
FIGURES: tuple[tuple[str, str, Callable, Callable], ...] = (
    ("trend", "Recommended parameters vs noise rate", trend_data, trend_figure),
    ("landscape", "Accuracy landscape per setting", landscape_data, landscape_figure),
    ("unified-view", "Unified view of example weighting", unified_view_data, unified_view_figure),
    ("accuracy", "Test accuracy vs baselines", accuracy_data, accuracy_figure),
    ("memorisation", "Memorisation of noisy labels", memorisation_data, memorisation_figure),
)


def figures_of(results: CampaignResults) -> tuple[tuple[str, str, Callable, Callable], ...]:
    """The figures drawn for ``results``: FIGURES, with the surface after the landscape
    when the results carry GP surfaces (method "surface")."""
    if not results.surfaces:
        return FIGURES
    from dm_tune.surface_plots import SURFACE_FIGURE

    return (*FIGURES[:2], SURFACE_FIGURE, *FIGURES[2:])


def build_figures(results: CampaignResults) -> dict[str, go.Figure]:
    """Return every figure of the report, keyed by its stable name, in report order."""
    return {name: fig_fn(data_fn(results)) for name, _, data_fn, fig_fn in figures_of(results)}
