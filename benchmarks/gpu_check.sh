#!/usr/bin/env bash
# One prepared GPU check (planned < 8 min on one H200): the population's speed-up at K = 16
# against each model's bound, fastnet's K = 16 set-up with its breakdown (cold processes),
# population/train_trial agreement, DM/CCE epoch ratios (fused and eager loss), how to fill
# one GPU (processes vs a population), fastnet bf16 vs fp32. See benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh              # needs CUDA
#   bash benchmarks/gpu_check.sh --cpu-smoke  # tiny CPU version of every section (CI)
#   OUT=/some/dir bash benchmarks/gpu_check.sh  # also writes gpu_check.txt/.json there
#
# Extra arguments go to benchmarks/gpu_check.py (e.g. --compile, --epochs 6,
# --sections setup,epoch).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"

if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
  PY="$ROOT/.venv/bin/python"
else
  PY="$(command -v python3 || true)"
fi
if [[ -z "$PY" ]]; then
  echo "gpu_check: no Python found (set PYTHON or create .venv with 'make install')" >&2
  exit 2
fi
smoke=0
for arg in "$@"; do
  [[ "$arg" == "--cpu-smoke" ]] && smoke=1
done
if [[ $smoke -eq 0 ]]; then
  if ! "$PY" -c "import dm_tune, torch" 2>/dev/null; then
    echo "gpu_check: $PY cannot import torch and dm_tune (run 'make install' or" \
         "'pip install -e .' first, or set PYTHON)" >&2
    exit 2
  fi
  if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: CUDA is not available to torch on this machine;" \
         "run 'bash benchmarks/gpu_check.sh --cpu-smoke' to check the script on CPU" >&2
    exit 2
  fi
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
      | sed 's/^/# /'
  fi
fi

export PYTHONUNBUFFERED=1
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  "$PY" "$HERE/gpu_check.py" --out "$OUT/gpu_check.json" "$@" 2>&1 | tee "$OUT/gpu_check.txt"
else
  "$PY" "$HERE/gpu_check.py" "$@"
fi
