#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a virtual environment in .venv with torch (CPU 2.13.0 unless a torch is
# already importable there), this package in editable mode with its dev extras. Safe to run before every command.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  # TORCH_INDEX_URL lets a user pick a CUDA/CPU wheel index; by default pip resolves torch==2.13.0 as configured.
  .venv/bin/python -m pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION:-2.13.0}"
fi
stamp=.venv/.hessian-lora-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q -e ".[dev${EXTRAS:+,$EXTRAS}]"
  touch "$stamp"
fi
