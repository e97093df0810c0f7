#!/usr/bin/env python3
"""Regenerate the README's pictures: figures of the demo's report, rendered as PNG.

    .venv/bin/python scripts/readme_figure.py                       # runs the demo (~3 min)
    .venv/bin/python scripts/readme_figure.py --storage sqlite:///dm_tune.db   # after `make demo`

``scripts/readme_demo.py`` calls it on its own run's database, so that the README's demo
block and its pictures show one run; this script alone redraws them from another.
Without ``--storage`` it runs ``.venv/bin/dm-tune run studies/digits-quick.toml`` (what
``make demo`` runs) on a SQLite database in a temporary folder, as
``scripts/readme_demo.py`` does; a single-worker run is reproducible on one machine, so the
pictures show the run whose output the README's demo block quotes. Then it loads the
campaign with the report's own code (``guidelines.load_campaign``, ``plots.build_figures``)
and writes the figures named in ``SHOWN`` as ``docs/img/report/<figure>.png`` through
``report.write_pngs`` (kaleido driving Debian's Chromium headless; the report's PNGs are
made the same way), and rewrites the text between ``<!-- report-figure:start -->`` and
``<!-- report-figure:end -->`` in README.md: the images and one caption line.

Exit codes: 0 done, 1 the demo run or the PNG export failed, 2 bad input (no Chromium,
no such campaign in the storage, README without the markers).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a clone: import this clone's dm_tune

START = "<!-- report-figure:start -->"
END = "<!-- report-figure:end -->"
CAMPAIGN_FILE = "studies/digits-quick.toml"
CAMPAIGN = "digits-quick"
IMAGES = Path("docs/img/report")
#: the report's figures shown in the README, in order, with their alt text
SHOWN = (
    ("accuracy", "Test accuracy of tuned DM and each baseline against the noise rate"),
    ("trend", "Recommended emphasis mode and variance against the noise rate, with bands"),
)


class Refused(Exception):
    """Bad input: one line on stderr, exit 2."""


def render_block(shown: tuple[tuple[str, str], ...] = SHOWN) -> str:
    """The README text between the markers (the same for every run: the pictures change)."""
    images = "\n".join(f"![{alt}]({(IMAGES / f'{name}.png').as_posix()})" for name, alt in shown)
    return (
        f"\n{images}\n\n"
        "Two figures of the demo's report (`report.html` holds all of them, interactive): "
        "test accuracy of tuned DM and of each baseline per noise rate (mean over seeds, bars "
        "one standard deviation, GCE's tuned `q` beside its points), and the recommended "
        "emphasis mode and variance per rate with their credible bands (markers: the "
        "confirmed selections). `scripts/readme_figure.py` renders them from the demo's "
        "database with the report's own code.\n"
    )


def split_readme(text: str, start: str = START, end: str = END) -> tuple[str, str, str]:
    """(before the start marker, between the markers, from the end marker on)."""
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise Refused(f"README.md must hold one {start} ... {end} pair, in that order")
    head, rest = text.split(start)
    block, tail = rest.split(end)
    return head, block, tail


def run_demo(dm_tune: Path, folder: str) -> str:
    """Run the demo campaign on a SQLite file in ``folder``; return its storage URL."""
    url = f"sqlite:///{folder}/dm_tune.db"
    command = [str(dm_tune), "run", CAMPAIGN_FILE, "--storage", url]
    print(f"readme_figure: running {' '.join(command)} (a few minutes)", file=sys.stderr)
    result = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"dm-tune run exited {result.returncode}")
    return url


def write_figures(url: str, out: Path) -> list[Path]:
    """Render the SHOWN figures of the campaign in ``url`` as PNGs in ``out``."""
    from dm_tune import report
    from dm_tune.errors import DMTuneError
    from dm_tune.guidelines import load_campaign
    from dm_tune.plots import build_figures

    browser = report.find_browser()
    if browser is None:
        raise Refused("no Chromium found (bash scripts/system_deps.sh installs Debian's)")
    try:
        results = load_campaign(url, CAMPAIGN)
    except (DMTuneError, ValueError) as error:
        raise Refused(f"{CAMPAIGN} in {url}: {error}") from None
    figures = build_figures(results)
    out.mkdir(parents=True, exist_ok=True)
    try:
        paths = report.write_pngs({name: figures[name] for name, _ in SHOWN}, out, browser)
    except RuntimeError as error:
        raise RuntimeError(str(error)) from None
    return [paths[name] for name, _ in SHOWN]


def write_readme_figures(url: str, readme: Path) -> list[Path]:
    """Write the PNGs of the campaign in ``url`` next to ``readme`` and its block."""
    split_readme(readme.read_text(encoding="utf-8"))  # refuse before drawing
    paths = write_figures(url, readme.parent / IMAGES)
    head, _, tail = split_readme(readme.read_text(encoding="utf-8"))  # edited meanwhile?
    readme.write_text(head + START + render_block() + END + tail, encoding="utf-8")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="a database the demo ran on (default: run the demo now)")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--dm-tune", type=Path, default=REPO / ".venv" / "bin" / "dm-tune")
    args = parser.parse_args(argv)
    try:
        split_readme(args.readme.read_text(encoding="utf-8"))  # refuse before a long run
        if args.storage is None and not args.dm_tune.exists():
            raise Refused(f"{args.dm_tune} not found: run `make install` first")
        with tempfile.TemporaryDirectory(prefix="dm-tune-figure-") as tmp:
            url = args.storage or run_demo(args.dm_tune, tmp)
            paths = write_readme_figures(url, args.readme)
    except (Refused, OSError) as error:
        print(f"readme_figure: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        print(f"readme_figure: {error}", file=sys.stderr)
        return 1
    shown = ", ".join(str(p.relative_to(args.readme.parent)) for p in paths)
    print(f"readme_figure: wrote {shown} and {args.readme.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
