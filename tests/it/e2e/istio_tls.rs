//! The mesh reaching Portcullis over TLS, as `k8s/overlays/istio-tls` sets
//! it up: the overlay rendered into the Istio-shaped sidecar
//! (tests/it/support/istio.rs, steps 1 to 4: its DestinationRule becomes the
//! provider cluster's UpstreamTlsContext as istiod builds it, the CA file
//! named by `caCertificates` served over SDS as istio-agent serves it) in
//! front of a real `portcullis serve` with `PORTCULLIS_TLS_CERT` and
//! `PORTCULLIS_TLS_KEY`, as the overlay's Deployment patch runs it.
//!
//! Certificates are generated per test (`ServerPki`: a serving CA and a
//! certificate for the Service's DNS name; `MeshPki`: the mesh's own, for
//! the client sidecar's mTLS). No key is committed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::probes::{Expect, Probes, Target};
use crate::support::{
    bearer, bundled_policies, check_request, find_envoy, istio_sidecar, repo_path, send_raw, tail,
    token, wait_for_log, EchoUpstream, Envoy, MeshPki, Mtls, Portcullis, ProxyFiles, Response,
    ServerPki, SidecarPorts, TcpEcho, TlsClient, ISTIO_OVERLAY,
};

const OVERLAY: &str = "k8s/overlays/istio-tls";
const DESTINATION_RULE: &str = "k8s/overlays/istio-tls/destinationrule-portcullis-tls.yaml";
/// The provider's cluster, as istiod names it (extauthz.go, BuildSubsetKey).
const PROVIDER_CLUSTER: &str = "outbound|9191||portcullis.portcullis.svc.cluster.local";
/// What a client sidecar offers when its own sniffing saw HTTP.
const ALPN_HTTP: &[&str] = &["istio-http/1.1"];

/// The shipped DestinationRule's `tls` settings.
fn rule_tls() -> serde_yaml::Value {
    let text = std::fs::read_to_string(repo_path(DESTINATION_RULE))
        .unwrap_or_else(|e| panic!("{DESTINATION_RULE}: {e}"));
    let rule: serde_yaml::Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{DESTINATION_RULE}: {e}"));
    rule["spec"]["trafficPolicy"]["tls"].clone()
}

/// The DNS name Portcullis's certificate must carry: the rule's `sni`.
fn served_name() -> String {
    rule_tls()["sni"]
        .as_str()
        .unwrap_or_else(|| panic!("{DESTINATION_RULE}: no tls.sni"))
        .to_owned()
}

/// The CA file the rule names inside the proxy.
fn proxy_ca_path() -> String {
    rule_tls()["caCertificates"]
        .as_str()
        .unwrap_or_else(|| panic!("{DESTINATION_RULE}: no tls.caCertificates"))
        .to_owned()
}

/// The workload `documents` with the overlay's sidecar, asking a Portcullis
/// that serves TLS.
struct TlsSidecar {
    // Declared in shutdown order: the proxy first.
    envoy: Envoy,
    portcullis: Portcullis,
    upstream: EchoUpstream,
    _tcp_upstream: TcpEcho,
    _mesh: MeshPki,
    _serving: ServerPki,
    _proxy_dir: tempfile::TempDir,
    client: TlsClient,
}

impl TlsSidecar {
    /// Portcullis serves `serving`'s certificate; the proxy's CA file (the
    /// rule's `caCertificates`) holds `proxy_ca`.
    fn start(serving: ServerPki, proxy_ca: &Path) -> TlsSidecar {
        let envoy_bin = find_envoy();
        let mesh = MeshPki::generate("documents", "documents");
        let upstream = EchoUpstream::start();
        let tcp_upstream = TcpEcho::start();
        let cert = serving.path("server.pem").display().to_string();
        let key = serving.path("server-key.pem").display().to_string();
        let portcullis = Portcullis::start_with_env(
            &bundled_policies(),
            &[
                ("PORTCULLIS_TLS_CERT", cert.as_str()),
                ("PORTCULLIS_TLS_KEY", key.as_str()),
            ],
        );
        let proxy_dir = tempfile::tempdir().expect("tempdir");
        let ca_path = proxy_ca_path();
        let files = [(ca_path.as_str(), proxy_ca)];
        let proxy = ProxyFiles {
            files: &files,
            scratch: proxy_dir.path(),
        };
        let config = render(
            &proxy,
            portcullis.port(),
            upstream.port(),
            tcp_upstream.port(),
            mesh.dir(),
        );
        let envoy = Envoy::start(&envoy_bin, &config);
        let client = mesh.client_offering(Some(&mesh.caller), ALPN_HTTP);
        TlsSidecar {
            envoy,
            portcullis,
            upstream,
            _tcp_upstream: tcp_upstream,
            _mesh: mesh,
            _serving: serving,
            _proxy_dir: proxy_dir,
            client,
        }
    }

    fn http_port(&self) -> u16 {
        self.envoy.listener_port("inbound_http")
    }

    /// One of Envoy's counters for the provider cluster (0 when absent).
    fn provider_stat(&self, name: &str) -> u64 {
        let stat = format!("cluster.{PROVIDER_CLUSTER}.{name}");
        let text = send_raw(self.envoy.admin_port(), "GET", b"/stats", &[]).text();
        text.lines()
            .find_map(|line| {
                let (key, value) = line.split_once(": ")?;
                (key == stat).then(|| value.trim().parse().ok()).flatten()
            })
            .unwrap_or(0)
    }

    /// Sends `alice`'s read of document 1 until the answer is not Envoy's
    /// 503 for a check that could not finish (the first check also opens
    /// the TLS connection, which on a loaded machine may outlast Istio's
    /// 0.5 s timeout), for at most 20 s; returns the last answer.
    fn first_decided(&self, authorization: &str) -> Response {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let response = self.send("GET", b"/documents/1", &[("authorization", authorization)]);
            if response.status != 503 || Instant::now() > deadline {
                return response;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Target for TlsSidecar {
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

    fn upstream(&self) -> &EchoUpstream {
        &self.upstream
    }

    fn logs(&self) -> String {
        format!(
            "--- envoy (tail) ---\n{}\n--- portcullis (tail) ---\n{}",
            tail(&self.envoy.log(), 30),
            tail(&self.portcullis.log(), 30)
        )
    }
}

/// The overlay's sidecar in STRICT mode, with Envoy's own ports ephemeral.
fn render(
    proxy: &ProxyFiles,
    portcullis: u16,
    upstream: u16,
    tcp_upstream: u16,
    pki_dir: &Path,
) -> String {
    let ports = SidecarPorts {
        portcullis,
        upstream,
        tcp_upstream,
        pki_dir,
    };
    istio_sidecar(OVERLAY, Mtls::Strict, &ports, Some(proxy))
}

/// The rendered provider cluster carries the TLS istiod builds from the
/// rule (SNI and SAN of the Service, ALPN h2, the CA as the SDS secret
/// `file-root:PATH`), and `envoy --mode validate` accepts the whole config.
#[test]
fn the_destination_rule_gives_the_provider_cluster_tls() {
    let serving = ServerPki::generate(&served_name());
    let proxy_dir = tempfile::tempdir().expect("tempdir");
    let ca = serving.path("ca.pem");
    let ca_path = proxy_ca_path();
    let files = [(ca_path.as_str(), ca.as_path())];
    let proxy = ProxyFiles {
        files: &files,
        scratch: proxy_dir.path(),
    };
    let pki = MeshPki::generate("documents", "documents");
    let rendered = render(&proxy, 9191, 8081, 8082, pki.dir());
    let config: serde_yaml::Value = serde_yaml::from_str(&rendered).expect("yaml");
    let cluster = config["static_resources"]["clusters"]
        .as_sequence()
        .expect("clusters")
        .iter()
        .find(|c| c["name"].as_str() == Some(PROVIDER_CLUSTER))
        .expect("the provider cluster");
    let tls = &cluster["transport_socket"]["typed_config"];
    assert_eq!(
        tls["@type"].as_str(),
        Some("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext")
    );
    assert_eq!(tls["sni"].as_str(), Some(served_name().as_str()));
    let common = &tls["common_tls_context"];
    assert_eq!(common["alpn_protocols"][0].as_str(), Some("h2"));
    let validation = &common["combined_validation_context"];
    assert_eq!(
        validation["default_validation_context"]["match_subject_alt_names"][0]["exact"].as_str(),
        Some(served_name().as_str())
    );
    assert_eq!(
        validation["validation_context_sds_secret_config"]["name"].as_str(),
        Some(format!("file-root:{ca_path}").as_str())
    );
    // The plain istio overlay has no TLS on that cluster: the rule is what adds it.
    let ports = SidecarPorts {
        portcullis: 9191,
        upstream: 8081,
        tcp_upstream: 8082,
        pki_dir: pki.dir(),
    };
    let plain = istio_sidecar(ISTIO_OVERLAY, Mtls::Strict, &ports, None);
    assert!(!plain.contains("UpstreamTlsContext"));
    let path = proxy_dir.path().join("istio-tls-sidecar.yaml");
    std::fs::write(&path, &rendered).expect("write");
    crate::support::assert_envoy_validates(&find_envoy(), &path);
}

/// The whole path over TLS: an allowed request reaches the application with
/// its subject, a denied one gets Portcullis's 403, a request without a
/// token its 401, and Envoy counts a TLS handshake to Portcullis (the check
/// did not travel in plaintext).
#[test]
fn checks_over_tls_decide_end_to_end() {
    let serving = ServerPki::generate(&served_name());
    let ca = serving.path("ca.pem");
    let sidecar = TlsSidecar::start(serving, &ca);
    let alice = bearer(&token("alice"));
    let first = sidecar.first_decided(&alice);
    assert_eq!(first.status, 200, "{}", sidecar.logs());

    let mut p = Probes::new(&sidecar);
    p.bundled_basics();
    p.finish();
    assert!(
        sidecar.provider_stat("ssl.handshake") >= 1,
        "Envoy made no TLS handshake to Portcullis\n{}",
        sidecar.logs()
    );
}

/// A proxy whose CA file holds another CA refuses Portcullis's certificate:
/// every check fails, Envoy answers 503 (Istio's statusOnError), nothing
/// reaches the application, and the failure is a certificate verification.
#[test]
fn a_proxy_with_the_wrong_ca_fails_closed() {
    let serving = ServerPki::generate(&served_name());
    let other = ServerPki::generate(&served_name());
    let wrong_ca: PathBuf = other.path("ca.pem");
    let sidecar = TlsSidecar::start(serving, &wrong_ca);
    let alice = bearer(&token("alice"));
    let mut p = Probes::new(&sidecar);
    for label in ["alice reads 1", "alice reads 1 again"] {
        p.check(
            label,
            "GET",
            b"/documents/1",
            Some(&alice),
            &[],
            Expect::Status(503),
        );
    }
    p.check(
        "no token",
        "GET",
        b"/documents/1",
        None,
        &[],
        Expect::Status(503),
    );
    p.finish();
    assert!(
        sidecar.upstream.requests().is_empty(),
        "a request reached the application"
    );
    assert!(
        sidecar.provider_stat("ssl.fail_verify_error") >= 1,
        "Envoy did not refuse Portcullis's certificate\n{}",
        sidecar.logs()
    );
    assert_eq!(
        sidecar.provider_stat("ssl.handshake"),
        0,
        "a TLS session to Portcullis was set up with the wrong CA"
    );
    drop(other);
}

/// Portcullis's TLS listener refuses a plaintext gRPC client: no
/// CheckResponse comes back, and Portcullis logs the failed handshake.
#[tokio::test]
async fn the_tls_listener_refuses_a_plaintext_client() {
    let serving = ServerPki::generate(&served_name());
    let cert = serving.path("server.pem").display().to_string();
    let key = serving.path("server-key.pem").display().to_string();
    let portcullis = Portcullis::start_with_env(
        &bundled_policies(),
        &[
            ("PORTCULLIS_TLS_CERT", cert.as_str()),
            ("PORTCULLIS_TLS_KEY", key.as_str()),
        ],
    );
    let alice = bearer(&token("alice"));
    let answer = match tonic::transport::Channel::from_shared(format!(
        "http://127.0.0.1:{}",
        portcullis.port()
    ))
    .expect("uri")
    .connect()
    .await
    {
        Err(e) => Err(format!("connect: {e}")),
        Ok(channel) => {
            let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(channel);
            client
                .check(check_request("GET", "/documents/1", Some(&alice), "plain"))
                .await
                .map_err(|status| format!("check: {status}"))
        }
    };
    assert!(
        answer.is_err(),
        "a plaintext client got a CheckResponse: {answer:?}"
    );
    wait_for_log(|| portcullis.log(), "tls handshake failed");
}
