#!/usr/bin/env bash
# Fresh venv -> install deepcore with its test extras -> lint -> the whole test suite.
# This is the README's test command and what .ci/run runs.
#   PYTHON=python3.11  interpreter for the venv (default: python3)
#   VENV=.venv         where the venv goes
#   DEEPCORE_TEST_TORCH=0  skip installing the CPU PyTorch 2.13 reference (parity tests then skip)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev,numba]"
if [ "${DEEPCORE_TEST_TORCH:-1}" = "1" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==2.13.0" \
    || echo "ci/test.sh: torch 2.13.0 could not be installed; the PyTorch parity tests will skip"
fi

echo "== ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .

echo "== pytest"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
