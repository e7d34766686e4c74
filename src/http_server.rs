//! The one HTTP/1.1 accept loop, for the admin port and the AuthZEN API.
//!
//! axum routes run on hyper connections we drive ourselves, because
//! `axum::serve` offers neither a bound on the time a request head may take
//! nor a bound on the connections served at once, and whoever can reach a
//! port must not be able to hold the process with slow or idle connections.
//! So: at most [`ConnectionLimits::max_connections`] connections are served
//! at once (more wait in the listen backlog), a request head must arrive
//! within [`ConnectionLimits::header_read_timeout`], a TLS handshake within
//! the same bound, no connection lives past
//! [`ConnectionLimits::connection_lifetime`] (then it finishes its request
//! and closes), and at shutdown a request in flight gets
//! [`ConnectionLimits::shutdown_grace`] before every connection is dropped.
//!
//! With TLS ([`ServerTls`]) each request learns the client certificate the
//! handshake verified, through the [`Peer`] request extension.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::tls::{self, ServerTls};

/// Bounds on what the clients of one listener can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time for a request's head (and a TLS handshake) to arrive.
    pub header_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Longest life of one connection; then it finishes its request within
    /// the shutdown grace and closes.
    pub connection_lifetime: Duration,
    /// After shutdown (or the lifetime), how long a request in flight may
    /// take to finish.
    pub shutdown_grace: Duration,
    /// Whether a connection may carry more than one request.
    pub keep_alive: bool,
}

/// What a request knows about the connection it arrived on.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub address: Option<SocketAddr>,
    /// The client's end-entity certificate, verified by the TLS handshake
    /// against the client CA; `None` without TLS or without mTLS.
    pub client_certificate: Option<CertificateDer<'static>>,
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until
/// `shutdown` completes; then takes no new connection, lets requests in
/// flight finish within `limits.shutdown_grace`, and drops every connection
/// left (idle or with a request half sent).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closed) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Past the limit, connections wait in the kernel's backlog.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, address) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: not a reason to stop serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let closed = closed.clone();
        let tls = tls.as_ref().map(|tls| TlsAcceptor::from(tls.current()));
        connections.spawn(async move {
            let _permit = permit;
            let mut peer = Peer {
                address: Some(address),
                client_certificate: None,
            };
            match tls {
                None => serve_connection(stream, peer, router, limits, closed).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
                    let stream = match handshake.await {
                        Ok(Ok(stream)) => stream,
                        // A port probe that connects and hangs up is not news.
                        Ok(Err(error)) if tls::is_hang_up(&error) => {
                            tracing::debug!(peer = %address, %error, "closed before the tls handshake");
                            return;
                        }
                        Ok(Err(error)) => {
                            tracing::warn!(peer = %address, %error, "tls handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(peer = %address, "tls handshake timed out");
                            return;
                        }
                    };
                    peer.client_certificate = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|cert| cert.clone().into_owned());
                    serve_connection(stream, peer, router, limits, closed).await;
                }
            }
        });
    }
    drop(listener);
    closing.send_replace(true);
    let finished = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.shutdown_grace, finished)
        .await
        .is_err()
    {
        tracing::debug!(left = connections.len(), "connections dropped at shutdown");
    }
    // Dropping the set aborts every connection still open.
    drop(connections);
    Ok(())
}

/// Serves one connection until it ends, its lifetime passes or the server
/// closes; then lets its request in flight finish within the grace.
async fn serve_connection<I>(
    io: I,
    peer: Peer,
    router: Router,
    limits: ConnectionLimits,
    mut closed: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router.layer(Extension(peer)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(limits.keep_alive);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = closed.wait_for(|closing| *closing) => {}
        () = tokio::time::sleep(limits.connection_lifetime) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(limits.shutdown_grace, connection.as_mut()).await;
}
