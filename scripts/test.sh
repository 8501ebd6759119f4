#!/usr/bin/env bash
# Everything the test suite needs, then the suite: lint, a real Docker engine, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

./scripts/setup.sh
echo "[test] lint"
"$VENV/bin/ruff" check nbdeploy tests benchmarks
"$VENV/bin/ruff" format --check nbdeploy tests benchmarks

if [ -x scripts/docker-engine.sh ]; then
  echo "[test] Docker engine and base image"
  ./scripts/docker-engine.sh
fi

echo "[test] pytest"
mkdir -p test-artifacts
"$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
