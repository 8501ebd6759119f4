#!/usr/bin/env bash
# Build the JupyterLab extension (labextension/ -> nbdeploy/labextension/) and make the venv's
# Jupyter load it and the server extension. Idempotent: skips `jlpm install` and the build when
# nothing changed since the last run, so it takes about a second on an up-to-date tree.
#
# The venv's Jupyter serves the build through a symlink (as `jupyter labextension develop`
# would make), so a rebuild is live without reinstalling; `pip install .` instead copies the
# built extension into share/jupyter/labextensions/nbdeploy through the wheel's shared data.
#
# Settings (environment):
#   VENV    the virtualenv holding jupyterlab   (default .venv)
#   FORCE   1 to reinstall node modules and rebuild regardless of timestamps
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-.venv}
FORCE=${FORCE:-0}
SRC=labextension
OUT=nbdeploy/labextension

say() { echo "[labextension] $*"; }
fail() { echo "[labextension] ERROR: $*" >&2; exit 1; }

[ -x "$VENV/bin/python" ] || fail "no virtualenv at $VENV: run scripts/setup.sh first"
VENV_DIR=$(cd "$VENV" && pwd)
export PATH="$VENV_DIR/bin:$PATH"
command -v node >/dev/null 2>&1 || fail "Node.js is not installed (the extension build needs node >= 20)"
command -v jlpm >/dev/null 2>&1 || fail "jlpm not found in $VENV/bin: install jupyterlab into the venv"

# True when $1 is missing or older than any of the following paths (files or directories).
stale() {
    local target=$1
    shift
    [ "$FORCE" = 1 ] || [ ! -e "$target" ] || [ -n "$(find "$@" -newer "$target" -print -quit)" ]
}

if stale "$SRC/node_modules/.yarn-state.yml" "$SRC/package.json" "$SRC/yarn.lock" "$SRC/.yarnrc.yml"; then
    say "installing node modules (jlpm install)"
    (cd "$SRC" && jlpm install)
    touch "$SRC/node_modules/.yarn-state.yml"
else
    say "node modules up to date"
fi

if stale "$OUT/package.json" "$SRC/src" "$SRC/style" "$SRC/package.json" "$SRC/tsconfig.json" \
    "$SRC/yarn.lock" "$SRC/schema"; then
    CORE_PACKAGE=$("$VENV/bin/python" -c \
        'import jupyterlab, os; print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging", "package.json"))')
    [ -f "$CORE_PACKAGE" ] || fail "no JupyterLab core package file at $CORE_PACKAGE"
    say "building against $CORE_PACKAGE"
    (
        cd "$SRC"
        jlpm clean
        jlpm build:lib:prod
        jupyter labextension build . --core-package-file "$CORE_PACKAGE"
    )
    touch "$OUT/package.json"
else
    say "build up to date ($OUT)"
fi

# Serve the build from the venv: a symlink to the build output, replacing a stale copy.
LABEXT_DIR="$VENV_DIR/share/jupyter/labextensions"
mkdir -p "$LABEXT_DIR"
if [ "$(readlink "$LABEXT_DIR/nbdeploy" 2>/dev/null)" != "$ROOT/$OUT" ]; then
    rm -rf "$LABEXT_DIR/nbdeploy"
    ln -s "$ROOT/$OUT" "$LABEXT_DIR/nbdeploy"
    say "linked $LABEXT_DIR/nbdeploy -> $ROOT/$OUT"
fi

# Enable the server extension the way the wheel does (pip installs the same file).
CONFIG=jupyter-config/jupyter_server_config.d/nbdeploy.json
CONFIG_DIR="$VENV_DIR/etc/jupyter/jupyter_server_config.d"
if ! cmp -s "$CONFIG" "$CONFIG_DIR/nbdeploy.json"; then
    mkdir -p "$CONFIG_DIR"
    cp "$CONFIG" "$CONFIG_DIR/nbdeploy.json"
    say "enabled the server extension ($CONFIG_DIR/nbdeploy.json)"
fi

plain() { sed 's/\x1b\[[0-9;]*m//g'; }
labext=$(jupyter labextension list 2>&1 | plain)
echo "$labext" | grep -Eq '^\s*nbdeploy v[^ ]+ enabled.*OK' ||
    fail "jupyter labextension list does not show nbdeploy enabled and OK:"$'\n'"$labext"
serverext=$(jupyter server extension list 2>&1 | plain)
echo "$serverext" | grep -Eq 'nbdeploy\.jupyter\.server.*enabled' ||
    fail "jupyter server extension list does not show nbdeploy enabled:"$'\n'"$serverext"
echo "$serverext" | grep -A1 'nbdeploy\.jupyter\.server' | grep -q 'OK' ||
    fail "the nbdeploy server extension does not import:"$'\n'"$serverext"
say "nbdeploy lab extension and server extension are enabled and OK"
