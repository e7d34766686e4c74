//! The gRPC shell around the engine: ext_authz v3 `Check` and health.
//!
//! Each check takes the current policy snapshot once (an `Arc` from an
//! [`ArcSwap`]), so it sees one consistent policy from start to finish while
//! a reload may publish the next. The handler never returns a gRPC error
//! for a request it can read: a deny is an `Ok(CheckResponse)`, and a fault
//! inside the engine is caught and answered with a deny.
//!
//! `grpc.health.v1` answers what `/ready` answers: SERVING once the policy
//! is served and every key set fetched from a URL is loaded, NOT_SERVING
//! before that and from the moment a shutdown begins. A `Watch` stream
//! sends NOT_SERVING and ends when the shutdown begins, so it cannot hold
//! the drain open.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::Stream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::adapter::Check;
use crate::adapter::{self, ResponseConfig};
use crate::admin::Readiness;
use crate::decision_cache::DecisionCache;
use crate::decision_log::DecisionLog;
use crate::engine::{self, Decision, Reason, RequestAttrs};
use crate::grants_db::{self, GrantStore};
use crate::metrics::Metrics;
use crate::policy::{PolicyHandle, PolicySet};
use crate::token::TokenError;
use crate::token_cache::TokenCache;

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

/// Default bound of `serve`'s verified-token cache: 16 MiB, tens of
/// thousands of typical principals, a small part of a 256 MiB pod.
pub const DEFAULT_TOKEN_CACHE_BYTES: u64 = 16 << 20;

/// How long a check whose token names a key id its issuer's JWKS lacks
/// waits for the refetch that asks for, well inside Envoy's timeout.
pub const KEY_REFETCH_WAIT: Duration = Duration::from_millis(100);

/// The ext_authz service.
#[derive(Clone)]
pub struct Authorizer {
    policy: PolicyHandle,
    tokens: TokenCache,
    response: ResponseConfig,
    clock: Clock,
    metrics: Option<Arc<Metrics>>,
    log: Option<Arc<DecisionLog>>,
    decisions: Option<DecisionCache>,
    readiness: Option<Arc<Readiness>>,
    grants_db: Option<Arc<GrantStore>>,
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
            metrics: None,
            log: None,
            decisions: None,
            readiness: None,
            grants_db: None,
        }
    }

    /// Reports `grpc.health.v1` SERVING only while `readiness` is set (as
    /// `/ready` does); without it, while every fetched key set is loaded
    /// and the server is not shutting down.
    pub fn with_readiness(mut self, readiness: Arc<Readiness>) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Takes grants from `store` (a database) instead of the policy files;
    /// the decision cache, which knows nothing of grant revisions, is not
    /// used with it.
    pub fn with_grants_db(mut self, store: Arc<GrantStore>) -> Self {
        self.grants_db = Some(store);
        self.decisions = None;
        self
    }

    /// Remembers decisions per policy version in `cache`.
    pub fn with_decision_cache(mut self, cache: DecisionCache) -> Self {
        if self.grants_db.is_some() {
            return self;
        }
        self.decisions = Some(cache);
        self
    }

    /// Counts every check in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Writes decisions to `log`; without one, none is logged.
    pub fn with_decision_log(mut self, log: DecisionLog) -> Self {
        self.log = Some(Arc::new(log));
        self
    }

    /// Decides one CheckRequest; never panics, never allows on a fault.
    pub fn check_request(&self, request: &CheckRequest) -> (Arc<Decision>, CheckResponse) {
        let started = Instant::now();
        let policy = self.policy.load_full();
        let attrs = adapter::read_check_with(request, &policy.condition_headers);
        let decision = self.decide_attrs(&policy, &attrs);
        self.answer(&policy, decision, &attrs, started)
    }

    /// [`Self::check_request`], except that a token naming a key id its
    /// issuer's JWKS lacks waits (up to [`KEY_REFETCH_WAIT`]) for the
    /// refetch that asks for, then is verified once more: the first tokens
    /// signed with a freshly rotated key are accepted, not refused.
    pub async fn check_request_awaiting_keys(
        &self,
        request: &CheckRequest,
    ) -> (Arc<Decision>, CheckResponse) {
        let started = Instant::now();
        let policy = self.policy.load_full();
        let attrs = adapter::read_check_with(request, &policy.condition_headers);
        let mut decision = match (&self.grants_db, &attrs) {
            (Some(store), Ok(Check::Http(http))) => {
                self.decide_with_db(store, &policy, http, request).await
            }
            _ => self.decide_attrs(&policy, &attrs),
        };
        if matches!(
            decision.reason,
            Reason::InvalidToken(TokenError::UnknownKey)
        ) {
            let deadline = Instant::now() + KEY_REFETCH_WAIT;
            let mut fetched = false;
            for remote in policy.issuers.remote_key_sets() {
                fetched |= remote.await_refetch(deadline).await;
            }
            if fetched {
                decision = match (&self.grants_db, &attrs) {
                    (Some(store), Ok(Check::Http(http))) => {
                        self.decide_with_db(store, &policy, http, request).await
                    }
                    _ => self.decide_attrs(&policy, &attrs),
                };
            }
        }
        self.answer(&policy, decision, &attrs, started)
    }

    /// The decision for an HTTP request with grants from the database, at
    /// least as fresh as the revision the request's
    /// [`grants_db::REVISION_HEADER`] names (an unreadable one can never
    /// be met: denied unless no grant is needed). An engine panic is a deny.
    async fn decide_with_db(
        &self,
        store: &GrantStore,
        policy: &PolicySet,
        attrs: &RequestAttrs,
        request: &CheckRequest,
    ) -> Arc<Decision> {
        let now = (self.clock)();
        // Unreadable (a bare number too): a revision no database has.
        let min_revision =
            adapter::request_header(request, grants_db::REVISION_HEADER).map(|text| {
                grants_db::parse_revision(&text).unwrap_or(grants_db::Revision {
                    database: "".into(),
                    number: i64::MAX,
                })
            });
        let decision = store
            .decide(policy, min_revision.as_ref(), |grants| {
                std::panic::catch_unwind(AssertUnwindSafe(|| {
                    engine::decide_with_grants(policy, grants, attrs, &self.tokens, now)
                }))
                .unwrap_or_else(|_| {
                    tracing::error!("the engine panicked; denying");
                    Decision::deny(engine::DenyStatus::Forbidden, Reason::InternalError)
                })
            })
            .await;
        Arc::new(decision)
    }

    /// The decision for a readable request; a deny for an unreadable one.
    fn decide_attrs(
        &self,
        policy: &PolicySet,
        attrs: &Result<Check, adapter::AdapterError>,
    ) -> Arc<Decision> {
        match attrs {
            Ok(Check::Http(attrs)) => self.decide_cached(policy, attrs),
            // Cheap and keyed by nothing the cache knows: never cached.
            Ok(Check::Connection(connection)) => {
                Arc::new(engine::decide_connection(policy, connection))
            }
            Err(e) => {
                tracing::warn!(error = %e, "unreadable CheckRequest; denying");
                let deny = Decision::deny(engine::DenyStatus::Forbidden, Reason::InternalError);
                Arc::new(deny)
            }
        }
    }

    /// The response to `decision`, counted and logged.
    fn answer(
        &self,
        policy: &PolicySet,
        decision: Arc<Decision>,
        attrs: &Result<Check, adapter::AdapterError>,
        started: Instant,
    ) -> (Arc<Decision>, CheckResponse) {
        let request_id = match attrs {
            Ok(Check::Http(attrs)) => attrs.request_id.as_deref(),
            _ => None,
        };
        let response = adapter::check_response(&decision, &self.response);
        let elapsed = started.elapsed();
        if let Some(metrics) = &self.metrics {
            let application = decision.application.as_deref().unwrap_or("");
            metrics.record_check(
                application,
                decision.outcome(),
                decision.reason.code(),
                elapsed.as_secs_f64(),
            );
        }
        // A deny no application or route took says what the request was
        // and what came closest: worked out here, only for such denies,
        // never in the engine's decision path.
        if let Some(log) = &self.log {
            let unmatched = match attrs {
                Ok(Check::Http(attrs)) if DecisionLog::explains(&decision) => {
                    engine::explain_unmatched(policy, attrs)
                }
                _ => None,
            };
            log.record(
                &decision,
                request_id,
                &policy.version,
                elapsed,
                unmatched.as_ref(),
            );
        }
        (decision, response)
    }

    /// The cached decision for `attrs`, or a new one (remembered when the
    /// cache is on and the decision is worth keeping). An engine panic is a
    /// deny.
    fn decide_cached(&self, policy: &PolicySet, attrs: &RequestAttrs) -> Arc<Decision> {
        let now = (self.clock)();
        // A request without a token cannot have a decision in the cache:
        // it is not looked up (nor hashed), and its decision is not kept.
        let cache = self
            .decisions
            .as_ref()
            .filter(|_| DecisionCache::may_hold(attrs));
        // The key epoch is read before the engine reads any key, so a
        // decision made with keys that are then replaced is filed under an
        // epoch no later check computes.
        let key = cache.map(|_| {
            let epoch = TokenCache::key_epoch(&policy.issuers);
            DecisionCache::key(&policy.version, epoch, attrs)
        });
        if let (Some(cache), Some(key)) = (cache, &key) {
            if let Some(decision) = cache.get(key, now) {
                return decision;
            }
        }
        let decision = std::panic::catch_unwind(AssertUnwindSafe(|| {
            engine::decide(policy, attrs, &self.tokens, now)
        }))
        .unwrap_or_else(|_| {
            tracing::error!("the engine panicked; denying");
            Decision::deny(engine::DenyStatus::Forbidden, Reason::InternalError)
        });
        let decision = Arc::new(decision);
        if let (Some(cache), Some(key)) = (cache, key) {
            cache.insert(key, &decision);
        }
        decision
    }
}

#[tonic::async_trait]
impl Authorization for Authorizer {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let (_, response) = self.check_request_awaiting_keys(request.get_ref()).await;
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
    use tokio_stream::StreamExt;
    // Answers are small and latency is the product: no Nagle delay. tonic
    // applies its own nodelay setting only to listeners it binds itself.
    let incoming = TcpListenerStream::new(listener).map(|connection| {
        connection.inspect(|stream| {
            let _ = stream.set_nodelay(true);
        })
    });
    run_with_incoming(incoming, authorizer, shutdown).await
}

/// [`run`] on any stream of connections: plain TCP, or TLS connections
/// whose handshake is done (`tls::incoming`). When `shutdown` completes the
/// stream is dropped, so no new connection is taken, and the checks in
/// flight are finished.
pub async fn run_with_incoming<I, IO, IE>(
    incoming: I,
    authorizer: Authorizer,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (draining, drained) = watch::channel(false);
    let health = HealthService {
        policy: authorizer.policy.clone(),
        readiness: authorizer.readiness.clone(),
        draining: drained,
    };
    let shutdown = async move {
        shutdown.await;
        // Health turns NOT_SERVING and its watch streams end before the
        // server waits for the calls in flight.
        draining.send_replace(true);
    };
    tonic::transport::Server::builder()
        .add_service(HealthServer::new(health))
        .add_service(AuthorizationServer::new(authorizer))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// The service names health answers for: the server as a whole and the
/// ext_authz service.
const HEALTH_SERVICES: [&str; 2] = ["", "envoy.service.auth.v3.Authorization"];

/// How often a `Watch` stream looks again at what no event announces:
/// a key set's first load, a reload.
const HEALTH_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// `grpc.health.v1.Health`, computed from the state `/ready` reads.
#[derive(Clone)]
struct HealthService {
    policy: PolicyHandle,
    readiness: Option<Arc<Readiness>>,
    draining: watch::Receiver<bool>,
}

impl HealthService {
    fn status(&self) -> ServingStatus {
        let policy = self.policy.load();
        let ready = match &self.readiness {
            Some(readiness) => readiness.serving(&policy),
            None => policy.issuers.remote_key_sets_loaded(),
        };
        if ready && !*self.draining.borrow() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    }

    fn knows(service: &str) -> bool {
        HEALTH_SERVICES.contains(&service)
    }
}

type HealthStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if !Self::knows(&request.get_ref().service) {
            return Err(Status::not_found("service not registered"));
        }
        Ok(Response::new(HealthCheckResponse {
            status: self.status() as i32,
        }))
    }

    type WatchStream = HealthStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if !Self::knows(&request.get_ref().service) {
            return Err(Status::not_found("service not registered"));
        }
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let health = self.clone();
        tokio::spawn(async move {
            let mut draining = health.draining.clone();
            let mut ready = health.readiness.as_ref().map(|r| r.subscribe());
            let mut tick = tokio::time::interval(HEALTH_WATCH_INTERVAL);
            let mut last = None;
            loop {
                let status = health.status();
                if last != Some(status) {
                    let response = HealthCheckResponse {
                        status: status as i32,
                    };
                    if sender.send(Ok(response)).await.is_err() {
                        return;
                    }
                    last = Some(status);
                }
                if *draining.borrow() {
                    // NOT_SERVING was sent above: end the stream.
                    return;
                }
                let readiness_changed = async {
                    match &mut ready {
                        Some(ready) => {
                            if ready.changed().await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    changed = draining.changed() => {
                        if changed.is_err() {
                            // The server is gone.
                            return;
                        }
                    }
                    () = readiness_changed => {}
                    _ = tick.tick() => {}
                    () = sender.closed() => return,
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
        Ok(Response::new(Box::pin(stream)))
    }
}
