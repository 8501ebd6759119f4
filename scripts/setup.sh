#!/usr/bin/env bash
# One-time (idempotent) set-up of a development environment on a fresh Debian 12 machine:
# a virtualenv in .venv with nbdeploy installed editable plus every extra the tests need, and
# the Debian packages of scripts/system-packages.sh (Prometheus).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.nbdeploy-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing nbdeploy and its test dependencies (package indexes only)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e ".[test]"
  touch "$stamp"
fi
echo "[setup] python environment ready: $VENV"
./scripts/system-packages.sh
