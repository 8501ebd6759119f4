#!/usr/bin/env bash
# Debian packages nbdeploy uses besides the Docker engine (scripts/docker-engine.sh installs
# that): `prometheus`, which `nbdeploy monitoring up` runs. Idempotent: installs only what is
# missing. Without root or sudo it says what to install and carries on (the monitoring tests
# then skip with that reason).
set -euo pipefail

say() { echo "system-packages: $*"; }
fail() { echo "system-packages: ERROR: $*" >&2; exit 1; }

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
if [ "${#missing[@]}" -eq 0 ]; then
    say "prometheus already installed"
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo)
else
    say "not root and no sudo: install ${missing[*]} yourself (apt-get install ${missing[*]})"
    exit 0
fi
say "installing ${missing[*]} with apt-get"
"${as_root[@]}" apt-get update -q || fail "apt-get update failed"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}" || fail "apt-get install ${missing[*]} failed"
# The package may start its own service on :9090; nbdeploy runs its own server instead.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    "${as_root[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
say "${missing[*]} installed"
