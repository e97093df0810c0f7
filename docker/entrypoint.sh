#!/usr/bin/env bash
# Container entrypoint: wait for a PostgreSQL storage to accept connections, then run
# `dm-tune "$@"`. Compose already orders start-up with healthchecks; the wait covers
# workers started elsewhere (another machine, a restarted database) so they retry
# instead of dying on the first connection error.
#
# Under docker-compose (POSTGRES_PASSWORD set) it first refuses the example password and
# one that is not URL-safe (check-password.sh). With DM_TUNE_GPU_SLOTS (a directory
# shared by the replicas of one service) it claims one GPU for this container, see
# claim_gpu below.
set -euo pipefail

here="$(dirname "$0")"
if [[ -n "${POSTGRES_PASSWORD+set}" ]]; then
  for checker in "$here/check-password.sh" "$here/dm-tune-check-password"; do
    if [[ -f "$checker" ]]; then
      bash "$checker"
      break
    fi
  done
fi

# `--scale worker=N` gives every replica the same device request (a Compose limitation):
# each sees every GPU. So each replica holds an exclusive lock on one file per GPU in a
# volume that all replicas share, takes the first free one and narrows
# CUDA_VISIBLE_DEVICES to it; cuda:0 inside is then that GPU. The lock is an open file
# descriptor that `exec dm-tune` inherits: it is released when the worker exits or
# crashes, and a restarted replica takes a free GPU again.
claim_gpu() {
  local slots="$1" count="${DM_TUNE_GPU_COUNT:-}" i fd
  if [[ -z "$count" ]]; then
    count="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)"
  fi
  if [[ -z "$count" || "$count" == 0 ]]; then
    count="$(python -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
  fi
  if [[ "$count" == 0 ]]; then
    echo "dm-tune entrypoint: no GPU is visible in this container (is the NVIDIA container toolkit installed?)" >&2
    exit 2
  fi
  mkdir -p "$slots" 2>/dev/null || true
  if [[ ! -w "$slots" ]]; then
    echo "dm-tune entrypoint: cannot write GPU lock files in $slots (DM_TUNE_GPU_SLOTS)" >&2
    exit 2
  fi
  for ((i = 0; i < count; i++)); do
    exec {fd}>"$slots/gpu-$i.lock"
    if flock -n "$fd"; then
      # nvidia-smi's numbering (PCI bus order), not CUDA's default fastest-first order
      export CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES="$i"
      echo "dm-tune entrypoint: this replica uses GPU $i of $count" >&2
      return 0
    fi
    exec {fd}>&-
  done
  # exit 0: with restart: on-failure a surplus replica stays down instead of looping
  echo "dm-tune entrypoint: all $count GPUs are taken by other replicas; this one stops (scale to at most $count)" >&2
  exit 0
}

if [[ -n "${DM_TUNE_GPU_SLOTS:-}" ]]; then
  claim_gpu "$DM_TUNE_GPU_SLOTS"
fi

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
