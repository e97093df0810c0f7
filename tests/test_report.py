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
    assert "confirm (2 seeds)" in text and "gce 0.79" in text
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


@pytest.mark.browser
def test_report_renders_in_chromium(chromium, html_report, tmp_path):
    page = tmp_path / "probed.html"
    text = html_report.html.read_text(encoding="utf-8")
    page.write_text(text.replace("<head>", "<head>" + ERROR_PROBE, 1), encoding="utf-8")
    done = _dump_dom(chromium, page, tmp_path / "profile")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert 'name="js-error"' not in dom, re.findall(r'name="js-error" content="([^"]*)"', dom)
    assert "Uncaught" not in done.stderr
    chunks = dom.split('class="dm-figure"')[1:]
    assert len(chunks) == len(FIGURE_NAMES)
    for name, chunk in zip(FIGURE_NAMES, chunks, strict=True):
        assert f'data-figure="{name}"' in chunk
        assert chunk.count('class="plot-container plotly"') == 1, name
        assert "main-svg" in chunk, name


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


def test_recommendation_table(results):
    console = Console(record=True, width=140)
    console.print(recommendation_table(results))
    text = console.export_text()
    assert "symmetric" in text and "0.450" in text and "gce 0.7900" in text


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
