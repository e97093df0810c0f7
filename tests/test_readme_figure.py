"""scripts/readme_figure.py: the README shows figures of the demo's report, as PNGs it made."""

from __future__ import annotations

import importlib.util
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from dm_tune import report

REPO = Path(__file__).parents[1]
SCRIPT = REPO / "scripts" / "readme_figure.py"


def _module():
    spec = importlib.util.spec_from_file_location("readme_figure", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def test_readme_shows_the_rendered_report_figures():
    """The README's block is what the script writes, and every picture it names is a PNG
    of the report's width in the repository."""
    script = _module()
    text = (REPO / "README.md").read_text(encoding="utf-8")
    _, block, _ = script.split_readme(text)
    assert block == script.render_block()
    images = re.findall(r"!\[[^\]]+\]\(([^)]+\.png)\)", block)
    assert images == [f"docs/img/report/{name}.png" for name, _ in script.SHOWN]
    for image in images:
        width, height = _png_size(REPO / image)
        assert width == report.PNG_WIDTH and height >= 400


def test_refuses_a_storage_without_the_demo(tmp_path):
    """Exit 2 with one line when the storage holds no demo campaign; the README and the
    pictures are left as they were."""
    if report.find_browser() is None:
        pytest.skip("chromium is not installed")  # the check for Chromium comes first
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- report-figure:start -->\nold\n<!-- report-figure:end -->\nb\n")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--storage", f"sqlite:///{tmp_path / 'empty.db'}",
         "--readme", str(readme)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("readme_figure: digits-quick in sqlite:///")
    assert done.stderr.count("\n") == 1
    assert "old" in readme.read_text() and not (tmp_path / "docs").exists()


def test_refuses_a_readme_without_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    done = subprocess.run([sys.executable, str(SCRIPT), "--storage", "sqlite:///x.db",
                           "--readme", str(readme)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2 and "must hold one <!-- report-figure:start -->" in done.stderr
