"""The premise figure: does a corrupted example get a smaller derivative magnitude?

One panel per noise setting; per loss, the ratio (mean magnitude on corrupted examples) /
(mean on clean ones) per epoch (below 1: the corrupted examples push less). The ratio is
scale-free, so losses whose magnitudes differ in scale (CCE's ``2 (1 - p)``, GCE's
``2 p^q (1 - p)``, DM's normalised weights) share one axis; the hover gives both means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dm_tune.guidelines.premise import PremiseCurve

__all__ = ["PREMISE_TITLE", "premise_figure", "premise_ratios"]

PREMISE_TITLE = "Derivative magnitude on corrupted vs clean training examples"
_COLOURS = {"dm": "#1f77b4", "cce": "#d62728", "gce": "#2ca02c", "forward": "#9467bd"}
_OTHER = ("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#ff7f0e")


def premise_ratios(curve: PremiseCurve) -> list[float]:
    """corrupted / clean per epoch (NaN where either is missing or clean is 0)."""
    out = []
    for bad, good in zip(curve.corrupted, curve.clean, strict=True):
        ok = bad is not None and good is not None and good > 0
        out.append(bad / good if ok else math.nan)
    return out


def premise_figure(curves: Sequence[PremiseCurve]) -> go.Figure:
    """The figure (an empty one with a note when no trial recorded the curves)."""
    settings = list(dict.fromkeys((c.noise_kind, c.noise_rate) for c in curves))
    fig = make_subplots(rows=1, cols=max(len(settings), 1), shared_yaxes=True,
                        subplot_titles=[f"{k} {r:g}" for k, r in settings] or [""])
    losses = list(dict.fromkeys(c.loss for c in curves))
    for col, setting in enumerate(settings, start=1):
        for c in (c for c in curves if (c.noise_kind, c.noise_rate) == setting):
            colour = _COLOURS.get(c.loss, _OTHER[losses.index(c.loss) % len(_OTHER)])
            epochs = list(range(1, len(c.corrupted) + 1))
            fig.add_trace(go.Scatter(
                x=epochs, y=premise_ratios(c), mode="lines", name=c.loss.upper(),
                legendgroup=c.loss, showlegend=col == 1, line={"color": colour},
                customdata=list(zip(c.corrupted, c.clean, strict=True)),
                hovertemplate=(f"{c.loss} (trial {c.trial_number}) epoch %{{x}}: ratio "
                               "%{y:.2f}<br>corrupted %{customdata[0]:.3f}, clean "
                               "%{customdata[1]:.3f}<extra></extra>")), 1, col)
        fig.add_hline(y=1.0, line={"color": "#999", "dash": "dot"}, row=1, col=col)
        fig.update_xaxes(title_text="epoch", row=1, col=col)
    fig.update_yaxes(title_text="corrupted / clean mean magnitude", row=1, col=1)
    if not curves:
        fig.add_annotation(text="no trial recorded derivative magnitudes", showarrow=False)
    fig.update_layout(title=PREMISE_TITLE, height=380)
    return fig
