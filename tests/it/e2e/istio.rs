//! End to end through an Envoy configured the way istiod configures a
//! sidecar's inbound side under the shipped `k8s/overlays/istio`
//! (tests/it/support/istio.rs: the listeners and chains of
//! `tests/envoy/istio-sidecar.yaml`, then the overlay's CUSTOM policy and
//! EnvoyFilters applied as istiod applies them), in STRICT and PERMISSIVE
//! mTLS: a client in the mesh (or, under PERMISSIVE, outside it) → the
//! chain Istio picks for the port and the client's first bytes → the real
//! `portcullis` binary → on allow, a recording upstream.
//!
//! The ports: a declared HTTP port (`inbound_http`), a port without a
//! declared protocol (`inbound_auto`: HTTP and TCP chains, chosen by
//! sniffing), a declared TCP port (`inbound_tcp`) and a port no Service
//! declares (`inbound_passthrough`, sniffed too). The application's HTTP
//! server listens behind all of them but the TCP one; like Node or nginx it
//! skips a leading CRLF, so a request disguised that way is served if it
//! gets through.
//!
//! One test puts a recording ext_authz server that answers OK in
//! Portcullis' place, to pin down what the sidecar itself sends and skips,
//! independently of any decision.
//!
//! Every probe carries a unique `x-e2e-probe` header, so "the upstream never
//! saw it" is exact. Failed probes are reported together, with the tail of
//! Envoy's and Portcullis' logs. Without Envoy the tests fail.

use crate::support;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer};
use envoy_types::pb::google::rpc;
use portcullis::cases::Deployment;

use crate::support::{
    assert_envoy_validates, bearer, bind_loopback, bundled_policies, copy_policies, corpus,
    find_envoy, istio_sidecar, metric, ready_version, send_raw, tail, token, wait_for_new_version,
    EchoUpstream, Envoy, MeshPki, Mtls, Portcullis, Response, SidecarPorts, TcpEcho, TlsClient,
    ISTIO_OVERLAY,
};

/// How long a reload may take to show on `/ready`.
const RELOAD_LIMIT: Duration = Duration::from_secs(10);

/// What a client sidecar offers when its own sniffing saw HTTP.
const ALPN_HTTP: &[&str] = &["istio-http/1.1"];
/// What a client sidecar offers when it did not (TCP, or HTTP it missed).
const ALPN_TCP: &[&str] = &["istio-peer-exchange", "istio"];

// ---------------------------------------------------------------------------
// The sidecar stack
// ---------------------------------------------------------------------------

/// The sidecar's configuration in `mode`, with Envoy's own ports ephemeral.
fn render(mode: Mtls, portcullis: u16, upstream: u16, tcp_upstream: u16, pki_dir: &Path) -> String {
    let ports = SidecarPorts {
        portcullis,
        upstream,
        tcp_upstream,
        pki_dir,
    };
    istio_sidecar(ISTIO_OVERLAY, mode, &ports, None)
}

/// The workload `documents` in namespace `documents` with its Istio-shaped
/// sidecar, asking a Portcullis of its own.
struct Sidecar {
    // Declared in shutdown order: the proxy first.
    envoy: Envoy,
    portcullis: Portcullis,
    upstream: EchoUpstream,
    tcp_upstream: TcpEcho,
    pki: MeshPki,
    /// A client in the mesh (`spiffe://cluster.local/ns/frontend/sa/frontend`)
    /// whose sidecar saw HTTP.
    client: TlsClient,
    /// The same client when its sidecar did not see HTTP.
    tcp_client: TlsClient,
}

impl Sidecar {
    /// Starts everything in STRICT mode on the policy directory `policies`.
    fn start(policies: &Path) -> Sidecar {
        Sidecar::start_in(policies, Mtls::Strict)
    }

    fn start_in(policies: &Path, mode: Mtls) -> Sidecar {
        let envoy_bin = find_envoy();
        let pki = MeshPki::generate("documents", "documents");
        let upstream = EchoUpstream::start();
        let tcp_upstream = TcpEcho::start();
        // Reloads show quickly.
        let portcullis =
            Portcullis::start_with_env(policies, &[("PORTCULLIS_RELOAD_DEBOUNCE_MS", "50")]);
        let config = render(
            mode,
            portcullis.port(),
            upstream.port(),
            tcp_upstream.port(),
            pki.dir(),
        );
        let envoy = Envoy::start(&envoy_bin, &config);
        let client = pki.client_offering(Some(&pki.caller), ALPN_HTTP);
        let tcp_client = pki.client_offering(Some(&pki.caller), ALPN_TCP);
        Sidecar {
            envoy,
            portcullis,
            upstream,
            tcp_upstream,
            pki,
            client,
            tcp_client,
        }
    }

    fn port(&self, listener: &str) -> u16 {
        self.envoy.listener_port(listener)
    }

    fn http_port(&self) -> u16 {
        self.port("inbound_http")
    }

    fn tcp_port(&self) -> u16 {
        self.port("inbound_tcp")
    }

    /// One request from the mesh client; an I/O failure fails the test
    /// with both logs.
    fn send(&self, method: &str, path: &[u8], headers: &[(&str, &str)]) -> Response {
        self.client
            .send(self.http_port(), method, path, headers)
            .unwrap_or_else(|e| {
                panic!(
                    "{method} {} over mTLS: {e}\n{}",
                    String::from_utf8_lossy(path),
                    self.logs()
                )
            })
    }

    /// How many connection checks Portcullis has denied so far.
    fn connections_denied(&self) -> f64 {
        metric(
            self.portcullis.admin_port(),
            "portcullis_checks_total{entry=\"ext_authz\",application=\"\",decision=\"deny\",reason=\"connection_denied\"}",
        )
        .unwrap_or(0.0)
    }

    /// The tail of both logs, for failure messages.
    fn logs(&self) -> String {
        format!(
            "--- envoy (tail) ---\n{}\n--- portcullis (tail) ---\n{}",
            tail(&self.envoy.log(), 30),
            tail(&self.portcullis.log(), 30)
        )
    }
}

// ---------------------------------------------------------------------------
// Probes
// ---------------------------------------------------------------------------

use crate::support::probes::{Expect, Probes, Target, PROBE};
use Expect::{Allow, Deny, NotAllowed, Status};

impl Target for Sidecar {
    fn send(&self, method: &str, path: &[u8], headers: &[(&str, &str)]) -> Response {
        Sidecar::send(self, method, path, headers)
    }

    fn upstream(&self) -> &EchoUpstream {
        &self.upstream
    }

    fn logs(&self) -> String {
        Sidecar::logs(self)
    }
}

// ---------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------

/// The bundled policies as a mesh deployment writes them: the documents
/// application selected by the destination workload's namespace (nothing
/// the client sends), beside an application a client could choose by Host
/// and a dry-run one; a public route that the CUSTOM policy does not exempt;
/// a deny on document 1 that alternate spellings must not sidestep; and
/// connections allowed.
fn mesh_policies() -> tempfile::TempDir {
    let dir = copy_policies(|name, content| match name {
        "documents.yaml" => select_by_destination(&content),
        _ => content,
    });
    let write = |name: &str, content: &str| {
        std::fs::write(dir.path().join(name), content)
            .unwrap_or_else(|e| panic!("write {name}: {e}"))
    };
    write(
        "wiki.yaml",
        "# Chosen by Host: a client can pick it, so it must never decide for a\n\
         # workload the destination already names.\n\
         applications:\n\
         \x20 - name: wiki\n\
         \x20   select:\n\
         \x20     hosts: [wiki.example]\n\
         \x20   routes:\n\
         \x20     - name: wiki-pages\n\
         \x20       methods: [GET, PUT]\n\
         \x20       path: /documents/{id}\n\
         \x20       access: public\n",
    );
    write(
        "legacy.yaml",
        "# In dry run: its denies are let through, so only a selector the client\n\
         # cannot forge may choose it.\n\
         applications:\n\
         \x20 - name: legacy\n\
         \x20   mode: dry_run\n\
         \x20   select:\n\
         \x20     destination_namespaces: [legacy]\n\
         \x20     hosts: [legacy.example]\n\
         \x20   routes:\n\
         \x20     - name: legacy-admin\n\
         \x20       methods: [GET]\n\
         \x20       path: /admin\n\
         \x20       resource: documents\n\
         \x20       action: list\n",
    );
    write(
        "freeze.yaml",
        "denies:\n\
         \x20 - name: freeze-document-1\n\
         \x20   resource: document:1\n\
         \x20   actions: [write, delete]\n\
         \x20   reason: document 1 is frozen\n",
    );
    dir
}

/// documents.yaml with its `select:` block replaced by the destination
/// namespace, and a public route `/about` appended to its routes (the
/// file's last list). Panics if the file no longer has that shape.
fn select_by_destination(content: &str) -> String {
    let lines: Vec<&str> = content.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_end() == "    select:")
        .expect("policies/documents.yaml has no `    select:` line");
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with("    ") && !l.starts_with("     ") && !l.trim().is_empty())
        .map(|i| start + 1 + i)
        .expect("policies/documents.yaml: nothing follows `select:`");
    let last = lines
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .expect("policies/documents.yaml is empty");
    assert!(
        last.starts_with("        "),
        "policies/documents.yaml no longer ends in its routes list: {last:?}"
    );
    let mut out: Vec<String> = lines[..start].iter().map(|l| l.to_string()).collect();
    out.push("    select:".into());
    out.push("      destination_namespaces: [documents]".into());
    out.extend(lines[end..].iter().map(|l| l.to_string()));
    out.push(String::new());
    out.push("      - name: about".into());
    out.push("        methods: [GET]".into());
    out.push("        path: /about".into());
    out.push("        access: public".into());
    out.join("\n") + "\n"
}

/// A payload no other connection sends.
fn unique_payload(what: &str) -> Vec<u8> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{what}-{}-{}\n",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------
// The template
// ---------------------------------------------------------------------------

/// `envoy --mode validate` accepts the generated configuration in both
/// modes, it binds loopback only, and it carries what the overlay makes
/// istiod add: the network ext_authz filter on every TCP chain (nothing
/// removes it), the subject-stripping filter first on every HTTP chain, and
/// none of our own hardening (no context_extensions).
#[test]
fn istio_sidecar_template_validates() {
    let pki = MeshPki::generate("documents", "documents");
    for mode in [Mtls::Strict, Mtls::Permissive] {
        let rendered = render(mode, 9191, 8081, 8082, pki.dir());
        for line in rendered.lines().filter(|l| l.contains("address:")) {
            assert!(
                !line.contains("0.0.0.0") && !line.contains("::"),
                "non-loopback bind: {line}"
            );
        }
        assert!(
            !rendered.contains("context_extensions:"),
            "Istio sets no context_extensions, so the Istio-shaped sidecar must not either"
        );
        let config: serde_yaml::Value = serde_yaml::from_str(&rendered).unwrap();
        let mut tcp_chains = 0;
        let mut http_chains = 0;
        for listener in config["static_resources"]["listeners"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            for chain in listener["filter_chains"]
                .as_sequence()
                .into_iter()
                .flatten()
            {
                let names: Vec<&str> = chain["filters"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f["name"].as_str())
                    .collect();
                if names.contains(&"envoy.filters.network.tcp_proxy") {
                    tcp_chains += 1;
                    assert_eq!(
                        names,
                        [
                            "envoy.filters.network.rbac",
                            "envoy.filters.network.ext_authz",
                            "envoy.filters.network.tcp_proxy"
                        ],
                        "{mode:?}: a TCP chain without the network ext_authz filter"
                    );
                } else {
                    http_chains += 1;
                    let http: Vec<&str> = chain["filters"][0]["typed_config"]["http_filters"]
                        .as_sequence()
                        .into_iter()
                        .flatten()
                        .filter_map(|f| f["name"].as_str())
                        .collect();
                    assert_eq!(
                        http[..3],
                        [
                            "portcullis.strip_subject_header",
                            "envoy.filters.http.rbac",
                            "envoy.filters.http.ext_authz"
                        ],
                        "{mode:?}: the HTTP filters of a chain"
                    );
                }
            }
        }
        let expected = match mode {
            Mtls::Strict => (3, 3),
            Mtls::Permissive => (6, 9),
        };
        assert_eq!((http_chains, tcp_chains), expected, "{mode:?}: chains");
        let envoy = find_envoy();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("istio-sidecar.yaml");
        std::fs::write(&path, rendered).expect("write");
        assert_envoy_validates(&envoy, &path);
    }
}

// ---------------------------------------------------------------------------
// What the sidecar sends: an ext_authz server that answers OK and records
// ---------------------------------------------------------------------------

/// An ext_authz server that answers OK to every check and keeps each
/// CheckRequest: it stands in for Portcullis where a test is about what the
/// sidecar asks and forwards, not about a decision. Stopped on drop.
struct RecordingAuthz {
    port: u16,
    checks: Arc<Mutex<Vec<CheckRequest>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

#[derive(Clone)]
struct Recorder(Arc<Mutex<Vec<CheckRequest>>>);

#[tonic::async_trait]
impl Authorization for Recorder {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        if let Ok(mut checks) = self.0.lock() {
            checks.push(request.into_inner());
        }
        Ok(tonic::Response::new(CheckResponse {
            status: Some(rpc::Status {
                code: 0,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            ..Default::default()
        }))
    }
}

impl RecordingAuthz {
    fn start() -> RecordingAuthz {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("recording-authz")
            .enable_all()
            .build()
            .expect("recording ext_authz runtime");
        let (listener, port) = runtime.block_on(bind_loopback());
        let checks: Arc<Mutex<Vec<CheckRequest>>> = Arc::default();
        let service = AuthorizationServer::new(Recorder(Arc::clone(&checks)));
        runtime.spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                panic!("recording ext_authz server: {e}");
            }
        });
        RecordingAuthz {
            port,
            checks,
            runtime: Some(runtime),
        }
    }

    fn checks(&self) -> Vec<CheckRequest> {
        self.checks.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Drop for RecordingAuthz {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What a CheckRequest says about the HTTP request, if anything.
fn http_of(check: &CheckRequest) -> Option<&HttpRequest> {
    check.attributes.as_ref()?.request.as_ref()?.http.as_ref()
}

/// The principals of a check: (source, destination).
fn principals(check: &CheckRequest) -> (String, String) {
    let attributes = check.attributes.as_ref();
    let principal = |peer: Option<&Peer>| peer.map(|p| p.principal.clone()).unwrap_or_default();
    (
        principal(attributes.and_then(|a| a.source.as_ref())),
        principal(attributes.and_then(|a| a.destination.as_ref())),
    )
}

const WORKLOAD: &str = "spiffe://cluster.local/ns/documents/sa/documents";
const CALLER: &str = "spiffe://cluster.local/ns/frontend/sa/frontend";

/// The destination port of a connection check.
fn destination_port(check: &CheckRequest) -> Option<u32> {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier};
    let address = check
        .attributes
        .as_ref()?
        .destination
        .as_ref()?
        .address
        .as_ref()?;
    match address.address.as_ref()? {
        address::Address::SocketAddress(socket) => match socket.port_specifier {
            Some(PortSpecifier::PortValue(port)) => Some(port),
            _ => None,
        },
        _ => None,
    }
}

/// The facts the engine contract builds on, checked against Envoy itself:
/// the sidecar's checks carry the destination workload's SPIFFE id and no
/// context_extensions; the client's Host reaches the authorizer untouched,
/// and a client's `x-portcullis-subject` does not (the overlay strips it
/// first); only exact reads of the health paths skip the check, and a
/// forged subject does not reach the application on them either; on a TCP
/// chain a connection is asked about once, with no HTTP attributes and its
/// destination port, and its bytes flow when the answer is OK.
#[test]
fn the_sidecar_asks_what_istio_asks() {
    let envoy_bin = find_envoy();
    let pki = MeshPki::generate("documents", "documents");
    let authz = RecordingAuthz::start();
    let upstream = EchoUpstream::start();
    let tcp_upstream = TcpEcho::start();
    let envoy = Envoy::start(
        &envoy_bin,
        &render(
            Mtls::Strict,
            authz.port,
            upstream.port(),
            tcp_upstream.port(),
            pki.dir(),
        ),
    );
    let client = pki.client_offering(Some(&pki.caller), ALPN_HTTP);
    let logs = || format!("--- envoy (tail) ---\n{}", tail(&envoy.log(), 30));
    let http_port = envoy.listener_port("inbound_http");
    let send = |method: &str, path: &[u8], headers: &[(&str, &str)]| {
        client
            .send(http_port, method, path, headers)
            .unwrap_or_else(|e| panic!("{method} over mTLS: {e}\n{}", logs()))
    };
    let asked_about = |probe: &str| -> Vec<CheckRequest> {
        authz
            .checks()
            .into_iter()
            .filter(|c| {
                http_of(c).is_some_and(|h| h.headers.get(PROBE).map(String::as_str) == Some(probe))
            })
            .collect()
    };

    // HTTP: one check, as Istio builds it.
    let probe = format!("istio-asks-{}", std::process::id());
    let response = send(
        "GET",
        b"/documents/1",
        &[
            ("Host", "anything.example"),
            ("x-portcullis-subject", "carol"),
            (PROBE, &probe),
        ],
    );
    assert_eq!(response.status, 200, "{}", logs());
    let asked = asked_about(&probe);
    assert_eq!(asked.len(), 1, "checks for one request: {asked:#?}");
    let check = &asked[0];
    let http = http_of(check).expect("no http attributes");
    assert_eq!(http.host, "anything.example", "the client's Host, as sent");
    assert_eq!(
        http.headers.get("x-portcullis-subject"),
        None,
        "the overlay's first filter removes a client's subject header"
    );
    assert!(
        check
            .attributes
            .as_ref()
            .is_some_and(|a| a.context_extensions.is_empty()),
        "Istio sends no context_extensions: {check:#?}"
    );
    assert_eq!(
        principals(check),
        (CALLER.to_owned(), WORKLOAD.to_owned()),
        "source and destination principals"
    );

    // A header with `_` is refused by the sidecar itself (400).
    let response = send("GET", b"/documents/1", &[("x_portcullis_subject", "carol")]);
    assert_eq!(response.status, 400, "{}", logs());

    // Exact reads of a health path reach the application without a check,
    // and without a client's subject header.
    for (method, path) in [
        ("GET", &b"/livez"[..]),
        ("GET", b"/healthz"),
        ("GET", b"/readyz"),
    ] {
        let probe = format!("istio-health-{method}-{}", String::from_utf8_lossy(path));
        let response = send(
            method,
            path,
            &[("x-portcullis-subject", "admin"), (PROBE, &probe)],
        );
        assert_eq!(response.status, 200, "{method} {path:?}\n{}", logs());
        let seen = upstream.requests_with_header(PROBE, &probe);
        assert_eq!(
            seen.len(),
            1,
            "{method} {path:?} did not reach the application"
        );
        assert_eq!(
            seen[0].header("x-portcullis-subject"),
            None,
            "a forged subject reached the application on an exempt path"
        );
        assert!(
            asked_about(&probe).is_empty(),
            "an exempt read was sent to ext_authz"
        );
    }
    // Anything else on a health path is asked about: a write, a query.
    for (method, path) in [
        ("POST", &b"/healthz"[..]),
        ("GET", b"/healthz?verbose=1"),
        ("GET", b"/healthz?"),
    ] {
        let probe = format!(
            "istio-health-asked-{method}-{}",
            String::from_utf8_lossy(path)
        );
        send(method, path, &[(PROBE, &probe)]);
        assert_eq!(
            asked_about(&probe).len(),
            1,
            "{method} {} was not sent to ext_authz\n{}",
            String::from_utf8_lossy(path),
            logs()
        );
    }

    // TCP: one connection check without HTTP attributes, with the
    // destination port; bytes flow on OK.
    let before = authz.checks().len();
    let payload = unique_payload("istio-asks");
    let tcp_port = envoy.listener_port("inbound_tcp");
    let answer = pki
        .client_offering(Some(&pki.caller), ALPN_TCP)
        .echo(tcp_port, &payload)
        .unwrap_or_else(|e| panic!("tcp over mTLS: {e}\n{}", logs()));
    assert_eq!(
        String::from_utf8_lossy(&answer),
        String::from_utf8_lossy(&payload),
        "an allowed connection did not echo\n{}",
        logs()
    );
    let checks = authz.checks();
    let connection_checks = &checks[before..];
    assert_eq!(
        connection_checks.len(),
        1,
        "one check per connection: {connection_checks:#?}"
    );
    let check = &connection_checks[0];
    assert!(
        http_of(check).is_none(),
        "a connection check has no HTTP attributes: {check:#?}"
    );
    assert_eq!(
        principals(check),
        (CALLER.to_owned(), WORKLOAD.to_owned()),
        "source and destination principals of a connection"
    );
    assert_eq!(destination_port(check), Some(u32::from(tcp_port)));
}

// ---------------------------------------------------------------------------
// The bundled policy through the sidecar
// ---------------------------------------------------------------------------

/// The mTLS path works end to end, the CUSTOM policy's exempt paths are not
/// asked about, and the bundled policy decides as it does behind the front
/// proxy.
#[test]
fn bundled_policy_decides_behind_the_istio_sidecar() {
    let sidecar = Sidecar::start(&bundled_policies());
    let mut p = Probes::new(&sidecar);
    p.bundled_basics();
    // /livez is in the policy's notPaths: the RBAC shadow rules do not
    // match, so ext_authz is never asked (Portcullis would refuse it: no
    // route and no token).
    p.check("exempt path", "GET", b"/livez", None, &[], Allow(None));
    p.finish();

    // Istio's inbound chains are mTLS only.
    let port = sidecar.http_port();
    let anonymous = sidecar.pki.client(None).send(port, "GET", b"/healthz", &[]);
    assert!(
        anonymous.is_err(),
        "a client without a certificate was answered: {anonymous:?}"
    );
    let stranger =
        sidecar
            .pki
            .client(Some(&sidecar.pki.stranger))
            .send(port, "GET", b"/healthz", &[]);
    assert!(
        stranger.is_err(),
        "a client certificate from outside the mesh was answered: {stranger:?}"
    );
}

/// The decision case corpus (`policies/tests/*.yaml`) through the Istio
/// sidecar: every request case the sidecar can express (no context
/// extension, and no mesh identity but the sidecar's own) comes back
/// exactly as the engine decided it, unless the case says how the sidecar
/// changes it (`through: { istio_sidecar: ... }`, with the reason).
#[test]
fn the_case_corpus_through_the_istio_sidecar() {
    let sidecar = Sidecar::start(&bundled_policies());
    let mut p = Probes::new(&sidecar);
    corpus::send_through(
        &mut p,
        Deployment::IstioSidecar,
        |request| {
            request.context_extensions.is_empty()
                && (request.destination.is_empty() || request.destination == WORKLOAD)
        },
        50,
    );
    p.finish();
}

// ---------------------------------------------------------------------------
// The mesh policy: the destination selects the application
// ---------------------------------------------------------------------------

/// Under Istio there are no context_extensions: the destination workload
/// (its SPIFFE id, from the sidecar's certificate) selects the application,
/// and no Host a client sends can pick another one (issue 10, item 5), nor
/// a dry-run one.
#[test]
fn the_destination_not_the_host_selects_the_application() {
    let policies = mesh_policies();
    let sidecar = Sidecar::start(policies.path());
    let mut p = Probes::new(&sidecar);
    let alice = bearer(&token("alice"));
    let bob = bearer(&token("bob"));
    let a = Some(alice.as_str());
    let b = Some(bob.as_str());

    p.bundled_basics();

    for host in ["anything.example", "wiki.example", "legacy.example"] {
        let h: &[(&str, &str)] = &[("Host", host)];
        p.check(
            &format!("alice reads 1 as {host}"),
            "GET",
            b"/documents/1",
            a,
            h,
            Allow(Some("alice")),
        );
        p.check(
            &format!("bob writes 1 as {host}"),
            "PUT",
            b"/documents/1",
            b,
            h,
            Deny(403),
        );
        p.check(
            &format!("no token as {host}"),
            "GET",
            b"/documents/1",
            None,
            h,
            Deny(401),
        );
        p.check(
            &format!("no token writes 1 as {host}"),
            "PUT",
            b"/documents/1",
            None,
            h,
            Deny(401),
        );
    }

    // Hosts Envoy passes on (domains: "*") but Portcullis must refuse
    // rather than strip into another name.
    for host in [
        "documents.example.",
        "documents.example:abc",
        "documents.example:99999",
        "[::1]wiki.example",
        "wiki_example",
    ] {
        p.check(
            &format!("malformed host {host}"),
            "GET",
            b"/documents/1",
            a,
            &[("Host", host)],
            Deny(400),
        );
    }
    p.finish();
}

/// A forged `x-portcullis-subject` never reaches the application, on an
/// authenticated allow or a public one: the overlay strips it before any
/// filter, and Portcullis sets its own on an allow. Spellings with `_`
/// (which many frameworks read as the same header) are refused by the
/// sidecar outright (item 8).
#[test]
fn forged_subject_headers_never_reach_the_application() {
    let policies = mesh_policies();
    let sidecar = Sidecar::start(policies.path());
    let mut p = Probes::new(&sidecar);
    let alice = bearer(&token("alice"));
    let hyphens: &[(&str, &str)] = &[("x-portcullis-subject", "carol")];
    p.check(
        "alice with a forged subject",
        "GET",
        b"/documents/1",
        Some(&alice),
        hyphens,
        Allow(Some("alice")),
    );
    p.check(
        "public route with a forged subject",
        "GET",
        b"/about",
        None,
        hyphens,
        Allow(None),
    );
    for name in support::probes::LOOK_ALIKES {
        p.check(
            &format!("alice with {name}"),
            "GET",
            b"/documents/1",
            Some(&alice),
            &[(name, "carol")],
            Status(400),
        );
        p.check(
            &format!("public route with {name}"),
            "GET",
            b"/about",
            None,
            &[(name, "carol")],
            Status(400),
        );
    }
    p.finish();
}

/// No credential, no information: an anonymous request gets 401 whether a
/// route exists or not; with a valid token, no route is 403 (item 9).
#[test]
fn anonymous_requests_learn_nothing_about_routes() {
    let policies = mesh_policies();
    let sidecar = Sidecar::start(policies.path());
    let mut p = Probes::new(&sidecar);
    let alice = bearer(&token("alice"));
    p.check(
        "anonymous, no route",
        "GET",
        b"/no/such/route",
        None,
        &[],
        Deny(401),
    );
    p.check(
        "anonymous, no route for the method",
        "PUT",
        b"/documents",
        None,
        &[],
        Deny(401),
    );
    p.check(
        "anonymous, a route",
        "GET",
        b"/documents/1",
        None,
        &[],
        Deny(401),
    );
    p.check(
        "alice, no route",
        "GET",
        b"/no/such/route",
        Some(&alice),
        &[],
        Deny(403),
    );
    p.finish();
}

/// Alternate spellings of a document the upstream treats as the same one
/// match no route, so neither a deny nor a grant is sidestepped (item 7).
#[test]
fn alternate_spellings_of_a_resource_are_refused() {
    let policies = mesh_policies();
    let sidecar = Sidecar::start(policies.path());
    let mut p = Probes::new(&sidecar);
    let bob = bearer(&token("bob"));
    let carol = bearer(&token("carol"));
    p.check(
        "bob reads 1",
        "GET",
        b"/documents/1",
        Some(&bob),
        &[],
        Allow(Some("bob")),
    );
    // carol is a global admin; freeze-document-1 denies writes to 1.
    p.check(
        "carol writes 1 (frozen)",
        "PUT",
        b"/documents/1",
        Some(&carol),
        &[],
        Deny(403),
    );
    p.check(
        "carol writes 2",
        "PUT",
        b"/documents/2",
        Some(&carol),
        &[],
        Allow(Some("carol")),
    );
    for path in [
        &b"/documents/01"[..],
        b"/documents/001",
        b"/documents/1.json",
        b"/documents/+1",
    ] {
        let shown = String::from_utf8_lossy(path);
        p.check(
            &format!("bob reads {shown}"),
            "GET",
            path,
            Some(&bob),
            &[],
            NotAllowed,
        );
        p.check(
            &format!("carol writes {shown} (frozen as 1)"),
            "PUT",
            path,
            Some(&carol),
            &[],
            NotAllowed,
        );
    }
    p.finish();
}

// ---------------------------------------------------------------------------
// Connections: the TCP chains' network ext_authz filter
// ---------------------------------------------------------------------------

/// A request line behind a CRLF, as Node, nginx and Tomcat accept it
/// (RFC 9112 section 2.2), with a forged subject and no token.
fn crlf_request(probe: &str) -> Vec<u8> {
    format!(
        "\r\nGET /documents/1 HTTP/1.1\r\nHost: documents\r\nx-portcullis-subject: admin\r\n\
         {PROBE}: {probe}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Sends `bytes` in plaintext to 127.0.0.1:`port` and reads until the peer
/// closes (or the read times out).
fn plaintext_exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect {port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut answer = Vec::new();
    if stream.write_all(bytes).is_ok() {
        let _ = stream.read_to_end(&mut answer);
    }
    answer
}

/// The review's CRITICAL finding, closed: HTTP that the sidecar does not
/// recognise (a leading CRLF) lands on the TCP chain of a port without a
/// declared protocol, or of a port no Service declares, under STRICT (from
/// a client sidecar that did not see HTTP either) and PERMISSIVE (plaintext
/// from outside the mesh, and mTLS). Portcullis is asked about the
/// connection and no rule allows it: the application never sees the
/// request or its forged subject. On a declared HTTP port the same bytes
/// are HTTP to Envoy, and Portcullis decides the request.
#[test]
fn http_disguised_as_tcp_never_reaches_the_application() {
    let policies = mesh_policies();
    for mode in [Mtls::Strict, Mtls::Permissive] {
        let sidecar = Sidecar::start_in(policies.path(), mode);
        let mut failures = Vec::new();
        let mut sent = 0;
        for listener in ["inbound_auto", "inbound_passthrough"] {
            let port = sidecar.port(listener);
            // Plaintext reaches a sidecar only from outside the mesh, and
            // only under PERMISSIVE.
            let ways: &[&str] = match mode {
                Mtls::Strict => &["mTLS from a sidecar that saw no HTTP"],
                Mtls::Permissive => &["mTLS from a sidecar that saw no HTTP", "plaintext"],
            };
            for &how in ways {
                let denied_before = sidecar.connections_denied();
                let probe = format!("crlf-{mode:?}-{listener}-{sent}");
                sent += 1;
                let request = crlf_request(&probe);
                let answer = if how == "plaintext" {
                    plaintext_exchange(port, &request)
                } else {
                    sidecar
                        .tcp_client
                        .exchange(port, &request)
                        .unwrap_or_default()
                };
                if !sidecar
                    .upstream
                    .requests_with_header(PROBE, &probe)
                    .is_empty()
                {
                    failures.push(format!(
                        "{mode:?} {listener} {how}: the application served it"
                    ));
                }
                if String::from_utf8_lossy(&answer).contains("upstream ok") {
                    failures.push(format!(
                        "{mode:?} {listener} {how}: the client got the application's answer"
                    ));
                }
                if sidecar.connections_denied() <= denied_before {
                    failures.push(format!(
                        "{mode:?} {listener} {how}: Portcullis denied no connection (answer {:?})",
                        String::from_utf8_lossy(&answer)
                    ));
                }
            }
        }
        // A declared HTTP port: Envoy parses it as HTTP, Portcullis decides.
        let probe = format!("crlf-{mode:?}-declared");
        let answer = sidecar
            .client
            .exchange(sidecar.http_port(), &crlf_request(&probe))
            .unwrap_or_default();
        if !sidecar
            .upstream
            .requests_with_header(PROBE, &probe)
            .is_empty()
        {
            failures.push(format!(
                "{mode:?} declared HTTP port: a request without a token reached the application: {:?}",
                String::from_utf8_lossy(&answer)
            ));
        }
        assert!(
            failures.is_empty(),
            "{}\n{}",
            failures.join("\n"),
            sidecar.logs()
        );
    }
}

/// Under PERMISSIVE a client outside the mesh speaks plaintext HTTP: it is
/// still decided by Portcullis, with no destination principal, so an
/// application selected by the destination is not selected, and a token
/// that would be allowed over mTLS is not.
#[test]
fn plaintext_requests_under_permissive_are_decided() {
    let policies = mesh_policies();
    let sidecar = Sidecar::start_in(policies.path(), Mtls::Permissive);
    let alice = bearer(&token("alice"));
    for listener in ["inbound_http", "inbound_auto", "inbound_passthrough"] {
        let port = sidecar.port(listener);
        let forged = [("x-portcullis-subject", "admin")];
        let anonymous = send_raw(port, "GET", b"/documents/1", &forged);
        assert_eq!(
            anonymous.status,
            401,
            "{listener}: {}\n{}",
            anonymous.text(),
            sidecar.logs()
        );
        let with_token = send_raw(
            port,
            "GET",
            b"/documents/1",
            &[
                ("Authorization", alice.as_str()),
                ("x-portcullis-subject", "admin"),
            ],
        );
        assert_eq!(
            with_token.status,
            403,
            "{listener}: no destination principal selects no application\n{}",
            sidecar.logs()
        );
        // The same request over mTLS is allowed (STRICT's answer).
        let over_mtls = sidecar
            .client
            .send(
                port,
                "GET",
                b"/documents/1",
                &[("Authorization", alice.as_str())],
            )
            .unwrap_or_else(|e| panic!("{listener} over mTLS: {e}\n{}", sidecar.logs()));
        assert_eq!(
            over_mtls.status,
            200,
            "{listener} over mTLS\n{}",
            sidecar.logs()
        );
    }
    assert!(
        sidecar
            .upstream
            .requests()
            .iter()
            .all(|r| r.header("x-portcullis-subject") != Some("admin")),
        "a forged subject reached the application"
    );
}

/// Writes `connections.yaml` into `policies` (whole, renamed into place so
/// the watcher never reads half a file) and waits for it to be served.
fn serve_connections(sidecar: &Sidecar, policies: &Path, yaml: &str) {
    let admin = sidecar.portcullis.admin_port();
    let old = ready_version(admin)
        .unwrap_or_else(|| panic!("portcullis is not ready\n{}", sidecar.logs()));
    let staged = policies.join(".connections.yaml.tmp");
    std::fs::write(&staged, yaml).expect("write");
    std::fs::rename(&staged, policies.join("connections.yaml")).expect("rename");
    if wait_for_new_version(admin, &old, RELOAD_LIMIT).is_none() {
        panic!(
            "{yaml} was not loaded within {RELOAD_LIMIT:?}\n{}",
            sidecar.logs()
        );
    }
}

/// TCP flows only where a rule allows it: with the bundled policy no
/// connection is allowed; a rule for the database port (from the client's
/// namespace) lets that port through and nothing else: not the sniffed
/// port's TCP chain, not a client from another namespace, not plaintext.
/// Reloaded without the rule, the next connection is closed again.
#[test]
fn connections_are_allowed_only_by_a_rule() {
    let policies = mesh_policies();
    let sidecar = Sidecar::start_in(policies.path(), Mtls::Permissive);
    let db = sidecar.tcp_port();
    let echoes = |client: &TlsClient, port: u16, what: &str| -> bool {
        let payload = unique_payload(what);
        let answer = client
            .echo(port, &payload)
            .unwrap_or_else(|e| panic!("{what} over mTLS: {e}\n{}", sidecar.logs()));
        let received = sidecar.tcp_upstream.received_contains(&payload);
        assert_eq!(
            answer == payload,
            received,
            "{what}: the echo and the server disagree\n{}",
            sidecar.logs()
        );
        received
    };
    assert!(
        !echoes(&sidecar.tcp_client, db, "bundled"),
        "the bundled policy allows no connection\n{}",
        sidecar.logs()
    );

    serve_connections(
        &sidecar,
        policies.path(),
        &format!(
            "connections:\n  - name: documents-db\n    ports: [{db}]\n    \
             destination_namespaces: [documents]\n    source_namespaces: [frontend]\n"
        ),
    );
    assert!(
        echoes(&sidecar.tcp_client, db, "allowed"),
        "the rule did not allow the database port\n{}",
        sidecar.logs()
    );
    let stranger = sidecar
        .pki
        .client_offering(Some(&sidecar.pki.workload), ALPN_TCP);
    assert!(
        !echoes(&stranger, db, "another namespace"),
        "a client of another namespace got through\n{}",
        sidecar.logs()
    );
    let payload = unique_payload("plaintext");
    plaintext_exchange(db, &payload);
    assert!(
        !sidecar.tcp_upstream.received_contains(&payload),
        "plaintext has no source namespace, and got through\n{}",
        sidecar.logs()
    );
    let denied_before = sidecar.connections_denied();
    let probe = "allowed-db-other-port";
    sidecar
        .tcp_client
        .exchange(sidecar.port("inbound_auto"), &crlf_request(probe))
        .unwrap_or_default();
    assert!(
        sidecar
            .upstream
            .requests_with_header(PROBE, probe)
            .is_empty()
            && sidecar.connections_denied() > denied_before,
        "another port of the workload got through\n{}",
        sidecar.logs()
    );

    serve_connections(&sidecar, policies.path(), "connections: []\n");
    assert!(
        !echoes(&sidecar.tcp_client, db, "after the reload"),
        "a connection got through after the rule was removed\n{}",
        sidecar.logs()
    );
}
