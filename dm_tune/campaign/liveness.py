"""The worker's liveness file for a Kubernetes probe (``DM_TUNE_HEARTBEAT_FILE``).

When the variable names a file, :func:`touch` sets its mtime to now: the worker calls it
after joining a campaign and on every pass of its loop, and the trial heartbeat thread
after every *successful* beat (:func:`dm_tune.campaign._optuna.heartbeat`), never after a
failed one. A probe that fails when the file is older than a few heartbeat intervals
(deploy/k8s/workers-job.yaml) thus restarts a worker that is stuck or cut off from the
database. A failure to write the file is logged once per process, and never stops work.
"""

from __future__ import annotations

import logging
import os
import threading

__all__ = ["HEARTBEAT_FILE_ENV", "touch"]

HEARTBEAT_FILE_ENV = "DM_TUNE_HEARTBEAT_FILE"
_logger = logging.getLogger(__name__)
_failed = threading.Event()


def touch() -> None:
    """Create or refresh the liveness file, if ``DM_TUNE_HEARTBEAT_FILE`` is set."""
    path = os.environ.get(HEARTBEAT_FILE_ENV)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8"):
            pass
        os.utime(path)
    except OSError as error:
        if not _failed.is_set():
            _failed.set()
            _logger.warning("cannot write the liveness file %s ($%s): %s", path,
                            HEARTBEAT_FILE_ENV, error)
