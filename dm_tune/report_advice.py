"""The report's "advice at any rate" section: the risk-aware pick every 0.05, and what to use.

Split from ``report.py`` (one job each: that module lays out the page). Reads the same
rows as the terminal's advice table (``guidelines.recommend.advice_rows``) and each
setting's configuration (``guidelines.compare.best_configuration``).
"""

from __future__ import annotations

import html
import warnings

from dm_tune.guidelines import CampaignResults
from dm_tune.guidelines.compare import LOSS_RULE, best_configuration, params_text
from dm_tune.guidelines.recommend import advice_rows
from dm_tune.guidelines.rows import percent

__all__ = ["advice_html"]


def _e(value: object) -> str:
    return html.escape(str(value))


def advice_html(results: CampaignResults) -> list[str]:
    """The advice table (surface kinds) and the configuration to use per searched rate."""
    if not results.surfaces:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rows = advice_rows(results)
    head = "".join(f"<th>{h}</th>" for h in (
        "noise kind", "rate", "mode", "variance", "from", "expected acc %",
        "10th percentile %", "P(collapse)", "not determined"))
    body = "".join(
        "<tr>"
        f'<td class="text">{_e(r.noise_kind)}</td><td>{r.noise_rate:.2f}</td>'
        f"<td>{r.emphasis_mode:.3f}</td><td>{r.emphasis_variance:.3g}</td>"
        f'<td class="text">{_e(r.origin or "-")}</td>'
        f"<td>{percent(r.expected_accuracy)}</td><td>{percent(r.low_accuracy)}</td>"
        f"<td>{'-' if r.collapse_probability is None else f'{r.collapse_probability:.2f}'}</td>"
        f'<td class="text">{_e("; ".join(r.notes)) or "-"}</td>'
        "</tr>"
        for r in rows
    )
    uses = []
    for s in results.settings:
        best = best_configuration(s)
        if best is None:
            continue
        what = ("DM" if best.loss == "dm" else
                f"{best.loss.upper()}{params_text(best.params)}")
        uses.append(f'<li class="dm-use"><b>{_e(s.noise_kind)} {s.noise_rate:g}</b>: use '
                    f"{_e(what)}: {_e(best.reason)}</li>")
    return [
        '<h2 id="dm-advice">Advice at any rate</h2>',
        "<p>One pick per rate, every 0.05 across each searched range: a setting the campaign "
        "trained (a confirmed setting, or one of the best search trials of a nearby rate), "
        "ranked by the 10th percentile of one run's clean-validation accuracy at that rate "
        "(a risk model around the surface, learnt from every run that fell off DM's cliff); "
        "never a blend of two rates' picks. At a searched rate: its confirmed selection. "
        "<code>dm-tune recommend CONFIG --noise K --rate R --verify</code> checks a pick at "
        "your own rate.</p>",
        f'<table class="dm-advice"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
        "</table>",
        "<h3>What to use at each searched rate</h3>",
        f'<ul class="dm-uses">{"".join(uses)}</ul>',
        f'<p class="dm-rule">{_e(LOSS_RULE)}</p>',
    ]
