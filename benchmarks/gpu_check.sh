#!/usr/bin/env bash
# One prepared GPU run: kernel checks for every attention option, the attention and cache benchmarks, then the
# rest of benchmarks/run_all.py's set that has a CUDA path, JSON into OUT_DIR (see benchmarks/gpu_check.py).
# Uses the machine's own python/torch/triton; needs nothing else installed: the benchmarks that need
# transformer_lens (all but attention; interp's hook points are TransformerLens') are skipped with a line where it
# is missing, unless WHEELS names a folder of wheels to install first (no index, no dependencies resolved):
#
#   benchmarks/gpu_check.sh OUT_DIR             # CUDA machine, < 8 minutes
#   benchmarks/gpu_check.sh OUT_DIR --dry-run   # CPU smoke run: tiny sizes, Triton's interpreter
#   WHEELS=.whl benchmarks/gpu_check.sh OUT_DIR # first: pip install --no-index --no-deps --target ... .whl/*.whl
#
# The wheels a plain CUDA image lacks for transformer_lens 4.3 (Python 3.12): transformer_lens, beartype,
# fancy_einsum, typeguard, transformers_stream_generator, datasets (+ dill, multiprocess) and wandb's
# requirements, each fetched with `pip download --no-deps --only-binary=:all: --python-version 3.12
# --platform manylinux2014_x86_64 -d .whl NAME==VERSION` on a machine with a package index.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 OUT_DIR [--dry-run] [--force]" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ -n "${WHEELS:-}" ]; then
  if ! compgen -G "$WHEELS/*.whl" > /dev/null; then
    echo "WHEELS: no *.whl in $WHEELS" >&2
    exit 2
  fi
  SITE="$(mktemp -d)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"
exec timeout 480 "$PY" "$ROOT/benchmarks/gpu_check.py" "$@"
