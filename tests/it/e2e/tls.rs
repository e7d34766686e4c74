//! Envoy (`envoy/front-proxy-mtls.yaml`, rendered) in front of a Portcullis
//! whose gRPC listener requires a client certificate: the certificates of
//! `service::tls` (generated per test), Envoy as the client.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::service::tls::Pki;
use crate::support::{
    self, assert_envoy_validates, find_envoy, render_envoy_config_with, repo_path, send_raw,
    wait_for_log, EchoUpstream, Envoy, EnvoyPorts, Portcullis,
};

fn render_mtls(ports: &EnvoyPorts, cert_dir: &Path) -> String {
    let cert_dir = cert_dir.display().to_string();
    render_envoy_config_with(
        &repo_path("envoy/front-proxy-mtls.yaml"),
        ports,
        &[("__CERT_DIR__", cert_dir.as_str())],
    )
}

/// `envoy --mode validate` accepts the rendered mTLS template (with the
/// certificate files in place: Envoy reads them while validating).
#[test]
fn front_proxy_mtls_template_validates() {
    let envoy = find_envoy();
    let pki = Pki::generate();
    let path = pki.path("front-proxy-mtls.yaml");
    let rendered = render_mtls(&EnvoyPorts::ephemeral(9191, 8081), pki.dir.path());
    std::fs::write(&path, rendered).expect("write");
    assert_envoy_validates(&envoy, &path);
}

/// The mTLS variant is the front proxy plus a transport socket on the
/// `portcullis` cluster, nothing else: a change to front-proxy.yaml that is
/// not carried over fails here.
#[test]
fn front_proxy_mtls_differs_from_the_front_proxy_only_in_tls() {
    let parse = |name: &str| -> serde_yaml::Value {
        let text =
            std::fs::read_to_string(repo_path(name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parse {name}: {e}"))
    };
    let plain = parse("envoy/front-proxy.yaml");
    let mut mtls = parse("envoy/front-proxy-mtls.yaml");
    let clusters = mtls["static_resources"]["clusters"]
        .as_sequence_mut()
        .expect("no clusters");
    let portcullis = clusters
        .iter_mut()
        .find(|c| c["name"].as_str() == Some("portcullis"))
        .and_then(|c| c.as_mapping_mut())
        .expect("no portcullis cluster");
    let socket = portcullis
        .remove("transport_socket")
        .expect("the portcullis cluster has no transport_socket");
    assert_eq!(socket["name"].as_str(), Some("envoy.transport_sockets.tls"));
    assert!(
        mtls == plain,
        "front-proxy-mtls.yaml differs from front-proxy.yaml beyond the TLS transport socket"
    );
}

/// Envoy (front-proxy-mtls.yaml) in front of a Portcullis that verifies
/// clients against `client-ca.pem`.
struct MtlsStack {
    envoy: Envoy,
    portcullis: Portcullis,
    upstream: EchoUpstream,
}

impl MtlsStack {
    fn start(pki: &Pki) -> MtlsStack {
        let envoy_bin = find_envoy();
        let upstream = EchoUpstream::start();
        let portcullis = pki.start_portcullis(true);
        let config = render_mtls(
            &EnvoyPorts::ephemeral(portcullis.port(), upstream.port()),
            pki.dir.path(),
        );
        let envoy = Envoy::start(&envoy_bin, &config);
        MtlsStack {
            envoy,
            portcullis,
            upstream,
        }
    }

    fn get(&self, path: &[u8]) -> support::Response {
        send_raw(self.envoy.port(), "GET", path, &[])
    }

    fn logs(&self) -> String {
        format!(
            "--- envoy (tail) ---\n{}\n--- portcullis (tail) ---\n{}",
            support::tail(&self.envoy.log(), 30),
            support::tail(&self.portcullis.log(), 30)
        )
    }
}

/// (5) Envoy with the right client certificate is answered: a public route
/// reaches the application, a protected one is refused by Portcullis' own
/// decision (401), not by a transport failure.
#[test]
fn envoy_with_the_right_client_certificate_is_answered() {
    let pki = Pki::generate();
    let stack = MtlsStack::start(&pki);
    // The first check also opens the TLS connection; on a loaded machine its
    // handshake can outlast the 250 ms ext_authz timeout, which Envoy
    // answers 503 without reaching the application. Wait for the connection
    // to be up (bounded), not for a fixed number of tries.
    let deadline = Instant::now() + Duration::from_secs(20);
    let response = loop {
        let response = stack.get(b"/healthz");
        if response.status != 503 || Instant::now() > deadline {
            break response;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(response.status, 200, "{}", stack.logs());
    assert_eq!(
        stack.upstream.requests().len(),
        1,
        "the application got the request"
    );
    let denied = stack.get(b"/documents/1");
    assert_eq!(denied.status, 401, "{}", stack.logs());
    assert_eq!(stack.upstream.requests().len(), 1);
}

/// (5) A Portcullis that trusts another CA refuses Envoy's certificate, and
/// Envoy fails closed: 503, nothing reaches the application.
#[test]
fn envoy_with_a_refused_client_certificate_fails_closed() {
    let pki = Pki::generate();
    // Portcullis verifies clients against the other CA only.
    pki.write("client-ca.pem", &pki.other_ca.pem());
    let stack = MtlsStack::start(&pki);
    for path in [&b"/healthz"[..], b"/documents/1"] {
        let response = stack.get(path);
        assert_eq!(response.status, 503, "{}", stack.logs());
    }
    assert!(
        stack.upstream.requests().is_empty(),
        "a request reached the application"
    );
    wait_for_log(|| stack.portcullis.log(), "tls handshake failed");
}
