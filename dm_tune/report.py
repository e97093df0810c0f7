"""The campaign report: one self-contained HTML file plus a PNG per figure.

The HTML inlines plotly.js once and needs no network; every figure sits in its own
``<div class="dm-figure" data-figure="NAME">``. PNGs are drawn by kaleido in a local
Chromium (``$BROWSER_PATH``, else chromium/chrome on ``PATH``, else
``/usr/bin/chromium``); without one they are skipped with a one-line message.

Example:
    >>> paths = write_report(results, "reports/digits-quick")  # doctest: +SKIP
    >>> paths.html  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import html
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from dm_tune.guidelines import BaselineResult, CampaignResults, SettingResult, TrendPoint
from dm_tune.guidelines.check import gap_verdict
from dm_tune.guidelines.compare import (
    RULE,
    compare_setting,
    mean_std_text,
    params_text,
    sentence,
    setting_label,
)
from dm_tune.guidelines.premise import PremiseCurve
from dm_tune.guidelines.rows import baseline_text, fmt, percent, source_text, value_of
from dm_tune.plots import build_figures, figures_of
from dm_tune.report_advice import advice_html

__all__ = ["PNG_WIDTH", "ReportPaths", "find_browser", "render_html", "write_pngs", "write_report"]

PNG_WIDTH = 1200
#: the premise figure's name (report.html's div, the PNG's file name)
PREMISE_FIGURE = "derivative-premise"
DASH = "&ndash;"
_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
_FALLBACK_BROWSER = "/usr/bin/chromium"


@dataclass(frozen=True)
class ReportPaths:
    """What write_report wrote."""

    html: Path
    pngs: dict[str, Path] = field(default_factory=dict)
    png_skipped: str | None = None  # one-line reason when no PNG was written


def write_report(
    results: CampaignResults,
    out_dir: Path | str,
    png: bool = True,
    *,
    browser_path: str | None = None,
    premise: Sequence[PremiseCurve] | None = None,
) -> ReportPaths:
    """Write ``report.html`` (and ``<figure>.png`` files) into ``out_dir``.

    ``premise`` (``guidelines.premise.load_premise``) adds the figure of the derivative
    magnitude on corrupted vs clean training examples.

    Raises:
        RuntimeError: the browser exists but kaleido failed (the HTML is written first).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = build_figures(results)
    if premise is not None:
        from dm_tune.premise_plots import premise_figure

        figures[PREMISE_FIGURE] = premise_figure(premise)
    html_path = out / "report.html"
    html_path.write_text(render_html(results, figures), encoding="utf-8")
    if not png:
        return ReportPaths(html_path, png_skipped="PNG export disabled (--no-png)")
    browser = browser_path or find_browser()
    if browser is None:
        return ReportPaths(
            html_path,
            png_skipped="no Chromium found (install chromium or set BROWSER_PATH): PNGs skipped",
        )
    return ReportPaths(html_path, pngs=write_pngs(figures, out, browser))


def find_browser() -> str | None:
    """Return a Chromium-based browser's path, or None."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        return env if shutil.which(env) else None
    for name in _BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return _FALLBACK_BROWSER if shutil.which(_FALLBACK_BROWSER) else None


def write_pngs(figures: Mapping[str, go.Figure], out_dir: Path, browser: str) -> dict[str, Path]:
    """Draw every figure as ``<name>.png`` in one browser session."""
    import kaleido  # lazy: starting nothing at import keeps the CLI fast

    paths = {name: out_dir / f"{name}.png" for name in figures}
    specs = [
        {
            "fig": fig,
            "path": paths[name],
            "opts": {
                "format": "png",
                "width": fig.layout.width or PNG_WIDTH,
                "height": fig.layout.height,
                "scale": 1,
            },
        }
        for name, fig in figures.items()
    ]
    try:
        # mathjax=False: kaleido would otherwise load MathJax from a CDN, which fails
        # (slowly) offline; our figures have no LaTeX. `path` picks the browser.
        with _quiet_browser_driver():
            kaleido.write_fig_from_object_sync(specs, kopts={"mathjax": False, "path": browser})
    except Exception as exc:  # kaleido raises many types; the report needs one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RuntimeError(f"PNG export with {browser} failed: {first}") from exc
    return paths


@contextlib.contextmanager
def _quiet_browser_driver() -> Iterator[None]:
    """Silence kaleido's browser driver, which logs tracebacks for messages it skips.

    choreographer logs "JSONError decoding message. Ignoring" with a full traceback when
    Chromium writes a non-JSON line on its pipe; the export still succeeds, so the user
    should not see a traceback. Real failures still raise.
    """
    loggers = [logging.getLogger(name) for name in ("choreographer", "kaleido", "logistro")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# ------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1280px;
       color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.text { text-align: left; }
.dm-figure { margin: 2em 0; }
.band { color: #777; font-size: 0.9em; }
.collapsed { color: #b00; font-weight: bold; }
.dm-fallback { background: #fff6e0; padding: 0.4em 0.8em; }
"""


def render_html(results: CampaignResults, figures: Mapping[str, go.Figure]) -> str:
    """Return the report as one self-contained HTML page."""
    titles = {name: title for name, title, _, _ in figures_of(results)}
    titles[PREMISE_FIGURE] = "Does a corrupted example get a smaller derivative? (corrupted / " \
        "clean mean magnitude per epoch: DM's best trial, each baseline's first run)"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>dm-tune report: {_e(results.campaign)}</title>",
        f"<style>{_CSS}</style>",
        # Inlined once for every figure: the report opens offline and from e-mail.
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>dm-tune report: {_e(results.campaign)}</h1>",
        _provenance_html(results),
        *_fallbacks_html(results),
        "<h2>Recommendations</h2>",
        _recommendation_table_html(results),
        *advice_html(results),
        *_confirmed_html(results),
        *_checks_html(results),
    ]
    for name, fig in figures.items():
        parts.append(
            f'<div class="dm-figure" id="dm-figure-{name}" data-figure="{name}">'
            f"<h2>{_e(titles.get(name, name))}</h2>{_figure_div(name, fig)}</div>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _figure_div(name: str, fig: go.Figure) -> str:
    """One figure's div and script, without plotly.js (inlined once in the head)."""
    return pio.to_html(
        fig,
        full_html=False,
        include_plotlyjs=False,
        div_id=f"dm-plot-{name}",
        default_height=f"{fig.layout.height}px",
        config={"displaylogo": False, "responsive": True},
    )


def _e(value: object) -> str:
    """HTML-escape anything (campaign names and attrs come from user files)."""
    return html.escape(str(value))


def _fmt(value: float | None, digits: int = 4) -> str:
    """A table cell's number; an en dash when unknown."""
    return fmt(value, f".{digits}g", missing=DASH)


def _provenance_html(results: CampaignResults) -> str:
    """A small table of where the numbers come from."""
    prov = results.provenance
    counts = ", ".join(f"{k.lower()} {v}" for k, v in prov.trial_counts.items() if v)
    rows = {
        "campaign": prov.campaign,
        "dataset / model": f"{prov.dataset} / {prov.model}",
        "config hash": prov.config_hash,
        "dm-tune (trials / report)": f"{prov.dm_tune_version} / {prov.exported_by}",
        "DM trials": counts or "none",
        "trend": _method_text(results),
        "created": prov.created,
    }
    body = "".join(
        f'<tr><th class="text">{_e(k)}</th><td class="text">{_e(v)}</td></tr>'
        for k, v in rows.items()
    )
    return f'<table class="dm-provenance">{body}</table>'


def _method_text(results: CampaignResults) -> str:
    """How the trend and its band were made."""
    if results.method == "surface":
        fallback = (
            f"; top-k for {', '.join(sorted(results.fallbacks))} (too few trials, see below)"
            if results.fallbacks else ""
        )
        return (
            "Gaussian-process surface per noise kind (Matern 5/2 + white noise); the "
            "selection is the argmax of posterior mean - 1 std (objective floored per rate at "
            "its lower Tukey fence), the band its credible set (settings whose mean + 1 std "
            f"reaches the best mean){fallback}"
        )
    return (
        f"rank-weighted top-{results.top_k}, {results.resamples} bootstrap "
        f"resamples, {results.interval:.0%} band"
    )


_CHECK_HEAD = (
    "noise kind",
    "rate left out",
    "recommended mode",
    "recommended variance",
    "predicted acc % there (full surface)",
    "selected acc %",
    "from",
    "gap (points)",
    "verdict",
)


def _points(gap: float | None) -> str:
    """A gap in points of accuracy, signed, one decimal."""
    return DASH if gap is None else f"{100 * gap:+.1f}"


def _checks_html(results: CampaignResults) -> list[str]:
    """The leave-one-rate-out table (surface method; a line when no rate is interior).

    Each row's verdict and the summary sentence come from ``check.gap_verdict`` on the
    number printed beside it, so the words always follow the number."""
    if results.method != "surface":
        return []
    if not results.checks:
        return [
            "<h2>Leave-one-rate-out check</h2>",
            '<p class="dm-checks-none">No noise kind has a Gaussian-process surface over '
            "three or more searched rates: no interior rate to leave out.</p>",
        ]
    head = "".join(f"<th>{h}</th>" for h in _CHECK_HEAD)
    rows = "".join(
        f'<tr><td class="text">{_e(c.noise_kind)}</td><td>{c.noise_rate:.2f}</td>'
        f"<td>{_fmt(c.emphasis_mode, 3)}</td><td>{_fmt(c.emphasis_variance, 3)}</td>"
        f"<td>{percent(c.predicted_accuracy, DASH)}</td>"
        f"<td>{percent(c.selected_accuracy, DASH)}</td>"
        f'<td class="text">{_e(c.selected_source)}</td><td>{_points(c.gap)}</td>'
        f'<td class="text">{_e(gap_verdict(c.gap))}</td></tr>'
        for c in results.checks
    )
    worst = max(results.checks, key=lambda c: abs(c.gap) if c.gap is not None else -1.0)
    return [
        "<h2>Leave-one-rate-out check</h2>",
        "<p>Each interior searched rate's trials left out, the surface refitted and asked "
        "there; gap = selected accuracy at that rate &minus; the full surface's prediction "
        "at the held-out recommendation, in points.</p>",
        f'<table class="dm-checks"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>',
        f'<p class="dm-checks-verdict">Largest gap: {_points(worst.gap)} points '
        f"({_e(worst.noise_kind)} {worst.noise_rate:.2f}): {_e(gap_verdict(worst.gap))}.</p>",
    ]


_TABLE_HEAD = (
    "noise kind",
    "rate",
    "mode",
    "variance",
    "from",
    "val acc %",
    "test acc %",
    "test acc % @ best val",
    "trend mode [band]",
    "trend variance [band]",
    "best baseline (test acc %)",
    "trials",
)


def _recommendation_table_html(results: CampaignResults) -> str:
    """The recommendation table: one row per setting."""
    head = "".join(f"<th>{h}</th>" for h in _TABLE_HEAD)
    points = {
        (kind, p.noise_rate): p for kind, trend in results.trends.items() for p in trend.points
    }
    rows = [_table_row(s, points.get((s.noise_kind, s.noise_rate))) for s in results.settings]
    return (
        f'<table class="dm-recommendations"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _table_row(s: SettingResult, point: TrendPoint | None) -> str:
    """One setting's row."""
    sel = s.selected
    base = s.best_baseline()
    source = DASH if sel is None else _e(source_text(sel))
    trend_mode = trend_var = DASH
    if point is not None:
        trend_mode = (
            f"{_fmt(point.emphasis_mode, 3)} <span class='band'>[{_fmt(point.emphasis_mode_low, 3)}"
            f", {_fmt(point.emphasis_mode_high, 3)}]</span>"
        )
        trend_var = (
            f"{_fmt(point.emphasis_variance, 3)} <span class='band'>"
            f"[{_fmt(point.emphasis_variance_low, 3)}, {_fmt(point.emphasis_variance_high, 3)}]"
            "</span>"
        )
    counts = s.trial_counts
    cells = [
        f'<td class="text">{_e(s.noise_kind)}</td>',
        f"<td>{s.noise_rate:.2f}</td>",
        f"<td>{_fmt(value_of(sel, 'emphasis_mode'), 3)}</td>",
        f"<td>{_fmt(value_of(sel, 'emphasis_variance'), 3)}</td>",
        f'<td class="text">{source}</td>',
        f"<td>{percent(value_of(sel, 'val_accuracy'), DASH)}</td>",
        f"<td>{percent(value_of(sel, 'test_accuracy'), DASH)}</td>",
        f"<td>{percent(value_of(sel, 'test_accuracy_at_best_val'), DASH)}</td>",
        f"<td>{trend_mode}</td>",
        f"<td>{trend_var}</td>",
        f'<td class="text">{_baseline_text(base)}</td>',
        f"<td>{counts.get('COMPLETE', 0)} done, {counts.get('PRUNED', 0)} pruned, "
        f"{counts.get('FAIL', 0)} failed</td>",
    ]
    return f"<tr>{''.join(cells)}</tr>"


def _baseline_text(base: BaselineResult | None) -> str:
    """'gce q=0.46 79.0' (test accuracy in percent, tuned params) or a dash."""
    return DASH if base is None else _e(baseline_text(base))


# ------------------------------------------------- fallbacks and the comparison


def _fallbacks_html(results: CampaignResults) -> list[str]:
    """Say which noise kinds got the top-k trend instead of the surface, and why."""
    if not results.fallbacks:
        return []
    items = "".join(
        f"<li><b>{_e(kind)}</b>: {_e(reason)}</li>" for kind, reason in results.fallbacks.items()
    )
    return [
        '<div class="dm-fallback"><p>Not every noise kind has a response surface; these '
        "use the rank-weighted top-k trend with a bootstrap band instead:</p>"
        f"<ul>{items}</ul></div>"
    ]


def _losses(results: CampaignResults) -> list[str]:
    """Every baseline loss of the campaign, sorted."""
    return sorted({loss for s in results.settings for loss in s.baselines})


def _spread_cell(mean: float | None, std: float | None, n: int | None, collapsed: bool) -> str:
    """'90.5 ± 1.4% (3)' with a collapse flag; an en dash when unknown."""
    if mean is None:
        return DASH
    seeds = "" if n is None else f" <span class='band'>({n})</span>"
    flag = " <span class='collapsed' title='a replicate collapsed'>collapsed</span>"
    return f"{_e(mean_std_text(mean, std, percent=True))}{seeds}{flag if collapsed else ''}"


def _baseline_cell(b: BaselineResult | None) -> str:
    """A baseline's test accuracy over its seeds, its tuned parameters, a collapse flag."""
    if b is None:
        return DASH
    params = f" <span class='band'>{_e(params_text(b.params).strip())}</span>" if b.params else ""
    return _spread_cell(b.test_accuracy, b.test_accuracy_std, b.n, b.collapsed) + params


def _confirmed_row(s: SettingResult, losses: list[str]) -> str:
    """One setting: DM's selection mean ± std over its seeds beside every baseline's."""
    sel = s.selected
    n = None if sel is None else sel.n_seeds
    collapsed = bool(sel and sel.collapsed)
    val = _spread_cell(value_of(sel, "val_accuracy"), value_of(sel, "val_accuracy_std"), n, False)
    test = _spread_cell(
        value_of(sel, "test_accuracy"), value_of(sel, "test_accuracy_std"), n, collapsed
    )
    cells = [
        f'<td class="text">{_e(s.noise_kind)}</td>',
        f"<td>{s.noise_rate:.2f}</td>",
        f"<td>{_fmt(value_of(sel, 'emphasis_mode'), 3)}</td>",
        f"<td>{_fmt(value_of(sel, 'emphasis_variance'), 3)}</td>",
        f'<td class="text">{DASH if sel is None else _e(source_text(sel))}</td>',
        f"<td>{val}</td>",
        f"<td>{test}</td>",
        *(f"<td>{_baseline_cell(s.baselines.get(loss))}</td>" for loss in losses),
    ]
    return f"<tr>{''.join(cells)}</tr>"


def _confirmed_html(results: CampaignResults) -> list[str]:
    """The comparison table (DM's selection vs each baseline, mean ± std over seeds) and
    one plain sentence per setting, grouped by noise kind."""
    losses = _losses(results)
    head = "".join(
        f"<th>{h}</th>"
        for h in ("noise kind", "rate", "DM mode", "DM variance", "from",
                  "DM val acc % (seeds)", "DM test acc % (seeds)",
                  *(f"{_e(loss)} test acc % (seeds)" for loss in losses))
    )
    rows = "".join(_confirmed_row(s, losses) for s in results.settings)
    parts = [
        "<h2>DM against the baselines</h2>",
        "<p>Mean &plusmn; standard deviation over seeds: DM's selected setting over its "
        "confirmed seeds (one search trial when not confirmed: no spread), each baseline "
        "over its seeds (a tuned baseline shows its parameters). <i>collapsed</i>: a "
        "replicate ended below chance + 10 points; it counts in the mean.</p>",
        f'<table class="dm-confirmed"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>'
        "</table>",
        f'<p class="dm-rule">{_e(RULE)} Test accuracy, because DM\'s validation accuracy '
        "is the best of its search (biased upwards) and took part in selecting it.</p>",
    ]
    for kind in results.kinds():
        sentences = "".join(
            f'<li class="dm-sentence">'
            f"{_e(sentence(setting_label(kind, s.noise_rate), compare_setting(s), True))}</li>"
            for s in results.settings_of(kind)
        )
        parts.append(f"<h3>{_e(kind)}</h3><ul>{sentences}</ul>")
    return parts
