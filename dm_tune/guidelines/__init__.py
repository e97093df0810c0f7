"""Guidelines: aggregate a campaign's studies, fit the trend, recommend, export.

This subpackage only reads an Optuna storage (no training):

- ``results``: the data classes; ``selection``: the one rule that names a setting's best;
- ``loading``: studies -> :class:`CampaignResults`; ``trend``: the pure trend fit;
- ``recommend``: parameters at any rate; ``export``: the versioned JSON/CSV files.

Example:
    >>> results = load_campaign("sqlite:///dm_tune.db", "digits-quick")  # doctest: +SKIP
    >>> rec = recommend(results, "symmetric", 0.3)  # doctest: +SKIP
    >>> rec.emphasis_mode, rec.emphasis_variance  # doctest: +SKIP
"""

from __future__ import annotations

from dm_tune.errors import NoResultsError
from dm_tune.guidelines.export import (
    SCHEMA,
    SCHEMA_VERSION,
    dumps_csv,
    dumps_json,
    load_export,
    to_csv_rows,
    to_export_dict,
    validate_export,
    write_csv,
    write_json,
)
from dm_tune.guidelines.loading import load_campaign
from dm_tune.guidelines.recommend import recommend
from dm_tune.guidelines.results import (
    BaselineResult,
    CampaignResults,
    Provenance,
    Recommendation,
    Selection,
    SettingResult,
    Trend,
    TrendPoint,
    TrialPoint,
)
from dm_tune.guidelines.selection import select, summarize_baselines
from dm_tune.guidelines.trend import fit_trends

__all__ = [  # noqa: RUF022 (grouped by module, not sorted)
    "SCHEMA", "SCHEMA_VERSION", "dumps_csv", "dumps_json", "load_export", "to_csv_rows",
    "to_export_dict", "validate_export", "write_csv", "write_json",
    "BaselineResult", "CampaignResults", "Provenance", "Recommendation", "Selection",
    "SettingResult", "Trend", "TrendPoint", "TrialPoint",
    "NoResultsError", "fit_trends", "load_campaign", "recommend", "select",
    "summarize_baselines",
]
