#!/usr/bin/env bash
# The Python 3.13 test lane: a Debian 13 (trixie) chroot built with debootstrap from
# Debian's registry, holding Python 3.13, a venv with bpy 5.3.0 and the project's
# dependencies, and Debian's own `blender` package (Blender 4.3 on the system Python 3.13)
# for the real-binary checks.
#
#   scripts/lane313.sh setup          build or refresh the chroot and the venv (cached)
#   scripts/lane313.sh test [ARGS]    setup, then `python -m pytest ARGS` (default: tests)
#   scripts/lane313.sh run CMD...     setup, then run CMD in the repository inside the chroot
#
# Needs root on a Debian-like host (Debian 12 measured). Every step is stamped, so a second
# run on the same machine reuses the chroot (HEADSPLAT_CHROOT, default
# /var/cache/headsplat/trixie) and rebuilds the venv only when pyproject.toml or
# constraints.txt change. Mounts are made in a private mount namespace (unshare), so
# nothing stays mounted after a run and two runs cannot trip over each other's mounts.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CHROOT="${HEADSPLAT_CHROOT:-/var/cache/headsplat/trixie}"
SUITE="${HEADSPLAT_DEBIAN_SUITE:-trixie}"
VENV=/opt/headsplat-venv313          # path inside the chroot
BPY_VERSION="${HEADSPLAT_BPY313:-5.3.0}"
BASE_PACKAGES=python3.13,python3.13-venv,python3-pip,git,ca-certificates
# Debian's Blender (4.3 on the system Python 3.13, which lacks numpy without python3-numpy),
# and what the GUI check under Xvfb needs.
# EGL and Mesa's software drivers: EEVEE (bpy and the binary) renders headless through them.
BLENDER_PACKAGES="blender python3-numpy xvfb xauth xdotool imagemagick libegl1 libegl-mesa0 libgl1-mesa-dri libglx-mesa0"

log() { echo "[lane313] $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    echo "lane313: the Python 3.13 lane builds a Debian chroot and needs root (run as root, or under sudo)." >&2
    exit 2
fi

mirror() {
    if [ -n "${HEADSPLAT_DEBIAN_MIRROR:-}" ]; then echo "$HEADSPLAT_DEBIAN_MIRROR"; return; fi
    local m
    m=$(grep -h -o -E 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
        | grep -v security | head -n1 | tr -d ' ' || true)
    echo "${m:-http://deb.debian.org/debian}"
}

# Host paths the chroot sees at the same path: pip's local package folders (if any), the
# repository's parent (so ../shared beside the repository is found) and /tmp.
bind_paths() {
    local p
    for p in /opt/pypi /opt/pypi-more /opt/wheels; do [ -d "$p" ] && echo "$p"; done
    echo /tmp
    local parent; parent="$(dirname "$REPO")"
    case "$parent" in /|/tmp|/tmp/*) ;; *) echo "$parent" ;; esac
}

copy_host_config() {
    # network, certificates and pip's configuration, as the host has them
    cp -L /etc/resolv.conf "$CHROOT/etc/resolv.conf" 2>/dev/null || true
    mkdir -p "$CHROOT/etc/ssl/certs"
    [ -f /etc/ssl/certs/ca-certificates.crt ] && cp -L /etc/ssl/certs/ca-certificates.crt "$CHROOT/etc/ssl/certs/ca-certificates.crt"
    rm -f "$CHROOT/etc/pip.conf"; [ -f /etc/pip.conf ] && cp -L /etc/pip.conf "$CHROOT/etc/pip.conf"
    rm -rf "$CHROOT/etc/xdg/pip"; [ -d /etc/xdg/pip ] && mkdir -p "$CHROOT/etc/xdg" && cp -rL /etc/xdg/pip "$CHROOT/etc/xdg/pip"
    rm -rf "$CHROOT/root/.config/pip"; [ -d /root/.config/pip ] && mkdir -p "$CHROOT/root/.config" && cp -rL /root/.config/pip "$CHROOT/root/.config/pip"
    ln -sf /proc/self/mounts "$CHROOT/etc/mtab"
}

# Run a command inside the chroot, in a private mount namespace with the binds made.
in_chroot() {
    local script="mount -t proc proc '$CHROOT/proc'; mount --rbind /dev '$CHROOT/dev'; mount --rbind /sys '$CHROOT/sys';"
    local p
    while read -r p; do
        script+=" mkdir -p '$CHROOT$p'; mount --rbind '$p' '$CHROOT$p';"
    done < <(bind_paths)
    script+=' exec chroot "$0" "$@"'
    unshare --mount --propagation private -- bash -c "$script" "$CHROOT" /usr/bin/env -i \
        HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        TERM="${TERM:-dumb}" PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-180}" PIP_DISABLE_PIP_VERSION_CHECK=1 \
        PIP_CERT=/etc/ssl/certs/ca-certificates.crt ${PIP_FIND_LINKS:+PIP_FIND_LINKS=$PIP_FIND_LINKS} \
        HEADSPLAT_LANE=py313 "$@"
}

setup_base() {
    if [ -f "$CHROOT/.headsplat-base" ]; then return; fi
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap"
        apt-get install -y -q debootstrap >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; }
    fi
    local tmp="$CHROOT.partial" m; m="$(mirror)"
    rm -rf "$tmp"; mkdir -p "$(dirname "$CHROOT")"
    log "debootstrap $SUITE from $m (minbase + $BASE_PACKAGES)"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$tmp" "$m" >"$(dirname "$CHROOT")/debootstrap.log" 2>&1 \
        || { tail -n 20 "$(dirname "$CHROOT")/debootstrap.log" >&2; exit 1; }
    rm -rf "$CHROOT"; mv "$tmp" "$CHROOT"
    touch "$CHROOT/.headsplat-base"
}

setup_blender() {
    if [ "$(cat "$CHROOT/.headsplat-blender" 2>/dev/null)" = "$BLENDER_PACKAGES" ]; then return; fi
    log "apt-get install $BLENDER_PACKAGES (Debian's Blender)"
    in_chroot sh -c "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $BLENDER_PACKAGES >/var/log/headsplat-apt.log 2>&1" \
        || { tail -n 20 "$CHROOT/var/log/headsplat-apt.log" >&2; exit 1; }
    echo "$BLENDER_PACKAGES" >"$CHROOT/.headsplat-blender"
}

VENV_RECIPE=1   # bump when setup_venv changes what it installs
venv_key() {
    { cat "$REPO/pyproject.toml" "$REPO/constraints.txt"; echo "bpy==$BPY_VERSION recipe $VENV_RECIPE"; } \
        | sha256sum | cut -c1-16
}

setup_venv() {
    local key; key="$(venv_key)"
    if [ "$(cat "$CHROOT$VENV/.headsplat-key" 2>/dev/null)" = "$key" ]; then return; fi
    log "venv $VENV (Python 3.13, bpy $BPY_VERSION) for pyproject key $key"
    # the project's dependencies as pyproject states them (markers resolved by pip), but not
    # the project itself: tests import it from the repository (PYTHONPATH), so one venv
    # serves any checkout
    in_chroot sh -c "
        set -e
        rm -rf $VENV
        python3.13 -m venv $VENV
        $VENV/bin/python - '$REPO/pyproject.toml' >/tmp/headsplat-req313.\$\$.txt <<'PY'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], 'rb'))['project']
for r in p['dependencies'] + p['optional-dependencies']['dev']:
    if not r.replace(' ', '').startswith('bpy'):   # bpy: the lane's version, below
        print(r)
PY
        echo 'bpy==$BPY_VERSION' >>/tmp/headsplat-req313.\$\$.txt
        $VENV/bin/python -m pip install -q --upgrade pip
        $VENV/bin/python -m pip install -q -c '$REPO/constraints.txt' -r /tmp/headsplat-req313.\$\$.txt
        rm -f /tmp/headsplat-req313.\$\$.txt
        $VENV/bin/python -m pip check
    " 2>&1 | (grep -v "^WARNING: Location '.*' is ignored" || true) >&2
    echo "$key" >"$CHROOT$VENV/.headsplat-key"
}

setup() {
    local t0=$SECONDS
    setup_base
    copy_host_config
    setup_blender
    copy_host_config   # apt may have rebuilt the CA bundle
    setup_venv
    # the face models, converted once into the chroot's ~/.cache/headsplat (quick when there)
    in_chroot sh -c 'cd "$0" && PYTHONPATH="$0" '"$VENV"'/bin/python -m avatar_core fetch-models' "$REPO" >&2
    log "chroot ready in $((SECONDS - t0)) s: $CHROOT"
}

cmd="${1:-test}"; shift || true
case "$cmd" in
    setup) setup ;;
    run)
        setup
        in_chroot sh -c 'cd "$0" && export PYTHONPATH="$0" && . '"$VENV"'/bin/activate && exec "$@"' "$REPO" "$@" ;;
    test)
        setup
        [ $# -gt 0 ] || set -- tests
        log "pytest under Python 3.13 (bpy $BPY_VERSION)"
        in_chroot sh -c 'cd "$0" && export PYTHONPATH="$0" && exec '"$VENV"'/bin/python -m pytest -q -p no:cacheprovider "$@"' "$REPO" "$@" ;;
    *) echo "usage: $0 setup | test [PYTEST ARGS] | run CMD..." >&2; exit 2 ;;
esac
