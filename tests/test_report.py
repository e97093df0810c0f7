"""Tests of dm_tune.report: self-contained HTML, rendered in headless Chromium, PNGs."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import types

import optuna
import pytest
import typer
from fake_campaign import CAMPAIGN, campaign_file, shared_campaign_url
from plotly.offline import get_plotlyjs
from rich.console import Console
from typer.testing import CliRunner

from dm_tune import report
from dm_tune.cli.guideline_commands import write_run_outputs
from dm_tune.cli.tables import recommendation_table
from dm_tune.guidelines import load_campaign
from dm_tune.plots import FIGURES

optuna.logging.set_verbosity(optuna.logging.WARNING)

# the default method (surface) draws the predicted-accuracy surface after the landscape
FIGURE_NAMES = ["trend", "landscape", "surface", "unified-view", "accuracy", "memorisation"]
TOP_K_FIGURES = [name for name, *_ in FIGURES]
# Records uncaught errors, rejected promises and console.error calls as <meta> tags that
# --dump-dom shows: Chromium's stderr log does not tell console.error from console.log.
ERROR_PROBE = """<script>
(function () {
  function note(kind, text) {
    var m = document.createElement("meta");
    m.setAttribute("name", "js-error");
    m.setAttribute("content", kind + ": " + text);
    document.head.appendChild(m);
  }
  window.addEventListener("error", function (e) { note("error", e.message); });
  window.addEventListener("unhandledrejection", function (e) { note("rejection", e.reason); });
  var original = console.error;
  console.error = function () { note("console", Array.from(arguments).join(" "));
                                original.apply(console, arguments); };
})();
</script>"""


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Chromium's path; skips locally without it, fails in CI (CI=true) without it."""
    path = report.find_browser()
    if path is None:
        if _ci():
            pytest.fail("chromium is required in CI: apt-get install -y chromium")
        pytest.skip("chromium is not installed")
    return path


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    """A SQLite storage holding the standard fake campaign."""
    return shared_campaign_url(tmp_path_factory)


@pytest.fixture(scope="module")
def results(url):
    """The aggregated fake campaign."""
    return load_campaign(url, CAMPAIGN)


@pytest.fixture(scope="module")
def html_report(results, tmp_path_factory):
    """A report written without PNGs."""
    return report.write_report(results, tmp_path_factory.mktemp("html"), png=False)


def test_html_is_self_contained(html_report):
    text = html_report.html.read_text(encoding="utf-8")
    assert text.count(get_plotlyjs()[:300]) == 1  # plotly.js inlined exactly once
    assert not re.search(r"<script[^>]+src=", text)  # nothing fetched: works offline
    assert text.count('class="dm-figure"') == len(FIGURE_NAMES)
    for name in FIGURE_NAMES:
        assert f'data-figure="{name}"' in text
    assert 'class="dm-recommendations"' in text
    assert "confirm (2 seeds)" in text and "gce 79.0" in text  # percent, as the CLI
    assert html_report.pngs == {} and "disabled" in html_report.png_skipped
    # the default report: surface, comparison table and sentences, leave-one-rate-out
    for part in ('class="dm-confirmed"', 'class="dm-sentence"', 'class="dm-checks"',
                 'class="dm-rule"', "Gaussian-process surface"):
        assert part in text, part


def test_top_k_report_has_no_surface_or_checks(results, url, tmp_path):
    top_k = load_campaign(url, CAMPAIGN, method="top-k")
    text = report.write_report(top_k, tmp_path, png=False).html.read_text(encoding="utf-8")
    assert text.count('class="dm-figure"') == len(TOP_K_FIGURES)
    assert 'data-figure="surface"' not in text and "Leave-one-rate-out" not in text
    assert 'class="dm-confirmed"' in text and "rank-weighted top-5" in text


def _dump_dom(chromium: str, html_path, profile) -> subprocess.CompletedProcess:
    """Render a page in headless Chromium and return the serialised DOM."""
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
            html_path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


#: drawn data, not only a plot's frame: a marker, a line or fill with a path, a bar, or a
#: heatmap's image (axes, grid lines and empty trace layers do not match)
DATA_GEOMETRY = re.compile(
    r'class="(point|js-line|js-fill|js-tube)[^"]*"[^>]*\sd="M'
    r'|<path[^>]*\sd="M[^"]*"[^>]*class="(point|js-line|js-fill)'
    r'|class="(bars|contourfill|contourlevel|heatmaplayer)[^"]*".*?<(path[^>]*\sd="M|image)',
    re.S)


def render_problems(chromium: str, html: str, workdir, names=FIGURE_NAMES) -> list[str]:
    """Render a report page in headless Chromium and return what went wrong: each
    JavaScript error (uncaught, rejected promise, console.error; ERROR_PROBE), and each
    figure that did not draw: its div must hold exactly one plotly container with an SVG
    and at least one drawn trace layer. [] when every figure of ``names`` rendered."""
    page = workdir / "probed.html"
    page.write_text(html.replace("<head>", "<head>" + ERROR_PROBE, 1), encoding="utf-8")
    done = _dump_dom(chromium, page, workdir / "profile")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    problems = [f"javascript: {e}" for e in re.findall(r'name="js-error" content="([^"]*)"', dom)]
    problems += [f"javascript: {ln.strip()}" for ln in done.stderr.splitlines() if "Uncaught" in ln]
    chunks = dom.split('class="dm-figure"')[1:]
    if len(chunks) != len(names):
        problems.append(f"{len(chunks)} figure divs, expected {len(names)}")
    for name, chunk in zip(names, chunks, strict=False):
        if f'data-figure="{name}"' not in chunk:
            problems.append(f"{name}: figure div out of order")
        drawn = (chunk.count('class="plot-container plotly"') == 1 and "main-svg" in chunk
                 and re.search(DATA_GEOMETRY, chunk))
        if not drawn:
            problems.append(f"{name}: figure did not draw")
    return problems


@pytest.mark.browser
def test_report_renders_in_chromium(chromium, html_report, tmp_path):
    text = html_report.html.read_text(encoding="utf-8")
    assert render_problems(chromium, text, tmp_path) == []


@pytest.mark.browser
def test_render_check_catches_a_broken_figure(chromium, html_report, tmp_path):
    """The check above fails on a figure whose script throws and on one that silently
    never draws (each made so on purpose here), naming the figure."""
    text = html_report.html.read_text(encoding="utf-8")
    guard = 'if (document.getElementById("dm-plot-accuracy"))'
    assert text.count(guard) == 1
    throws = text.replace(guard, 'if (document.getElementById("dm-plot-accuracy") && '
                                 "noSuchFunction())")
    (tmp_path / "a").mkdir()
    problems = render_problems(chromium, throws, tmp_path / "a")
    assert any(p.startswith("javascript:") and "noSuchFunction" in p for p in problems), problems
    assert "accuracy: figure did not draw" in problems
    silent = text.replace('document.getElementById("dm-plot-memorisation")',
                          'document.getElementById("dm-plot-nowhere")')
    (tmp_path / "b").mkdir()
    assert render_problems(chromium, silent, tmp_path / "b") == [
        "memorisation: figure did not draw"]
    # a figure drawn with no data: its axes and frame appear, nothing of the data does
    empty, n = re.subn(r'Plotly\.newPlot\(\s*"dm-plot-memorisation",',
                       '((id, data, layout, config) => Plotly.newPlot(id, [], layout, config))('
                       '"dm-plot-memorisation",', text)
    assert n == 1
    (tmp_path / "c").mkdir()
    assert render_problems(chromium, empty, tmp_path / "c") == [
        "memorisation: figure did not draw"]


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.browser
def test_png_export(chromium, results, tmp_path):
    paths = report.write_report(results, tmp_path, png=True, browser_path=chromium)
    assert paths.png_skipped is None
    assert sorted(paths.pngs) == sorted(FIGURE_NAMES)
    for path in paths.pngs.values():
        width, height = _png_size(path)
        assert width == report.PNG_WIDTH and height >= 400


def test_png_skipped_without_browser(results, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "find_browser", lambda: None)
    paths = report.write_report(results, tmp_path)
    assert paths.html.exists() and paths.pngs == {}
    assert "no Chromium found" in paths.png_skipped and "\n" not in paths.png_skipped


def test_find_browser_honours_browser_path(monkeypatch, tmp_path):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "nothing-here"))
    assert report.find_browser() is None
    monkeypatch.setenv("BROWSER_PATH", sys.executable)
    assert report.find_browser() == sys.executable


def test_report_speaks_percent(html_report):
    """Every accuracy of the report's tables is in percent with one decimal, as the CLI's:
    symmetric 0.40 is confirmed at 91 % and 92 % clean-val (mean 91.5), 90 % and 92 % test."""
    text = html_report.html.read_text(encoding="utf-8")
    table = text[text.index('class="dm-recommendations"'):]
    table = table[:table.index("</table>")]
    heads = re.findall(r"<th>(.*?)</th>", table)
    assert [h for h in heads if "acc" in h] == [
        "val acc %", "test acc %", "test acc % @ best val", "best baseline (test acc %)"]
    row = next(r for r in table.split("<tr>") if "<td>0.40</td>" in r and "symmetric" in r)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert cells[5:8] == ["91.5", "91.0", "91.5"] and cells[10] == "gce 79.0"
    confirmed = text[text.index('class="dm-confirmed"'):]
    confirmed = confirmed[:confirmed.index("</table>")]
    assert "91.0 ± 1.4% <span class='band'>(2)</span>" in confirmed
    assert all("%" in h for h in re.findall(r"<th>([^<]*acc[^<]*)</th>", text)), re.findall(
        r"<th>([^<]*acc[^<]*)</th>", text)
    # no accuracy written as a fraction in a sentence (0.905 and the like)
    sentences = re.findall(r'<li class="dm-sentence">(.*?)</li>', text)
    assert sentences and not re.search(r"\b0\.\d{3}\b", " ".join(sentences))


def test_recommendation_table(results):
    console = Console(record=True, width=140)
    console.print(recommendation_table(results))
    text = console.export_text()
    assert "symmetric" in text and "0.450" in text and "gce 79.0" in text
    assert "val %" in text and "test %" in text and not re.search(r"\b0\.\d{4}\b", text)


@pytest.fixture
def app() -> typer.Typer:
    """The report command in a Typer app."""
    from dm_tune.cli import app

    return app


def test_cli_report(app, url, tmp_path, monkeypatch):
    config = tmp_path / "c.toml"
    config.write_text(campaign_file(CAMPAIGN))
    out = tmp_path / "rep"
    res = CliRunner().invoke(
        app, ["report", str(config), "--out", str(out), "--storage", url, "--no-png"]
    )
    assert res.exit_code == 0, res.output
    assert (out / "report.html").exists() and not list(out.glob("*.png"))
    assert 'data-figure="surface"' in (out / "report.html").read_text(encoding="utf-8")
    res = CliRunner().invoke(app, ["report", str(config), "--out", str(out), "--storage", url,
                                   "--no-png", "--method", "top-k"])
    assert res.exit_code == 0, res.output
    assert 'data-figure="surface"' not in (out / "report.html").read_text(encoding="utf-8")
    res = CliRunner().invoke(app, ["report", str(config), "--storage", url, "--method", "gp"])
    assert res.exit_code == 2 and "gp" in res.stderr
    monkeypatch.setattr(report, "find_browser", lambda: None)
    res = CliRunner().invoke(app, ["report", str(config), "--out", str(out), "--storage", url])
    assert res.exit_code == 0 and "warning: no Chromium found" in res.stderr
    config.write_text(campaign_file("nope"))
    res = CliRunner().invoke(app, ["report", str(config), "--out", str(out), "--storage", url])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1


def test_write_run_outputs(url, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "find_browser", lambda: None)  # PNGs are tested above
    config = types.SimpleNamespace(campaign=types.SimpleNamespace(name=CAMPAIGN))
    write_run_outputs(optuna.storages.RDBStorage(url), config, tmp_path / "out")
    text = "".join(capsys.readouterr())
    assert "DM recommendations: fake" in text and "warning: no Chromium" in text
    for name in ("recommendations.json", "recommendations.csv", "report.html"):
        assert (tmp_path / "out" / name).exists()
    config.campaign.name = "nope"
    write_run_outputs(optuna.storages.RDBStorage(url), config, tmp_path / "none")
    assert "no recommendations" in capsys.readouterr().out
