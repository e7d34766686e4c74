//! The admin HTTP server: `/live`, `/ready` and `/metrics`.
//!
//! It listens apart from the gRPC port so that probes and scrapes never
//! compete with checks, and so a platform can expose it to its monitoring
//! only. `/ready` answers 503 until the policies are served and again once
//! shutdown has begun, so load balancers stop sending checks before the
//! gRPC server stops taking them.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::policy::PolicySet;

/// Whether this instance should be sent checks.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    pub policy: Arc<ArcSwap<PolicySet>>,
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
    if state.readiness.is_ready() && policy.issuers.remote_key_sets_loaded() {
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

/// Serves the admin routes on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
