#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with the CPU build of torch
# (installed first, so that the `torch>=2.3` requirement is already met and pip
# never pulls the multi-GB CUDA build), then fluxtrain and its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.fluxtrain-setup
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q "torch==2.13.0"
    .venv/bin/python -m pip install -q -e ".[dev]"
    touch "$stamp"
fi
