"""Figures (d) and (e) of the report: test accuracy and memorisation, DM vs the baselines.

Split from ``plots.py`` (one job each: that module draws the search, this one its
outcome); ``plots`` re-exports these names. Same two steps: a pure data builder whose
numbers the tests check (fractions, as stored), then the drawing (in percent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dm_tune.guidelines import CampaignResults
from dm_tune.guidelines.compare import params_pairs
from dm_tune.guidelines.rows import value_of
from dm_tune.plot_style import colour, finish, percent

__all__ = [
    "DM_LINE",
    "AccuracyData",
    "KindLines",
    "MemorisationData",
    "accuracy_data",
    "accuracy_figure",
    "memorisation_data",
    "memorisation_figure",
]

DM_LINE = "dm (tuned)"


@dataclass(frozen=True)
class KindLines:
    """Named lines over one noise kind's rates (None: not measured).

    ``errors``: the standard deviation over seeds per point (None: one seed, unknown);
    ``labels``: a tuned baseline's parameters per point ("q=0.46"), drawn beside it.
    """

    noise_kind: str
    rates: list[float]
    lines: dict[str, list[float | None]]
    errors: dict[str, list[float | None]] = field(default_factory=dict)
    labels: dict[str, list[str | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class AccuracyData:
    """Final test accuracy of tuned DM and each baseline, per kind."""

    kinds: list[KindLines]


@dataclass(frozen=True)
class MemorisationData:
    """Fraction of corrupted examples fitted to their noisy label: DM vs CCE, per kind."""

    kinds: list[KindLines]


def accuracy_data(results: CampaignResults) -> AccuracyData:
    """Compute figure (d)'s data (final test accuracy; selection used clean-val only): the
    mean over seeds, its standard deviation, and each tuned baseline's parameters."""
    out = []
    for kind in results.kinds():
        settings = results.settings_of(kind)
        losses = sorted({loss for s in settings for loss in s.baselines})
        lines = {DM_LINE: [value_of(s.selected, "test_accuracy") for s in settings]}
        errors = {DM_LINE: [value_of(s.selected, "test_accuracy_std") for s in settings]}
        labels: dict[str, list[str | None]] = {}
        for loss in losses:
            runs = [s.baselines.get(loss) for s in settings]
            lines[loss] = [value_of(b, "test_accuracy") for b in runs]
            errors[loss] = [value_of(b, "test_accuracy_std") for b in runs]
            if any(b is not None and b.params for b in runs):
                labels[loss] = [params_pairs(b.params) if b and b.params else None for b in runs]
        out.append(KindLines(kind, [s.noise_rate for s in settings], lines, errors, labels))
    return AccuracyData(out)


def memorisation_data(results: CampaignResults) -> MemorisationData:
    """Compute figure (e)'s data: DM's selected parameters vs the CCE baseline."""
    out = []
    for kind in results.kinds():
        settings = results.settings_of(kind)
        lines = {
            DM_LINE: [value_of(s.selected, "memorized_noisy_fraction") for s in settings],
            "cce": [value_of(s.baselines.get("cce"), "memorized_noisy_fraction") for s in settings],
        }
        out.append(KindLines(kind, [s.noise_rate for s in settings], lines))
    return MemorisationData(out)


def legend_name(kinds: list[KindLines], name: str) -> str:
    """The line's name; a tuned baseline says so, its values are beside its points."""
    tuned = sorted({p.split("=")[0] for k in kinds for p in k.labels.get(name, []) if p})
    return f"{name}, tuned {', '.join(tuned)} (value at each point)" if tuned else name


def _lines_figure(kinds: list[KindLines], y_title: str, title: str) -> go.Figure:
    """One panel per noise kind, one line per name (colours shared across panels), error
    bars of one standard deviation over seeds where known, tuned parameters as labels."""
    fig = make_subplots(
        rows=1,
        cols=max(len(kinds), 1),
        subplot_titles=[k.noise_kind for k in kinds],
        shared_yaxes=True,
    )
    names = list(dict.fromkeys(n for k in kinds for n in k.lines))
    for col, k in enumerate(kinds, start=1):
        for name, values in k.lines.items():
            i = names.index(name)
            spread = percent(k.errors.get(name, [None] * len(values)))
            labels = k.labels.get(name)
            fig.add_trace(
                go.Scatter(
                    x=k.rates,
                    y=percent(values),
                    name=legend_name(kinds, name),
                    legendgroup=name,
                    showlegend=col == 1,
                    mode="lines+markers+text" if labels else "lines+markers",
                    text=[lab or "" for lab in labels] if labels else None,
                    textposition="top center",
                    textfont={"color": colour(i), "size": 11},
                    line={"color": colour(i), "width": 3 if name == DM_LINE else 1.5},
                    error_y={"type": "data",
                             "array": [0.0 if math.isnan(v) else v for v in spread],
                             "visible": not all(math.isnan(v) for v in spread), "color": colour(i),
                             "thickness": 1.2, "width": 4},
                    hovertemplate=f"{name} %{{x:.2f}}: %{{y:.1f}}%"
                    + (" %{text}" if labels else "") + "<extra></extra>",
                ),
                1,
                col,
            )
        if len(k.rates) == 1:  # plotly would span -0.5 to 1.5 around a single rate
            fig.update_xaxes(range=[k.rates[0] - 0.1, k.rates[0] + 0.1], tickvals=k.rates,
                             row=1, col=col)
    fig.update_xaxes(title_text="noise rate")
    fig.update_yaxes(title_text=y_title, ticksuffix="%", row=1, col=1)
    return finish(fig, title)


def accuracy_figure(data: AccuracyData) -> go.Figure:
    """Figure (d): test accuracy of tuned DM vs each baseline across rates."""
    return _lines_figure(
        data.kinds,
        "final test accuracy (%)",
        "Test accuracy: tuned DM vs baselines (mean over seeds, bars: one standard deviation)",
    )


def memorisation_figure(data: MemorisationData) -> go.Figure:
    """Figure (e): memorised fraction of corrupted examples, DM vs CCE."""
    return _lines_figure(
        data.kinds,
        "corrupted examples fitted to their noisy label (%)",
        "Memorisation of noisy labels: tuned DM vs CCE",
    )
