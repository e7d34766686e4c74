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
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::Stream;
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::adapter::Check;
use crate::adapter::{self, ResponseConfig};
use crate::admin::Readiness;
use crate::answer::{Answer, AnswerCodec};
use crate::decision_cache::DecisionCache;
use crate::decision_log::DecisionLog;
use crate::engine::{self, Decision, Reason};
use crate::grants_db::{self, GrantStore};
use crate::jwks::JwksFetcher;
use crate::metrics::Metrics;
use crate::pdp::{Entry, Pdp, Recorded};
use crate::policy::PolicyHandle;
use crate::shadow::{self, Shadow};
use crate::token_cache::TokenCache;

pub use crate::pdp::{system_clock, Clock, KEY_REFETCH_WAIT};

/// Default bound of `serve`'s verified-token cache: 16 MiB, tens of
/// thousands of typical principals, a small part of a 256 MiB pod.
pub const DEFAULT_TOKEN_CACHE_BYTES: u64 = 16 << 20;

/// The ext_authz service: converts Envoy's CheckRequest to a question for
/// the decision service ([`Pdp`]) and its answer back to a CheckResponse.
#[derive(Clone)]
pub struct Authorizer {
    pdp: Pdp,
    response: Arc<ResponseConfig>,
    readiness: Option<Arc<Readiness>>,
    shadow: Option<Arc<Shadow>>,
}

impl Authorizer {
    /// An ext_authz service over its own decision service (policy files'
    /// grants, no metrics, no log until the `with_` methods add them).
    pub fn new(
        policy: PolicyHandle,
        tokens: TokenCache,
        response: ResponseConfig,
        clock: Clock,
    ) -> Self {
        Self::from_pdp(Pdp::new(policy, tokens, clock), response)
    }

    /// The ext_authz face of `pdp`, the service the other entry points ask
    /// too.
    pub(crate) fn from_pdp(pdp: Pdp, response: ResponseConfig) -> Self {
        Self {
            pdp,
            response: Arc::new(response),
            readiness: None,
            shadow: None,
        }
    }

    /// Asks `shadow`'s candidate policy about every check too, once it is
    /// answered, off the request path ([`Shadow::offer`] never waits).
    pub fn with_shadow(mut self, shadow: Arc<Shadow>) -> Self {
        self.shadow = Some(shadow);
        self
    }

    /// Reports `grpc.health.v1` SERVING only while `readiness` is set (as
    /// `/ready` does); without it, while every fetched key set is loaded
    /// and the server is not shutting down.
    pub(crate) fn with_readiness(mut self, readiness: Arc<Readiness>) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// See [`Pdp::with_grants_db`].
    pub fn with_grants_db(mut self, store: Arc<GrantStore>) -> Self {
        self.pdp = self.pdp.with_grants_db(store);
        self
    }

    /// See [`Pdp::with_decision_cache`].
    pub fn with_decision_cache(mut self, cache: DecisionCache) -> Self {
        self.pdp = self.pdp.with_decision_cache(cache);
        self
    }

    /// See [`Pdp::with_key_fetcher`].
    pub fn with_key_fetcher(mut self, fetcher: Arc<JwksFetcher>) -> Self {
        self.pdp = self.pdp.with_key_fetcher(fetcher);
        self
    }

    /// See [`Pdp::with_metrics`].
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.pdp = self.pdp.with_metrics(metrics);
        self
    }

    /// See [`Pdp::with_decision_log`].
    pub fn with_decision_log(mut self, log: DecisionLog) -> Self {
        self.pdp = self.pdp.with_decision_log(Arc::new(log));
        self
    }

    /// Decides one CheckRequest; never panics, never allows on a fault. A
    /// request carrying [`grants_db::REVISION_HEADER`] is decided with
    /// grants at least that fresh (an unreadable one can never be met:
    /// denied unless no grant is needed).
    pub async fn check_request(&self, request: &CheckRequest) -> (Arc<Decision>, CheckResponse) {
        let decision = self.decide(request).await;
        let response = adapter::check_response(&decision, &self.response);
        (decision, response)
    }

    /// [`Authorizer::check_request`] as the server answers: the decision
    /// and the configuration, for [`AnswerCodec`] to write.
    pub async fn answer(&self, request: &CheckRequest) -> Answer {
        Answer {
            decision: self.decide(request).await,
            config: self.response.clone(),
        }
    }

    /// A check as the server answers it: [`Authorizer::answer`], then
    /// (with `--shadow-policies`) the same request offered to the shadow
    /// policy, off the request path.
    pub async fn serve(&self, request: CheckRequest) -> Answer {
        let answer = self.answer(&request).await;
        if let Some(shadow) = &self.shadow {
            shadow.offer(
                shadow_question(request),
                answer.decision.clone(),
                self.pdp.now(),
            );
        }
        answer
    }

    async fn decide(&self, request: &CheckRequest) -> Arc<Decision> {
        let started = Instant::now();
        let policy = self.pdp.policy();
        let adapter::Read {
            check,
            min_revision,
        } = adapter::read(
            request,
            &policy.condition_headers,
            self.pdp.grants_db().is_some(),
        );
        // Unreadable (a bare number too): a revision no database has.
        let min_revision = min_revision.map(|text| {
            grants_db::parse_revision(&text).unwrap_or(grants_db::Revision {
                database: "".into(),
                number: i64::MAX,
            })
        });
        let now = self.pdp.now();
        let decision = match &check {
            Ok(Check::Http(attrs)) => {
                let request = engine::Request::Http(attrs);
                self.pdp
                    .decide(&policy, &request, min_revision.as_ref(), now)
                    .await
            }
            Ok(Check::Connection(connection)) => {
                let request = engine::Request::Connection(connection);
                self.pdp.decide(&policy, &request, None, now).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "unreadable CheckRequest; denying");
                Arc::new(Decision::deny(
                    engine::DenyStatus::Forbidden,
                    Reason::InternalError,
                ))
            }
        };
        let http = match &check {
            Ok(Check::Http(attrs)) => Some(attrs),
            _ => None,
        };
        self.pdp.record(Recorded {
            entry: Entry::ExtAuthz,
            policy: &policy,
            decision: &decision,
            http,
            request_id: http.and_then(|attrs| attrs.request_id.as_deref()),
            started,
        });
        decision
    }
}

/// `envoy.service.auth.v3.Authorization`, routed as tonic's generated
/// server routes it, but answering through [`AnswerCodec`]: the
/// CheckResponse is written from the decision, never built as prost's
/// owned strings first.
#[derive(Clone)]
struct AuthorizationService(Arc<Authorizer>);

impl tonic::server::NamedService for AuthorizationService {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

impl<B> Service<http::Request<B>> for AuthorizationService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != CHECK_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let checks = Checks(self.0.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(AnswerCodec);
            Ok(grpc.unary(checks, request).await)
        })
    }
}

/// The `Check` method.
struct Checks(Arc<Authorizer>);

impl tonic::server::UnaryService<CheckRequest> for Checks {
    type Response = Answer;
    type Future = BoxFuture<Response<Answer>, Status>;

    fn call(&mut self, request: Request<CheckRequest>) -> Self::Future {
        let authorizer = self.0.clone();
        Box::pin(async move { Ok(Response::new(authorizer.serve(request.into_inner()).await)) })
    }
}

/// A served check as the shadow worker asks it: read by the adapter with
/// the candidate's condition headers, decided by the engine over the
/// candidate and its file grants.
pub fn shadow_question(request: CheckRequest) -> shadow::Question {
    Box::new(move |policy, caller, now| {
        let read = adapter::read(&request, &policy.condition_headers, false);
        let (decision, request_id) = match &read.check {
            Ok(Check::Http(attrs)) => (
                engine::decide(
                    policy,
                    &*policy.grants,
                    &engine::Request::Http(attrs),
                    caller,
                    now,
                ),
                attrs.request_id.as_deref().unwrap_or_default().to_owned(),
            ),
            Ok(Check::Connection(connection)) => (
                engine::decide(
                    policy,
                    &*policy.grants,
                    &engine::Request::Connection(connection),
                    caller,
                    now,
                ),
                String::new(),
            ),
            Err(_) => (
                Decision::deny(engine::DenyStatus::Forbidden, Reason::InternalError),
                String::new(),
            ),
        };
        shadow::Asked {
            decision,
            request_id,
        }
    })
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
        policy: authorizer.pdp.policy_handle().clone(),
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
        .add_service(AuthorizationService(Arc::new(authorizer)))
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
