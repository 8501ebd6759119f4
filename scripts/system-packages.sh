#!/usr/bin/env bash
# Debian packages nbdeploy uses besides the Docker engine (scripts/docker-engine.sh installs
# that): `prometheus`, which `nbdeploy monitoring up` runs, and `docker-registry`, which the
# push tests start on 127.0.0.1 as a plain process. Idempotent: installs only what is
# missing. Without root or sudo it says what to install and carries on (the monitoring and
# push tests then skip with that reason).
set -euo pipefail

say() { echo "system-packages: $*"; }
fail() { echo "system-packages: ERROR: $*" >&2; exit 1; }

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
if [ "${#missing[@]}" -eq 0 ]; then
    say "prometheus and docker-registry already installed"
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
# The packages may start their own services (prometheus on :9090, docker-registry on :5000
# of every interface); nbdeploy and its tests run their own on 127.0.0.1 instead.
for service in prometheus docker-registry; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled --quiet "$service" 2>/dev/null; then
        "${as_root[@]}" systemctl disable --now "$service" >/dev/null 2>&1 || true
    fi
done
say "${missing[*]} installed"
