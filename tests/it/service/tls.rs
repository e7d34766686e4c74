//! TLS and mutual TLS on Portcullis' gRPC listener, over real sockets; the
//! same certificates through a real Envoy are `e2e::tls`.
//!
//! Every certificate is generated here, per test, with rcgen: a CA that
//! issues Portcullis' server certificate (127.0.0.1 and `localhost`) and
//! Envoy's client certificate, and another CA with a client certificate of
//! its own. Nothing is committed. Each test starts its own `portcullis
//! serve` with the TLS files passed through the environment.

use crate::support;

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use crate::support::{
    bundled_policies, check_request, eventually_async, grpc_status, send_raw, wait_for_log,
    Portcullis,
};

/// How long a test waits for a reload to show.
const RELOAD_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

type Ca = CertifiedIssuer<'static, KeyPair>;

fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("ca key");
    CertifiedIssuer::self_signed(params, key).expect("ca cert")
}

/// A leaf certificate and its key, as PEM and as the DER a peer sees.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn leaf(issuer: &Ca, name: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("key");
    let cert = params
        .signed_by(&key, issuer)
        .unwrap_or_else(|e| panic!("sign {name}: {e}"));
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

fn server_leaf(issuer: &Ca, name: &str) -> Leaf {
    leaf(
        issuer,
        name,
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    )
}

fn client_leaf(issuer: &Ca, name: &str) -> Leaf {
    leaf(issuer, name, &[name], ExtendedKeyUsagePurpose::ClientAuth)
}

/// A directory of PEM files, named as `envoy/front-proxy-mtls.yaml` expects:
///
/// | file | what |
/// |---|---|
/// | `portcullis-ca.pem` | the CA (issuer of the server and Envoy certificates) |
/// | `server.pem`, `server-key.pem` | Portcullis' certificate |
/// | `client-ca.pem` | the bundle Portcullis verifies clients against (the CA) |
/// | `envoy-client.pem`, `envoy-client-key.pem` | a client certificate from the CA |
/// | `other-ca.pem` | another CA |
/// | `other-client.pem`, `other-client-key.pem` | a client certificate from it |
pub(crate) struct Pki {
    pub(crate) dir: tempfile::TempDir,
    ca: Ca,
    pub(crate) other_ca: Ca,
    server: Leaf,
    client: Leaf,
    other_client: Leaf,
}

impl Pki {
    pub(crate) fn generate() -> Pki {
        let ca = new_ca("Portcullis Test CA");
        let other_ca = new_ca("Another CA");
        let server = server_leaf(&ca, "portcullis");
        let client = client_leaf(&ca, "envoy");
        let other_client = client_leaf(&other_ca, "intruder");
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki {
            dir,
            ca,
            other_ca,
            server,
            client,
            other_client,
        };
        pki.write("portcullis-ca.pem", &pki.ca.pem());
        pki.write("client-ca.pem", &pki.ca.pem());
        pki.write("other-ca.pem", &pki.other_ca.pem());
        pki.write_leaf("server", &pki.server);
        pki.write_leaf("envoy-client", &pki.client);
        pki.write_leaf("other-client", &pki.other_client);
        pki
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn path_str(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Writes a file the way a rotation should: whole, renamed into place.
    pub(crate) fn write(&self, name: &str, content: &str) {
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap_or_else(|e| panic!("write {name}: {e}"));
        std::fs::rename(&tmp, self.path(name)).unwrap_or_else(|e| panic!("rename {name}: {e}"));
    }

    /// `NAME.pem` and `NAME-key.pem`, the key first.
    fn write_leaf(&self, name: &str, leaf: &Leaf) {
        self.write(&format!("{name}-key.pem"), &leaf.key_pem);
        self.write(&format!("{name}.pem"), &leaf.cert_pem);
    }

    /// The environment that makes `portcullis serve` speak TLS with the
    /// server certificate, verifying clients against `client-ca.pem` if
    /// `mutual`.
    fn serve_env(&self, mutual: bool) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "PORTCULLIS_TLS_CERT".to_owned(),
                self.path_str("server.pem"),
            ),
            (
                "PORTCULLIS_TLS_KEY".to_owned(),
                self.path_str("server-key.pem"),
            ),
            // Reloads show quickly.
            ("PORTCULLIS_RELOAD_DEBOUNCE_MS".to_owned(), "50".to_owned()),
        ];
        if mutual {
            env.push((
                "PORTCULLIS_TLS_CLIENT_CA".to_owned(),
                self.path_str("client-ca.pem"),
            ));
        }
        env
    }

    pub(crate) fn start_portcullis(&self, mutual: bool) -> Portcullis {
        let env = self.serve_env(mutual);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Portcullis::start_with_env(&bundled_policies(), &env)
    }

    /// A client that trusts the CA and presents `identity`, if any.
    fn client_config(&self, identity: Option<&Leaf>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("root");
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots);
        let mut config = match identity {
            Some(leaf) => {
                let key =
                    PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("client key");
                builder
                    .with_client_auth_cert(vec![leaf.der.clone()], key)
                    .expect("client cert")
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// Connects over TLS (server name `localhost`) and proves the server took
/// the connection: in TLS 1.3 a refused client certificate is only reported
/// after the client's side of the handshake is done, so this also sends the
/// HTTP/2 preface and waits for the server's first bytes. `Ok` carries the
/// server certificate presented; `Err` says how the connection was refused.
async fn handshake(
    port: u16,
    config: Arc<ClientConfig>,
) -> Result<CertificateDer<'static>, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .cloned()
        .ok_or("no server certificate")?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut first = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut first)).await {
        Ok(Ok(0)) => Err("closed by the server".to_owned()),
        Ok(Ok(_)) => Ok(presented),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err("no answer within 5 s".to_owned()),
    }
}

/// Opens TLS connections for a tonic channel, and counts them.
#[derive(Clone)]
struct TlsConnect {
    port: u16,
    config: Arc<ClientConfig>,
    connections: Arc<AtomicUsize>,
}

impl tonic::codegen::Service<Uri> for TlsConnect {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(("127.0.0.1", this.port)).await?;
            let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
            let tls = TlsConnector::from(this.config).connect(name, tcp).await?;
            this.connections.fetch_add(1, Ordering::SeqCst);
            Ok(TokioIo::new(tls))
        })
    }
}

/// A gRPC client of Portcullis over TLS, and its connection count.
async fn tls_grpc_client(
    port: u16,
    config: Arc<ClientConfig>,
) -> (AuthorizationClient<Channel>, Arc<AtomicUsize>) {
    let connections = Arc::new(AtomicUsize::new(0));
    let connector = TlsConnect {
        port,
        config,
        connections: connections.clone(),
    };
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await
        .expect("connect over tls");
    (AuthorizationClient::new(channel), connections)
}

/// Waits (at most [`RELOAD_LIMIT`]) until `done` says yes.
/// Waits (at most [`RELOAD_LIMIT`]) until `log()` contains `needle`: the
/// server logs a refused handshake just after the client has seen it.
fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

// ---------------------------------------------------------------------------
// Direct clients
// ---------------------------------------------------------------------------

/// (1) A client with a certificate from the CA gets real decisions; the
/// admin listener stays plain HTTP.
#[tokio::test]
async fn a_client_certificate_from_the_ca_gets_decisions() {
    let pki = Pki::generate();
    let portcullis = pki.start_portcullis(true);
    let (mut client, _) =
        tls_grpc_client(portcullis.port(), pki.client_config(Some(&pki.client))).await;
    let public = check_request("GET", "/healthz", None, "tls-1");
    assert_eq!(grpc_status(&mut client, public).await, 200);
    let private = check_request("GET", "/documents/1", None, "tls-2");
    assert_eq!(grpc_status(&mut client, private).await, 401);

    let live = send_raw(portcullis.admin_port(), "GET", b"/live", &[]);
    assert_eq!(live.status, 200, "the admin listener is plain HTTP");
    wait_for_log(|| portcullis.log(), r#""transport":"mtls""#);
}

/// (2) Without a client certificate the connection is refused.
#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let pki = Pki::generate();
    let portcullis = pki.start_portcullis(true);
    let refused = handshake(portcullis.port(), pki.client_config(None)).await;
    assert!(refused.is_err(), "accepted a client without a certificate");
    // The same client is answered once it shows its certificate.
    let accepted = handshake(portcullis.port(), pki.client_config(Some(&pki.client))).await;
    assert_eq!(accepted, Ok(pki.server.der.clone()));
}

/// (3) A certificate from another CA is refused.
#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let pki = Pki::generate();
    let portcullis = pki.start_portcullis(true);
    let refused = handshake(
        portcullis.port(),
        pki.client_config(Some(&pki.other_client)),
    )
    .await;
    assert!(refused.is_err(), "accepted a certificate from another CA");
    wait_for_log(|| portcullis.log(), "tls handshake failed");
}

/// TLS without --tls-client-ca: encrypted, any client answered.
#[tokio::test]
async fn tls_without_a_client_ca_answers_any_client() {
    let pki = Pki::generate();
    let portcullis = pki.start_portcullis(false);
    let (mut client, _) = tls_grpc_client(portcullis.port(), pki.client_config(None)).await;
    let public = check_request("GET", "/healthz", None, "tls-3");
    assert_eq!(grpc_status(&mut client, public).await, 200);
}

/// SIGTERM drains a TLS server like a plain one: an open connection does
/// not keep it alive, it exits 0.
#[tokio::test]
async fn a_tls_server_exits_cleanly_on_sigterm() {
    let pki = Pki::generate();
    let mut portcullis = pki.start_portcullis(true);
    let (mut client, _) =
        tls_grpc_client(portcullis.port(), pki.client_config(Some(&pki.client))).await;
    let public = check_request("GET", "/healthz", None, "sigterm");
    assert_eq!(grpc_status(&mut client, public).await, 200);
    let status = Command::new("kill")
        .args(["-TERM", &portcullis.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let started = Instant::now();
    let code = loop {
        if let Some(code) = portcullis.try_wait() {
            break code;
        }
        assert!(
            started.elapsed() < RELOAD_LIMIT,
            "portcullis did not exit within {RELOAD_LIMIT:?} of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code, Some(0), "{}", portcullis.log());
}

/// (4) A new certificate is served to new connections without a restart;
/// an open connection carries on; a broken or mismatched replacement keeps
/// the last good certificate.
#[tokio::test]
async fn the_server_certificate_rotates_without_a_restart() {
    let pki = Pki::generate();
    let mut portcullis = pki.start_portcullis(true);
    let port = portcullis.port();
    // The kernel shows the watch on the TLS files' directory (what
    // `sighup_reloads_the_certificate_when_watching_is_off` relies on
    // seeing when it is there).
    assert!(
        support::inotify_watched_inodes(portcullis.pid()).contains(&support::inode(pki.dir.path())),
        "a watching process shows no inotify watch on its TLS directory"
    );
    let config = pki.client_config(Some(&pki.client));
    let (mut client, connections) = tls_grpc_client(port, config.clone()).await;
    let public = || check_request("GET", "/healthz", None, "rotation");
    assert_eq!(grpc_status(&mut client, public()).await, 200);
    assert_eq!(
        handshake(port, config.clone()).await,
        Ok(pki.server.der.clone())
    );

    let rotated = server_leaf(&pki.ca, "portcullis-rotated");
    assert_ne!(rotated.der, pki.server.der);
    pki.write_leaf("server", &rotated);
    eventually_async(RELOAD_LIMIT, "the rotated certificate is served", || {
        let config = config.clone();
        let expected = rotated.der.clone();
        async move { handshake(port, config).await == Ok(expected) }
    })
    .await;
    // The connection opened before the rotation is still the one in use.
    assert_eq!(grpc_status(&mut client, public()).await, 200);
    assert_eq!(connections.load(Ordering::SeqCst), 1);

    // A certificate file that is not PEM: logged, the rotated one stays.
    let failures = count(&portcullis.log(), "tls reload failed");
    pki.write(
        "server.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    );
    eventually_async(RELOAD_LIMIT, "the broken certificate is reported", || {
        let log = portcullis.log();
        async move { count(&log, "tls reload failed") > failures }
    })
    .await;
    assert_eq!(
        handshake(port, config.clone()).await,
        Ok(rotated.der.clone())
    );

    // A valid certificate whose key was not replaced: refused as well.
    let failures = count(&portcullis.log(), "tls reload failed");
    let unmatched = server_leaf(&pki.ca, "portcullis-unmatched");
    pki.write("server.pem", &unmatched.cert_pem);
    eventually_async(RELOAD_LIMIT, "the mismatched key is reported", || {
        let log = portcullis.log();
        async move { count(&log, "tls reload failed") > failures }
    })
    .await;
    assert_eq!(
        handshake(port, config.clone()).await,
        Ok(rotated.der.clone())
    );
    assert!(portcullis.try_wait().is_none(), "portcullis exited");
    assert_eq!(grpc_status(&mut client, public()).await, 200);
}

/// With file watching off, SIGHUP reloads the TLS files (as it reloads
/// the policies).
#[tokio::test]
async fn sighup_reloads_the_certificate_when_watching_is_off() {
    let pki = Pki::generate();
    let mut env = pki.serve_env(true);
    env.push(("PORTCULLIS_WATCH".to_owned(), "false".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let portcullis = Portcullis::start_with_env(&bundled_policies(), &env);
    let port = portcullis.port();
    let config = pki.client_config(Some(&pki.client));
    // Not watching, proven at once: the watchers are set up before the
    // process announces its ports, and it holds no inotify watch at all
    // (`the_server_certificate_rotates_without_a_restart` shows the probe
    // sees the watch of a watching process). No file event can reload it; only SIGHUP can.
    assert_eq!(
        support::inotify_watched_inodes(portcullis.pid()),
        Vec::<u64>::new(),
        "watching is off, yet the process watches files"
    );

    let rotated = server_leaf(&pki.ca, "portcullis-sighup");
    pki.write_leaf("server", &rotated);
    assert_eq!(
        handshake(port, config.clone()).await,
        Ok(pki.server.der.clone())
    );
    let status = Command::new("kill")
        .args(["-HUP", &portcullis.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    eventually_async(
        RELOAD_LIMIT,
        "SIGHUP serves the rotated certificate",
        || {
            let config = config.clone();
            let expected = rotated.der.clone();
            async move { handshake(port, config).await == Ok(expected) }
        },
    )
    .await;
    // One reload, and the signal made it.
    let log = wait_for_log(|| portcullis.log(), "tls certificate reloaded");
    let reloads: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("tls certificate reloaded"))
        .collect();
    assert_eq!(reloads.len(), 1, "{log}");
    assert!(reloads[0].contains("SIGHUP"), "{}", reloads[0]);
}

/// The client CA bundle is reloaded too: after it is replaced, the other
/// CA's clients are let in and the first CA's are refused.
#[tokio::test]
async fn the_client_ca_bundle_rotates_without_a_restart() {
    let pki = Pki::generate();
    let portcullis = pki.start_portcullis(true);
    let port = portcullis.port();
    let ours = pki.client_config(Some(&pki.client));
    let theirs = pki.client_config(Some(&pki.other_client));
    assert!(handshake(port, theirs.clone()).await.is_err());

    pki.write("client-ca.pem", &pki.other_ca.pem());
    eventually_async(RELOAD_LIMIT, "the other CA's client is accepted", || {
        let theirs = theirs.clone();
        async move { handshake(port, theirs).await.is_ok() }
    })
    .await;
    assert!(handshake(port, ours).await.is_err());
}

// ---------------------------------------------------------------------------
// Refused before binding
// ---------------------------------------------------------------------------

/// Runs `portcullis serve` on the bundled policies with `args`, expecting it
/// to exit before serving; returns its exit code and stderr.
fn serve_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("serve")
        .arg("--policies")
        .arg(bundled_policies())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(args)
        .env("PORTCULLIS_DEMO_SECRET", support::test_secret())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start portcullis");
    let started = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("portcullis serve {args:?} kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("wait");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn unusable_tls_files_exit_78_before_binding() {
    let pki = Pki::generate();
    pki.write("garbage.pem", "this is not PEM\n");
    pki.write(
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    let (cert, key, ca) = (
        pki.path_str("server.pem"),
        pki.path_str("server-key.pem"),
        pki.path_str("client-ca.pem"),
    );
    let missing = pki.path_str("missing.pem");
    let garbage = pki.path_str("garbage.pem");
    let broken = pki.path_str("broken.pem");
    let other_key = pki.path_str("envoy-client-key.pem");
    let cases: [(&str, Vec<&str>, &str); 6] = [
        (
            "unreadable certificate",
            vec!["--tls-cert", &missing, "--tls-key", &key],
            "missing.pem: cannot read",
        ),
        (
            "no certificate in the file",
            vec!["--tls-cert", &garbage, "--tls-key", &key],
            "garbage.pem: no CERTIFICATE block",
        ),
        (
            "invalid PEM",
            vec!["--tls-cert", &broken, "--tls-key", &key],
            "broken.pem: invalid PEM",
        ),
        (
            "no key in the key file",
            vec!["--tls-cert", &cert, "--tls-key", &garbage],
            "garbage.pem: no PRIVATE KEY block",
        ),
        (
            "a key of another certificate",
            vec!["--tls-cert", &cert, "--tls-key", &other_key],
            "server.pem with",
        ),
        (
            "an empty CA bundle",
            vec![
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--tls-client-ca",
                &garbage,
            ],
            "garbage.pem: no CERTIFICATE block",
        ),
    ];
    for (what, args, message) in cases {
        let (code, stderr) = serve_exit(&args);
        assert_eq!(code, Some(78), "{what}: {stderr}");
        assert!(stderr.contains(message), "{what}: {stderr}");
        assert!(!stderr.contains("listening"), "{what}: {stderr}");
    }
    let usage: [(&str, Vec<&str>); 3] = [
        ("a certificate without a key", vec!["--tls-cert", &cert]),
        ("a key without a certificate", vec!["--tls-key", &key]),
        ("a client CA without TLS", vec!["--tls-client-ca", &ca]),
    ];
    for (what, args) in usage {
        let (code, stderr) = serve_exit(&args);
        assert_eq!(code, Some(64), "{what}: {stderr}");
        assert!(stderr.contains("--tls-"), "{what}: {stderr}");
    }
}
