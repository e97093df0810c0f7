#!/usr/bin/env python3
"""Regenerate the README's demo output from a real run of `make demo`'s job.

    .venv/bin/python scripts/readme_demo.py --install-seconds 139   # rewrite README.md
    .venv/bin/python scripts/readme_demo.py --check                  # exit 1 if it is stale

It runs ``.venv/bin/dm-tune run studies/digits-quick.toml`` (what ``make demo`` runs) on a
SQLite database in a temporary folder, with ``CI=true`` and ``COLUMNS=160`` and stdout
piped, so the output is what a user sees in a piped terminal. The run is timed (wall
seconds of the run alone, not the install). Then the text between the two markers
``<!-- demo-output:start -->`` and ``<!-- demo-output:end -->`` in README.md is replaced
by the output in a ```text block and one line with the run time and the install time.

What is changed on the way, so that the block does not depend on the run's folder:

- the progress bars (one per study plus "all studies", drawn live in a terminal; a pipe
  gets their last frame) are left out: they hold elapsed times, which differ every run;
- the temporary folder is shown as ``/path/to/dm-tune``: ``make demo`` writes its
  database and ``dm_tune_reports/`` in the clone it runs in.

The same run's database then gives the README's pictures: ``scripts/readme_figure.py``
renders figures of its report into ``docs/img/report/`` and rewrites the text between
``<!-- report-figure:start -->`` and ``<!-- report-figure:end -->`` (not with
``--check``, and not with ``--no-figures``), so the block and the pictures show one run.

The install time is measured separately (``time make install`` on a fresh clone) and
given with ``--install-seconds N`` or ``$DM_TUNE_INSTALL_SECONDS``; without either, the
figure already in the README is kept. ``--check`` runs the demo too and compares its
block with the README's, ignoring the two timings (they differ on every run): exit 1
and a diff when they differ, 0 when they match; it never writes.

Exit codes: 0 done, 1 README is stale (--check) or the demo run failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import readme_figure  # noqa: E402  (beside this script: the figures and the marker split)

REPO = Path(__file__).resolve().parents[1]
START = "<!-- demo-output:start -->"
END = "<!-- demo-output:end -->"
CAMPAIGN = "studies/digits-quick.toml"
INSTALL_ENV = "DM_TUNE_INSTALL_SECONDS"
SHOWN_FOLDER = "/path/to/dm-tune"
RUN_ENV = {"CI": "true", "COLUMNS": "160"}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
# A progress-bar line: description, a bar of heavy rules, done/total, note, elapsed H:MM:SS.
_BAR = re.compile(r"^[^┏┃┡│└┗├╭╰].*[━╺╸].*\b\d+/\d+\b.*\d+:\d\d:\d\d\s*$")
_TIME_LINE = re.compile(
    r"^run time: (?P<run>.+?) on (?P<cores>\d+) cores? \(the install, `make install`, "
    r"takes about (?P<install>.+?) separately\)$",
    re.M,
)
_DURATION = re.compile(r"^(?:(?P<min>\d+) min)? ?(?:(?P<s>\d+) s)?$")


class Refused(Exception):
    """Bad input: one line on stderr, exit 2."""


def duration(seconds: float) -> str:
    """'4 min 7 s', '52 s' (whole seconds)."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def parse_duration(text: str) -> float | None:
    """Seconds of a duration written by :func:`duration`; None if it is not one."""
    match = _DURATION.match(text.strip())
    if not match or not (match["min"] or match["s"]):
        return None
    return 60.0 * int(match["min"] or 0) + int(match["s"] or 0)


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def split_readme(text: str) -> tuple[str, str, str]:
    """(before the demo's start marker, between the markers, from the end marker on)."""
    try:
        return readme_figure.split_readme(text, START, END)
    except readme_figure.Refused as error:
        raise Refused(str(error)) from None


def install_seconds(given: float | None, current_block: str) -> float:
    """--install-seconds, else $DM_TUNE_INSTALL_SECONDS, else the README's current figure."""
    if given is not None:
        return given
    if os.environ.get(INSTALL_ENV):
        try:
            return float(os.environ[INSTALL_ENV])
        except ValueError:
            raise Refused(f"${INSTALL_ENV} must be a number of seconds, "
                          f"got {os.environ[INSTALL_ENV]!r}") from None
    match = _TIME_LINE.search(current_block)
    seconds = parse_duration(match["install"]) if match else None
    if seconds is None:
        raise Refused(f"no install time: pass --install-seconds N (or set ${INSTALL_ENV}); "
                      "measure it with `time make install` on a fresh clone")
    return seconds


def clean_output(stdout: str, folders: list[str]) -> str:
    """The run's stdout without colour codes, progress bars, the temporary folder."""
    text = _ANSI.sub("", stdout)
    for folder in sorted(set(folders), key=len, reverse=True):
        text = text.replace(folder, SHOWN_FOLDER)
    lines = [line.rstrip() for line in text.splitlines() if not _BAR.match(line)]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def run_demo(dm_tune: Path, on_database: Callable[[str], None] | None = None
             ) -> tuple[str, float]:
    """Run the demo campaign on a temporary SQLite file; (cleaned stdout, wall seconds).

    ``on_database(url)`` is called with the run's storage URL before the file goes."""
    with tempfile.TemporaryDirectory(prefix="dm-tune-demo-") as tmp:
        command = [str(dm_tune), "run", CAMPAIGN, "--storage", f"sqlite:///{tmp}/dm_tune.db"]
        print(f"readme_demo: running {' '.join(command)} (a few minutes)", file=sys.stderr)
        started = time.perf_counter()
        # stderr (warnings, a failure's message) goes straight to this terminal
        result = subprocess.run(command, cwd=REPO, env={**os.environ, **RUN_ENV},
                                stdout=subprocess.PIPE, text=True, check=False)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            sys.stdout.write(result.stdout)
            raise RuntimeError(f"dm-tune run exited {result.returncode} after "
                               f"{duration(seconds)}")
        if on_database is not None:
            on_database(f"sqlite:///{tmp}/dm_tune.db")
        return clean_output(result.stdout, [tmp, os.path.realpath(tmp)]), seconds


def render_block(output: str, run_seconds: float, install: float) -> str:
    """The text between the markers."""
    return (
        "\n```text\n$ make demo\n" + output + "\n```\n\n"
        f"run time: {duration(run_seconds)} on {cores()} cores (the install, `make install`, "
        f"takes about {duration(install)} separately)\n"
    )


def _without_timings(block: str) -> str:
    return _TIME_LINE.sub("run time: - (the install: -)", block)


def _figure_writer(readme: Path) -> Callable[[str], None]:
    """The README's pictures from the demo's database (scripts/readme_figure.py)."""
    def write(url: str) -> None:
        try:
            readme_figure.write_readme_figures(url, readme)
        except readme_figure.Refused as error:
            raise RuntimeError(f"figures: {error}") from None

    return write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with README.md (timings ignored); exit 1 if it differs")
    parser.add_argument("--install-seconds", type=float, default=None, metavar="N",
                        help=f"seconds a fresh `make install` took (else ${INSTALL_ENV}, "
                        "else the README's current figure)")
    parser.add_argument("--no-figures", action="store_true",
                        help="leave docs/img/report/ and the README's pictures as they are")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--dm-tune", type=Path, default=REPO / ".venv" / "bin" / "dm-tune",
                        help="the dm-tune executable (default: .venv/bin/dm-tune)")
    args = parser.parse_args(argv)
    try:
        if args.install_seconds is not None and args.install_seconds < 0:
            raise Refused("--install-seconds must be >= 0")
        if not args.dm_tune.exists():
            raise Refused(f"{args.dm_tune} not found: run `make install` first")
        text = args.readme.read_text(encoding="utf-8")
        head, current, tail = split_readme(text)
        install = install_seconds(args.install_seconds, current)
    except (Refused, OSError) as error:
        print(f"readme_demo: {error}", file=sys.stderr)
        return 2
    figures = None if args.check or args.no_figures else _figure_writer(args.readme)
    try:
        output, seconds = run_demo(args.dm_tune, figures)
    except RuntimeError as error:
        print(f"readme_demo: {error}", file=sys.stderr)
        return 1
    block = render_block(output, seconds, install)
    try:  # read again: the README may have been edited while the demo ran
        head, current, tail = split_readme(args.readme.read_text(encoding="utf-8"))
    except (Refused, OSError) as error:
        print(f"readme_demo: {error}", file=sys.stderr)
        return 2
    if args.check:
        old, new = _without_timings(current), _without_timings(block)
        if old == new:
            print(f"readme_demo: {args.readme} is up to date (run took {duration(seconds)})",
                  file=sys.stderr)
            return 0
        sys.stdout.writelines(difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True),
            "README.md (demo block)", "fresh run"))
        print(f"readme_demo: {args.readme} differs from a fresh run", file=sys.stderr)
        return 1
    args.readme.write_text(head + START + block + END + tail, encoding="utf-8")
    print(f"readme_demo: wrote {args.readme} (run took {duration(seconds)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
