"""The ``dm-tune`` command line: one Typer app, one error mapper, shared option types.

- ``app``: the app and the error mapper (exit 2 for refusals, 1 for bugs);
- ``options``: option types, device, threads and the default report folder;
- ``campaign_commands``: create, run, worker, launch, confirm, status, dashboard;
- ``guideline_commands``: export, recommend, report;
- ``tables`` and ``views``: what the terminal shows.
"""

from __future__ import annotations

import sys

from dm_tune.cli import campaign_commands, guideline_commands  # noqa: F401  (registers)
from dm_tune.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    import logging

    # Optuna logs every trial at INFO; the CLI shows its own progress instead.
    logging.getLogger("optuna").setLevel(logging.WARNING)
    app()


if __name__ == "__main__":
    sys.exit(main())
