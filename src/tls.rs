//! TLS on the gRPC and AuthZEN API listeners, for deployments without a
//! mesh to provide it.
//!
//! [`ServerTls`] owns the certificate chain, private key and optional client
//! CA bundle read from PEM files, as one immutable rustls [`ServerConfig`]
//! behind an [`ArcSwap`]. A reload reads all the files again, builds a whole
//! new config and publishes it with one swap, only if everything parses and
//! the key matches the certificate; otherwise the last good config stays.
//! Each handshake takes the current config once, so a new connection sees
//! the new certificate (and the new CA bundle) while established connections
//! carry on with the one they negotiated.
//!
//! [`incoming`] turns a `TcpListener` into a stream of finished TLS
//! connections for tonic: handshakes run on their own tasks (a slow or silent
//! client never holds up the next accept) and a failed handshake is logged
//! and dropped, never handed to the server. The admin listener is not
//! touched: probes and scrapes stay plain HTTP.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::reload::WatchConfig;

/// The application protocol a listener offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alpn {
    /// gRPC is HTTP/2 only.
    H2,
    /// The AuthZEN API is served over HTTP/1.1.
    Http11,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::H2 => vec![b"h2".to_vec()],
            Alpn::Http11 => vec![b"http/1.1".to_vec()],
        }
    }
}

/// Longest time a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server's TLS material lives.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the first certificate.
    pub key: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate it issued.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: invalid PEM: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: no {what} in the file", path.display())]
    Missing { path: PathBuf, what: &'static str },
    #[error("{}: certificate {index} of the CA bundle is unusable: {source}", path.display())]
    CaCertificate {
        path: PathBuf,
        index: usize,
        source: rustls::Error,
    },
    #[error("{}: cannot verify clients with this CA bundle: {source}", path.display())]
    ClientVerifier {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    #[error("{} with {}: {source}", cert.display(), key.display())]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// The files' bytes, read once per load so the digest and the parse agree.
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Material {
    fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(Material {
            cert: read(&files.cert)?,
            key: read(&files.key)?,
            client_ca: files.client_ca.as_deref().map(read).transpose()?,
        })
    }

    /// Tells one load from the next without keeping the key around.
    fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            let part = part.map_or(&[][..], Vec::as_slice);
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        hash.finalize().into()
    }
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            path: path.to_path_buf(),
            what: "CERTIFICATE block",
        });
    }
    Ok(certs)
}

fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Missing {
            path: path.to_path_buf(),
            what: "PRIVATE KEY block",
        },
        source => TlsError::Pem {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Builds the server config the files describe: TLS 1.2 and 1.3 with the
/// ring provider, the listener's ALPN, and client certificates required and
/// verified when a CA bundle is given.
fn build(files: &TlsFiles, material: &Material, alpn: Alpn) -> Result<ServerConfig, TlsError> {
    let chain = certificates(&files.cert, &material.cert)?;
    let key = private_key(&files.key, &material.key)?;
    let identity_error = |source| TlsError::Identity {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(identity_error)?;
    let builder = match (&files.client_ca, &material.client_ca) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for (index, cert) in certificates(path, pem)?.into_iter().enumerate() {
                roots.add(cert).map_err(|source| TlsError::CaCertificate {
                    path: path.clone(),
                    index: index + 1,
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientVerifier {
                    path: path.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    // Refuses a key that does not belong to the first certificate.
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(identity_error)?;
    config.alpn_protocols = alpn.protocols();
    Ok(config)
}

/// What a reload did.
#[derive(Debug)]
pub enum TlsReloadOutcome {
    /// New material is used for new connections.
    Published,
    /// The files hold what is already served.
    Unchanged,
    /// The files cannot be used; the last good material stays.
    Failed(TlsError),
}

/// The served TLS material, replaced whole by a reload.
pub struct ServerTls {
    files: TlsFiles,
    alpn: Alpn,
    config: ArcSwap<ServerConfig>,
    digest: Mutex<[u8; 32]>,
}

impl ServerTls {
    /// Loads the files for the gRPC listener (ALPN `h2`); fails on
    /// anything a handshake could not use.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        Self::load_for(files, Alpn::H2)
    }

    /// Loads the files for a listener speaking `alpn`.
    pub(crate) fn load_for(files: TlsFiles, alpn: Alpn) -> Result<Self, TlsError> {
        let material = Material::read(&files)?;
        let config = build(&files, &material, alpn)?;
        Ok(ServerTls {
            digest: Mutex::new(material.digest()),
            config: ArcSwap::from_pointee(config),
            files,
            alpn,
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Whether clients must present a certificate.
    pub(crate) fn requires_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The config the next handshake will use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// Reads the files again and publishes them if they changed and are
    /// usable. Reads files: call it off the async workers.
    pub fn reload(&self) -> TlsReloadOutcome {
        let material = match Material::read(&self.files) {
            Ok(material) => material,
            Err(e) => return TlsReloadOutcome::Failed(e),
        };
        let digest = material.digest();
        let mut served = self.digest.lock().unwrap_or_else(|p| p.into_inner());
        if *served == digest {
            return TlsReloadOutcome::Unchanged;
        }
        match build(&self.files, &material, self.alpn) {
            Ok(config) => {
                self.config.store(Arc::new(config));
                *served = digest;
                TlsReloadOutcome::Published
            }
            Err(e) => TlsReloadOutcome::Failed(e),
        }
    }

    /// Reloads and logs the outcome.
    pub(crate) fn reload_and_log(&self, trigger: &str) -> TlsReloadOutcome {
        let outcome = self.reload();
        match &outcome {
            TlsReloadOutcome::Published => tracing::info!(
                trigger,
                cert = %self.files.cert.display(),
                "tls certificate reloaded; new connections use it"
            ),
            TlsReloadOutcome::Unchanged => tracing::debug!(trigger, "tls files unchanged"),
            TlsReloadOutcome::Failed(e) => tracing::error!(
                trigger,
                error = %e,
                "tls reload failed; still serving the last good certificate"
            ),
        }
        outcome
    }

    /// The directories holding the files, each once.
    fn directories(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = [Some(&self.files.cert), Some(&self.files.key)]
            .into_iter()
            .chain([self.files.client_ca.as_ref()])
            .flatten()
            .map(|file| match file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

/// Reloads the TLS files on changes in their directories (when
/// `config.watch_files`) and on SIGHUP; see [`crate::reload::on_change`].
pub fn watch(
    tls: Arc<ServerTls>,
    config: WatchConfig,
) -> io::Result<impl Future<Output = ()> + Send + 'static> {
    let dirs = tls.directories();
    crate::reload::on_change(dirs, config, move |trigger| {
        tls.reload_and_log(trigger);
    })
}

/// One accepted connection after its TLS handshake.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
}

impl TlsConnection {
    /// The client's certificate chain, when it presented one.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.stream.get_ref().1.peer_certificates()
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts on `listener` and yields each connection whose handshake
/// succeeded under the config current when it was accepted. Handshakes run
/// concurrently, each bounded by a timeout; failures are logged, not
/// yielded. Dropping the stream (tonic does on shutdown) closes the listener.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
) -> ReceiverStream<io::Result<TlsConnection>> {
    let (ready, connections) = mpsc::channel::<io::Result<TlsConnection>>(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = ready.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: back off, then retry.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.current());
            let ready = ready.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = ready.send(Ok(TlsConnection { stream })).await;
                    }
                    // A port probe that connects and hangs up is not news.
                    Ok(Err(e)) if is_hang_up(&e) => {
                        tracing::debug!(peer = %peer, error = %e, "closed before the tls handshake");
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(peer = %peer, error = %e, "tls handshake failed");
                    }
                    Err(_) => {
                        tracing::warn!(peer = %peer, "tls handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(connections)
}

/// Whether a handshake ended because the client went away before a word of
/// TLS, as TCP health checks do.
pub(crate) fn is_hang_up(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
    )
}
