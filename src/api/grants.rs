//! `POST /portcullis/v1/grants`: adds and removes grants kept in the
//! grants database, atomically, in one request; answers the write's
//! revision. Only callers whose policy entry says `may: [write_grants]`.
//!
//! ```json
//! {"add":    [{"subject": "bob", "role": "viewer", "resource": "document:7"}],
//!  "remove": [{"group": "staff", "role": "editor", "resource": "document:*"}]}
//! ```
//! answers `{"revision": "9f2c61d0a4b3e875.42", "added": 1, "removed": 1}`
//! (the database's identity and its revision counter). Each grant is
//! written as in the policy files (`subject`, `group` or
//! `authenticated: true`; `role`; `resource`), checked as the loader checks
//! them; the role must be a role of the policy without a condition.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{asked, bad, json_response, ApiError, ApiState};
use crate::grants_db::write::{self, check_role};
use crate::grants_db::Grant;
use crate::policy::PolicySet;

/// Where the endpoint is served.
pub const PATH: &str = "/portcullis/v1/grants";

/// Most grants one request may add and remove, together.
pub(crate) const MAX_GRANTS: usize = 1000;

pub async fn write(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    match write_grants(&state, request).await {
        Ok(answer) => json_response(&answer),
        Err(e) => e.into_response(),
    }
}

async fn write_grants(state: &ApiState, request: Request) -> Result<Value, ApiError> {
    let asked = asked(state, request).await?;
    if !asked.asker.may().write_grants {
        return Err(ApiError::Forbidden(
            "this caller may not write grants".into(),
        ));
    }
    let Some(store) = state.pdp.grants_db() else {
        return Err(ApiError::Unavailable(
            "grants are kept in the policy files: this server has no grants database".into(),
        ));
    };
    for key in asked.body.keys() {
        if key != "add" && key != "remove" {
            return Err(bad(format!("unknown field {key:?} (expected add, remove)")));
        }
    }
    let adds = grants(&asked.policy, asked.body.get("add"), "add")?;
    let removes = grants(&asked.policy, asked.body.get("remove"), "remove")?;
    if adds.len() + removes.len() > MAX_GRANTS {
        return Err(bad(format!(
            "a request may change at most {MAX_GRANTS} grants"
        )));
    }
    let mut client = store
        .write_client()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let written = write::write(&mut client, &adds, &removes)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    tracing::info!(
        revision = %written.token(),
        added = written.added,
        removed = written.removed,
        caller = asked.asker.caller.as_ref().map_or("", |c| c.name.as_str()),
        "grants written"
    );
    Ok(json!({
        "revision": written.token().to_string(),
        "added": written.added,
        "removed": written.removed,
    }))
}

fn grants(policy: &PolicySet, list: Option<&Value>, field: &str) -> Result<Vec<Grant>, ApiError> {
    let items = match list {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(bad(format!("{field} must be an array of grants"))),
    };
    if items.len() > MAX_GRANTS {
        return Err(bad(format!(
            "a request may change at most {MAX_GRANTS} grants"
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("{field}[{i}]");
            let Value::Object(item) = item else {
                return Err(bad(format!("{at} must be an object")));
            };
            let text = |key: &str| -> Result<Option<&str>, ApiError> {
                match item.get(key) {
                    None => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.as_str())),
                    Some(_) => Err(bad(format!("{at}.{key} must be a string"))),
                }
            };
            for key in item.keys() {
                if !matches!(
                    key.as_str(),
                    "subject" | "group" | "authenticated" | "role" | "resource"
                ) {
                    return Err(bad(format!("{at}: unknown field {key:?}")));
                }
            }
            let authenticated = match item.get("authenticated") {
                None | Some(Value::Bool(false)) => false,
                Some(Value::Bool(true)) => true,
                Some(_) => return Err(bad(format!("{at}.authenticated must be true or false"))),
            };
            let role = text("role")?.ok_or_else(|| bad(format!("{at}.role is missing")))?;
            let resource =
                text("resource")?.ok_or_else(|| bad(format!("{at}.resource is missing")))?;
            let grant = Grant::new(
                text("subject")?,
                text("group")?,
                authenticated,
                role,
                resource,
            )
            .map_err(|e| bad(format!("{at}: {e}")))?;
            if field == "add" {
                check_role(policy, &grant).map_err(|e| bad(format!("{at}: {e}")))?;
            }
            Ok(grant)
        })
        .collect()
}
