#!/usr/bin/env bash
# Everything the test suite needs, then the suite: lint, a real Docker engine, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

./scripts/setup.sh
if ! command -v chromium >/dev/null 2>&1; then
  echo "[test] installing Debian's chromium for the browser tests"
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
fi
echo "[test] JupyterLab extension"
./scripts/build-labextension.sh
echo "[test] lint"
"$VENV/bin/ruff" check nbdeploy tests benchmarks
"$VENV/bin/ruff" format --check nbdeploy tests benchmarks
VENV_BIN=$(cd "$VENV" && pwd)/bin
(cd labextension && PATH="$VENV_BIN:$PATH" jlpm lint:check)

echo "[test] Docker engine and base image"
./scripts/docker-engine.sh

# The server's wheelhouse is downloaded once per machine, not once per run.
export NBDEPLOY_CACHE=${NBDEPLOY_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/nbdeploy}
mkdir -p test-artifacts "$NBDEPLOY_CACHE"

if [ "${CI:-}" = "true" ]; then
  # On CI the machine is ours: leave no test container behind, whatever happens.
  trap 'docker ps -aq --filter label=nbdeploy.managed=true | xargs -r docker rm -f >/dev/null 2>&1 || true' EXIT
fi

echo "[test] pytest"
"$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
