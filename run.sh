#!/usr/bin/env bash
# One entry point for people and CI. It bootstraps .venv idempotently, then either runs the test
# suite (`bash run.sh test`) or forwards everything else to the `interp` command
# (`bash run.sh report "prompt" --out report.html`).
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
STAMP="$VENV/.interp-installed"
want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
t0=$(date +%s)
step() { echo "run.sh: $1 ($(( $(date +%s) - t0 )) s)" >&"${STEP_FD:-2}"; }  # one line per set-up step
if [ ! -x "$VENV/bin/python" ]; then
  step "creating the virtual environment $VENV"
  python3 -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
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
if [ "${1:-}" = "test" ]; then
  shift
  exec "$VENV/bin/python" -m pytest -q "$@"
fi
exec "$VENV/bin/interp" "$@"
