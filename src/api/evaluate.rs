//! `POST /access/v1/evaluation` and `/access/v1/evaluations`: each
//! evaluation checked against what the caller may ask, then decided by the
//! decision service. One evaluation of a check's size is decided where it
//! was read, as a gRPC check is ([`INLINE_BODY_BYTES`]). A batch, or an
//! evaluation whose context or properties make it larger, is work whose
//! size the caller chooses: it runs on the API's pool
//! ([`super::bulkhead`]), a batch item by item within its time budget, as
//! its semantic says.

use super::*;

/// One evaluation decided by the decision service, or refused (an error
/// of that evaluation alone): the caller may not ask about this subject,
/// or the request is malformed. Grants are at least as fresh as the
/// evaluation's `context.portcullis_revision` (`<database identity>.<n>`
/// as a write answered it; a bare number is refused: it names no
/// database).
pub(super) async fn decide(
    pdp: &Pdp,
    policy: &PolicySet,
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
        .filter(|user| subject.kind == SUBJECT_TYPE && *user.subject == *subject.id);
    let principal: Arc<Principal> = match own {
        // The token's own subject, with the groups its token asserts.
        Some(user) => user.clone(),
        None if asker.may().any_subject => Arc::new(Principal::named("api", subject.id.clone())),
        None => {
            return Err(ApiError::Forbidden(
                "this caller may only ask about the subject of the user token it presents".into(),
            ))
        }
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
    let resource = resource_name(&eval.resource.kind, &eval.resource.id);
    // What conditions read of the request; the clock, never the caller,
    // gives `context.time`.
    // Shared, not copied: a batch's defaults are one allocation, and
    // absent ones none.
    let none = Attributes::none();
    let or_none =
        |sent: &Option<Arc<Object>>, none: &Arc<Object>| sent.as_ref().unwrap_or(none).clone();
    let attributes = Attributes {
        subject: or_none(&eval.subject.properties, &none.subject),
        resource: or_none(&eval.resource.properties, &none.resource),
        action: or_none(&eval.action.properties, &none.action),
        context: or_none(&eval.context, &none.context),
    };
    let request = engine::Request::ResourceAction(ResourceAction {
        principal: &principal,
        resource: &resource,
        action: &eval.action.name,
        attributes: &attributes,
    });
    let decision = pdp
        .decide(policy, &request, min_revision.as_ref(), now)
        .await;
    Ok(Arc::unwrap_or_clone(decision))
}

/// A decision as the API answers it; its reason only to callers that may
/// see it (`explain`), since the reason names rules and grants.
pub(super) fn decision_json(decision: &Decision, explain: bool) -> Value {
    let mut answer = json!({ "decision": decision.is_allowed() });
    if explain {
        let mut why = decision.reason.to_string();
        if let Some(rule) = decision.rule() {
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

pub(super) async fn evaluation(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    evaluate_one(&state, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The largest body of one evaluation decided beside Envoy's checks: the
/// size of a typical CheckRequest. A decision's work grows with what its
/// conditions read of the context and properties; up to this size it is a
/// check's work, and the services asking are as latency-bound as Envoy
/// (the hop to the niced pool doubled their latency under load). Larger
/// ones go to the pool, so that a flood of them cannot slow the checks.
pub const INLINE_BODY_BYTES: usize = 4096;

async fn evaluate_one(state: &Arc<ApiState>, request: Request) -> Result<Response, ApiError> {
    let asked = asked(state, request).await?;
    let eval = model::evaluation(&asked.body, "")?;
    if asked.body_len <= INLINE_BODY_BYTES {
        return answer_one(state, &asked, &eval).await;
    }
    let state = state.clone();
    state
        .bulkhead
        .clone()
        .run(move |_| async move { answer_one(&state, &asked, &eval).await })
        .await?
}

/// One evaluation decided, counted and answered.
async fn answer_one(
    state: &ApiState,
    asked: &Asked,
    eval: &Evaluation,
) -> Result<Response, ApiError> {
    let decision = decide(&state.pdp, &asked.policy, &asked.asker, eval, asked.now).await?;
    asked.record(state, Entry::AuthZen, &decision);
    Ok(decision_response(&decision, asked.asker.may().explain))
}

/// [`decision_json`] as a response; without a reason to give, one of two
/// bodies written once.
fn decision_response(decision: &Decision, explain: bool) -> Response {
    if explain {
        return json_response(&decision_json(decision, true));
    }
    let body = if decision.is_allowed() {
        ALLOWED
    } else {
        DENIED
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

const ALLOWED: &str = r#"{"decision":true}"#;
const DENIED: &str = r#"{"decision":false}"#;

pub(super) async fn evaluations(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    evaluate_many(&state, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
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
                asked.record(state, Entry::AuthZen, &decision);
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

async fn evaluate_many(state: &Arc<ApiState>, request: Request) -> Result<Response, ApiError> {
    let mut asked = asked(state, request).await?;
    let batch = model::evaluations(std::mem::take(&mut asked.body))?;
    let explain = asked.asker.may().explain;
    if batch.items.is_none() && asked.body_len <= INLINE_BODY_BYTES {
        // No evaluations: the request is one evaluation, answered as one.
        return answer_one(state, &asked, &batch.single()?).await;
    }
    let state = state.clone();
    state
        .bulkhead
        .clone()
        .run(move |deadline| async move {
            let (policy, asker, pdp) = (&asked.policy, &asked.asker, &state.pdp);
            let Some(items) = &batch.items else {
                return answer_one(&state, &asked, &batch.single()?).await;
            };
            let mut answers = BatchAnswers::new(&batch, explain);
            for (i, item) in items.iter().enumerate() {
                if Instant::now() > deadline {
                    return Err(ApiError::OverBudget);
                }
                let outcome = match batch.item(i, item) {
                    Ok(eval) => decide(pdp, policy, asker, &eval, asked.now).await,
                    Err(e) => Err(ApiError::from(e)),
                };
                if answers.push(&state, &asked, outcome) {
                    break;
                }
            }
            Ok(json_response(&answers.finish()))
        })
        .await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{DenyStatus, Effect, Reason};

    #[test]
    fn the_written_bodies_are_what_decision_json_writes() {
        let denied = Decision::deny(DenyStatus::Forbidden, Reason::NoGrant);
        let allowed = Decision {
            effect: Effect::Allow,
            reason: Reason::Granted,
            ..denied.clone()
        };
        assert_eq!(decision_json(&allowed, false).to_string(), ALLOWED);
        assert_eq!(decision_json(&denied, false).to_string(), DENIED);
    }
}
