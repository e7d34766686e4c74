//! Mesh identities and TLS clients: a CA and SPIFFE certificates generated
//! per run, and a blocking (m)TLS client for raw HTTP/1.1 and raw bytes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use super::{exchange_http1, Response, IO_TIMEOUT};

// ---------------------------------------------------------------------------
// Mesh identities: a CA and SPIFFE certificates, generated per run
// ---------------------------------------------------------------------------

/// A certificate and its key, as PEM and as the DER a peer sees.
pub struct MeshCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: rustls_pki_types::CertificateDer<'static>,
}

/// What an Istio sidecar holds: a mesh CA and a workload certificate whose
/// URI SAN is the workload's SPIFFE id (Envoy reports it to ext_authz as
/// `destination.principal`), plus a client certificate for a caller in the
/// mesh and one from a CA the mesh does not trust. Written to a temporary
/// directory as `ca.pem`, `workload.pem` and `workload-key.pem`.
pub struct MeshPki {
    dir: tempfile::TempDir,
    ca: MeshCa,
    ca_der: rustls_pki_types::CertificateDer<'static>,
    /// The name a client verifies the workload certificate against (a DNS
    /// SAN next to the SPIFFE id: rustls checks DNS names, not URIs).
    pub server_name: String,
    pub workload: MeshCert,
    pub caller: MeshCert,
    pub stranger: MeshCert,
}

type MeshCa = rcgen::CertifiedIssuer<'static, rcgen::KeyPair>;

fn mesh_ca(name: &str) -> MeshCa {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().expect("ca key");
    rcgen::CertifiedIssuer::self_signed(params, key).expect("ca cert")
}

/// A leaf for both TLS roles with the SPIFFE id `spiffe` and DNS names `dns`.
fn mesh_leaf(issuer: &MeshCa, spiffe: &str, dns: &[&str]) -> MeshCert {
    let dns: Vec<String> = dns.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(dns).expect("leaf params");
    let uri = rcgen::string::Ia5String::try_from(spiffe.to_owned())
        .unwrap_or_else(|e| panic!("spiffe id {spiffe}: {e}"));
    params.subject_alt_names.push(rcgen::SanType::URI(uri));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().expect("leaf key");
    let cert = params
        .signed_by(&key, issuer)
        .unwrap_or_else(|e| panic!("sign {spiffe}: {e}"));
    MeshCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

impl MeshPki {
    /// A mesh CA, the workload `spiffe://cluster.local/ns/NAMESPACE/sa/ACCOUNT`
    /// (DNS name `ACCOUNT.NAMESPACE.svc.cluster.local`) and a caller
    /// `spiffe://cluster.local/ns/frontend/sa/frontend`.
    pub fn generate(namespace: &str, account: &str) -> MeshPki {
        let ca = mesh_ca("cluster.local mesh CA");
        let other_ca = mesh_ca("a CA outside the mesh");
        let server_name = format!("{account}.{namespace}.svc.cluster.local");
        let workload = mesh_leaf(
            &ca,
            &format!("spiffe://cluster.local/ns/{namespace}/sa/{account}"),
            &[&server_name],
        );
        let caller = mesh_leaf(&ca, "spiffe://cluster.local/ns/frontend/sa/frontend", &[]);
        let stranger = mesh_leaf(&other_ca, "spiffe://elsewhere/ns/x/sa/x", &[]);
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, content) in [
            ("ca.pem", ca.pem()),
            ("workload.pem", workload.cert_pem.clone()),
            ("workload-key.pem", workload.key_pem.clone()),
        ] {
            std::fs::write(dir.path().join(name), content)
                .unwrap_or_else(|e| panic!("write {name}: {e}"));
        }
        MeshPki {
            dir,
            ca_der: ca.der().clone(),
            ca,
            server_name,
            workload,
            caller,
            stranger,
        }
    }

    /// Another leaf of the mesh CA, with the SPIFFE id `spiffe` and the
    /// DNS names `dns` (wildcards too) among its subject alternative names.
    pub fn issue(&self, spiffe: &str, dns: &[&str]) -> MeshCert {
        mesh_leaf(&self.ca, spiffe, dns)
    }

    /// The directory holding `ca.pem`, `workload.pem`, `workload-key.pem`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client that trusts the mesh CA and presents `identity`, if any.
    pub fn client(&self, identity: Option<&MeshCert>) -> TlsClient {
        self.client_offering(identity, &[])
    }

    /// A client that also offers the ALPN protocols `alpn`: an Istio
    /// client sidecar offers `istio-http/1.1` when its own sniffing saw HTTP
    /// and `istio-peer-exchange`, `istio` when it did not, and the server
    /// sidecar picks its filter chain by them.
    pub fn client_offering(&self, identity: Option<&MeshCert>, alpn: &[&str]) -> TlsClient {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("root");
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
        let config = match identity {
            Some(cert) => {
                let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
                    .expect("client key");
                builder
                    .with_client_auth_cert(vec![cert.der.clone()], key)
                    .expect("client cert")
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = config;
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let server_name = rustls_pki_types::ServerName::try_from(self.server_name.clone())
            .unwrap_or_else(|e| panic!("server name {}: {e}", self.server_name));
        TlsClient {
            config: Arc::new(config),
            server_name,
        }
    }
}

/// A server certificate for `dns` from a CA of its own (not the mesh's), as
/// an operator issues Portcullis's serving certificate: written to a
/// temporary directory as `ca.pem`, `server.pem` and `server-key.pem`.
/// Keys live only there, for the test's lifetime.
pub struct ServerPki {
    dir: tempfile::TempDir,
}

impl ServerPki {
    pub fn generate(dns: &str) -> ServerPki {
        let ca = mesh_ca("a serving CA");
        let server = mesh_leaf(&ca, &format!("spiffe://serving/{dns}"), &[dns]);
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, content) in [
            ("ca.pem", ca.pem()),
            ("server.pem", server.cert_pem),
            ("server-key.pem", server.key_pem),
        ] {
            std::fs::write(dir.path().join(name), content)
                .unwrap_or_else(|e| panic!("write {name}: {e}"));
        }
        ServerPki { dir }
    }

    /// A file of the directory: `ca.pem`, `server.pem`, `server-key.pem`.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

// ---------------------------------------------------------------------------
// A blocking TLS client: raw HTTP/1.1 and raw bytes over (m)TLS
// ---------------------------------------------------------------------------

/// A TLS client configuration and the name it verifies the server against.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    server_name: rustls_pki_types::ServerName<'static>,
}

/// A TLS connection over a blocking socket.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Whether an error means the peer closed the connection: a reset, or a
/// TCP close without TLS close_notify.
fn is_closed(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(
        error.kind(),
        ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe
    )
}

impl TlsClient {
    /// Connects to 127.0.0.1:`port` and completes the handshake (so a
    /// refused certificate shows here rather than on first use).
    pub fn connect(&self, port: u16) -> std::io::Result<TlsStream> {
        let tcp = TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        let connection =
            rustls::ClientConnection::new(Arc::clone(&self.config), self.server_name.clone())
                .map_err(std::io::Error::other)?;
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(stream)
    }

    /// One raw HTTP/1.1 request over TLS, as [`send_raw`] sends it.
    pub fn send(
        &self,
        port: u16,
        method: &str,
        path: &[u8],
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        let mut stream = self.connect(port)?;
        exchange_http1(&mut stream, method, path, headers)
    }

    /// Sends `bytes` on a new connection and reads until the peer closes (or
    /// the read times out); a peer that closes at once gives an empty answer.
    pub fn exchange(&self, port: u16, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut stream = self.connect(port)?;
        match stream.write_all(bytes).and_then(|()| stream.flush()) {
            Ok(()) => {}
            Err(e) if is_closed(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                Err(e) if is_closed(&e) => break,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    break
                }
                Err(e) => return Err(e),
            }
        }
        Ok(answer)
    }

    /// Sends `payload` on a new connection and reads until `payload.len()`
    /// bytes came back or the peer closed; returns what came back. A peer
    /// that closes without a word gives an empty answer, not an error.
    pub fn echo(&self, port: u16, payload: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut stream = self.connect(port)?;
        match stream.write_all(payload).and_then(|()| stream.flush()) {
            Ok(()) => {}
            Err(e) if is_closed(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while answer.len() < payload.len() {
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                Err(e) if is_closed(&e) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(answer)
    }
}
