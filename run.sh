#!/usr/bin/env bash
# One entry point for people and CI. It bootstraps .venv idempotently, then runs, inside that environment:
#   bash run.sh test [PYTEST ARGS]      the test suite (`-m quick`: a subset in under 2 minutes)
#   bash run.sh python|pytest|streamlit|torchrun|bash ARGS    that program (`python probes/attention.py ...`)
#   bash run.sh ARGS                    the `interp` command (`bash run.sh report "prompt" --out report.html`)
# Or enter the environment once: `source .venv/bin/activate`, then `interp`, `python`, `streamlit` work directly.
# INTERP_VENV=DIR uses an existing, already set-up environment instead of .venv (the README test does).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${INTERP_VENV:-.venv}"
STAMP="$VENV/.interp-installed"
want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
t0=$(date +%s)
step() { echo "run.sh: $1 ($(( $(date +%s) - t0 )) s)" >&"${STEP_FD:-2}"; }  # one line per set-up step
if [ -n "${INTERP_VENV:-}" ]; then
  [ -x "$VENV/bin/python" ] || { echo "run.sh: INTERP_VENV=$VENV has no bin/python" >&2; exit 2; }
elif [ ! -x "$VENV/bin/python" ]; then
  step "creating the virtual environment $VENV"
  python3 -m venv "$VENV"
fi
if [ -z "${INTERP_VENV:-}" ] && [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "run.sh: setting up $VENV (first run only; log in $VENV/install.log)..." >&2
  exec 3>&1 4>&2 >"$VENV/install.log" 2>&1  # keep the terminal for the command's own output
  STEP_FD=4
  step "[1/3] upgrading pip"
  trap 'exec 1>&3 2>&4; echo "run.sh: set-up failed; see $VENV/install.log" >&2; tail -20 "$VENV/install.log" >&2' ERR
  "$VENV/bin/python" -m pip install -q --upgrade pip
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    step "[2/3] installing torch (CUDA build: a GPU is present)"
    "$VENV/bin/python" -m pip install -q torch          # CUDA build where there is a GPU
  elif ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    # The CPU build: an unpinned torch would pull several GB of CUDA wheels onto a GPU-less machine.
    step "[2/3] installing torch (CPU build)"
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  fi
  step "[3/3] installing interp and its dependencies (transformers, streamlit, plotly, ...)"
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  echo "$want" > "$STAMP"
  trap - ERR
  exec 1>&3 2>&4
  STEP_FD=2
  step "set-up done"
fi
# What `source "$VENV/bin/activate"` does, so scripts run here (gpu_check.sh's python3) find the environment.
export VIRTUAL_ENV="$(cd "$VENV" && pwd)" PATH="$(cd "$VENV" && pwd)/bin:$PATH"
PY="$VENV/bin/python"
case "${1:-}" in
  test) shift; exec "$PY" -m pytest -q "$@" ;;  # tests/conftest.py prints the one-line duration estimate
  python) shift; exec "$PY" "$@" ;;
  pytest|streamlit) tool="$1"; shift; exec "$PY" -m "$tool" "$@" ;;
  torchrun) shift; exec "$PY" -m torch.distributed.run "$@" ;;
  bash) shift; exec bash "$@" ;;
  *) exec "$PY" -m interp "$@" ;;
esac
