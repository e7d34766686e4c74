//! The admin HTTP server: `/live`, `/ready` and `/metrics`.
//!
//! It listens apart from the gRPC port so that probes and scrapes never
//! compete with checks, and so a platform can expose it to its monitoring
//! only. `/ready` answers 503 until the policies are served and again once
//! shutdown has begun, so load balancers stop sending checks before the
//! gRPC server stops taking them.
//!
//! Whoever can reach the port must not be able to hold the process: each
//! connection serves one request, the request head must arrive within
//! [`AdminLimits::header_read_timeout`], at most
//! [`AdminLimits::max_connections`] connections are served at once (more
//! wait in the listen backlog), and at shutdown a request in flight gets
//! [`AdminLimits::shutdown_grace`] before every connection is dropped. The
//! accept loop is [`crate::http_server`]'s, shared with the AuthZEN API.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http_server::{self, ConnectionLimits};
use crate::metrics::Metrics;
use crate::policy::{PolicyHandle, PolicySet};

/// Whether this instance should be sent checks, as far as the process
/// knows: set once serving, cleared when shutdown begins.
pub struct Readiness {
    ready: watch::Sender<bool>,
    /// A further condition (the grants database within its grace period).
    also: std::sync::OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("ready", &*self.ready.borrow())
            .finish_non_exhaustive()
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            ready: watch::Sender::new(false),
            also: std::sync::OnceLock::new(),
        }
    }
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.ready.send_replace(ready);
    }

    pub(crate) fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Sees every change of [`Self::set`].
    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// What `/ready` and gRPC health answer: set, and every key set an
    /// issuer of `policy` fetches from a URL loaded.
    pub fn serving(&self, policy: &PolicySet) -> bool {
        self.is_ready()
            && policy.issuers.remote_key_sets_loaded()
            && self.also.get().is_none_or(|also| also())
    }

    /// Serving also requires `also` (set once; a second call is ignored).
    pub(crate) fn also_require(&self, also: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.also.set(Box::new(also));
    }
}

/// Bounds on what clients of the admin port can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// Time for a request's head to arrive, from the connection's start.
    pub header_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Longest life of one connection, whatever it does.
    pub connection_lifetime: Duration,
    /// After shutdown, how long requests in flight may take to finish.
    pub shutdown_grace: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            max_connections: 64,
            connection_lifetime: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(1),
        }
    }
}

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    pub policy: PolicyHandle,
}

/// The admin routes, for serving or for testing without a socket.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    let policy = state.policy.load();
    let version = policy.version.clone();
    // Not ready until every key set an issuer fetches from a URL is loaded.
    if state.readiness.serving(&policy) {
        (StatusCode::OK, format!("ready: policy version {version}\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: policy version {version}\n"),
        )
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Serves the admin routes on `listener` until `shutdown` completes, with
/// the default [`AdminLimits`].
pub async fn run(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with_limits(listener, state, AdminLimits::default(), shutdown).await
}

/// Serves the admin routes on `listener` until `shutdown` completes; then
/// takes no new connection, lets requests in flight finish within
/// `limits.shutdown_grace`, and drops every connection left (idle or with a
/// request half sent).
pub async fn run_with_limits(
    listener: TcpListener,
    state: AdminState,
    limits: AdminLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = ConnectionLimits {
        header_read_timeout: limits.header_read_timeout,
        max_connections: limits.max_connections,
        connection_lifetime: limits.connection_lifetime,
        shutdown_grace: limits.shutdown_grace,
        // One request per connection: a probe never holds one open.
        keep_alive: false,
    };
    http_server::serve(listener, None, router(state), limits, shutdown).await
}
