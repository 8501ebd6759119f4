#!/usr/bin/env bash
# Make a local Docker engine answer and build the nbdeploy base image, idempotently.
#
# Used by the test command and by CI on a fresh Debian 12 machine (as root) where no image can
# be pulled: the engine runs without bridge/iptables, and the base image is made with
# debootstrap from the machine's own Debian mirror. Safe to run again: it skips whatever is
# already there.
#
# Settings (environment):
#   NBDEPLOY_BASE_IMAGE   tag of the base image to build   (default nbdeploy/base:bookworm)
#   NBDEPLOY_CI_DIR       where the dockerd log goes        (default /tmp)
#   DOCKERD_TIMEOUT       seconds to wait for the engine    (default 60)
set -euo pipefail

BASE_IMAGE="${NBDEPLOY_BASE_IMAGE:-nbdeploy/base:bookworm}"
LOG_DIR="${NBDEPLOY_CI_DIR:-/tmp}"
TIMEOUT="${DOCKERD_TIMEOUT:-60}"

say() { echo "docker-engine: $*"; }
fail() { echo "docker-engine: ERROR: $*" >&2; exit 1; }

mkdir -p "$LOG_DIR" || fail "cannot create the log directory $LOG_DIR"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

engine_answers() { docker info >/dev/null 2>&1; }

install_missing_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    if [ "${#missing[@]}" -eq 0 ]; then
        say "docker.io and debootstrap already installed"
        return
    fi
    say "installing ${missing[*]} with apt-get"
    as_root apt-get update -q || fail "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" || fail "apt-get install ${missing[*]} failed"
}

start_engine() {
    local log="$LOG_DIR/dockerd.log"
    say "starting dockerd in the background (log: $log)"
    as_root nohup dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
        >"$log" 2>&1 </dev/null &
    local waited=0
    until engine_answers; do
        if [ "$waited" -ge "$TIMEOUT" ]; then
            tail -n 20 "$log" >&2 || true
            fail "dockerd did not answer 'docker info' within ${TIMEOUT}s (see $log)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "engine answers after ${waited}s"
}

debian_mirror() {
    local sources=/etc/apt/sources.list.d/debian.sources uri=""
    if [ -r "$sources" ]; then
        uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' \
            "$sources")
    fi
    if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
        uri=$(awk '/^deb[ \t]/ { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) {
                 if ($i !~ /security/) { print $i; exit } else break } }' /etc/apt/sources.list)
    fi
    [ -n "$uri" ] || fail "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
    echo "$uri"
}

ROOTFS=""
remove_rootfs() {
    if [ -n "$ROOTFS" ]; then as_root rm -rf "$ROOTFS"; fi
    ROOTFS=""
}

build_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "base image $BASE_IMAGE already present"
        return
    fi
    local mirror
    mirror=$(debian_mirror)
    ROOTFS=$(mktemp -d /tmp/nbdeploy-rootfs.XXXXXX)
    trap remove_rootfs EXIT
    say "building base image $BASE_IMAGE with debootstrap from $mirror (about a minute)"
    as_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$ROOTFS" "$mirror" >"$LOG_DIR/debootstrap.log" 2>&1 \
        || { tail -n 20 "$LOG_DIR/debootstrap.log" >&2; fail "debootstrap failed (see $LOG_DIR/debootstrap.log)"; }
    as_root rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    say "importing the root filesystem as $BASE_IMAGE"
    as_root tar -C "$ROOTFS" -c . | docker import - "$BASE_IMAGE" >/dev/null \
        || fail "docker import of $BASE_IMAGE failed"
    remove_rootfs
    docker run --rm --network none "$BASE_IMAGE" python3 --version \
        || fail "base image $BASE_IMAGE has no working python3"
    say "base image $BASE_IMAGE ready"
}

if engine_answers; then
    say "engine already answers; leaving it as it is"
else
    install_missing_packages
    start_engine
fi
build_base_image
