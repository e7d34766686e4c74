//! End to end through an Envoy configured the way Istio configures a sidecar
//! under the mesh-wide CUSTOM policy (`tests/envoy/istio-sidecar.yaml`): a
//! client in the mesh → mTLS → the inbound HTTP chain (RBAC shadow rules,
//! ext_authz with no context_extensions and no header hardening) → the real
//! `portcullis` binary → on allow, a recording upstream; and the inbound TCP
//! chain (network RBAC shadow rules, the network ext_authz filter) → a TCP
//! echo server.
//!
//! The requests our front proxy cannot show: the application chosen by the
//! destination workload rather than the client's Host, look-alike subject
//! headers that nothing but Portcullis removes, anonymous requests to paths
//! with no route, alternate spellings of a resource, and connection checks
//! (CheckRequests without HTTP attributes).
//!
//! One test puts a recording ext_authz server that answers OK in
//! Portcullis' place, to pin down what the sidecar itself sends (the
//! destination's SPIFFE id, no context_extensions, the Host and headers as
//! the client wrote them, one check per TCP connection) independently of
//! any decision.
//!
//! Every probe carries a unique `x-e2e-probe` header, so "the upstream never
//! saw it" is exact. Failed probes are reported together, with the tail of
//! Envoy's and Portcullis' logs. Without Envoy the tests print SKIPPED and
//! pass, unless `PORTCULLIS_REQUIRE_ENVOY` or `CI` is set.

mod support;

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

use support::{
    assert_envoy_validates, bearer, bind_loopback, bundled_policies, copy_policies, corpus,
    find_envoy, ready_version, render_template, repo_path, tail, token, wait_for_new_version,
    EchoUpstream, Envoy, MeshPki, Portcullis, Response, TcpEcho, TlsClient,
};

const TEMPLATE: &str = "tests/envoy/istio-sidecar.yaml";
/// How long a reload may take to show on `/ready`.
const RELOAD_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// The sidecar stack
// ---------------------------------------------------------------------------

/// Renders the template with Envoy's own ports ephemeral.
fn render(portcullis: u16, upstream: u16, tcp_upstream: u16, pki_dir: &Path) -> String {
    let [portcullis, upstream, tcp_upstream] =
        [portcullis, upstream, tcp_upstream].map(|p| p.to_string());
    let pki_dir = pki_dir.display().to_string();
    render_template(
        &repo_path(TEMPLATE),
        &[
            ("__ADMIN_PORT__", "0"),
            ("__INBOUND_HTTP_PORT__", "0"),
            ("__INBOUND_TCP_PORT__", "0"),
            ("__PORTCULLIS_PORT__", &portcullis),
            ("__UPSTREAM_PORT__", &upstream),
            ("__TCP_UPSTREAM_PORT__", &tcp_upstream),
            ("__PKI_DIR__", &pki_dir),
        ],
    )
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
    /// A client in the mesh (`spiffe://cluster.local/ns/frontend/sa/frontend`).
    client: TlsClient,
}

impl Sidecar {
    /// Starts everything on the policy directory `policies`; `None` when
    /// Envoy is missing and not required.
    fn start(policies: &Path) -> Option<Sidecar> {
        let envoy_bin = find_envoy()?;
        let pki = MeshPki::generate("documents", "documents");
        let upstream = EchoUpstream::start();
        let tcp_upstream = TcpEcho::start();
        // Reloads show quickly.
        let portcullis =
            Portcullis::start_with_env(policies, &[("PORTCULLIS_RELOAD_DEBOUNCE_MS", "50")]);
        let config = render(
            portcullis.port(),
            upstream.port(),
            tcp_upstream.port(),
            pki.dir(),
        );
        let envoy = Envoy::start(&envoy_bin, &config);
        let client = pki.client(Some(&pki.caller));
        Some(Sidecar {
            envoy,
            portcullis,
            upstream,
            tcp_upstream,
            pki,
            client,
        })
    }

    fn http_port(&self) -> u16 {
        self.envoy.listener_port("inbound_http")
    }

    fn tcp_port(&self) -> u16 {
        self.envoy.listener_port("inbound_tcp")
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

use support::probes::{Expect, Probes, Target, PROBE};
use Expect::{Allow, Deny, NotAllowed};

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
    write("connections.yaml", "connections: allow\n");
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
        .unwrap_or_else(|| panic!("policies/documents.yaml has no `    select:` line"));
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with("    ") && !l.starts_with("     ") && !l.trim().is_empty())
        .map(|i| start + 1 + i)
        .unwrap_or_else(|| panic!("policies/documents.yaml: nothing follows `select:`"));
    let last = lines
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("policies/documents.yaml is empty"));
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

/// A copy of the bundled policies with no `connections:` setting, so a
/// connection check gets the default: deny.
fn policies_without_connections_setting() -> tempfile::TempDir {
    let dir = copy_policies(|_, content| content);
    let connections = dir.path().join("connections.yaml");
    if connections.exists() {
        std::fs::remove_file(&connections).unwrap_or_else(|e| panic!("remove: {e}"));
    }
    dir
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

/// `envoy --mode validate` accepts the rendered template, and it binds
/// loopback only.
#[test]
fn istio_sidecar_template_validates() {
    let pki = MeshPki::generate("documents", "documents");
    let rendered = render(9191, 8081, 8082, pki.dir());
    for line in rendered.lines().filter(|l| l.contains("address:")) {
        assert!(
            !line.contains("0.0.0.0") && !line.contains("::"),
            "non-loopback bind: {line}"
        );
    }
    for absent in ["context_extensions", "headers_with_underscores_action"] {
        assert!(
            !rendered.contains(&format!("{absent}:")),
            "Istio sets no {absent}, so the Istio-shaped sidecar must not either"
        );
    }
    let Some(envoy) = find_envoy() else { return };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("istio-sidecar.yaml");
    std::fs::write(&path, rendered).unwrap_or_else(|e| panic!("write: {e}"));
    assert_envoy_validates(&envoy, &path);
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
            .unwrap_or_else(|e| panic!("recording ext_authz runtime: {e}"));
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

/// The facts the engine contract builds on, checked against Envoy itself:
/// the sidecar's checks carry the destination workload's SPIFFE id and no
/// context_extensions; the client's Host and subject look-alikes reach the
/// authorizer untouched; the CUSTOM policy's exempt paths are never asked
/// about; and on the TCP chain a connection is asked about once, with no
/// HTTP attributes, and its bytes flow when the answer is OK.
#[test]
fn the_sidecar_asks_what_istio_asks() {
    let Some(envoy_bin) = find_envoy() else {
        return;
    };
    let pki = MeshPki::generate("documents", "documents");
    let authz = RecordingAuthz::start();
    let upstream = EchoUpstream::start();
    let tcp_upstream = TcpEcho::start();
    let envoy = Envoy::start(
        &envoy_bin,
        &render(authz.port, upstream.port(), tcp_upstream.port(), pki.dir()),
    );
    let client = pki.client(Some(&pki.caller));
    let logs = || format!("--- envoy (tail) ---\n{}", tail(&envoy.log(), 30));

    // HTTP: one check, as Istio builds it.
    let probe = format!("istio-asks-{}", std::process::id());
    let response = client
        .send(
            envoy.listener_port("inbound_http"),
            "GET",
            b"/documents/1",
            &[
                ("Host", "anything.example"),
                ("x_portcullis_subject", "carol"),
                (PROBE, &probe),
            ],
        )
        .unwrap_or_else(|e| panic!("GET over mTLS: {e}\n{}", logs()));
    assert_eq!(response.status, 200, "{}", logs());
    let checks = authz.checks();
    let asked: Vec<&CheckRequest> = checks
        .iter()
        .filter(|c| http_of(c).is_some_and(|h| h.headers.get(PROBE) == Some(&probe)))
        .collect();
    assert_eq!(asked.len(), 1, "checks for one request: {checks:#?}");
    let check = asked[0];
    let http = http_of(check).unwrap_or_else(|| panic!("no http attributes"));
    assert_eq!(http.host, "anything.example", "the client's Host, as sent");
    assert_eq!(
        http.headers.get("x_portcullis_subject").map(String::as_str),
        Some("carol"),
        "nothing in Istio's chain removes look-alikes: only Portcullis can"
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

    // An exempt path (notPaths) reaches the application without a check.
    let probe_livez = format!("istio-livez-{}", std::process::id());
    let response = client
        .send(
            envoy.listener_port("inbound_http"),
            "GET",
            b"/livez",
            &[(PROBE, &probe_livez)],
        )
        .unwrap_or_else(|e| panic!("GET /livez over mTLS: {e}\n{}", logs()));
    assert_eq!(response.status, 200, "{}", logs());
    assert_eq!(
        upstream.requests_with_header(PROBE, &probe_livez).len(),
        1,
        "/livez did not reach the application"
    );
    assert!(
        !authz
            .checks()
            .iter()
            .any(|c| http_of(c).is_some_and(|h| h.path == "/livez")),
        "an exempt path was sent to ext_authz"
    );

    // TCP: one connection check without HTTP attributes; bytes flow on OK.
    let before = authz.checks().len();
    let payload = unique_payload("istio-asks");
    let answer = client
        .echo(envoy.listener_port("inbound_tcp"), &payload)
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
}

// ---------------------------------------------------------------------------
// The bundled policy through the sidecar
// ---------------------------------------------------------------------------

/// The mTLS path works end to end, the CUSTOM policy's exempt paths are not
/// asked about, and the bundled policy decides as it does behind the front
/// proxy.
#[test]
fn bundled_policy_decides_behind_the_istio_sidecar() {
    let Some(sidecar) = Sidecar::start(&bundled_policies()) else {
        return;
    };
    let mut p = Probes::new(&sidecar);
    let alice = bearer(&token("alice"));
    let bob = bearer(&token("bob"));

    p.check(
        "alice reads 1",
        "GET",
        b"/documents/1",
        Some(&alice),
        &[],
        Allow(Some("alice")),
    );
    p.check(
        "bob writes 1 (viewer)",
        "PUT",
        b"/documents/1",
        Some(&bob),
        &[],
        Deny(403),
    );
    p.check("no token", "GET", b"/documents/1", None, &[], Deny(401));
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
    let Some(sidecar) = Sidecar::start(&bundled_policies()) else {
        return;
    };
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
    let Some(sidecar) = Sidecar::start(policies.path()) else {
        return;
    };
    let mut p = Probes::new(&sidecar);
    let alice = bearer(&token("alice"));
    let bob = bearer(&token("bob"));
    let a = Some(alice.as_str());
    let b = Some(bob.as_str());

    p.check(
        "alice reads 1",
        "GET",
        b"/documents/1",
        a,
        &[],
        Allow(Some("alice")),
    );
    p.check(
        "bob writes 1 (viewer)",
        "PUT",
        b"/documents/1",
        b,
        &[],
        Deny(403),
    );
    p.check("no token", "GET", b"/documents/1", None, &[], Deny(401));

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

/// Only Portcullis removes client-sent subject headers under Istio: a
/// forged `x-portcullis-subject` or look-alike never reaches the
/// application, on an authenticated allow or a public one (item 8).
#[test]
fn forged_subject_headers_never_reach_the_application() {
    let policies = mesh_policies();
    let Some(sidecar) = Sidecar::start(policies.path()) else {
        return;
    };
    let mut p = Probes::new(&sidecar);
    let alice = bearer(&token("alice"));
    let forged: &[(&str, &str)] = &[
        ("x_portcullis_subject", "carol"),
        ("x-portcullis-subject", "carol"),
        ("x-portcullis_subject", "carol"),
        ("x_portcullis-subject", "carol"),
    ];
    for (name, value) in forged {
        p.check(
            &format!("alice with {name}"),
            "GET",
            b"/documents/1",
            Some(&alice),
            &[(name, value)],
            Allow(Some("alice")),
        );
        p.check(
            &format!("public route with {name}"),
            "GET",
            b"/about",
            None,
            &[(name, value)],
            Allow(None),
        );
    }
    p.check(
        "alice with all of them",
        "GET",
        b"/documents/1",
        Some(&alice),
        forged,
        Allow(Some("alice")),
    );
    p.check(
        "public route with all of them",
        "GET",
        b"/about",
        None,
        forged,
        Allow(None),
    );
    p.finish();
}

/// No credential, no information: an anonymous request gets 401 whether a
/// route exists or not; with a valid token, no route is 403 (item 9).
#[test]
fn anonymous_requests_learn_nothing_about_routes() {
    let policies = mesh_policies();
    let Some(sidecar) = Sidecar::start(policies.path()) else {
        return;
    };
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
    let Some(sidecar) = Sidecar::start(policies.path()) else {
        return;
    };
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
// Connections: the TCP chain's network ext_authz filter
// ---------------------------------------------------------------------------

/// With no `connections:` setting a connection check is denied: Envoy
/// closes the connection and no byte reaches the application.
#[test]
fn a_connection_is_closed_when_connections_are_not_allowed() {
    let policies = policies_without_connections_setting();
    let Some(sidecar) = Sidecar::start(policies.path()) else {
        return;
    };
    let payload = unique_payload("denied");
    let answer = sidecar
        .client
        .echo(sidecar.tcp_port(), &payload)
        .unwrap_or_else(|e| panic!("tcp over mTLS: {e}\n{}", sidecar.logs()));
    assert!(
        answer.is_empty(),
        "a denied connection echoed {:?}\n{}",
        String::from_utf8_lossy(&answer),
        sidecar.logs()
    );
    assert!(
        !sidecar.tcp_upstream.received_contains(&payload),
        "the bytes of a denied connection reached the application\n{}",
        sidecar.logs()
    );
}

/// `connections: allow` lets TCP traffic through the sidecar (the mesh-wide
/// policy must not cut databases and queues, item 1); reloaded to
/// `connections: deny`, the next connection is closed without an echo.
#[test]
fn the_connections_setting_answers_connection_checks() {
    let policies = mesh_policies();
    let Some(sidecar) = Sidecar::start(policies.path()) else {
        return;
    };
    let port = sidecar.tcp_port();
    let payload = unique_payload("allowed");
    let answer = sidecar
        .client
        .echo(port, &payload)
        .unwrap_or_else(|e| panic!("tcp over mTLS: {e}\n{}", sidecar.logs()));
    assert_eq!(
        String::from_utf8_lossy(&answer),
        String::from_utf8_lossy(&payload),
        "an allowed connection did not echo\n{}",
        sidecar.logs()
    );

    let admin = sidecar.portcullis.admin_port();
    let old = ready_version(admin)
        .unwrap_or_else(|| panic!("portcullis is not ready\n{}", sidecar.logs()));
    // Whole, renamed into place: the watcher never reads half a file.
    let staged = policies.path().join(".connections.yaml.tmp");
    std::fs::write(&staged, "connections: deny\n").unwrap_or_else(|e| panic!("write: {e}"));
    std::fs::rename(&staged, policies.path().join("connections.yaml"))
        .unwrap_or_else(|e| panic!("rename: {e}"));
    if wait_for_new_version(admin, &old, RELOAD_LIMIT).is_none() {
        panic!(
            "`connections: deny` was not loaded within {RELOAD_LIMIT:?}\n{}",
            sidecar.logs()
        );
    }
    let payload = unique_payload("denied-after-reload");
    let answer = sidecar
        .client
        .echo(port, &payload)
        .unwrap_or_else(|e| panic!("tcp over mTLS: {e}\n{}", sidecar.logs()));
    assert!(
        answer.is_empty(),
        "a connection echoed {:?} after `connections: deny`\n{}",
        String::from_utf8_lossy(&answer),
        sidecar.logs()
    );
    assert!(
        !sidecar.tcp_upstream.received_contains(&payload),
        "the bytes of a denied connection reached the application\n{}",
        sidecar.logs()
    );
}
