#!/usr/bin/env bash
# Every benchmark of dm-tune, one after the other (they would disturb each other's timings
# if run together); prints each script's output, then all RESULT lines together.
#
#   bash benchmarks/run_all.sh          # `make bench`; CI-sized search_efficiency
#                                       # (~1.5 h: guideline_stability runs 4 campaigns,
#                                       # guideline_heldout 3 per dataset, 2 datasets)
#   FULL=1 bash benchmarks/run_all.sh   # the full search_efficiency (3 settings, ~5 min)
#   OUT=dir bash benchmarks/run_all.sh  # also keep the log in dir/bench.txt
#
# worker_scaling.py and scale.py need the local PostgreSQL server (they start it if needed);
# gpu_check.sh runs on CUDA when torch sees a GPU, else its --cpu-smoke version.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY="$(command -v python3)"

LOG="$(mktemp -t dm-tune-bench.XXXXXX)"
trap 'rm -f "$LOG"' EXIT
failed=()

run() {
  local name="$1"
  shift
  echo "== $name: $*"
  local start=$SECONDS
  if "$@" 2>&1 | tee -a "$LOG"; then
    echo "== $name: $((SECONDS - start)) s"
  else
    echo "== $name: FAILED after $((SECONDS - start)) s"
    failed+=("$name")
  fi
}

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
     "load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs"
run loss_overhead "$PY" benchmarks/loss_overhead.py --rounds 30
run epoch_time "$PY" benchmarks/epoch_time.py --quick
run precision "$PY" benchmarks/precision.py
run dm_vs_cce "$PY" benchmarks/dm_vs_cce.py
run storage_overhead "$PY" benchmarks/storage_overhead.py
run worker_scaling "$PY" benchmarks/worker_scaling.py
run scale "$PY" benchmarks/scale.py
run memory "$PY" benchmarks/memory.py
run population "$PY" benchmarks/population.py
run vs_optuna "$PY" benchmarks/vs_optuna.py --population 8
run rung_agreement "$PY" benchmarks/rung_agreement.py
run validation_design "$PY" benchmarks/validation_design.py
run guideline_stability "$PY" benchmarks/guideline_stability.py
run guideline_heldout "$PY" benchmarks/guideline_heldout.py --dataset digits
run guideline_heldout_synthetic "$PY" benchmarks/guideline_heldout.py --dataset synthetic
run rate_dimension "$PY" benchmarks/rate_dimension.py
run noise_estimate "$PY" benchmarks/noise_estimate.py
run guideline_transfer "$PY" benchmarks/guideline_transfer.py
if [[ "${FULL:-0}" == "1" ]]; then
  run search_efficiency "$PY" benchmarks/search_efficiency.py
else
  run search_efficiency "$PY" benchmarks/search_efficiency.py --quick
fi
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
then
  run gpu_check bash benchmarks/gpu_check.sh
else
  run gpu_check bash benchmarks/gpu_check.sh --cpu-smoke
fi

echo
echo "== all RESULT lines (load average now $(cut -d' ' -f1-3 /proc/loadavg))"
grep '^RESULT ' "$LOG" || true
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  cp "$LOG" "$OUT/bench.txt"
fi
if ((${#failed[@]})); then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
