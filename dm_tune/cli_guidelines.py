"""Typer commands `export`, `recommend` and `report` (registered by dm_tune.cli).

The command functions only parse options; the work is in ``run_*`` functions that take
the campaign name, so they can be called and tested without a campaign file. Errors the
user can fix print one line to stderr and exit with code 2.

Example (in dm_tune/cli.py):
    >>> app.command("export")(export_command)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import sys
import warnings
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from dm_tune import guidelines
from dm_tune.config import ConfigError, load_campaign_config
from dm_tune.guidelines import CampaignResults
from dm_tune.storage import DEFAULT_STORAGE, STORAGE_ENV, StorageError

__all__ = [
    "DEFAULT_STORAGE",
    "ExportFormat",
    "export_command",
    "print_recommendation_table",
    "recommend_command",
    "report_command",
    "run_export",
    "run_recommend",
    "run_report",
    "write_run_outputs",
]

StorageOption = Annotated[
    str,
    typer.Option("--storage", envvar=STORAGE_ENV, help="Optuna storage URL (SQLAlchemy)."),
]
ConfigArgument = Annotated[Path, typer.Argument(help="Campaign file (TOML).")]


class ExportFormat(StrEnum):
    """Export file formats."""

    json = "json"
    csv = "csv"


def _fail(message: str, code: int = 2) -> NoReturn:
    """Print one line to stderr and exit."""
    typer.echo(f"dm-tune: {message}", err=True)
    raise typer.Exit(code)


def _campaign_name(config: Path) -> str:
    """The campaign name of a campaign file (a bad file: one line, exit 2)."""
    try:
        return load_campaign_config(config).campaign.name
    except ConfigError as exc:
        _fail(_one_line(exc))


def _one_line(exc: BaseException) -> str:
    """An exception's first line."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _load(campaign: str, storage: str) -> CampaignResults:
    """Load a campaign's results, turning the expected failures into exit code 2."""
    try:
        return guidelines.load_campaign(storage, campaign)
    except (StorageError, guidelines.NoResultsError) as exc:
        _fail(_one_line(exc))


# ------------------------------------------------------------------------ export


def run_export(campaign: str, storage: str, format: ExportFormat, out: Path | None) -> None:
    """Write a campaign's export as JSON or CSV to ``out`` (None or "-": stdout)."""
    results = _load(campaign, storage)
    data = guidelines.to_export_dict(results)
    text = (
        guidelines.dumps_json(data) if format == ExportFormat.json else guidelines.dumps_csv(data)
    )
    if out is None or str(out) == "-":
        sys.stdout.write(text)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write {out}: {exc.strerror or exc}")
    typer.echo(f"wrote {out}", err=True)


def export_command(
    config: ConfigArgument,
    format: Annotated[
        ExportFormat,
        typer.Option("--format", "-f", help="json (full) or csv (one row per setting)."),
    ] = ExportFormat.json,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output file (default: stdout).")
    ] = None,
    storage: StorageOption = DEFAULT_STORAGE,
) -> None:
    """Export a campaign's recommendations (selected params, accuracies, trends)."""
    run_export(_campaign_name(config), storage, format, out)


# --------------------------------------------------------------------- recommend


def run_recommend(export: Path, noise: str, rate: float, as_json: bool = False) -> None:
    """Print the recommendation for (noise, rate) from an export file (no database)."""
    try:
        data = guidelines.load_export(export)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rec = guidelines.recommend(data, noise, rate)
    except ValueError as exc:
        _fail(_one_line(exc))
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    if as_json:
        payload = {**vars(rec), "nearest_rates": list(rec.nearest_rates)}
        typer.echo(json.dumps(payload, indent=2))
        return
    typer.echo(
        f"{noise} {rate:g}: emphasis_mode {rec.emphasis_mode:.3f} "
        f"[{rec.emphasis_mode_low:.3f}, {rec.emphasis_mode_high:.3f}], "
        f"emphasis_variance {rec.emphasis_variance:.3g} "
        f"[{rec.emphasis_variance_low:.3g}, {rec.emphasis_variance_high:.3g}] "
        f"(from searched rates {', '.join(f'{r:g}' for r in rec.nearest_rates)}"
        f"{'; extrapolated' if rec.extrapolated else ''})"
    )


def recommend_command(
    from_file: Annotated[
        Path, typer.Option("--from", help="Export file written by `dm-tune export` (JSON).")
    ],
    noise: Annotated[str, typer.Option("--noise", help="Noise kind, e.g. symmetric.")],
    rate: Annotated[float, typer.Option("--rate", help="Noise rate in [0, 1).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Recommend DM parameters for a noise kind and rate from an export file."""
    run_recommend(from_file, noise, rate, as_json)


# ------------------------------------------------------------------------ report


def run_report(campaign: str, storage: str, out: Path | None, png: bool = True) -> None:
    """Write the HTML report (and PNGs) of a campaign into ``out``."""
    from dm_tune.report import write_report

    results = _load(campaign, storage)
    out_dir = out or Path("reports") / campaign.replace("/", "_")
    try:
        paths = write_report(results, out_dir, png=png)
    except OSError as exc:
        _fail(f"cannot write the report to {out_dir}: {exc.strerror or exc}")
    except RuntimeError as exc:  # kaleido failed with a browser present: unexpected
        _fail(_one_line(exc), code=1)
    typer.echo(f"wrote {paths.html}", err=True)
    if paths.png_skipped and png:
        typer.echo(f"warning: {paths.png_skipped}", err=True)
    elif paths.pngs:
        typer.echo(f"wrote {len(paths.pngs)} PNGs to {out_dir}", err=True)


def report_command(
    config: ConfigArgument,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Directory (default reports/<campaign>).")
    ] = None,
    storage: StorageOption = DEFAULT_STORAGE,
    no_png: Annotated[bool, typer.Option("--no-png", help="Write the HTML only.")] = False,
) -> None:
    """Write a campaign's HTML report with a PNG per figure."""
    run_report(_campaign_name(config), storage, out, png=not no_png)


# ------------------------------------------------------------------ rich table


def print_recommendation_table(results: CampaignResults, console: Console) -> None:
    """Print one row per setting: kind, rate, mode, variance, val/test acc, best baseline."""
    table = Table(title=f"DM recommendations: {results.campaign}")
    for name in ("noise", "rate", "mode", "variance", "val acc", "test acc", "best baseline"):
        table.add_column(name, justify="left" if name in ("noise", "best baseline") else "right")
    for s in results.settings:
        sel = s.selected
        base = s.best_baseline()
        table.add_row(
            s.noise_kind,
            f"{s.noise_rate:.2f}",
            _num(sel and sel.emphasis_mode, ".3f"),
            _num(sel and sel.emphasis_variance, ".3g"),
            _num(sel and sel.val_accuracy, ".4f"),
            _num(sel and sel.test_accuracy, ".4f"),
            "-" if base is None else f"{base.loss} {_num(base.test_accuracy, '.4f')}",
        )
    console.print(table)


def _num(value: float | None, spec: str) -> str:
    """Format a number or a dash."""
    return "-" if value is None else format(value, spec)


# ------------------------------------------------------------- end of `run`


def write_run_outputs(storage, config, directory: Path, console: Console) -> None:
    """Print the recommendation table and write the export (JSON, CSV) and the report.

    Called by ``dm-tune run`` at its end with the open storage and the campaign config;
    nothing here stops the run from succeeding: problems are printed as warnings.
    """
    from dm_tune.report import write_report

    try:
        results = guidelines.load_campaign(storage, config.campaign.name)
    except guidelines.NoResultsError as exc:
        console.print(f"no recommendations: {_one_line(exc)}")
        return
    print_recommendation_table(results, console)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path = guidelines.write_json(results, directory / "recommendations.json")
    csv_path = guidelines.write_csv(results, directory / "recommendations.csv")
    try:
        paths = write_report(results, directory)
    except RuntimeError as exc:  # PNG export failed; the HTML is already written
        console.print(f"warning: {_one_line(exc)}")
        paths = None
    console.print(f"export: {json_path} and {csv_path}")
    if paths is not None:
        console.print(f"report: {paths.html}")
        if paths.png_skipped:
            console.print(f"warning: {paths.png_skipped}")
