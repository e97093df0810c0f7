#!/usr/bin/env bash
# Container entrypoint: wait for a PostgreSQL storage to accept connections, then run
# `dm-tune "$@"`. Compose already orders start-up with healthchecks; the wait covers
# workers started elsewhere (another machine, a restarted database) so they retry
# instead of dying on the first connection error.
set -euo pipefail

# The storage is `--storage URL` / `--storage=URL` if given, else $DM_TUNE_STORAGE.
storage="${DM_TUNE_STORAGE:-}"
prev=""
for arg in "$@"; do
  case "$arg" in
    --storage=*) storage="${arg#--storage=}" ;;
    *) [[ "$prev" == "--storage" ]] && storage="$arg" ;;
  esac
  prev="$arg"
done

if [[ "$storage" == postgres* && "${DM_TUNE_DB_WAIT:-60}" != "0" ]]; then
  # The URL travels in the environment, not argv, so the password stays out of `ps`.
  DM_TUNE_WAIT_URL="$storage" python - <<'PY'
import os, sys, time

from dm_tune.storage import StorageError, check_connection

deadline = time.monotonic() + float(os.environ.get("DM_TUNE_DB_WAIT", "60"))
while True:
    try:
        check_connection(os.environ["DM_TUNE_WAIT_URL"])
        break
    except StorageError as exc:  # message is one line with the password redacted
        if time.monotonic() > deadline:
            sys.exit(f"dm-tune entrypoint: giving up waiting for the database: {exc}")
        print(f"dm-tune entrypoint: waiting for the database: {exc}", file=sys.stderr)
        time.sleep(2)
PY
fi

exec dm-tune "$@"
