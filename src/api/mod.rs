//! The AuthZEN Authorization API 1.0 over HTTPS/JSON, on its own listener
//! (`--api-listen`): a service asks "may this subject do this action on
//! this resource?" and gets the decision Envoy's checks would get.
//!
//! Endpoints: `POST /access/v1/evaluation`, `POST /access/v1/evaluations`,
//! `POST /access/v1/search/{subject,resource,action}` and
//! `GET /.well-known/authzen-configuration`. A subject `{type: "user", id}`,
//! a resource `{type, id}` and an action `{name}` are decided as the
//! resource/action form of a decision case ([`engine::decide_resource_action`]):
//! the resource is `type:id`, grants and denies are the policy's, no
//! application is chosen. A deny is `200 {"decision": false}`; HTTP errors
//! are for requests that cannot be decided: 400 (malformed, missing or
//! mistyped field, wrong content type, a subject type other than `user`),
//! 401 (no or a bad credential, with `WWW-Authenticate`), 403 (the caller
//! may not ask this), 404, 405 (wrong method), 408 (a body too slow), 413
//! (body over [`MAX_BODY_BYTES`]), 503 (busy, over its budget, or the
//! grants database cannot answer). Every error is a JSON body
//! `{"error": code, "message": text}` with `application/json`, whoever made
//! it (the handlers, or axum's router for 404 and 405: [`json_errors`]).
//! `X-Request-ID` is echoed.
//!
//! Who may ask what is [`callers`]'s; reading requests is [`model`]'s;
//! answering searches is [`crate::search`]'s. The same listener signs and
//! verifies events for asynchronous work ([`events`]).

pub mod bulkhead;
pub mod callers;
mod evaluate;
pub mod events;
pub mod grants;
pub mod model;
mod searches;

use evaluate::{decision_json, evaluation, evaluations};
use searches::{search_action, search_resource, search_subject};

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::engine::{self, Attributes, Decision, ResourceAction};
use crate::http_server::{self, ConnectionLimits, Peer};
use crate::pdp::{Entry, Pdp, Recorded, Search};
use crate::policy::PolicySet;
use crate::search;
use crate::tls::ServerTls;
use crate::token::Principal;
use bulkhead::{Bulkhead, Refused};
use callers::{Asker, Unauthenticated};
use model::{BadRequest, Evaluation, Object, SearchKind, Semantic};

/// Largest request body accepted; a batch of a few hundred evaluations.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest time a request's body may take to arrive once its head has:
/// a body trickled slower is refused (408) and its connection closed.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

pub use bulkhead::REQUEST_TIME_BUDGET;
pub use evaluate::INLINE_BODY_BYTES;
pub use model::MAX_EVALUATIONS;

/// Results per search page when the request sets no `page.limit`.
pub const DEFAULT_PAGE_LIMIT: u64 = 100;

/// Most results per search page, whatever `page.limit` asks.
pub const MAX_PAGE_LIMIT: u64 = 1000;

/// The only subject type: the policy's subjects are users (and services)
/// named by their token's subject.
pub(crate) const SUBJECT_TYPE: &str = "user";

const EVALUATION: &str = "/access/v1/evaluation";
const EVALUATIONS: &str = "/access/v1/evaluations";
const SEARCH_SUBJECT: &str = "/access/v1/search/subject";
const SEARCH_RESOURCE: &str = "/access/v1/search/resource";
const SEARCH_ACTION: &str = "/access/v1/search/action";
const METADATA: &str = "/.well-known/authzen-configuration";

/// Bounds of the API listener: clients keep connections alive, so more of
/// them and a longer life than the admin port's.
pub fn limits(shutdown_grace: Duration) -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout: Duration::from_secs(10),
        max_connections: 1024,
        connection_lifetime: Duration::from_secs(300),
        shutdown_grace,
        keep_alive: true,
    }
}

/// What the API handlers read.
#[derive(Clone)]
pub struct ApiState {
    /// The decision service every entry point asks: policy, clock, token
    /// verification, grants (files or database), metrics and the log.
    pub pdp: Pdp,
    /// The `policy_decision_point` of the metadata; derived from the
    /// request's Host when not configured.
    pub public_url: Option<String>,
    /// Whether the listener speaks TLS.
    pub https: bool,
    /// The ids of events consumed here, until they expire.
    pub replay: Arc<crate::events::Replay>,
    /// Where decisions and searches run, off the runtime that answers
    /// Envoy's checks ([`bulkhead`]).
    pub bulkhead: Arc<Bulkhead>,
}

/// The API routes, for serving or for testing without a socket. The
/// state is shared, not cloned per request.
pub fn router(state: ApiState) -> Router {
    let state = Arc::new(state);
    Router::new()
        .route(EVALUATION, post(evaluation))
        .route(EVALUATIONS, post(evaluations))
        .route(SEARCH_SUBJECT, post(search_subject))
        .route(SEARCH_RESOURCE, post(search_resource))
        .route(SEARCH_ACTION, post(search_action))
        .route(METADATA, get(metadata))
        .route(events::SIGN, post(events::sign))
        .route(events::VERIFY, post(events::verify))
        .route(grants::PATH, post(grants::write))
        .with_state(state)
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(echo_request_id))
}

/// Serves the API on `listener` (TLS when `tls` is given) until `shutdown`.
pub async fn run(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    state: ApiState,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    http_server::serve(listener, tls, router(state), limits, shutdown).await
}

/// A request that gets no decision.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error(transparent)]
    BadRequest(#[from] BadRequest),
    #[error(transparent)]
    Unauthenticated(#[from] Unauthenticated),
    #[error("{0}")]
    Forbidden(String),
    #[error("the request body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("the request body did not arrive within {} seconds", BODY_READ_TIMEOUT.as_secs())]
    BodyTimeout,
    /// The decision pool is full, or the request spent its time budget.
    #[error(transparent)]
    Busy(#[from] Refused),
    #[error("the request needs more than its {} ms of decision time; send fewer evaluations", REQUEST_TIME_BUDGET.as_millis())]
    OverBudget,
    /// The grants database could not answer (503).
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// The stable code of the error body's `error`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "invalid_request",
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::TooLarge => "request_too_large",
            ApiError::BodyTimeout => "request_timeout",
            ApiError::Busy(Refused::Busy) => "busy",
            ApiError::Busy(Refused::Failed) => "internal_error",
            ApiError::OverBudget => "over_budget",
            ApiError::Unavailable(_) => "unavailable",
        }
    }
}

/// The error body every API error has.
pub(crate) fn error_body(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "error": code, "message": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) | ApiError::Busy(_) | ApiError::OverBudget => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let mut response = error_body(status, self.code(), &self.to_string());
        if let ApiError::Unauthenticated(why) = &self {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(why.challenge()),
            );
        }
        response
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(BadRequest(message.into()))
}

/// Gives the errors the handlers do not make (axum's 404 and 405, with
/// their `Allow`) the JSON body every other error has; a JSON-speaking
/// client never meets a text body on this listener.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such endpoint"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this endpoint does not take this method",
        ),
        _ => ("error", status.canonical_reason().unwrap_or("error")),
    };
    let body = error_body(status, code, message);
    let (json_parts, body) = body.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in &json_parts.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, body)
}

/// Echoes the request's `X-Request-ID` on every answer, errors included.
async fn echo_request_id(request: Request, next: Next) -> Response {
    let id = request.headers().get("x-request-id").cloned();
    let mut response = next.run(request).await;
    if let Some(id) = id {
        response.headers_mut().insert("x-request-id", id);
    }
    response
}

fn json_response(value: &Value) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// An authenticated request's JSON body, with the policy that answers it.
struct Asked {
    policy: Arc<PolicySet>,
    asker: Asker,
    body: Object,
    /// The body's length in bytes, as sent.
    body_len: usize,
    request_id: Option<String>,
    started: std::time::Instant,
    /// Seconds since the epoch when the request came: tokens and
    /// conditions are judged at this time.
    now: u64,
}

impl Asked {
    /// Counts and logs one decision.
    fn record(&self, state: &ApiState, entry: Entry, decision: &Decision) {
        state.pdp.record(Recorded {
            entry,
            policy: &self.policy,
            decision,
            http: None,
            request_id: self.request_id.as_deref(),
            started: self.started,
        });
    }
}

/// Authenticates first (nothing of the body is read for a caller that
/// proves nothing), then reads the body: `application/json`, at most
/// [`MAX_BODY_BYTES`], one JSON object.
async fn asked(state: &ApiState, request: Request) -> Result<Asked, ApiError> {
    let started = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    // As the ext_authz log takes it: printable ASCII, bounded.
    let request_id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned);
    let policy = state.pdp.policy();
    let certificate = parts
        .extensions
        .get::<Peer>()
        .and_then(|peer| peer.client_certificate.as_ref());
    let now = state.pdp.now();
    let asker = callers::identify(
        &policy,
        &parts.headers,
        certificate,
        state.pdp.tokens(),
        now,
    )?;
    check_content_type(&parts.headers)?;
    let bytes = read_body(body).await?;
    let body = model::body_object(&bytes)?;
    Ok(Asked {
        policy,
        asker,
        body,
        body_len: bytes.len(),
        request_id,
        started,
        now,
    })
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(bad("Content-Type must be application/json"));
    };
    let media = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    if media.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(bad(format!(
            "Content-Type must be application/json, not {:?}",
            String::from_utf8_lossy(value.as_bytes())
        )))
    }
}

/// The body, bounded in bytes and in time: a client trickling it holds its
/// connection for [`BODY_READ_TIMEOUT`] at most (answering before the body
/// is read makes hyper close the connection).
async fn read_body(body: Body) -> Result<axum::body::Bytes, ApiError> {
    let collect = Limited::new(body, MAX_BODY_BYTES).collect();
    match tokio::time::timeout(BODY_READ_TIMEOUT, collect).await {
        Err(_) => Err(ApiError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::TooLarge),
        Ok(Err(e)) => Err(bad(format!("cannot read the request body: {e}"))),
    }
}

/// The policy's name of a resource: `type:id`, or the type alone for an
/// empty id (a collection such as `documents`).
pub(crate) fn resource_name(kind: &str, id: &str) -> String {
    if id.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}:{id}")
    }
}

/// The metadata, built from `--api-url` alone: the specification wants
/// absolute URLs whose base is the one a client discovered the PDP at, and
/// a Host header is the client's to write, so without a configured URL
/// there is no metadata (404, and clients use the default paths, as the
/// specification says they do), never one reflecting the request.
async fn metadata(State(state): State<Arc<ApiState>>) -> Response {
    let Some(url) = &state.public_url else {
        return error_body(
            StatusCode::NOT_FOUND,
            "not_found",
            "no metadata: the server has no --api-url; the default paths (/access/v1/…) are served",
        );
    };
    let base = url.trim_end_matches('/');
    let mut response = json_response(&json!({
        "policy_decision_point": base,
        "access_evaluation_endpoint": format!("{base}{EVALUATION}"),
        "access_evaluations_endpoint": format!("{base}{EVALUATIONS}"),
        "search_subject_endpoint": format!("{base}{SEARCH_SUBJECT}"),
        "search_resource_endpoint": format!("{base}{SEARCH_RESOURCE}"),
        "search_action_endpoint": format!("{base}{SEARCH_ACTION}"),
        // The registry of capability URNs has no entry this server could
        // claim yet.
        "capabilities": [],
        // What one request may cost (docs/configuration.md, "Bounds").
        "portcullis_limits": {
            "max_body_bytes": MAX_BODY_BYTES,
            "max_evaluations": MAX_EVALUATIONS,
            "max_page_limit": MAX_PAGE_LIMIT,
            "default_page_limit": DEFAULT_PAGE_LIMIT,
            "max_search_candidates": search::MAX_SEARCH_CANDIDATES,
            "max_request_time_ms": u64::try_from(REQUEST_TIME_BUDGET.as_millis()).unwrap_or(u64::MAX),
            "body_read_timeout_ms": u64::try_from(BODY_READ_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
        },
    }));
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    response
}
