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
pub mod events;
pub mod grants;
pub mod model;

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

use crate::decision_log::DecisionLog;
use crate::engine::{self, Attributes, Authenticate, Decision, DenyStatus, Reason};
use crate::http_server::{self, ConnectionLimits, Peer};
use crate::policy::{GrantSource, PolicyHandle, PolicySet};
use crate::search;
use crate::server::Clock;
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
pub use model::MAX_EVALUATIONS;

/// Results per search page when the request sets no `page.limit`.
pub const DEFAULT_PAGE_LIMIT: u64 = 100;

/// Most results per search page, whatever `page.limit` asks.
pub const MAX_PAGE_LIMIT: u64 = 1000;

/// The only subject type: the policy's subjects are users (and services)
/// named by their token's subject.
pub const SUBJECT_TYPE: &str = "user";

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
    pub policy: PolicyHandle,
    /// Verifies bearer tokens (the server passes its token cache).
    pub authn: Arc<dyn Authenticate + Send + Sync>,
    pub clock: Clock,
    /// The `policy_decision_point` of the metadata; derived from the
    /// request's Host when not configured.
    pub public_url: Option<String>,
    /// Whether the listener speaks TLS.
    pub https: bool,
    /// The decision log the ext_authz checks write too (allows sampled).
    pub log: Arc<DecisionLog>,
    /// The ids of events consumed here, until they expire.
    pub replay: Arc<crate::events::ReplayGuard>,
    /// Grants kept in a database, when the configuration says so; else
    /// the policy files' grants answer, and the grants endpoint is 404.
    pub grants_db: Option<Arc<crate::grants_db::GrantStore>>,
    /// Where decisions and searches run, off the runtime that answers
    /// Envoy's checks ([`bulkhead`]).
    pub bulkhead: Arc<Bulkhead>,
}

/// The API routes, for serving or for testing without a socket.
pub fn router(state: ApiState) -> Router {
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
pub enum ApiError {
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
pub fn error_body(status: StatusCode, code: &str, message: &str) -> Response {
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
    request_id: Option<String>,
    started: std::time::Instant,
    /// Seconds since the epoch when the request came: tokens and
    /// conditions are judged at this time.
    now: u64,
}

impl Asked {
    /// Writes the decision log line of one decision.
    fn log(&self, state: &ApiState, decision: &Decision) {
        state.log.record(
            decision,
            self.request_id.as_deref(),
            &self.policy.version,
            self.started.elapsed(),
            None,
        );
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
    let policy = state.policy.load_full();
    let certificate = parts
        .extensions
        .get::<Peer>()
        .and_then(|peer| peer.client_certificate.as_ref());
    let now = (state.clock)();
    let asker = callers::identify(
        &policy,
        &parts.headers,
        certificate,
        state.authn.as_ref(),
        now,
    )?;
    check_content_type(&parts.headers)?;
    let bytes = read_body(body).await?;
    let body = model::body_object(&bytes)?;
    Ok(Asked {
        policy,
        asker,
        body,
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

/// One evaluation decided, or refused (an error of that evaluation alone).
fn decide(
    policy: &PolicySet,
    grants: &dyn GrantSource,
    asker: &Asker,
    eval: &Evaluation,
    now: u64,
) -> Result<Decision, ApiError> {
    let subject = &eval.subject;
    // A type the policy has no subjects of is the caller's mistake, never
    // a silent deny.
    if subject.kind != SUBJECT_TYPE {
        return Err(bad(format!(
            "subject.type {:?} is not a subject type of this policy (only {SUBJECT_TYPE:?})",
            subject.kind
        )));
    }
    let own = asker
        .user
        .as_ref()
        .filter(|user| subject.kind == SUBJECT_TYPE && user.subject == subject.id);
    let principal: Arc<Principal> = match own {
        // The token's own subject, with the groups its token asserts.
        Some(user) => user.clone(),
        None if asker.may().any_subject => Arc::new(Principal {
            issuer: Arc::from("api"),
            subject: subject.id.clone(),
            groups: Vec::new(),
            expires_at: u64::MAX,
            claims: Default::default(),
        }),
        None => {
            return Err(ApiError::Forbidden(
                "this caller may only ask about the subject of the user token it presents".into(),
            ))
        }
    };
    let resource = resource_name(&eval.resource.kind, &eval.resource.id);
    // What conditions read of the request; the clock, never the caller,
    // gives `context.time`.
    // Shared, not copied: a batch's defaults are one allocation.
    let attributes = Attributes {
        subject: eval.subject.properties.clone().unwrap_or_default(),
        resource: eval.resource.properties.clone().unwrap_or_default(),
        action: eval.action.properties.clone().unwrap_or_default(),
        context: eval.context.clone().unwrap_or_default(),
    };
    let decided = engine::decide_resource_action_with_grants(
        policy,
        grants,
        &principal,
        &resource,
        &eval.action.name,
        &attributes,
        now,
    );
    Ok(match decided {
        Ok(decision) => decision,
        Err(unknown) => {
            let mut d = Decision::deny(DenyStatus::Forbidden, Reason::NoGrant);
            d.matched_rule = Some(unknown.to_string());
            d
        }
    })
}

/// One evaluation decided with the grants of `state`: the policy's, or
/// the database's (at least as fresh as the evaluation's
/// `context.portcullis_revision`, `<database identity>.<n>` as a write
/// answered it; a bare number is refused: it names no database).
async fn decide_in(
    state: &ApiState,
    policy: &PolicySet,
    asker: &Asker,
    eval: &Evaluation,
    now: u64,
) -> Result<Decision, ApiError> {
    let Some(store) = &state.grants_db else {
        return decide(policy, &*policy.grants, asker, eval, now);
    };
    const BAD_REVISION: &str =
        "context.portcullis_revision must be a revision as a write answered it (\"<database identity>.<n>\")";
    let min_revision = match eval
        .context
        .as_ref()
        .and_then(|c| c.get(crate::grants_db::REVISION_CONTEXT_FIELD))
    {
        None => None,
        Some(Value::String(text)) => {
            Some(crate::grants_db::parse_revision(text).ok_or_else(|| bad(BAD_REVISION))?)
        }
        Some(_) => return Err(bad(BAD_REVISION)),
    };
    // Whether the caller may ask this does not depend on grants.
    let refused = std::sync::Mutex::new(None);
    let decision = store
        .decide(policy, min_revision.as_ref(), |grants| {
            match decide(policy, grants, asker, eval, now) {
                Ok(decision) => decision,
                Err(e) => {
                    if let Ok(mut refused) = refused.lock() {
                        *refused = Some(e);
                    }
                    Decision::deny(DenyStatus::Forbidden, Reason::InternalError)
                }
            }
        })
        .await;
    match refused.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(decision),
    }
}

/// The policy's name of a resource: `type:id`, or the type alone for an
/// empty id (a collection such as `documents`).
pub fn resource_name(kind: &str, id: &str) -> String {
    if id.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}:{id}")
    }
}

/// A decision as the API answers it; its reason only to callers that may
/// see it (`explain`), since the reason names rules and grants.
fn decision_json(decision: &Decision, explain: bool) -> Value {
    let mut answer = json!({ "decision": decision.is_allowed() });
    if explain {
        let mut why = decision.reason.to_string();
        if let Some(rule) = &decision.matched_rule {
            why = format!("{why}: {rule}");
        }
        answer["context"] = json!({
            "id": decision.reason.code(),
            "reason_admin": { "en": why },
        });
    }
    answer
}

/// Marks the evaluation that ended a `deny_on_first_deny` batch, as the
/// specification's example does (`{"code": "200", "reason":
/// "deny_on_first_deny"}`); an item's error is left as it is. When the
/// context already says why the item was denied (`explain`), the marker
/// goes under `short_circuit`, so the decision's reason (`id`,
/// `reason_admin`) and the batch's stop are never mixed in one object.
fn mark_short_circuit(answer: &mut Value) {
    let marker = json!({ "code": "200", "reason": "deny_on_first_deny" });
    match answer.get_mut("context").and_then(Value::as_object_mut) {
        None => answer["context"] = marker,
        Some(context) if context.contains_key("error") => {}
        Some(context) => {
            context.insert("short_circuit".into(), marker);
        }
    }
}

fn item_error(status: StatusCode, message: &str) -> Value {
    json!({
        "decision": false,
        "context": { "error": { "status": status.as_u16(), "message": message } },
    })
}

async fn evaluation(State(state): State<ApiState>, request: Request) -> Response {
    match evaluate_one(&state, request).await {
        Ok(answer) => json_response(&answer),
        Err(e) => e.into_response(),
    }
}

async fn evaluate_one(state: &ApiState, request: Request) -> Result<Value, ApiError> {
    let asked = asked(state, request).await?;
    let eval = model::evaluation(&asked.body, "")?;
    let explain = asked.asker.may().explain;
    if state.grants_db.is_some() {
        let decision = decide_in(state, &asked.policy, &asked.asker, &eval, asked.now).await?;
        asked.log(state, &decision);
        return Ok(decision_json(&decision, explain));
    }
    let state = state.clone();
    state
        .bulkhead
        .clone()
        .run(move |_| {
            let decision = decide(
                &asked.policy,
                &*asked.policy.grants,
                &asked.asker,
                &eval,
                asked.now,
            )?;
            asked.log(&state, &decision);
            Ok(decision_json(&decision, explain))
        })
        .await?
}

async fn evaluations(State(state): State<ApiState>, request: Request) -> Response {
    match evaluate_many(&state, request).await {
        Ok(answer) => json_response(&answer),
        Err(e) => e.into_response(),
    }
}

/// The answers of a batch, item by item, as its semantic says.
struct BatchAnswers {
    answers: Vec<Value>,
    semantic: Semantic,
    explain: bool,
}

impl BatchAnswers {
    fn new(batch: &model::Evaluations, explain: bool) -> Self {
        BatchAnswers {
            answers: Vec::with_capacity(batch.items.as_ref().map_or(0, Vec::len)),
            semantic: batch.semantic,
            explain,
        }
    }

    /// Records one item's outcome; true when the batch stops after it.
    fn push(
        &mut self,
        state: &ApiState,
        asked: &Asked,
        outcome: Result<Decision, ApiError>,
    ) -> bool {
        let (mut answer, allowed) = match outcome {
            Ok(decision) => {
                asked.log(state, &decision);
                (
                    decision_json(&decision, self.explain),
                    decision.is_allowed(),
                )
            }
            Err(ApiError::Forbidden(message)) => {
                (item_error(StatusCode::FORBIDDEN, &message), false)
            }
            Err(e) => (item_error(StatusCode::BAD_REQUEST, &e.to_string()), false),
        };
        let stop = match self.semantic {
            Semantic::ExecuteAll => false,
            Semantic::DenyOnFirstDeny => !allowed,
            Semantic::PermitOnFirstPermit => allowed,
        };
        if stop && self.semantic == Semantic::DenyOnFirstDeny {
            mark_short_circuit(&mut answer);
        }
        self.answers.push(answer);
        stop
    }

    fn finish(self) -> Value {
        json!({ "evaluations": self.answers })
    }
}

async fn evaluate_many(state: &ApiState, request: Request) -> Result<Value, ApiError> {
    let mut asked = asked(state, request).await?;
    let batch = model::evaluations(std::mem::take(&mut asked.body))?;
    let explain = asked.asker.may().explain;
    if state.grants_db.is_some() {
        return evaluate_many_in_database(state, asked, batch).await;
    }
    let state = state.clone();
    state
        .bulkhead
        .clone()
        .run(move |deadline| {
            let (policy, asker) = (&asked.policy, &asked.asker);
            let Some(items) = &batch.items else {
                // No evaluations: the request is one evaluation, answered as one.
                let decision = decide(policy, &*policy.grants, asker, &batch.single()?, asked.now)?;
                asked.log(&state, &decision);
                return Ok(decision_json(&decision, explain));
            };
            let mut answers = BatchAnswers::new(&batch, explain);
            for (i, item) in items.iter().enumerate() {
                if Instant::now() > deadline {
                    return Err(ApiError::OverBudget);
                }
                let outcome = batch
                    .item(i, item)
                    .map_err(ApiError::from)
                    .and_then(|eval| decide(policy, &*policy.grants, asker, &eval, asked.now));
                if answers.push(&state, &asked, outcome) {
                    break;
                }
            }
            Ok(answers.finish())
        })
        .await?
}

/// A batch decided with the grants database: each item may wait for the
/// database, so the items run here, yielding to the runtime between them,
/// within the same time budget as the pool's.
async fn evaluate_many_in_database(
    state: &ApiState,
    asked: Asked,
    batch: model::Evaluations,
) -> Result<Value, ApiError> {
    let (policy, asker) = (&asked.policy, &asked.asker);
    let explain = asker.may().explain;
    let Some(items) = &batch.items else {
        let decision = decide_in(state, policy, asker, &batch.single()?, asked.now).await?;
        asked.log(state, &decision);
        return Ok(decision_json(&decision, explain));
    };
    let deadline = Instant::now() + REQUEST_TIME_BUDGET;
    let mut answers = BatchAnswers::new(&batch, explain);
    for (i, item) in items.iter().enumerate() {
        if Instant::now() > deadline {
            return Err(ApiError::OverBudget);
        }
        let outcome = match batch.item(i, item) {
            Ok(eval) => decide_in(state, policy, asker, &eval, asked.now).await,
            Err(e) => Err(ApiError::from(e)),
        };
        if answers.push(state, &asked, outcome) {
            break;
        }
        tokio::task::yield_now().await;
    }
    Ok(answers.finish())
}

async fn search_subject(State(state): State<ApiState>, request: Request) -> Response {
    answer_search(&state, request, SearchKind::Subject).await
}

async fn search_resource(State(state): State<ApiState>, request: Request) -> Response {
    answer_search(&state, request, SearchKind::Resource).await
}

async fn search_action(State(state): State<ApiState>, request: Request) -> Response {
    answer_search(&state, request, SearchKind::Action).await
}

async fn answer_search(state: &ApiState, request: Request, kind: SearchKind) -> Response {
    match run_search(state, request, kind).await {
        Ok(answer) => json_response(&answer),
        Err(e) => e.into_response(),
    }
}

async fn run_search(
    state: &ApiState,
    request: Request,
    kind: SearchKind,
) -> Result<Value, ApiError> {
    let Asked {
        policy,
        asker,
        body,
        now,
        ..
    } = asked(state, request).await?;
    if !asker.may().search {
        return Err(ApiError::Forbidden("this caller may not search".into()));
    }
    let query = model::search(&body, kind)?;
    if query.page.limit == Some(0) {
        return Err(bad("page.limit must be at least 1"));
    }
    let digest = query_digest(&query, kind);
    let (after, token_limit) = match &query.page.token {
        Some(token) => {
            let (cursor, limit) = page_token::open(token, &digest).ok_or_else(|| {
                bad("page.token does not belong to this request: a token may only be sent again with the same subject, action, resource and context")
            })?;
            (Some(cursor), Some(limit))
        }
        None => (None, None),
    };
    // A token carries the limit it was made with; a limit sent beside it
    // wins (the cursor does not depend on it).
    let limit = query
        .page
        .limit
        .or(token_limit)
        .unwrap_or(DEFAULT_PAGE_LIMIT)
        .clamp(1, MAX_PAGE_LIMIT);
    let subject = query.subject.as_ref();
    let resource = query.resource.as_ref();
    // Asking about someone else's subject, or who may do something (every
    // subject), is what `any_subject` permits: with `search` alone a caller
    // asks only about the subject of the user token it presents.
    let own = |s: &model::Entity| {
        asker
            .user
            .as_ref()
            .is_some_and(|user| s.kind == SUBJECT_TYPE && user.subject == s.id)
    };
    let about_own = match kind {
        SearchKind::Subject => false,
        _ => subject.is_some_and(own),
    };
    if !about_own && !asker.may().any_subject {
        return Err(ApiError::Forbidden(
            "this caller may only search about the subject of the user token it presents".into(),
        ));
    }
    let users = subject.is_some_and(|s| s.kind == SUBJECT_TYPE);
    let principal = |subject: &model::Entity| -> Arc<Principal> {
        match &asker.user {
            Some(user) if user.subject == subject.id => user.clone(),
            _ => Arc::new(Principal {
                issuer: Arc::from("api"),
                subject: subject.id.clone(),
                groups: Vec::new(),
                expires_at: u64::MAX,
                claims: Default::default(),
            }),
        }
    };
    // What conditions read, as an evaluation of the same request would.
    let attributes = Attributes {
        subject: subject
            .and_then(|s| s.properties.clone())
            .unwrap_or_default(),
        resource: resource
            .and_then(|r| r.properties.clone())
            .unwrap_or_default(),
        action: query
            .action
            .as_ref()
            .and_then(|a| a.properties.clone())
            .unwrap_or_default(),
        context: query.context.clone().unwrap_or_default(),
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let action = query.action.as_ref().map_or("", |a| a.name.as_str());
    let found = match (&state.grants_db, kind, subject, resource) {
        (_, _, _, _) if !users => search::Found::none(),
        (Some(store), _, _, _) => {
            let given = search::Circumstances {
                attributes: &attributes,
                now,
            };
            let found = match (kind, subject, resource) {
                (SearchKind::Subject, _, Some(resource)) => {
                    crate::grants_db::search::subjects(
                        store,
                        &policy,
                        &resource_name(&resource.kind, &resource.id),
                        action,
                        after.as_deref(),
                        limit,
                        given,
                    )
                    .await
                }
                (SearchKind::Resource, Some(subject), Some(resource)) => {
                    crate::grants_db::search::resources(
                        store,
                        &policy,
                        &principal(subject),
                        action,
                        &resource.kind,
                        after.as_deref(),
                        limit,
                        given,
                    )
                    .await
                }
                (SearchKind::Action, Some(subject), Some(resource)) => {
                    crate::grants_db::search::actions(
                        store,
                        &policy,
                        &principal(subject),
                        &resource_name(&resource.kind, &resource.id),
                        after.as_deref(),
                        limit,
                        given,
                    )
                    .await
                }
                _ => return Err(bad("the search request is incomplete")),
            };
            found.map_err(|e| ApiError::Unavailable(e.to_string()))?
        }
        (None, kind, subject, resource) => {
            // Owned, for the decision pool.
            let policy = policy.clone();
            let subject = subject.map(&principal);
            let resource = resource.map(|r| (r.kind.clone(), resource_name(&r.kind, &r.id)));
            let action = action.to_owned();
            let after = after.clone();
            state
                .bulkhead
                .run(move |_| {
                    let given = search::Circumstances {
                        attributes: &attributes,
                        now,
                    };
                    let after = after.as_deref();
                    match (kind, subject, resource) {
                        (SearchKind::Subject, _, Some((_, resource))) => Ok(search::subjects(
                            &policy, &resource, &action, after, limit, given,
                        )),
                        (SearchKind::Resource, Some(subject), Some((kind, _))) => {
                            Ok(search::resources(
                                &policy, &subject, &action, &kind, after, limit, given,
                            ))
                        }
                        (SearchKind::Action, Some(subject), Some((_, resource))) => Ok(
                            search::actions(&policy, &subject, &resource, after, limit, given),
                        ),
                        _ => Err(bad("the search request is incomplete")),
                    }
                })
                .await??
        }
    };
    let limit = u64::try_from(limit).unwrap_or(MAX_PAGE_LIMIT);
    let next_token = match (found.more, &found.next) {
        (true, Some(next)) => page_token::seal(next, limit, &digest),
        _ => String::new(),
    };
    let results: Vec<Value> = found
        .items
        .iter()
        .map(|item| match kind {
            SearchKind::Subject => json!({ "type": SUBJECT_TYPE, "id": item }),
            SearchKind::Resource => {
                json!({ "type": resource.map_or("", |r| r.kind.as_str()), "id": item })
            }
            SearchKind::Action => json!({ "name": item }),
        })
        .collect();
    Ok(json!({
        "page": { "next_token": next_token, "count": results.len() },
        "results": results,
    }))
}

/// What a page token is bound to: every entity and parameter of the
/// request but the page, as the search reads them.
fn query_digest(query: &model::Search, kind: SearchKind) -> [u8; 32] {
    let entity = |e: Option<&model::Entity>| {
        e.map(|e| json!([e.kind, e.id, e.properties.as_deref()]))
            .unwrap_or(Value::Null)
    };
    let canonical = json!({
        "kind": kind.name(),
        "subject": entity(query.subject.as_ref()),
        "action": query.action.as_ref().map(|a| json!([a.name, a.properties.as_deref()])),
        "resource": entity(query.resource.as_ref()),
        "context": query.context.as_deref(),
    });
    // serde_json's maps are ordered by key: the same request, the same bytes.
    Sha256::digest(canonical.to_string().as_bytes()).into()
}

/// Opaque page tokens: the cursor (where the next page starts), the page
/// limit it was made with (so a token sent alone, as the specification's
/// paging example does, keeps its page size) and a check value over both
/// and the request's parameters. A token sent with other parameters, or
/// altered, does not open. The check is a hash, not a secret: a forged
/// token can only ask for a page the same request could.
mod page_token {
    use sha2::{Digest, Sha256};

    const CHECK_BYTES: usize = 12;

    fn check(cursor: &str, limit: u64, digest: &[u8; 32]) -> [u8; CHECK_BYTES] {
        let mut hash = Sha256::new();
        hash.update(b"portcullis search page v2\0");
        hash.update(digest);
        hash.update(limit.to_be_bytes());
        hash.update(cursor.as_bytes());
        let full: [u8; 32] = hash.finalize().into();
        let mut out = [0u8; CHECK_BYTES];
        out.copy_from_slice(&full[..CHECK_BYTES]);
        out
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(text: &str) -> Option<Vec<u8>> {
        if !text.len().is_multiple_of(2) {
            return None;
        }
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
            .collect()
    }

    pub fn seal(cursor: &str, limit: u64, digest: &[u8; 32]) -> String {
        format!(
            "{}.{limit}.{}",
            hex(&check(cursor, limit, digest)),
            hex(cursor.as_bytes())
        )
    }

    /// The cursor and limit of a token made by [`seal`] for the same
    /// parameters.
    pub fn open(token: &str, digest: &[u8; 32]) -> Option<(String, u64)> {
        let mut parts = token.splitn(3, '.');
        let (sum, limit, cursor) = (parts.next()?, parts.next()?, parts.next()?);
        if limit.is_empty() || !limit.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let limit: u64 = limit.parse().ok()?;
        let cursor = String::from_utf8(unhex(cursor)?).ok()?;
        let sum = unhex(sum)?;
        // Not a secret, but compared without an early exit anyway.
        let expected = check(&cursor, limit, digest);
        let same = sum.len() == CHECK_BYTES
            && sum
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        same.then_some((cursor, limit))
    }
}

/// The metadata, built from `--api-url` alone: the specification wants
/// absolute URLs whose base is the one a client discovered the PDP at, and
/// a Host header is the client's to write, so without a configured URL
/// there is no metadata (404, and clients use the default paths, as the
/// specification says they do), never one reflecting the request.
async fn metadata(State(state): State<ApiState>) -> Response {
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

#[cfg(test)]
mod tests {
    use super::page_token;

    #[test]
    fn page_tokens_open_only_for_their_request() {
        let digest = [7u8; 32];
        let token = page_token::seal("document:42", 5, &digest);
        assert_eq!(
            page_token::open(&token, &digest),
            Some(("document:42".to_owned(), 5))
        );
        assert_eq!(page_token::open(&token, &[8u8; 32]), None);
        let mut tampered = token.clone();
        tampered.push_str("00");
        assert_eq!(page_token::open(&tampered, &digest), None);
        let other_limit = token.replacen(".5.", ".6.", 1);
        assert_eq!(page_token::open(&other_limit, &digest), None);
        assert_eq!(page_token::open("nonsense", &digest), None);
    }
}
