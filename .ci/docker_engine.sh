#!/usr/bin/env bash
# A throwaway Docker engine for the image and compose tests, on machines that have
# no engine of their own and no reachable image registry (Debian, run as root).
#
#   .ci/docker_engine.sh install            apt-get docker.io docker-compose debootstrap if missing
#   .ci/docker_engine.sh start DIR          start dockerd with its socket, data and state under DIR
#   .ci/docker_engine.sh base-image         build python:3.11-slim from Debian bookworm (debootstrap)
#   .ci/docker_engine.sh build-base         a test-only base image that carries pip's CA bundle
#   .ci/docker_engine.sh stop DIR           stop that dockerd and remove DIR
#   .ci/docker_engine.sh run -- CMD ARGS    all of the above around CMD, stopping the engine afterwards
#
# `start` prints DOCKER_HOST=unix://DIR/docker.sock; the other commands read DOCKER_HOST.
# Environment: BASE_TAG (python:3.11-slim), BUILD_BASE_TAG (model-endpoint-build-base:latest),
# DEBIAN_MIRROR (debootstrap's default), MODEL_ENDPOINT_CACHE (where the root file system tarball
# is kept between runs; default ~/.cache/model-endpoint), DOCKER_STORAGE_DRIVER (overlay2 where
# the kernel allows it, else vfs).
set -euo pipefail

BASE_TAG=${BASE_TAG:-python:3.11-slim}
BUILD_BASE_TAG=${BUILD_BASE_TAG:-model-endpoint-build-base:latest}
CACHE_DIR=${MODEL_ENDPOINT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/model-endpoint}
ROOTFS_TAR=$CACHE_DIR/bookworm-python3.tar
DOCKER_CLIENT=${DOCKER_CLIENT:-docker}

log() { printf 'docker_engine: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

seconds_since() { echo $(($(date +%s) - $1)); }

cmd_install() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "needs root to install ${missing[*]} (or install them yourself)"
    log "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# overlay2 where this kernel mounts an overlay on DIR's file system; vfs (a full copy of
# the file system for every layer: several times slower to build) anywhere else.
# DOCKER_STORAGE_DRIVER overrides the choice.
storage_driver() {
    local probe=$1/overlay-probe
    if [ -n "${DOCKER_STORAGE_DRIVER:-}" ]; then
        echo "$DOCKER_STORAGE_DRIVER"
        return 0
    fi
    mkdir -p "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
    if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
        "$probe/merged" 2>/dev/null; then
        umount "$probe/merged"
        echo overlay2
    else
        echo vfs
    fi
    rm -rf "$probe"
}

cmd_start() {
    local dir=${1:?usage: start DIR}
    command -v dockerd >/dev/null || die "dockerd not found: run '$0 install' first"
    [ "$(id -u)" -eq 0 ] || die "dockerd needs root"
    mkdir -p "$dir/data" "$dir/exec"
    local sock=$dir/docker.sock started
    started=$(date +%s)
    local driver
    driver=$(storage_driver "$dir")
    # No bridge and no iptables: the engine touches no host network configuration, so
    # containers run with --network none or host.
    setsid dockerd \
        --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
        --host "unix://$sock" --storage-driver "$driver" --iptables=false --ip6tables=false \
        --bridge=none --log-level warn >"$dir/dockerd.log" 2>&1 </dev/null &
    echo $! >"$dir/dockerd.launcher.pid"
    for _ in $(seq 1 120); do
        if DOCKER_HOST="unix://$sock" "$DOCKER_CLIENT" version >/dev/null 2>&1; then
            log "engine up in $(seconds_since "$started") s, storage $driver (log: $dir/dockerd.log)"
            echo "DOCKER_HOST=unix://$sock"
            return 0
        fi
        kill -0 "$(cat "$dir/dockerd.launcher.pid")" 2>/dev/null || break
        sleep 0.5
    done
    log "dockerd did not answer; last lines of $dir/dockerd.log:"
    tail -n 20 "$dir/dockerd.log" >&2 || true
    cmd_stop "$dir" || true
    exit 1
}

cmd_stop() {
    local dir=${1:?usage: stop DIR} pid="" started
    started=$(date +%s)
    [ -f "$dir/dockerd.pid" ] && pid=$(cat "$dir/dockerd.pid")
    [ -z "$pid" ] && [ -f "$dir/dockerd.launcher.pid" ] && pid=$(cat "$dir/dockerd.launcher.pid")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        DOCKER_HOST="unix://$dir/docker.sock" "$DOCKER_CLIENT" ps -q 2>/dev/null |
            xargs -r env DOCKER_HOST="unix://$dir/docker.sock" "$DOCKER_CLIENT" rm -f >/dev/null 2>&1 || true
        kill -TERM "$pid"
        for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then
            log "dockerd $pid ignored SIGTERM for 30 s; killing it"
            kill -KILL "$pid" || true
        fi
    fi
    # The engine's mounts must be gone before its files can be removed.
    grep -o " $dir/[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$dir"
    log "engine stopped and its files removed in $(seconds_since "$started") s"
}

build_rootfs_tar() {
    command -v debootstrap >/dev/null || die "debootstrap not found: run '$0 install' first"
    local work started
    work=$(mktemp -d)
    started=$(date +%s)
    log "debootstrap bookworm minbase + python3 (about a minute)"
    # shellcheck disable=SC2086
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$work/rootfs" ${DEBIAN_MIRROR:-} >"$work/debootstrap.log" 2>&1 ||
        { tail -n 20 "$work/debootstrap.log" >&2; rm -rf "$work"; die "debootstrap failed"; }
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    mkdir -p "$CACHE_DIR"
    tar -C "$work/rootfs" -cf "$ROOTFS_TAR.tmp" . && mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$work"
    log "debootstrap done in $(seconds_since "$started") s ($(du -h "$ROOTFS_TAR" | cut -f1))"
}

cmd_base_image() {
    : "${DOCKER_HOST:?set DOCKER_HOST (see start)}"
    if "$DOCKER_CLIENT" image inspect "$BASE_TAG" >/dev/null 2>&1; then
        log "$BASE_TAG already present"
        return 0
    fi
    [ -f "$ROOTFS_TAR" ] || build_rootfs_tar
    local started
    started=$(date +%s)
    # Debian's python3 is 3.11, so the tag tells the truth about the interpreter.
    "$DOCKER_CLIENT" import \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        "$ROOTFS_TAR" "$BASE_TAG" >/dev/null
    log "imported $BASE_TAG in $(seconds_since "$started") s"
}

pip_cert() {
    local cert=${PIP_CERT:-}
    [ -n "$cert" ] || cert=$(pip config list 2>/dev/null | sed -n "s/^[a-z:.]*cert='\(.*\)'$/\1/p" | head -n1)
    [ -n "$cert" ] || cert=/etc/ssl/certs/ca-certificates.crt
    echo "$cert"
}

cmd_build_base() {
    : "${DOCKER_HOST:?set DOCKER_HOST (see start)}"
    local cert ctx
    cert=$(pip_cert)
    [ -f "$cert" ] || die "pip's CA bundle $cert not found (set PIP_CERT)"
    ctx=$(mktemp -d)
    cp "$cert" "$ctx/pip-ca.pem"
    # Test-only: the project's Dockerfile builds FROM this image with
    # --build-arg BASE_IMAGE=$BUILD_BASE_TAG so pip trusts this machine's TLS proxy.
    cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_TAG
COPY pip-ca.pem /usr/local/share/pip-ca.pem
ENV PIP_CERT=/usr/local/share/pip-ca.pem
EOF
    "$DOCKER_CLIENT" build -q -t "$BUILD_BASE_TAG" "$ctx" >"$ctx/build.log" 2>&1 ||
        { cat "$ctx/build.log" >&2; rm -rf "$ctx"; die "building $BUILD_BASE_TAG failed"; }
    rm -rf "$ctx"
    log "built $BUILD_BASE_TAG (FROM $BASE_TAG, with pip's CA bundle $cert)"
}

cmd_run() {
    [ "${1:-}" = "--" ] && shift
    [ $# -gt 0 ] || die "usage: run -- COMMAND [ARGS...]"
    cmd_install
    local host status=0
    ENGINE_DIR=$(mktemp -d /tmp/docker-engine.XXXXXX)
    trap 'cmd_stop "$ENGINE_DIR"' EXIT
    trap 'exit 130' INT TERM
    host=$(cmd_start "$ENGINE_DIR")
    export DOCKER_HOST=${host#DOCKER_HOST=}
    cmd_base_image
    cmd_build_base
    export BASE_IMAGE=$BUILD_BASE_TAG
    "$@" || status=$?
    return "$status"
}

main() {
    local cmd=${1:-}
    shift || true
    case $cmd in
    install) cmd_install ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    base-image) cmd_base_image ;;
    build-base) cmd_build_base ;;
    run) cmd_run "$@" ;;
    *) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2; exit 2 ;;
    esac
}

main "$@"
