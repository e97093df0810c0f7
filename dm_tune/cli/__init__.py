"""The ``dm-tune`` command line: one Typer app, one error mapper, shared option types.

- ``app``: the app and the error mapper (exit 2 for refusals, 1 for bugs);
- ``options``: option types, device, threads and the default report folder;
- ``campaign_commands``: create, run, worker, launch, confirm, status, dashboard;
- ``guideline_commands``: export, recommend, report;
- ``estimate_commands``: estimate-noise;
- ``cluster_commands``: storage-proxy, and the Slurm parts of launch and status;
- ``tables`` and ``views``: what the terminal shows.
"""

from __future__ import annotations

import sys

from dm_tune.cli import (  # noqa: F401  (registers)
    campaign_commands,
    cluster_commands,
    estimate_commands,
    guideline_commands,
)
from dm_tune.cli.app import app, run_app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    import logging

    # Optuna logs every trial at INFO; the CLI shows its own progress instead.
    logging.getLogger("optuna").setLevel(logging.WARNING)
    sys.exit(run_app())  # usage errors: one `dm-tune: ` line, exit 2 (see run_app)


if __name__ == "__main__":
    sys.exit(main())
