#!/usr/bin/env bash
# The README's test command: set up, lint, type-check, then the whole test suite
# (the default fast run, then the tests marked slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src migrate
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
.venv/bin/python -m pytest -m slow "$@" || { rc=$?; [ $rc -eq 5 ] || exit $rc; }
