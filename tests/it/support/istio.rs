//! An Envoy configured the way istiod configures a sidecar's inbound side
//! under the shipped `k8s/overlays/istio`, generated rather than written:
//!
//! 1. `tests/envoy/istio-sidecar.yaml`: the listeners and filter chains
//!    istiod builds before any authorization policy, for one PeerAuthentication
//!    mode ([`Mtls`]);
//! 2. the overlay's CUSTOM AuthorizationPolicy turned into filters as Istio's
//!    CUSTOM builder does (pilot/pkg/security/authz/builder: an RBAC filter
//!    holding the rules as shadow rules, then ext_authz enabled by that
//!    filter's `istio_ext_authz_shadow_effective_policy_id`; on TCP chains the
//!    rules' HTTP-only fields are dropped, as `model.Generate(forTCP)` drops
//!    them for any action but ALLOW);
//! 3. the overlay's EnvoyFilters applied as istiod applies them
//!    (pilot/pkg/networking/core/envoyfilter: listener_patch.go);
//! 4. the overlay's DestinationRule for the provider's host turned into the
//!    provider cluster's UpstreamTlsContext as istiod builds it
//!    (pilot/pkg/networking/core/cluster_tls.go, constructUpstreamTLS). The
//!    CA file it names lives in the proxy, and istio-agent serves it to
//!    Envoy over SDS as the secret `file-root:PATH`; here Envoy reads that
//!    same secret from an SDS file the mirror writes ([`ProxyFiles`]).
//!
//! Only the parts of the two APIs the overlay uses are modelled; anything
//! else panics, so a new field in a shipped manifest cannot be silently
//! ignored by the mirror.

use std::path::Path;

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use super::{render_template, repo_path};

/// The template of step 1.
pub const ISTIO_TEMPLATE: &str = "tests/envoy/istio-sidecar.yaml";
/// The overlay whose policy and EnvoyFilters are applied.
pub const ISTIO_OVERLAY: &str = "k8s/overlays/istio";
/// The extension provider of `k8s/overlays/istio/mesh-config`.
const PROVIDER_CLUSTER: &str = "outbound|9191||portcullis.portcullis.svc.cluster.local";
const PROVIDER_HOST: &str = "portcullis.portcullis.svc.cluster.local";

/// The PeerAuthentication mode of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mtls {
    /// Only mTLS from other sidecars is accepted.
    Strict,
    /// mTLS and plaintext (clients outside the mesh) alike: Istio's default.
    Permissive,
}

impl Mtls {
    fn name(self) -> &'static str {
        match self {
            Mtls::Strict => "STRICT",
            Mtls::Permissive => "PERMISSIVE",
        }
    }
}

/// The files a proxy container holds that the overlay names by path (a
/// DestinationRule's `caCertificates`), as a test provides them: the path in
/// the proxy → the file here. `scratch` is a directory for the SDS files the
/// mirror writes in istio-agent's place.
pub struct ProxyFiles<'a> {
    pub files: &'a [(&'a str, &'a Path)],
    pub scratch: &'a Path,
}

/// Where a rendered sidecar sends its traffic: Portcullis, the HTTP and
/// TCP upstreams, and the directory of its mTLS files. Envoy's own ports
/// are ephemeral.
pub struct SidecarPorts<'a> {
    pub portcullis: u16,
    pub upstream: u16,
    pub tcp_upstream: u16,
    pub pki_dir: &'a Path,
}

/// The sidecar of `overlay` in `mode`, sending its traffic where `ports`
/// says ([`istio_sidecar_config_for`] with every placeholder filled).
pub fn istio_sidecar(
    overlay: &str,
    mode: Mtls,
    ports: &SidecarPorts<'_>,
    proxy: Option<&ProxyFiles>,
) -> String {
    let [portcullis, upstream, tcp_upstream] =
        [ports.portcullis, ports.upstream, ports.tcp_upstream].map(|p| p.to_string());
    let pki_dir = ports.pki_dir.display().to_string();
    istio_sidecar_config_for(
        overlay,
        mode,
        &[
            ("__ADMIN_PORT__", "0"),
            ("__INBOUND_HTTP_PORT__", "0"),
            ("__INBOUND_AUTO_PORT__", "0"),
            ("__INBOUND_TCP_PORT__", "0"),
            ("__INBOUND_PASSTHROUGH_PORT__", "0"),
            ("__PORTCULLIS_PORT__", &portcullis),
            ("__UPSTREAM_PORT__", &upstream),
            ("__TCP_UPSTREAM_PORT__", &tcp_upstream),
            ("__PKI_DIR__", &pki_dir),
        ],
        proxy,
    )
}

/// The Envoy configuration of steps 1 to 4 for `overlay` (a directory of
/// the repository whose kustomization builds on `k8s/overlays/istio`), as
/// YAML. An overlay with a DestinationRule needs `proxy` for its files.
pub fn istio_sidecar_config_for(
    overlay: &str,
    mode: Mtls,
    values: &[(&str, &str)],
    proxy: Option<&ProxyFiles>,
) -> String {
    let rendered = render_template(&repo_path(ISTIO_TEMPLATE), values);
    let mut config: Value = serde_yaml::from_str(&rendered)
        .unwrap_or_else(|e| panic!("{ISTIO_TEMPLATE}: not YAML: {e}"));
    let root = mapping(&mut config, "the configuration");
    root.remove("x-templates");
    let documents = overlay_documents(&repo_path(overlay));
    let policies: Vec<&Value> = documents
        .iter()
        .filter(|d| kind(d) == "AuthorizationPolicy")
        .collect();
    assert_eq!(
        policies.len(),
        1,
        "the mirror models one CUSTOM AuthorizationPolicy in {overlay}"
    );
    let filters = CustomFilters::from_policy(policies[0]);
    for listener in listeners(&mut config) {
        let chains = sequence(
            listener
                .get_mut("filter_chains")
                .expect("a listener without chains"),
            "filter_chains",
        );
        chains.retain(|chain| chain_modes(chain).contains(&mode.name()));
        for chain in chains.iter_mut() {
            mapping(chain, "a filter chain").remove("x-mtls-modes");
            filters.add_to(chain);
        }
    }
    for envoy_filter in documents.iter().filter(|d| kind(d) == "EnvoyFilter") {
        apply_envoy_filter(&mut config, envoy_filter);
    }
    for (i, rule) in documents
        .iter()
        .filter(|d| kind(d) == "DestinationRule")
        .enumerate()
    {
        let proxy = proxy.unwrap_or_else(|| {
            panic!("{overlay} has a DestinationRule: the mirror needs the proxy's files")
        });
        apply_destination_rule(&mut config, rule, proxy, i);
    }
    for kind_name in documents.iter().map(kind) {
        assert!(
            !is_istio_kind(kind_name),
            "the mirror does not model the Istio kind {kind_name} of {overlay}"
        );
    }
    serde_yaml::to_string(&config).expect("serialize")
}

/// Istio kinds the mirror does not model (those it does:
/// AuthorizationPolicy, EnvoyFilter, DestinationRule).
fn is_istio_kind(kind: &str) -> bool {
    matches!(
        kind,
        "ServiceEntry"
            | "VirtualService"
            | "Sidecar"
            | "PeerAuthentication"
            | "RequestAuthentication"
            | "WorkloadEntry"
            | "Telemetry"
            | "Gateway"
    )
}

/// Every document of every file the overlay's kustomization lists, and of
/// the kustomizations it lists in turn (`../istio`); the base's documents
/// come along and are not Istio configuration.
fn overlay_documents(overlay: &Path) -> Vec<Value> {
    let kustomization = read_yaml(&overlay.join("kustomization.yaml"));
    let resources = kustomization
        .get("resources")
        .and_then(Value::as_sequence)
        .unwrap_or_else(|| panic!("{} lists no resources", overlay.display()));
    let mut documents = Vec::new();
    for resource in resources {
        let name = resource
            .as_str()
            .unwrap_or_else(|| panic!("resource {resource:?}"));
        let path = overlay.join(name);
        if path.is_dir() {
            documents.extend(overlay_documents(&path));
            continue;
        }
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value =
                Value::deserialize(document).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if !value.is_null() {
                documents.push(value);
            }
        }
    }
    documents
}

fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn kind(document: &Value) -> &str {
    document.get("kind").and_then(Value::as_str).unwrap_or("")
}

fn mapping<'a>(value: &'a mut Value, what: &str) -> &'a mut Mapping {
    value
        .as_mapping_mut()
        .unwrap_or_else(|| panic!("{what} is not a mapping"))
}

fn sequence<'a>(value: &'a mut Value, what: &str) -> &'a mut Vec<Value> {
    value
        .as_sequence_mut()
        .unwrap_or_else(|| panic!("{what} is not a list"))
}

fn listeners(config: &mut Value) -> impl Iterator<Item = &mut Value> {
    let listeners = config
        .get_mut("static_resources")
        .and_then(|r| r.get_mut("listeners"))
        .expect("no static_resources.listeners");
    sequence(listeners, "listeners").iter_mut()
}

fn chain_modes(chain: &Value) -> Vec<&str> {
    chain
        .get("x-mtls-modes")
        .and_then(Value::as_sequence)
        .unwrap_or_else(|| panic!("a filter chain without x-mtls-modes: {chain:?}"))
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("mirror YAML: {e}\n{text}"))
}

fn filter_name(filter: &Value) -> &str {
    filter.get("name").and_then(Value::as_str).unwrap_or("")
}

// ---------------------------------------------------------------------------
// Step 2: a CUSTOM AuthorizationPolicy as Istio's builder turns it into filters
// ---------------------------------------------------------------------------

/// The filters a CUSTOM policy puts in front of each chain.
struct CustomFilters {
    http: Vec<Value>,
    tcp: Vec<Value>,
}

impl CustomFilters {
    fn from_policy(policy: &Value) -> CustomFilters {
        let spec = policy.get("spec").expect("a policy without spec");
        assert_eq!(
            spec.get("action").and_then(Value::as_str),
            Some("CUSTOM"),
            "the mirror models the CUSTOM action"
        );
        assert!(
            spec.get("selector").is_none() && spec.get("targetRefs").is_none(),
            "the mirror models a policy for every workload"
        );
        let namespace = policy
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .expect("the policy names no namespace");
        let name = policy
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .expect("the policy has no name");
        let rules = spec
            .get("rules")
            .and_then(Value::as_sequence)
            .expect("the policy has no rules");
        let mut http_policies = Mapping::new();
        let mut tcp_policies = Mapping::new();
        for (i, rule) in rules.iter().enumerate() {
            let id = Value::from(format!(
                "istio-ext-authz-ns[{namespace}]-policy[{name}]-rule[{i}]"
            ));
            http_policies.insert(id.clone(), rbac_policy(rule, false));
            tcp_policies.insert(id, rbac_policy(rule, true));
        }
        let ext_authz_grpc = yaml(&format!(
            "envoy_grpc: {{ cluster_name: '{PROVIDER_CLUSTER}', authority: '{PROVIDER_HOST}' }}\n\
             timeout: 0.5s"
        ));
        let mut http_rbac = yaml(
            "name: envoy.filters.http.rbac\n\
             typed_config:\n  \
               '@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC\n  \
               shadow_rules: { action: DENY }\n  \
               shadow_rules_stat_prefix: istio_ext_authz_\n",
        );
        http_rbac["typed_config"]["shadow_rules"]["policies"] = Value::Mapping(http_policies);
        let mut http_ext_authz = yaml(
            "name: envoy.filters.http.ext_authz\n\
             typed_config:\n  \
               '@type': type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz\n  \
               transport_api_version: V3\n  \
               failure_mode_allow: false\n  \
               status_on_error: { code: ServiceUnavailable }\n",
        );
        http_ext_authz["typed_config"]["grpc_service"] = ext_authz_grpc.clone();
        http_ext_authz["typed_config"]["filter_enabled_metadata"] =
            enabled_by("envoy.filters.http.rbac");
        let mut tcp_rbac = yaml(
            "name: envoy.filters.network.rbac\n\
             typed_config:\n  \
               '@type': type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC\n  \
               stat_prefix: tcp.\n  \
               shadow_rules: { action: DENY }\n  \
               shadow_rules_stat_prefix: istio_ext_authz_\n",
        );
        tcp_rbac["typed_config"]["shadow_rules"]["policies"] = Value::Mapping(tcp_policies);
        let mut tcp_ext_authz = yaml(
            "name: envoy.filters.network.ext_authz\n\
             typed_config:\n  \
               '@type': type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz\n  \
               stat_prefix: tcp.\n  \
               transport_api_version: V3\n  \
               failure_mode_allow: false\n",
        );
        tcp_ext_authz["typed_config"]["grpc_service"] = ext_authz_grpc;
        tcp_ext_authz["typed_config"]["filter_enabled_metadata"] =
            enabled_by("envoy.filters.network.rbac");
        CustomFilters {
            http: vec![http_rbac, http_ext_authz],
            tcp: vec![tcp_rbac, tcp_ext_authz],
        }
    }

    /// Puts the filters first in an HTTP chain's connection manager, or in
    /// front of a TCP chain's tcp_proxy.
    fn add_to(&self, chain: &mut Value) {
        let filters = sequence(
            chain.get_mut("filters").expect("a chain without filters"),
            "filters",
        );
        let first = filters.first().map(filter_name).unwrap_or("").to_owned();
        match first.as_str() {
            "envoy.filters.network.http_connection_manager" => {
                let http_filters = sequence(
                    &mut filters[0]["typed_config"]["http_filters"],
                    "http_filters",
                );
                for (i, filter) in self.http.iter().enumerate() {
                    http_filters.insert(i, filter.clone());
                }
            }
            "envoy.filters.network.tcp_proxy" => {
                for (i, filter) in self.tcp.iter().enumerate() {
                    filters.insert(i, filter.clone());
                }
            }
            other => panic!("the mirror does not know a chain that starts with {other:?}"),
        }
    }
}

/// ext_authz runs only where the RBAC filter `rbac_filter` matched a rule
/// of the policy (Istio's generateFilterMatcher: the shadow effective
/// policy id, under the stat prefix, starts with `istio-ext-authz`).
fn enabled_by(rbac_filter: &str) -> Value {
    yaml(&format!(
        "filter: {rbac_filter}\n\
         path: [{{ key: istio_ext_authz_shadow_effective_policy_id }}]\n\
         value: {{ string_match: {{ prefix: istio-ext-authz }} }}\n"
    ))
}

/// One rule as an RBAC policy: permissions from `to`, principals from
/// `from` and `when`. On a TCP chain the HTTP-only fields are dropped,
/// which is how a rule of `notPaths` alone comes to match every connection.
fn rbac_policy(rule: &Value, for_tcp: bool) -> Value {
    for key in rule.as_mapping().into_iter().flat_map(|m| m.keys()) {
        let key = key.as_str().unwrap_or("");
        assert!(
            matches!(key, "to" | "when"),
            "the mirror does not model `{key}` in a rule"
        );
    }
    let mut permissions: Vec<Value> = Vec::new();
    if let Some(to) = rule.get("to").and_then(Value::as_sequence) {
        assert_eq!(to.len(), 1, "the mirror models one `to` per rule");
        let operation = &to[0]["operation"];
        for (key, value) in operation.as_mapping().into_iter().flatten() {
            let key = key.as_str().unwrap_or("");
            let values: Vec<String> = value
                .as_sequence()
                .unwrap_or_else(|| panic!("`{key}` is not a list"))
                .iter()
                .map(|v| v.as_str().unwrap_or_else(|| panic!("{v:?}")).to_owned())
                .collect();
            let any_of = |matcher: &dyn Fn(&str) -> Value| {
                yaml_seq_rule(values.iter().map(|v| matcher(v)).collect())
            };
            let path = |p: &str| yaml(&format!("url_path: {{ path: {{ exact: '{p}' }} }}"));
            let method = |m: &str| {
                yaml(&format!(
                    "header: {{ name: ':method', string_match: {{ exact: '{m}' }} }}"
                ))
            };
            // HTTP-only fields (all the mirror models) are dropped on TCP.
            if for_tcp {
                continue;
            }
            permissions.push(match key {
                "paths" => any_of(&path),
                "notPaths" => not_rule(any_of(&path)),
                "methods" => any_of(&method),
                "notMethods" => not_rule(any_of(&method)),
                other => panic!("the mirror does not model operation.{other}"),
            });
        }
    }
    let mut principals: Vec<Value> = Vec::new();
    for condition in rule
        .get("when")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let key = condition["key"].as_str().unwrap_or("");
        let header = key
            .strip_prefix("request.headers[")
            .and_then(|k| k.strip_suffix(']'))
            .expect("the mirror models `when` on request.headers[…] only");
        if for_tcp {
            continue;
        }
        let ids = |list: &Value| -> Value {
            let ids: Vec<Value> = list
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|v| {
                    yaml(&format!(
                        "header: {{ name: '{header}', string_match: {{ exact: '{}' }} }}",
                        v.as_str().unwrap_or_else(|| panic!("{v:?}"))
                    ))
                })
                .collect();
            let mut or = Mapping::new();
            or.insert("ids".into(), Value::Sequence(ids));
            let mut id = Mapping::new();
            id.insert("or_ids".into(), Value::Mapping(or));
            Value::Mapping(id)
        };
        if let Some(values) = condition.get("values") {
            principals.push(ids(values));
        }
        if let Some(values) = condition.get("notValues") {
            let mut not = Mapping::new();
            not.insert("not_id".into(), ids(values));
            principals.push(Value::Mapping(not));
        }
    }
    let permission = if permissions.is_empty() {
        yaml("any: true")
    } else {
        let mut and = Mapping::new();
        and.insert("rules".into(), Value::Sequence(permissions));
        let mut rule = Mapping::new();
        rule.insert("and_rules".into(), Value::Mapping(and));
        Value::Mapping(rule)
    };
    let principal = if principals.is_empty() {
        yaml("any: true")
    } else {
        let mut and = Mapping::new();
        and.insert("ids".into(), Value::Sequence(principals));
        let mut id = Mapping::new();
        id.insert("and_ids".into(), Value::Mapping(and));
        Value::Mapping(id)
    };
    let mut policy = Mapping::new();
    policy.insert("permissions".into(), Value::Sequence(vec![permission]));
    policy.insert("principals".into(), Value::Sequence(vec![principal]));
    Value::Mapping(policy)
}

fn yaml_seq_rule(rules: Vec<Value>) -> Value {
    let mut or = Mapping::new();
    or.insert("rules".into(), Value::Sequence(rules));
    let mut rule = Mapping::new();
    rule.insert("or_rules".into(), Value::Mapping(or));
    Value::Mapping(rule)
}

fn not_rule(rule: Value) -> Value {
    let mut not = Mapping::new();
    not.insert("not_rule".into(), rule);
    Value::Mapping(not)
}

// ---------------------------------------------------------------------------
// Step 3: EnvoyFilter patches, as istiod applies them to inbound listeners
// ---------------------------------------------------------------------------

/// Applies every patch of `envoy_filter` whose context covers a sidecar's
/// inbound listeners (the mirror is one; GATEWAY and SIDECAR_OUTBOUND
/// patches do not apply to it).
fn apply_envoy_filter(config: &mut Value, envoy_filter: &Value) {
    let spec = &envoy_filter["spec"];
    assert!(
        spec.get("workloadSelector").is_none() && spec.get("targetRefs").is_none(),
        "the mirror models EnvoyFilters for every workload"
    );
    for patch in spec["configPatches"].as_sequence().into_iter().flatten() {
        let context = patch["match"]["context"].as_str().unwrap_or("ANY");
        if !matches!(context, "SIDECAR_INBOUND" | "ANY") {
            continue;
        }
        let listener_match = &patch["match"]["listener"];
        for key in listener_match
            .as_mapping()
            .into_iter()
            .flat_map(|m| m.keys())
        {
            assert_eq!(
                key.as_str(),
                Some("filterChain"),
                "the mirror matches listeners by filterChain only"
            );
        }
        let chain_match = &listener_match["filterChain"];
        let filter_match = &chain_match["filter"];
        let network_filter = filter_match["name"]
            .as_str()
            .expect("the mirror matches filter chains by a filter's name");
        let operation = patch["patch"]["operation"].as_str().unwrap_or("");
        let value = &patch["patch"]["value"];
        let apply_to = patch["applyTo"].as_str().unwrap_or("");
        for listener in listeners(config) {
            let chains = sequence(&mut listener["filter_chains"], "filter_chains");
            for chain in chains.iter_mut() {
                if let Some(name) = chain_match.get("name").and_then(Value::as_str) {
                    if chain["name"].as_str() != Some(name) {
                        continue;
                    }
                }
                let filters = sequence(&mut chain["filters"], "filters");
                let Some(at) = filters
                    .iter()
                    .position(|f| filter_name(f) == network_filter)
                else {
                    continue;
                };
                match apply_to {
                    "NETWORK_FILTER" => patch_list(filters, at, operation, value),
                    "HTTP_FILTER" => {
                        let http_filters = sequence(
                            &mut filters[at]["typed_config"]["http_filters"],
                            "http_filters",
                        );
                        let at = match filter_match.get("subFilter") {
                            Some(sub) => {
                                let name = sub["name"].as_str().unwrap_or("");
                                match http_filters.iter().position(|f| filter_name(f) == name) {
                                    Some(at) => at,
                                    None => continue,
                                }
                            }
                            None => {
                                assert!(
                                    operation == "INSERT_FIRST",
                                    "an HTTP_FILTER patch without subFilter: the mirror models INSERT_FIRST"
                                );
                                0
                            }
                        };
                        patch_list(http_filters, at, operation, value);
                    }
                    other => panic!("the mirror does not model applyTo {other}"),
                }
            }
        }
    }
}

/// One patch operation on the filter list `filters`, relative to `at`.
fn patch_list(filters: &mut Vec<Value>, at: usize, operation: &str, value: &Value) {
    match operation {
        "REMOVE" => {
            filters.remove(at);
        }
        "MERGE" => proto_merge(&mut filters[at], value),
        "INSERT_FIRST" => filters.insert(0, value.clone()),
        "INSERT_BEFORE" => filters.insert(at, value.clone()),
        "INSERT_AFTER" => filters.insert(at + 1, value.clone()),
        other => panic!("the mirror does not model operation {other}"),
    }
}

/// Protobuf merge semantics over YAML: messages merge field by field,
/// repeated fields append, scalars are replaced. A typed_config whose
/// `@type` differs is a mistake istiod would refuse.
fn proto_merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Mapping(into), Value::Mapping(from)) => {
            if let (Some(a), Some(b)) = (into.get("@type"), from.get("@type")) {
                assert_eq!(a, b, "MERGE of a typed_config of another type");
            }
            for (key, value) in from {
                match into.get_mut(key) {
                    Some(existing) => proto_merge(existing, value),
                    None => {
                        into.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Sequence(into), Value::Sequence(from)) => into.extend(from.iter().cloned()),
        (into, from) => *into = from.clone(),
    }
}

// ---------------------------------------------------------------------------
// Step 4: a DestinationRule for the provider's host, as istiod builds the
// cluster's TLS (pilot/pkg/networking/core/cluster_tls.go)
// ---------------------------------------------------------------------------

/// Gives the provider cluster the transport socket istiod renders from
/// `rule`. Only what the shipped rule uses is modelled: `trafficPolicy.tls`
/// in mode SIMPLE with `sni`, `subjectAltNames` and `caCertificates`, for
/// the provider's own host; anything else panics.
fn apply_destination_rule(config: &mut Value, rule: &Value, proxy: &ProxyFiles, index: usize) {
    let spec = rule.get("spec").expect("a DestinationRule without spec");
    for key in spec.as_mapping().into_iter().flat_map(|m| m.keys()) {
        let key = key.as_str().unwrap_or("");
        assert!(
            matches!(key, "host" | "trafficPolicy"),
            "the mirror does not model DestinationRule.spec.{key}"
        );
    }
    assert_eq!(
        spec["host"].as_str(),
        Some(PROVIDER_HOST),
        "the mirror models a DestinationRule for the provider's host only"
    );
    for key in spec["trafficPolicy"]
        .as_mapping()
        .into_iter()
        .flat_map(|m| m.keys())
    {
        assert_eq!(
            key.as_str(),
            Some("tls"),
            "the mirror does not model trafficPolicy.{key:?}"
        );
    }
    let tls = &spec["trafficPolicy"]["tls"];
    for key in tls.as_mapping().into_iter().flat_map(|m| m.keys()) {
        let key = key.as_str().unwrap_or("");
        assert!(
            matches!(key, "mode" | "sni" | "subjectAltNames" | "caCertificates"),
            "the mirror does not model tls.{key}"
        );
    }
    assert_eq!(
        tls["mode"].as_str(),
        Some("SIMPLE"),
        "the mirror models tls.mode SIMPLE"
    );
    // Without sni and subjectAltNames istiod sets auto_sni and
    // auto_san_validation instead (setAutoSniAndAutoSanValidation): not
    // modelled.
    let sni = tls["sni"]
        .as_str()
        .expect("the mirror models a rule that names its sni");
    let sans: Vec<Value> = tls["subjectAltNames"]
        .as_sequence()
        .expect("the mirror models a rule that names subjectAltNames")
        .iter()
        .map(|san| {
            let san = san.as_str().expect("a subjectAltName is a string");
            yaml(&format!("exact: '{san}'"))
        })
        .collect();
    // Without caCertificates the agent serves the system roots
    // (`file-root:system`): not modelled.
    let ca_path = tls["caCertificates"]
        .as_str()
        .expect("the mirror models a rule that names caCertificates");
    let real = proxy
        .files
        .iter()
        .find(|(path, _)| *path == ca_path)
        .map(|(_, real)| *real)
        .unwrap_or_else(|| panic!("the test provides no file for the proxy's {ca_path}"));
    let secret_name = format!("file-root:{ca_path}");
    let sds_file = proxy
        .scratch
        .join(format!("sds-destination-rule-{index}.yaml"));
    let sds = format!(
        "resources:\n\
         - '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  \
           name: '{secret_name}'\n  \
           validation_context:\n    \
             trusted_ca: {{ filename: '{}' }}\n",
        real.display()
    );
    std::fs::write(&sds_file, sds).unwrap_or_else(|e| panic!("{}: {e}", sds_file.display()));
    let mut socket = yaml(&format!(
        "name: envoy.transport_sockets.tls\n\
         typed_config:\n  \
           '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n  \
           sni: '{sni}'\n  \
           common_tls_context:\n    \
             tls_params: {{ tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3 }}\n    \
             alpn_protocols: [h2]\n    \
             combined_validation_context:\n      \
               default_validation_context: {{}}\n      \
               validation_context_sds_secret_config:\n        \
                 name: '{secret_name}'\n        \
                 sds_config:\n          \
                   resource_api_version: V3\n          \
                   path_config_source: {{ path: '{}' }}\n",
        sds_file.display()
    ));
    socket["typed_config"]["common_tls_context"]["combined_validation_context"]
        ["default_validation_context"]["match_subject_alt_names"] = Value::Sequence(sans);
    let clusters = config
        .get_mut("static_resources")
        .and_then(|r| r.get_mut("clusters"))
        .expect("no static_resources.clusters");
    let cluster = sequence(clusters, "clusters")
        .iter_mut()
        .find(|c| c["name"].as_str() == Some(PROVIDER_CLUSTER))
        .unwrap_or_else(|| panic!("no cluster {PROVIDER_CLUSTER}"));
    let cluster = mapping(cluster, "the provider cluster");
    assert!(
        !cluster.contains_key("transport_socket"),
        "two DestinationRules for the provider's host"
    );
    cluster.insert("transport_socket".into(), socket);
}
