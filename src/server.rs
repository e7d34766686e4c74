//! The gRPC shell around the engine: ext_authz v3 `Check` and health.
//!
//! Each check takes the current policy snapshot once (an `Arc` from an
//! [`ArcSwap`]), so it sees one consistent policy from start to finish while
//! a reload may publish the next. The handler never returns a gRPC error
//! for a request it can read: a deny is an `Ok(CheckResponse)`, and a fault
//! inside the engine is caught and answered with a deny.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use crate::adapter::{self, ResponseConfig};
use crate::engine::{self, Decision, Reason};
use crate::policy::PolicySet;
use crate::token::TokenCache;

/// The current policy, replaced whole by a reload.
pub type PolicyHandle = Arc<ArcSwap<PolicySet>>;

/// Seconds since the Unix epoch; a parameter so tests can choose the time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// Default number of verified tokens remembered.
pub const DEFAULT_TOKEN_CACHE_CAPACITY: u64 = 100_000;

/// The ext_authz service.
#[derive(Clone)]
pub struct Authorizer {
    policy: PolicyHandle,
    tokens: TokenCache,
    response: ResponseConfig,
    clock: Clock,
}

impl Authorizer {
    pub fn new(
        policy: PolicyHandle,
        tokens: TokenCache,
        response: ResponseConfig,
        clock: Clock,
    ) -> Self {
        Self {
            policy,
            tokens,
            response,
            clock,
        }
    }

    /// Decides one CheckRequest; never panics, never allows on a fault.
    pub fn check_request(&self, request: &CheckRequest) -> (Decision, CheckResponse) {
        let started = Instant::now();
        let policy = self.policy.load_full();
        let decision = match adapter::request_attrs(request) {
            Ok(attrs) => {
                let now = (self.clock)();
                std::panic::catch_unwind(AssertUnwindSafe(|| {
                    engine::decide(&policy, &attrs, &self.tokens, now)
                }))
                .unwrap_or_else(|_| {
                    tracing::error!("the engine panicked; denying");
                    Decision::deny(engine::Status::Forbidden, Reason::InternalError)
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "unreadable CheckRequest; denying");
                Decision::deny(engine::Status::Forbidden, Reason::InternalError)
            }
        };
        let response = adapter::check_response(&decision, &self.response);
        log_decision(&decision, &policy.version, started);
        (decision, response)
    }
}

fn log_decision(decision: &Decision, version: &str, started: Instant) {
    let latency_us = started.elapsed().as_micros() as u64;
    let fields = (
        decision.application.as_deref().unwrap_or("-"),
        decision.route.as_deref().unwrap_or("-"),
        decision.subject.as_deref().unwrap_or("-"),
        decision.resource.as_deref().unwrap_or("-"),
        decision.action.as_deref().unwrap_or("-"),
        decision.matched_rule.as_deref().unwrap_or("-"),
    );
    let (application, route, subject, resource, action, rule) = fields;
    if decision.is_allowed() {
        tracing::debug!(
            decision = "allow", status = decision.status.code(), reason = decision.reason.code(),
            detail = %decision.reason, application, route, subject, resource, action, rule,
            policy_version = version, latency_us, "decision"
        );
    } else {
        tracing::info!(
            decision = "deny", status = decision.status.code(), reason = decision.reason.code(),
            detail = %decision.reason, application, route, subject, resource, action, rule,
            policy_version = version, latency_us, "decision"
        );
    }
}

#[tonic::async_trait]
impl Authorization for Authorizer {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let (_, response) = self.check_request(request.get_ref());
        Ok(Response::new(response))
    }
}

/// Serves ext_authz and `grpc.health.v1` on `listener` until `shutdown`
/// completes, then finishes the checks in flight and returns.
pub async fn run(
    listener: TcpListener,
    authorizer: Authorizer,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AuthorizationServer<Authorizer>>()
        .await;
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(AuthorizationServer::new(authorizer))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
