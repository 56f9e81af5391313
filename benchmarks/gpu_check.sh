#!/usr/bin/env bash
# One prepared GPU run: kernel checks for every attention option, the attention and cache benchmarks,
# JSON into OUT_DIR (see benchmarks/gpu_check.py). Uses the machine's own python/torch/triton; needs nothing
# else installed (the cache benchmark runs only where transformers and transformer_lens exist).
#
#   benchmarks/gpu_check.sh OUT_DIR             # CUDA machine, < 8 minutes
#   benchmarks/gpu_check.sh OUT_DIR --dry-run   # CPU smoke run: tiny sizes, Triton's interpreter
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 OUT_DIR [--dry-run] [--force]" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"
exec timeout 480 "$PY" "$ROOT/benchmarks/gpu_check.py" "$@"
