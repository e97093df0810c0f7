"""The one error hierarchy: every refusal of the user's input is a :class:`DMTuneError`.

The CLI turns a ``DMTuneError`` (and any other ``ValueError`` raised from user input)
into one line on stderr and exit code 2; anything else is a bug and exits 1.
"""

from __future__ import annotations

__all__ = [
    "CampaignError",
    "ConfigError",
    "DMTuneError",
    "DashboardRefused",
    "DataError",
    "DigestMismatchError",
    "EstimateError",
    "ExportError",
    "NoResultsError",
    "StorageError",
]


class DMTuneError(ValueError):
    """The user's input is wrong or refused; the message is one line that names it."""


class ConfigError(DMTuneError):
    """A campaign file that cannot be used; the message names the file and the key."""


class DataError(DMTuneError):
    """A dataset that cannot be used as asked (missing, malformed, too small)."""


class CampaignError(DMTuneError):
    """The campaign cannot be created or joined as asked."""


class DigestMismatchError(CampaignError):
    """This machine's noisy labels differ from the ones the study was created with."""


class StorageError(DMTuneError):
    """A storage could not be opened or reached; the message is one line, password redacted."""


class NoResultsError(DMTuneError):
    """The campaign has no study or no finished trial to aggregate."""


class ExportError(DMTuneError):
    """An export file that cannot be read: not JSON, another schema, a newer version."""


class DashboardRefused(DMTuneError):
    """The dashboard would be exposed beyond loopback without --allow-remote."""


class EstimateError(DMTuneError):
    """A noise estimate that cannot be made or read: labels unfit for K folds, an estimate
    file that is not one (its matrix not a transition matrix, an unknown kind)."""
