"""The versioned export (``docs/export-schema.md``): JSON and CSV writers, the reader."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dm_tune
from dm_tune.errors import ExportError
from dm_tune.guidelines.compare import best_configuration, compare_setting, params_pairs
from dm_tune.guidelines.results import CampaignResults, RateCheck, SettingResult, TrendPoint

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "dumps_csv",
    "dumps_json",
    "load_export",
    "settings_export",
    "to_csv_rows",
    "to_export_dict",
    "validate_export",
    "write_csv",
    "write_json",
]

SCHEMA = "dm-tune/recommendations"
SCHEMA_VERSION = 4  # the newest version written and read; the top-k method still writes 1
_PREDICTIONS = ("predicted_accuracy", "predicted_std")  # trend point fields new in v2
#: what the surface method writes (v3: per-kind top-k fallbacks; v4: the risk-aware
#: advice per rate and each setting's configuration to use)
SURFACE_VERSION = 4
#: the fields of one v4 advice point (numbers, but for ``origin`` and ``notes``)
ADVICE_FIELDS = (*TrendPoint.__dataclass_fields__, "expected_accuracy", "low_accuracy",
                 "collapse_probability", "origin", "notes")


def to_export_dict(results: CampaignResults) -> dict[str, Any]:
    """Return the versioned export: v3 for the surface method, v1 for top-k."""
    prov = results.provenance
    surface = results.method == "surface"
    data = {
        "schema": SCHEMA,
        "schema_version": SURFACE_VERSION if surface else 1,
        "provenance": {
            "campaign": prov.campaign,
            "config_hash": prov.config_hash,
            "dm_tune_version": prov.dm_tune_version,
            "exported_by": prov.exported_by,
            "dataset": prov.dataset,
            "model": prov.model,
            "trial_counts": dict(prov.trial_counts),
            "created": prov.created,
            "method": _surface_method(results) if surface else _top_k_method(results),
        },
        "settings": settings_export(results),
        "trends": {
            kind: [_point_dict(p, surface) for p in trend.points]
            for kind, trend in results.trends.items()
        },
    }
    if surface:
        from dm_tune.guidelines.surface import rate_grid

        dense = {
            kind: [_point_dict(s.optimum(rate), True) for rate in rate_grid(s)]
            for kind, s in results.surfaces.items()
        }
        # A top-k fallback kind has no dense grid: its trend points (predictions null)
        # stand in, so every kind of `trends` is in `surface` and recommend --from reads it.
        data["surface"] = {
            kind: dense.get(kind) or data["trends"][kind] for kind in sorted(data["trends"])
        }
        data["checks"] = {"leave_one_rate_out": [_clean(vars(c)) for c in results.checks]}
        data["advice"] = {kind: advice_grid(results, kind) for kind in sorted(results.surfaces)}
    return data


def settings_export(results: CampaignResults) -> list[dict[str, Any]]:
    """The export's settings; v4 (the surface method) adds each one's configuration."""
    out = [_setting_dict(s) for s in results.settings]
    if results.method == "surface":
        for entry, s in zip(out, results.settings, strict=True):
            best = best_configuration(s)
            entry["configuration"] = _clean(vars(best)) if best else None
    return out


def advice_grid(results: CampaignResults, kind: str) -> list[dict[str, Any]]:
    """The risk-aware advice at every rate of the kind's rate grid (0.01 steps)."""
    from dm_tune.guidelines.recommend import advice_at
    from dm_tune.guidelines.surface import rate_grid

    points = []
    for rate in rate_grid(results.surfaces[kind]):
        values = advice_at(results, kind, rate)
        count = results.surfaces[kind]._counts.get(round(rate, 6), 0)
        points.append(_clean({"noise_rate": rate, **values, "notes": list(values["notes"]),
                              "n_trials": count, "k": count}))
    return points


def _top_k_method(results: CampaignResults) -> dict[str, Any]:
    """How the v1 trend was fitted."""
    return {
        "top_k": results.top_k,
        "weights": "rank",
        "bootstrap_resamples": results.resamples,
        "interval": results.interval,
        "seed": results.seed,
        "interpolation": "linear; constant outside the searched rates",
    }


def _surface_method(results: CampaignResults) -> dict[str, Any]:
    """How the surface was fitted, and which kinds fell back to top-k (and why)."""
    from dm_tune.guidelines.surface import METHOD, MIN_OBSERVATIONS

    return {
        **METHOD,
        "min_observations": MIN_OBSERVATIONS,
        "fallbacks": dict(results.fallbacks),
        "fallback_method": _top_k_method(results) if results.fallbacks else None,
    }


def _setting_dict(s: SettingResult) -> dict[str, Any]:
    """One setting in the export."""
    return {
        "noise_kind": s.noise_kind,
        "noise_rate": s.noise_rate,
        "setting": s.setting,
        "study_name": s.study_name,
        "trial_counts": dict(s.trial_counts),
        "selected": _clean(vars(s.selected)) if s.selected else None,
        "top_k": [_clean(vars(t)) for t in s.top_k],
        "baselines": {name: _clean(vars(b)) for name, b in s.baselines.items()},
        "comparisons": [_clean(vars(c)) for c in compare_setting(s)],
    }


def _point_dict(p: TrendPoint, predictions: bool) -> dict[str, Any]:
    """One trend point in the export (v1 points carry no predictions)."""
    d = _clean(vars(p))
    return d if predictions else {k: v for k, v in d.items() if k not in _PREDICTIONS}


def _clean(d: Mapping[str, Any]) -> dict[str, Any]:
    """Copy a dataclass dict with non-finite floats as None (JSON has no NaN)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def write_json(results: CampaignResults | Mapping[str, Any], path: Path | str) -> Path:
    """Write the export as JSON; ``path`` "-" is not special (the CLI handles stdout)."""
    data = to_export_dict(results) if isinstance(results, CampaignResults) else dict(results)
    path = Path(path)
    path.write_text(dumps_json(data), encoding="utf-8")
    return path


def dumps_json(data: Mapping[str, Any]) -> str:
    """Serialise an export dict (stable key order, strict JSON)."""
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


CSV_FIXED_COLUMNS = (
    "campaign",
    "config_hash",
    "noise_kind",
    "noise_rate",
    "setting",
    "n_complete",
    "n_pruned",
    "n_failed",
    "selected_source",
    "selected_trial_number",
    "selected_n_seeds",
    "selected_emphasis_mode",
    "selected_emphasis_variance",
    "selected_val_accuracy",
    "selected_test_accuracy",
    "selected_test_accuracy_at_best_val",
    "selected_memorized_noisy_fraction",
    "trend_emphasis_mode",
    "trend_emphasis_mode_low",
    "trend_emphasis_mode_high",
    "trend_emphasis_variance",
    "trend_emphasis_variance_low",
    "trend_emphasis_variance_high",
)
BASELINE_FIELDS = ("val_accuracy", "test_accuracy", "test_accuracy_at_best_val")
#: appended after every other column (new in 0.2: a reader by position is not broken)
CSV_SPREAD_COLUMNS = ("selected_val_accuracy_std", "selected_test_accuracy_std",
                      "selected_collapsed")
BASELINE_SPREAD_FIELDS = ("n", "val_accuracy_std", "test_accuracy_std", "collapsed", "params")


def to_csv_rows(results: CampaignResults | Mapping[str, Any]) -> tuple[list[str], list[dict]]:
    """Return (columns, rows): one row per kind x rate, numbers taken from the export dict."""
    data = to_export_dict(results) if isinstance(results, CampaignResults) else results
    losses = sorted({loss for s in data["settings"] for loss in s["baselines"]})
    predictions = data.get("schema_version", 1) >= 2
    extra = [f"trend_{name}" for name in _PREDICTIONS] if predictions else []
    columns = (
        list(CSV_FIXED_COLUMNS)
        + extra
        + [f"baseline_{loss}_{name}" for loss in losses for name in BASELINE_FIELDS]
        + list(CSV_SPREAD_COLUMNS)
        + [f"baseline_{loss}_{name}" for loss in losses for name in BASELINE_SPREAD_FIELDS]
    )
    trend_at = {
        (kind, p["noise_rate"]): p for kind, points in data["trends"].items() for p in points
    }
    rows = []
    for s in data["settings"]:
        row: dict[str, Any] = {
            "campaign": data["provenance"]["campaign"],
            "config_hash": data["provenance"]["config_hash"],
            "noise_kind": s["noise_kind"],
            "noise_rate": s["noise_rate"],
            "setting": s["setting"],
            "n_complete": s["trial_counts"].get("COMPLETE", 0),
            "n_pruned": s["trial_counts"].get("PRUNED", 0),
            "n_failed": s["trial_counts"].get("FAIL", 0),
        }
        selected = s["selected"] or {}
        row["selected_source"] = selected.get("source")
        row["selected_trial_number"] = selected.get("trial_number")
        row["selected_n_seeds"] = selected.get("n_seeds")
        for name in (
            "emphasis_mode",
            "emphasis_variance",
            "val_accuracy",
            "test_accuracy",
            "test_accuracy_at_best_val",
            "memorized_noisy_fraction",
        ):
            row[f"selected_{name}"] = selected.get(name)
        point = trend_at.get((s["noise_kind"], s["noise_rate"]), {})
        for name in ("emphasis_mode", "emphasis_variance"):
            for suffix in ("", "_low", "_high"):
                row[f"trend_{name}{suffix}"] = point.get(f"{name}{suffix}")
        for name in _PREDICTIONS if predictions else ():
            row[f"trend_{name}"] = point.get(name)
        for name in CSV_SPREAD_COLUMNS:
            row[name] = selected.get(name.removeprefix("selected_"))
        for loss in losses:
            baseline = s["baselines"].get(loss, {})
            for name in (*BASELINE_FIELDS, *BASELINE_SPREAD_FIELDS):
                row[f"baseline_{loss}_{name}"] = baseline.get(name)
            params = baseline.get("params")
            # one CSV cell, full precision: 'q=0.4;...'
            row[f"baseline_{loss}_params"] = params_pairs(params, ";", "") if params else None
        rows.append(row)
    return columns, rows


def dumps_csv(results: CampaignResults | Mapping[str, Any]) -> str:
    """Serialise the CSV export (floats as repr: they read back to the JSON's numbers)."""
    columns, rows = to_csv_rows(results)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def write_csv(results: CampaignResults | Mapping[str, Any], path: Path | str) -> Path:
    """Write the CSV export: one row per noise kind x rate."""
    path = Path(path)
    path.write_text(dumps_csv(results), encoding="utf-8")
    return path


def load_export(path: Path | str) -> dict[str, Any]:
    """Read and validate a JSON export.

    Raises:
        ExportError: unreadable, not JSON, a NaN or infinity anywhere, another schema, a
            newer version, or malformed (the message is one line).
    """
    path = Path(path)

    def non_finite(name: str) -> None:  # json.loads takes NaN and Infinity; exports never hold them
        raise ExportError(f"{path} holds a non-finite number ({name}): not a dm-tune export")

    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=non_finite)
    except OSError as exc:
        raise ExportError(f"cannot read export {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path} is not a JSON export ({_one_line(exc)})") from None
    validate_export(data, origin=str(path))
    return data


def validate_export(data: Any, origin: str = "export") -> None:
    """Check an export dict's schema, version and shape; raise ExportError (one line)."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ExportError(f"{origin} is not a {SCHEMA} export")
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ExportError(f"{origin} has no integer schema_version")
    if version > SCHEMA_VERSION:
        raise ExportError(
            f"{origin} has schema_version {version}; this dm-tune "
            f"({dm_tune.__version__}) reads up to {SCHEMA_VERSION}: upgrade dm-tune"
        )
    if version < 1:
        raise ExportError(f"{origin} has invalid schema_version {version}")
    try:
        _check_shape(data, version)
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(
            f"{origin} (schema_version {version}) is malformed: {_one_line(exc)}"
        ) from None


_POINT_KEYS = {
    4: frozenset(TrendPoint.__dataclass_fields__),
    3: frozenset(TrendPoint.__dataclass_fields__),
    2: frozenset(TrendPoint.__dataclass_fields__),
    1: frozenset(TrendPoint.__dataclass_fields__) - frozenset(_PREDICTIONS),
}
_CHECK_KEYS = frozenset(RateCheck.__dataclass_fields__)


def _check_shape(data: Mapping[str, Any], version: int = 1) -> None:
    """Check the parts recommend and the CSV writer rely on."""
    if not isinstance(data["provenance"], dict) or "campaign" not in data["provenance"]:
        raise ExportError("provenance.campaign is missing")
    if not isinstance(data["settings"], list):
        raise TypeError("settings must be a list")
    for s in data["settings"]:
        for key in ("noise_kind", "noise_rate", "selected", "top_k", "baselines", "trial_counts"):
            if key not in s:
                raise KeyError(f"settings entry without {key}")
    # v3: a kind that fell back to top-k has no predictions (null) in its points
    method = data["provenance"].get("method")
    fallbacks = method.get("fallbacks") if version >= 3 and isinstance(method, dict) else None
    nullable = frozenset(fallbacks) if isinstance(fallbacks, dict) else frozenset()
    _check_points(data["trends"], version, "trend", nullable)
    if version >= 2:
        _check_points(data["surface"], version, "surface", nullable)
        if set(data["surface"]) != set(data["trends"]):
            raise ValueError("surface and trends name different noise kinds")
        for row in data["checks"]["leave_one_rate_out"]:
            if not isinstance(row, dict) or set(row) != _CHECK_KEYS:
                raise ValueError("a leave_one_rate_out row without the fields of version 2")
    if version >= 4:
        _check_advice(data["advice"])


def _check_advice(by_kind: Any) -> None:
    """v4's advice: per kind, points with every field, finite numbers, sorted by rate."""
    if not isinstance(by_kind, dict):
        raise TypeError("advice must be an object")
    for kind, points in by_kind.items():
        if not isinstance(points, list) or not points:
            raise ExportError(f"advice {kind!r} has no points")
        for p in points:
            if not isinstance(p, dict) or set(p) != set(ADVICE_FIELDS):
                raise ExportError(f"advice {kind!r} has a point without the fields of version 4")
            if not isinstance(p["notes"], list) or not all(isinstance(n, str) for n in p["notes"]):
                raise ExportError(f"advice {kind!r} notes must be a list of strings")
            _check_numbers(kind, {k: v for k, v in p.items() if k not in ("origin", "notes")})
        rates = [p["noise_rate"] for p in points]
        if rates != sorted(rates):
            raise ExportError(f"advice {kind!r} is not sorted by noise_rate")


def _check_points(
    by_kind: Any, version: int, what: str, nullable: frozenset[str] = frozenset()
) -> None:
    """Per-kind lists of points: the version's fields, finite numbers, sorted by rate;
    the predictions of a kind in ``nullable`` (a v3 top-k fallback) may be null."""
    if not isinstance(by_kind, dict):
        raise TypeError(f"{what}s must be an object")
    for kind, points in by_kind.items():
        if not isinstance(points, list) or not points:
            raise ExportError(f"{what} {kind!r} has no points")
        for p in points:
            if not isinstance(p, dict) or set(p) != _POINT_KEYS[min(version, 4)]:
                raise ExportError(
                    f"{what} {kind!r} has a point without the fields of version {version}"
                )
            if kind in nullable:
                p = {k: v for k, v in p.items() if not (k in _PREDICTIONS and v is None)}
            _check_numbers(kind, p)
        rates = [p["noise_rate"] for p in points]
        if rates != sorted(rates):
            raise ExportError(f"{what} {kind!r} is not sorted by noise_rate")


def _check_numbers(kind: str, point: Mapping[str, Any]) -> None:
    """Every trend field is a finite number."""
    for key, value in point.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ExportError(f"trend {kind!r} field {key} is not a finite number")


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
