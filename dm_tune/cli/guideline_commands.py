"""Commands that read: export, recommend, report; and the outputs at the end of ``run``."""

from __future__ import annotations

import json
import sys
import warnings
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dm_tune.cli.app import command, one_line, print_table, refuse, say, warn
from dm_tune.cli.options import (
    DEFAULT_STORAGE,
    ConfigArg,
    DeviceOpt,
    Method,
    MethodOpt,
    OutOpt,
    StorageOpt,
    default_report_dir,
    warn_password_in_argv,
)

if TYPE_CHECKING:
    from dm_tune.config import CampaignConfig
    from dm_tune.guidelines import CampaignResults

__all__ = [
    "ExportFormat",
    "export",
    "recommend",
    "report",
    "run_export",
    "run_recommend",
    "run_report",
    "write_run_outputs",
]


class ExportFormat(StrEnum):
    """Export file formats."""

    json = "json"
    csv = "csv"


def _campaign_name(config: Path) -> str:
    from dm_tune.config import load_campaign_config

    return load_campaign_config(config).campaign.name


def _load(campaign: str, storage, method: str = Method.surface) -> CampaignResults:
    """Load the results and say (stderr) which kinds fell back from surface to top-k."""
    from dm_tune.guidelines import load_campaign

    results = load_campaign(storage, campaign, method=str(method))
    warn_password_in_argv()  # once the storage answered (a refusal says only why)
    for kind, reason in results.fallbacks.items():
        warn(f"note: {kind}: {reason}")
    return results


def run_export(
    campaign: str, storage: str, format: ExportFormat, out: Path | None,
    method: str = Method.surface,
) -> None:
    """Write a campaign's export as JSON or CSV to ``out`` (None or "-": stdout)."""
    from dm_tune import guidelines

    data = guidelines.to_export_dict(_load(campaign, storage, method))
    text = guidelines.dumps_json(data) if format == ExportFormat.json else guidelines.dumps_csv(
        data)
    if out is None or str(out) == "-":
        sys.stdout.write(text)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise refuse(f"cannot write {out}: {exc.strerror or exc}") from None
    warn(f"wrote {out}")


@command("export")
def export(
    config: ConfigArg,
    format: Annotated[
        ExportFormat,
        typer.Option("--format", "-f", help="json (full) or csv (one row per setting)."),
    ] = ExportFormat.json,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output file (default: stdout).")
    ] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    method: MethodOpt = Method.surface,
) -> None:
    """Export a campaign's recommendations (selected params, accuracies, trends)."""
    run_export(_campaign_name(config), storage, format, out, method)


def run_recommend(
    export: Path | None, noise: str, rate: float, as_json: bool = False,
    results: CampaignResults | None = None, strict: bool = False,
) -> None:
    """Print the recommendation for (noise, rate) from campaign results or an export file
    (``strict``: refuse, exit 2, a rate outside the searched ones)."""
    from dm_tune import guidelines

    if results is not None:
        from dm_tune.guidelines.export import settings_export

        source, data = results, {"settings": settings_export(results)}
    else:
        assert export is not None
        _refuse_csv(export)
        source = data = guidelines.load_export(export)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        rec = guidelines.recommend(source, noise, rate)
    if strict and rec.extrapolated:
        raise refuse(f"--strict: {noise} rate {rate:g} is outside the searched rates "
                     f"({_searched_text(source, noise)}); drop --strict for the nearest "
                     "searched rate's pick, or search that rate")
    for w in caught:
        warn(f"warning: {w.message}")
    if as_json:
        payload = {**vars(rec), "nearest_rates": list(rec.nearest_rates), "notes": list(rec.notes)}
        typer.echo(json.dumps(payload, indent=2))
        return
    typer.echo(recommendation_text(rec))
    for note in rec.notes:
        typer.echo(f"note: {note}")
    confirmed = _confirmed_at(data, noise, rate)
    if confirmed:
        typer.echo(confirmed)
    configuration = _configuration_at(data, noise, rate)
    if configuration:
        typer.echo(configuration)


def _searched_text(source, noise: str) -> str:
    """'0.2 to 0.6': the kind's searched rates, from campaign results or an export dict."""
    if isinstance(source, dict):
        rates = [float(p["noise_rate"]) for p in source["trends"][noise]]
    else:
        rates = list(source.trends[noise].rates)
    return f"{min(rates):g} to {max(rates):g}"


def _band(low: float | None, high: float | None, spec: str) -> str:
    """' [low, high]', or nothing where no band is known (outside the searched rates)."""
    return "" if low is None or high is None else f" [{low:{spec}}, {high:{spec}}]"


def recommendation_text(rec) -> str:
    """One line: the pick, its band, where it comes from and what one run may score."""
    from dm_tune.guidelines.rows import percent

    text = (
        f"{rec.noise_kind} {rec.noise_rate:g}: emphasis_mode {rec.emphasis_mode:.3f}"
        f"{_band(rec.emphasis_mode_low, rec.emphasis_mode_high, '.3f')}, "
        f"emphasis_variance {rec.emphasis_variance:.3g}"
        f"{_band(rec.emphasis_variance_low, rec.emphasis_variance_high, '.3g')} "
        f"(searched rates {', '.join(f'{r:g}' for r in rec.nearest_rates)}"
        f"{'; extrapolated' if rec.extrapolated else ''}"
        f"{f'; from {rec.origin}' if rec.origin else ''})"
    )
    if rec.expected_accuracy is not None:
        return text + (
            f"; one run's clean-val accuracy: expected {percent(rec.expected_accuracy, unit='%')}, "
            f"10th percentile {percent(rec.low_accuracy, unit='%')}, "
            f"P(collapse) {rec.collapse_probability:.2f}")
    if rec.predicted_accuracy is not None and rec.predicted_std is not None:
        return text + (f"; predicted clean-val accuracy {100 * rec.predicted_accuracy:.1f} "
                       f"± {100 * rec.predicted_std:.1f}%")
    return text


def _refuse_csv(path: Path) -> None:
    """The CSV export has no trends or advice: say what to pass instead."""
    try:
        head = path.open("rb").read(64).lstrip()
    except OSError:
        return  # load_export says why, in one line
    if path.suffix.lower() == ".csv" or head.startswith(b"campaign,"):  # the CSV's header
        raise refuse(f"{path} is not the JSON export (the CSV holds one row per searched "
                     "setting, no advice between rates): pass `dm-tune export CONFIG -f json` "
                     "output to --from, or give the campaign file to read the database")


def _configuration_at(data: dict, noise: str, rate: float) -> str | None:
    """'use GCE (q=0.7) at symmetric 0.6: ...' when a baseline beats DM at that searched rate."""
    from dm_tune.guidelines.compare import params_text
    from dm_tune.guidelines.rows import percent

    for setting in data.get("settings", []):
        best = setting.get("configuration")
        if (not best or setting.get("noise_kind") != noise or best.get("loss") == "dm"
                or abs(float(setting.get("noise_rate", -1.0)) - rate) > 1e-6):
            continue
        return (f"use {best['loss'].upper()}{params_text(best.get('params') or {})} at {noise} "
                f"{rate:g}: {best['reason']}; DM's selection beside it: clean-val "
                f"{percent(best['dm_val_accuracy'], unit='%')}")
    return None


def _confirmed_at(data: dict, noise: str, rate: float) -> str | None:
    """'confirmed at symmetric 0.4: ...' when the export holds that searched rate's
    confirmed selection (mean ± std over its seeds), else None."""
    from dm_tune.guidelines.compare import mean_std_text
    for setting in data.get("settings", []):
        sel = setting.get("selected") or {}
        if (setting.get("noise_kind") != noise or sel.get("source") != "confirm"
                or abs(float(setting.get("noise_rate", -1.0)) - rate) > 1e-6):
            continue
        flag = "; a replicate collapsed" if sel.get("collapsed") else ""
        val, test = (mean_std_text(sel[n], sel.get(f"{n}_std"), percent=True)
                     for n in ("val_accuracy", "test_accuracy"))
        return (f"confirmed at {noise} {rate:g}: mode {sel['emphasis_mode']:.3f}, variance "
                f"{sel['emphasis_variance']:.3g}, clean-val {val}, test {test} over "
                f"{sel.get('n_seeds', 1)} seeds{flag}")
    return None


def _premise(storage, campaign: str):
    """The derivative-premise curves for the report (guidelines.premise)."""
    from dm_tune.guidelines.premise import load_premise

    return load_premise(storage, campaign)


def noise_from_estimate(path: Path) -> tuple[str, float]:
    """(noise kind, rate) of an estimate file from `dm-tune estimate-noise`: its nearest
    kind at that kind's least-squares rate (checked: a transition matrix, a known kind)."""
    from dm_tune.estimate import read_estimate

    doc = read_estimate(path)
    return str(doc["nearest_kind"]), float(doc["nearest_rate"])


@command("recommend")
def recommend(
    config: Annotated[
        Path | None, typer.Argument(help="Campaign file: read its results from --storage.")
    ] = None,
    noise: Annotated[str | None, typer.Option("--noise", help="Noise kind, e.g. symmetric.")
                     ] = None,
    rate: Annotated[float | None, typer.Option("--rate", help="Noise rate in [0, 1).")] = None,
    from_file: Annotated[
        Path | None,
        typer.Option("--from", help="Export file written by `dm-tune export` (JSON), "
                     "instead of a campaign file and its database."),
    ] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    from_estimate: Annotated[Path | None, typer.Option(
        "--from-estimate", help="Estimate file from `dm-tune estimate-noise`: its nearest "
        "kind and rate (instead of --noise and --rate).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Refuse (exit 2) a rate outside the searched rates instead of "
        "answering with the nearest searched rate's pick.")] = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Re-train the advice and the next-best "
                           "candidates that differ from it at exactly this "
                           "rate with new seeds (stored, resumable) and answer with the "
                           "verified pick. Needs the campaign file.")
    ] = False,
    candidates: Annotated[int, typer.Option(help="--verify: candidates to re-train.")] = 3,
    seeds: Annotated[int, typer.Option(help="--verify: new seeds per candidate.")] = 3,
    device: DeviceOpt = "cpu",
) -> None:
    """Recommend DM parameters for a noise kind and rate (risk-aware; --verify to check)."""
    if from_estimate is not None:
        if noise is not None or rate is not None:
            raise refuse("--from-estimate replaces --noise and --rate: give one or the other")
        noise, rate = noise_from_estimate(from_estimate)
    elif noise is None or rate is None:
        raise refuse("give --noise and --rate, or --from-estimate FILE")
    if not 0.0 <= rate < 1.0:
        raise refuse(f"--rate must be in [0, 1), got {rate:g}")
    if (config is None) == (from_file is None):
        raise refuse("give a campaign file (reads its database) or --from EXPORT.json, "
                     "not both" if config else "give a campaign file (reads its database) "
                     "or --from EXPORT.json")
    if verify and config is None:
        raise refuse("--verify trains: it needs the campaign file (and --storage), not --from")
    if config is None:
        run_recommend(from_file, noise, rate, as_json, strict=strict)
        return
    if verify and strict:
        _strict_before_training(_load(_campaign_name(config), storage), noise, rate)
    results = (run_verify(config, storage, noise, rate, candidates, seeds, device) if verify
               else _load(_campaign_name(config), storage))
    run_recommend(None, noise, rate, as_json, results=results, strict=strict)


def _strict_before_training(results: CampaignResults, noise: str, rate: float) -> None:
    """--strict --verify: refuse a rate outside the searched rates before any training;
    the database's searched rates, as ``recommend --strict`` without --verify reads them
    (the verify runs would not make it a searched rate)."""
    trend = results.trends.get(noise)
    if trend is None or not trend.points:
        return  # plan_verification refuses a kind the campaign did not search
    if not trend.rates[0] - 1e-9 <= rate <= trend.rates[-1] + 1e-9:
        raise refuse(f"--strict: {noise} rate {rate:g} is outside the searched rates "
                     f"({_searched_text(results, noise)}); nothing was trained")


def run_verify(config_path: Path, storage_url: str, noise: str, rate: float,
               candidates: int, seeds: int, device: str) -> CampaignResults:
    """Plan, announce the cost of, train and answer a verification at (noise, rate); the
    campaign's results with the verify runs in them."""
    from dm_tune.campaign.verify import plan_verification, run_verification, verified_pick
    from dm_tune.cli.options import open_campaign, prepare_training_process, resolve_device
    from dm_tune.guidelines.compare import mean_std_text
    from dm_tune.guidelines.rows import percent

    config, storage = open_campaign(config_path, storage_url, create=False)
    prepare_training_process(None, config)  # one torch thread for an MLP: see its doc
    plan = plan_verification(storage, config, noise, rate, candidates, seeds)
    say(f"verify {noise} {plan.setting.rate:g}: {len(plan.candidates)} candidates x "
        f"{len(plan.seeds)} seeds = {plan.runs} runs of {plan.epochs} epochs as one "
        f"population; {plan.remaining} to train ({plan.done} stored)"
        + _pace(storage, config, plan.remaining))
    for mode, variance, origin in plan.candidates:
        say(f"  candidate mode {mode:.3f}, variance {variance:.3g} ({origin})")
    if plan.remaining:
        run_verification(storage, config, plan, resolve_device(device))
    results = _load(config.campaign.name, storage)
    pick = verified_pick(results.verified.get(noise, []), plan)
    if pick is None:
        raise refuse("no verify run finished; rerun the same command to resume", code=1)
    test = ("" if pick.test_accuracy is None
            else f", test {percent(pick.test_accuracy, unit='%')}")
    say(f"verified at {noise} {plan.setting.rate:g}: emphasis_mode {pick.emphasis_mode:.3f}, "
        f"emphasis_variance {pick.emphasis_variance:.3g} ({pick.origin}): clean-val "
        f"{mean_std_text(pick.val_accuracy, pick.val_accuracy_std, percent=True)}{test} over "
        f"{pick.n_seeds} seeds")
    return results


def _pace(storage, config: CampaignConfig, runs: int) -> str:
    """'; about N s at this campaign's recorded pace' (nothing when it has no record)."""
    import statistics

    import optuna
    from optuna.trial import TrialState

    from dm_tune.campaign.records import TrialKey
    from dm_tune.campaign.settings import settings_of

    per_epoch, sizes = [], []
    for setting in settings_of(config):
        try:
            study = optuna.load_study(study_name=setting.study_name(config.name),
                                      storage=storage)
        except KeyError:
            continue
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            seconds, epochs = t.user_attrs.get(TrialKey.SECONDS), t.user_attrs.get(
                TrialKey.EPOCHS_RUN)
            if isinstance(seconds, int | float) and isinstance(epochs, int) and epochs > 0:
                per_epoch.append(seconds / epochs)
                sizes.append(int(t.user_attrs.get(TrialKey.POPULATION_SIZE, 1)))
    if not runs or not per_epoch:
        return ""
    batches = max(1.0, runs / statistics.median(sizes))
    estimate = statistics.median(per_epoch) * config.training.epochs * batches
    return f"; about {estimate:.0f} s of training at this campaign's recorded pace"


def run_report(
    campaign: str, storage: str, out: Path | None, png: bool = True,
    method: str = Method.surface,
) -> None:
    """Write the HTML report (and PNGs) of a campaign into ``out``."""
    from dm_tune.report import write_report

    results = _load(campaign, storage, method)
    out_dir = out or default_report_dir(storage, campaign)
    try:
        paths = write_report(results, out_dir, png=png, premise=_premise(storage, campaign))
    except OSError as exc:
        raise refuse(f"cannot write the report to {out_dir}: {exc.strerror or exc}") from None
    except RuntimeError as exc:  # kaleido failed with a browser present: unexpected
        raise refuse(one_line(exc), code=1) from None
    warn(f"wrote {paths.html}")
    if paths.png_skipped and png:
        warn(f"warning: {paths.png_skipped}")
    elif paths.pngs:
        warn(f"wrote {len(paths.pngs)} PNGs to {out_dir}")


@command("report")
def report(
    config: ConfigArg,
    out: OutOpt = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    no_png: Annotated[bool, typer.Option("--no-png", help="Write the HTML only.")] = False,
    method: MethodOpt = Method.surface,
) -> None:
    """Write a campaign's HTML report with a PNG per figure."""
    run_report(_campaign_name(config), storage, out, png=not no_png, method=method)


def write_run_outputs(storage, config: CampaignConfig, directory: Path) -> None:
    """Print the recommendation table and write the export (JSON, CSV) and the report.

    Called by ``dm-tune run`` at its end; nothing here fails the run: a problem is a
    warning line (the trials are safe in the database and ``report`` can be rerun).
    """
    from dm_tune import guidelines
    from dm_tune.cli.tables import advice_table, recommendation_table
    from dm_tune.errors import NoResultsError
    from dm_tune.guidelines.compare import (
        best_configuration,
        compare_setting,
        sentence,
        setting_label,
    )
    from dm_tune.guidelines.recommend import advice_rows
    from dm_tune.report import write_report

    try:
        results = _load(config.campaign.name, storage)  # the default: surface
    except NoResultsError as exc:
        say(f"no recommendations: {one_line(exc)}")
        return
    print_table(recommendation_table(results))
    for s in results.settings:  # DM against the baselines, in words (compare.py's rule)
        say(sentence(setting_label(s.noise_kind, s.noise_rate), compare_setting(s),
                     percent=True))
        best = best_configuration(s)
        if best is not None and best.loss != "dm":
            say(f"  use {best.reason}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rows = advice_rows(results)
    if rows:
        print_table(advice_table(rows))
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        exported = guidelines.to_export_dict(results)  # once for both files
        json_path = guidelines.write_json(exported, directory / "recommendations.json")
        csv_path = guidelines.write_csv(exported, directory / "recommendations.csv")
        say(f"export: {json_path} and {csv_path}")
        paths = write_report(results, directory,
                             premise=_premise(storage, config.campaign.name))
    except OSError as exc:
        warn(f"warning: cannot write the outputs to {directory}: {exc.strerror or exc}; "
             "the trials are in the database: rerun `dm-tune report` with --out")
        return
    except RuntimeError as exc:  # PNG export failed; the HTML is already written
        warn(f"warning: {one_line(exc)}")
        return
    say(f"report: {paths.html}")
    if paths.png_skipped:
        warn(f"warning: {paths.png_skipped}")
