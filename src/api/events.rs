//! Signed events over HTTP, on the API listener beside AuthZEN:
//! `POST /portcullis/v1/events/sign` and `POST /portcullis/v1/events/verify`.
//!
//! Signing: a caller may sign for the subject of the user token it
//! presents (with that token's groups), or for any subject if the policy
//! lets it (`may: [sign]`). The subject must be allowed the action on the
//! resource now, or nothing is signed (`{"decision": false}`).
//!
//! Verifying: only a caller the policy names may consume events, and only
//! those addressed to it: the envelope's audience must be the caller's
//! name. The answer is `{"decision": true}` with the event's verified
//! fields, which the worker must act on (not on fields of the message it
//! was handed beside them); `{"decision": false}` with `refused` when the
//! envelope does not hold (tampered, expired, replayed, ...) or with the
//! policy's deny when the subject has lost the right.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::model::{self, Object};
use super::{asked, bad, decision_json, json_response, resource_name, ApiError, ApiState, Asked};
use crate::engine::{self, Attributes, Decision, ResourceAction};
use crate::events::envelope::{message_digest, parse_hex};
use crate::events::{self, Publish, SignError};
use crate::pdp::Entry;
use crate::token::Principal;

pub(super) const SIGN: &str = "/portcullis/v1/events/sign";
pub(super) const VERIFY: &str = "/portcullis/v1/events/verify";

pub(super) async fn sign(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    match sign_event(&state, request).await {
        Ok(answer) => json_response(&answer),
        Err(e) => e.into_response(),
    }
}

pub(super) async fn verify(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    match verify_event(&state, request).await {
        Ok(answer) => json_response(&answer),
        Err(e) => e.into_response(),
    }
}

/// A signing the policy's configuration does not allow: 503, since no
/// request can fix it.
struct NotConfigured(SignError);

impl IntoResponse for NotConfigured {
    fn into_response(self) -> Response {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", self.0)).into_response()
    }
}

async fn sign_event(state: &ApiState, request: Request) -> Result<Value, Response> {
    let asked = asked(state, request)
        .await
        .map_err(IntoResponse::into_response)?;
    let eval = model::evaluation(&asked.body, "").map_err(|e| ApiError::from(e).into_response())?;
    let audience = string_field(&asked.body, "audience")
        .map_err(IntoResponse::into_response)?
        .ok_or_else(|| {
            bad("audience is required: the name of the caller that will consume the event")
                .into_response()
        })?;
    let digest = message_field(&asked.body).map_err(IntoResponse::into_response)?;
    let lifetime =
        match asked.body.get("expires_in") {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.as_u64().ok_or_else(|| {
                bad("expires_in must be a whole number of seconds").into_response()
            })?),
        };
    if eval.subject.kind != super::SUBJECT_TYPE {
        return Err(bad(format!("subject.type must be {:?}", super::SUBJECT_TYPE)).into_response());
    }
    let own = asked
        .asker
        .user
        .as_ref()
        .filter(|user| *user.subject == *eval.subject.id);
    let principal: Arc<Principal> =
        match own {
            Some(user) => user.clone(),
            None if asked.asker.may().sign => {
                Arc::new(Principal::named("api", eval.subject.id.clone()))
            }
            None => return Err(ApiError::Forbidden(
                "this caller may only sign events for the subject of the user token it presents"
                    .into(),
            )
            .into_response()),
        };
    let resource = resource_name(&eval.resource.kind, &eval.resource.id);
    let publish = Publish {
        subject: &principal.subject,
        idp: &principal.issuer,
        groups: &principal.groups,
        action: &eval.action.name,
        resource: &resource,
        audience: &audience,
        message_sha256: digest,
        lifetime,
    };
    let decision = decide_now(state, &asked, &principal, &resource, &eval.action.name).await;
    match events::publish_decided(&asked.policy, decision, &publish, asked.now) {
        Ok(Ok(signed)) => {
            tracing::info!(
                event_id = %signed.id,
                subject = %principal.subject,
                action = %eval.action.name,
                resource = %resource,
                audience = %audience,
                "event signed"
            );
            Ok(json!({
                "decision": true,
                "envelope": signed.envelope,
                "id": signed.id,
                "expires_at": signed.expires_at,
            }))
        }
        Ok(Err(deny)) => Ok(decision_json(&deny, asked.asker.may().explain)),
        Err(e @ SignError::NoSigningKey) => Err(NotConfigured(e).into_response()),
        Err(e @ SignError::Crypto(_)) => {
            tracing::error!(error = %e, "event signing failed");
            Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response())
        }
        Err(e) => Err(bad(e.to_string()).into_response()),
    }
}

async fn verify_event(state: &ApiState, request: Request) -> Result<Value, Response> {
    let asked = asked(state, request)
        .await
        .map_err(IntoResponse::into_response)?;
    let Some(caller) = asked.asker.caller.as_ref() else {
        return Err(ApiError::Forbidden(
            "only a caller the policy names may consume events (those addressed to its name)"
                .into(),
        )
        .into_response());
    };
    let envelope = string_field(&asked.body, "envelope")
        .map_err(IntoResponse::into_response)?
        .ok_or_else(|| bad("envelope is required").into_response())?;
    let digest = message_field(&asked.body).map_err(IntoResponse::into_response)?;
    // Decided before its id is consumed: an event the grants cannot decide
    // now (a database outage) is refused, not used up.
    let opened = events::open(&asked.policy, &envelope, &digest, &caller.name, asked.now);
    let consumed = match opened {
        Ok(claims) => {
            let principal = events::principal_of(&claims);
            let decision =
                decide_now(state, &asked, &principal, &claims.resource, &claims.action).await;
            events::consume_decided(&asked.policy, &state.replay, claims, decision, asked.now).await
        }
        Err(refusal) => Err(refusal),
    };
    Ok(match consumed {
        Ok(consumed) => {
            let claims = &consumed.claims;
            let mut answer = decision_json(&consumed.decision, asked.asker.may().explain);
            answer["event"] = json!({
                "id": claims.jti,
                "subject": { "type": super::SUBJECT_TYPE, "id": claims.sub },
                "action": { "name": claims.action },
                "resource": claims.resource,
                "issued_at": claims.iat,
                "expires_at": claims.exp,
            });
            tracing::info!(
                event_id = %claims.jti,
                subject = %claims.sub,
                action = %claims.action,
                resource = %claims.resource,
                allowed = consumed.decision.is_allowed(),
                "event consumed"
            );
            answer
        }
        Err(refusal) => {
            tracing::info!(caller = %caller.name, refused = refusal.code(), "event refused");
            json!({
                "decision": false,
                "refused": { "code": refusal.code(), "message": refusal.to_string() },
            })
        }
    })
}

/// The policy's decision now, by the decision service (the grants that
/// serve: the policy's own, or the grants database's), counted and logged
/// as an events decision.
async fn decide_now(
    state: &ApiState,
    asked: &Asked,
    principal: &Principal,
    resource: &str,
    action: &str,
) -> Decision {
    let attributes = Attributes::default();
    let request = engine::Request::ResourceAction(ResourceAction {
        principal,
        resource,
        action,
        attributes: &attributes,
    });
    let decision = state
        .pdp
        .decide(&asked.policy, &request, None, asked.now)
        .await;
    asked.record(state, Entry::Events, &decision);
    Arc::unwrap_or_clone(decision)
}

/// An optional string field.
fn string_field(body: &Object, name: &str) -> Result<Option<String>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("{name} must be a string"))),
    }
}

/// The message's SHA-256: from `message` (its UTF-8 bytes) or
/// `message_sha256` (64 hex digits, for a message that is large or not
/// text); exactly one.
fn message_field(body: &Object) -> Result<[u8; 32], ApiError> {
    match (
        string_field(body, "message")?,
        string_field(body, "message_sha256")?,
    ) {
        (Some(message), None) => Ok(message_digest(message.as_bytes())),
        (None, Some(hex)) => parse_hex(&hex)
            .ok_or_else(|| bad("message_sha256 must be 64 hexadecimal digits")),
        _ => Err(bad(
            "exactly one of message (the message as text) and message_sha256 (its SHA-256 in hex) is required",
        )),
    }
}
