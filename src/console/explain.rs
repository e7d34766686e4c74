//! Explain: a form for a request (method, path, host, context extensions,
//! and a subject with groups or a pasted token) or for a subject, resource
//! and action with properties, decided by the decision service on the
//! API's pool, exactly as a check or an evaluation is, and put in words:
//! the decision, the application and how it was selected, the route, the
//! resource and action, the rule that decided and, for a deny no route
//! took, which route came closest and why it did not take the request.
//!
//! A pasted token is verified like any check's and then dropped: it is
//! never written back into the page, logged or kept. Explanations are not
//! counted or logged as decisions: nobody was answered. Plain HTML forms:
//! no JavaScript needed.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Form};
use serde_json::{Map, Value};

use super::access::Viewer;
use super::html::{definitions, get, page, Esc, Fields, Tab};
use super::ConsoleState;
use crate::engine::{self, Attributes, Credential, Decision, RequestAttrs, ResourceAction, Tried};
use crate::token::Principal;

/// The issuer an explained subject is said to be vouched for by.
const VOUCHED_BY: &str = "console";

/// Longest field the forms take, in bytes.
const MAX_FIELD: usize = 4096;

pub(crate) async fn form(
    Extension(viewer): Extension<Viewer>,
    Query(fields): Query<Fields>,
) -> Response {
    // A link from the live view fills the form; nothing is decided yet.
    Html(page(
        "Explain a decision",
        Tab::Explain,
        viewer.name(),
        &forms(&fields),
    ))
    .into_response()
}

pub(crate) async fn answer(
    State(state): State<ConsoleState>,
    Extension(viewer): Extension<Viewer>,
    Form(mut fields): Form<Fields>,
) -> Response {
    // The token answers once and is forgotten: taken out of the fields the
    // page is written from.
    let token = fields.remove("token").unwrap_or_default();
    let answer = match explain(&state, &fields, token.trim()).await {
        Ok(answer) => answer,
        Err(message) => format!(
            "<section id=\"answer\" aria-live=\"polite\"><p class=\"error\" id=\"error\">{}</p></section>",
            Esc(&message)
        ),
    };
    let body = format!("{answer}{}", forms(&fields));
    Html(page(
        "Explain a decision",
        Tab::Explain,
        viewer.name(),
        &body,
    ))
    .into_response()
}

/// The two forms, filled with `fields` (never a token).
fn forms(fields: &Fields) -> String {
    let value = |name: &str| get(fields, name).to_owned();
    let kind = get(fields, "kind");
    let request_values = |name: &str| {
        if kind == "resource" {
            String::new()
        } else {
            value(name)
        }
    };
    let resource_values = |name: &str| {
        if kind == "resource" {
            value(name)
        } else {
            String::new()
        }
    };
    let method = match request_values("method") {
        m if m.is_empty() => "GET".to_owned(),
        m => m,
    };
    let mut out = String::new();
    out.push_str("<h2 id=\"request-form\">A request, as Envoy sends it</h2>\
<form class=\"query\" method=\"post\" action=\"/explain\"><input type=\"hidden\" name=\"kind\" value=\"request\">");
    // Ids apart from the answer's (`rq-`), which names its fields plainly.
    let field = |name: &str, label: &str, value: &str, kind: &str| {
        format!(
            "<label for=\"rq-{name}\">{}</label><input type=\"{kind}\" id=\"rq-{name}\" name=\"{name}\" value=\"{}\" autocomplete=\"off\">",
            Esc(label),
            Esc(value)
        )
    };
    out.push_str(&field("method", "Method", &method, "text"));
    out.push_str(&field("path", "Path", &request_values("path"), "text"));
    out.push_str(&field("host", "Host", &request_values("host"), "text"));
    let _ = write!(
        out,
        "<label for=\"rq-context\">Context extensions (one key=value a line)</label><textarea id=\"rq-context\" name=\"context\">{}</textarea>",
        Esc(&request_values("context"))
    );
    out.push_str(&field(
        "subject",
        "Subject (as if its token were valid)",
        &request_values("subject"),
        "text",
    ));
    out.push_str(&field(
        "groups",
        "Groups (comma-separated)",
        &request_values("groups"),
        "text",
    ));
    out.push_str(&field(
        "token",
        "Or a token (verified, never kept)",
        "",
        "password",
    ));
    out.push_str(
        "<button type=\"submit\" id=\"explain-request\">Explain this request</button></form>",
    );

    out.push_str("<h2 id=\"resource-form\">A subject, resource and action</h2>\
<form class=\"query\" method=\"post\" action=\"/explain\"><input type=\"hidden\" name=\"kind\" value=\"resource\">");
    for (name, label, id) in [
        ("subject", "Subject", "ra-subject"),
        ("groups", "Groups (comma-separated)", "ra-groups"),
        ("resource", "Resource (type:id)", "ra-resource"),
        ("action", "Action", "ra-action"),
    ] {
        let _ = write!(
            out,
            "<label for=\"{id}\">{}</label><input type=\"text\" id=\"{id}\" name=\"{name}\" value=\"{}\" autocomplete=\"off\">",
            Esc(label),
            Esc(&resource_values(name))
        );
    }
    let _ = write!(
        out,
        "<label for=\"ra-properties\">Resource properties (JSON object)</label><textarea id=\"ra-properties\" name=\"properties\">{}</textarea>\
<label for=\"ra-context\">Context (JSON object)</label><textarea id=\"ra-context\" name=\"context\">{}</textarea>",
        Esc(&resource_values("properties")),
        Esc(&resource_values("context"))
    );
    out.push_str(
        "<button type=\"submit\" id=\"explain-resource\">Explain this decision</button></form>",
    );
    out
}

/// Decides what the form asks and writes the answer's section.
async fn explain(state: &ConsoleState, fields: &Fields, token: &str) -> Result<String, String> {
    if fields.values().any(|v| v.len() > MAX_FIELD) || token.len() > 16 * 1024 {
        return Err(format!("a field is longer than {MAX_FIELD} bytes"));
    }
    let groups: Vec<String> = get(fields, "groups")
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect();
    let subject = get(fields, "subject").to_owned();
    let principal = (!subject.is_empty()).then(|| {
        let mut principal = Principal::named(VOUCHED_BY, subject.clone());
        principal.groups = groups;
        Arc::new(principal)
    });
    let pdp = state.pdp.clone();
    let policy = pdp.policy();
    let now = pdp.now();
    match get(fields, "kind") {
        "request" => {
            let path = get(fields, "path");
            if !path.starts_with('/') {
                return Err("the path must start with /".into());
            }
            let mut context = BTreeMap::new();
            for line in get(fields, "context").lines() {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let (k, v) = line
                    .split_once('=')
                    .ok_or("each context extension is key=value")?;
                context.insert(
                    Cow::Owned(k.trim().to_owned()),
                    Cow::Owned(v.trim().to_owned()),
                );
            }
            let credential = if !token.is_empty() {
                Credential::Bearer(Cow::Owned(token.to_owned()))
            } else if principal.is_some() {
                // Stands for the subject; never verified as a token.
                Credential::Bearer(Cow::Borrowed("console-explained-subject"))
            } else {
                Credential::Absent
            };
            let method = match get(fields, "method") {
                "" => "GET".to_owned(),
                m => m.to_ascii_uppercase(),
            };
            let request = RequestAttrs {
                method: method.into(),
                path: path.to_owned().into(),
                host: get(fields, "host").to_owned().into(),
                destination: Cow::Borrowed(""),
                context_extensions: context,
                credential,
                request_id: None,
                verified_payloads: BTreeMap::new(),
                headers: BTreeMap::new(),
            };
            let as_subject = if token.is_empty() { principal } else { None };
            let version = policy.version.clone();
            let decided = state
                .bulkhead
                .run(move |_| async move {
                    let asked = engine::Request::Http(&request);
                    let (decision, looked) = pdp.explain(&policy, &asked, as_subject, now).await;
                    let tried = engine::trace(&policy, &decision, None, &looked);
                    let selection = engine::explain_selection(&policy, &request);
                    let unmatched = (decision.route.is_none() && !decision.is_allowed())
                        .then(|| engine::explain_unmatched(&policy, &request))
                        .flatten()
                        .map(|u| u.explanation);
                    (decision, tried, selection, unmatched)
                })
                .await
                .map_err(|e| e.to_string())?;
            let (decision, tried, selection, unmatched) = decided;
            Ok(render(
                &decision,
                &tried,
                selection.as_ref(),
                unmatched.as_deref(),
                &version,
            ))
        }
        "resource" => {
            let principal = principal.ok_or("name a subject")?;
            let (resource, action) = (get(fields, "resource"), get(fields, "action"));
            if resource.is_empty() || action.is_empty() {
                return Err("name a resource and an action".into());
            }
            let object = |name: &str| -> Result<Arc<Map<String, Value>>, String> {
                match get(fields, name) {
                    "" => Ok(Arc::default()),
                    text => match serde_json::from_str::<Value>(text) {
                        Ok(Value::Object(map)) => Ok(Arc::new(map)),
                        _ => Err(format!("{name} must be a JSON object")),
                    },
                }
            };
            let attributes = Attributes {
                subject: Arc::default(),
                resource: object("properties")?,
                action: Arc::default(),
                context: object("context")?,
            };
            let (resource, action) = (resource.to_owned(), action.to_owned());
            let (decision, tried) = state
                .bulkhead
                .run(move |_| async move {
                    let request = engine::Request::ResourceAction(ResourceAction {
                        principal: &principal,
                        resource: &resource,
                        action: &action,
                        attributes: &attributes,
                    });
                    let (decision, looked) = pdp.explain(&policy, &request, None, now).await;
                    let tried = engine::trace(&policy, &decision, Some(&principal), &looked);
                    (decision, tried)
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok(render(
                &decision,
                &tried,
                None,
                None,
                &state.pdp.policy().version,
            ))
        }
        _ => Err("choose one of the two forms".into()),
    }
}

/// The answer in words. Every value is escaped by [`definitions`].
fn render(
    decision: &Decision,
    tried: &[Tried],
    selection: Option<&(String, String)>,
    unmatched: Option<&str>,
    version: &str,
) -> String {
    let outcome = decision.outcome();
    let status = decision.status_code().to_string();
    let detail = decision.reason.to_string();
    let rule = decision.rule_text();
    let selected_by = selection.map(|(_, how)| how.as_str());
    let rows = [
        ("decision", Some(outcome)),
        ("status", Some(status.as_str())),
        ("reason", Some(decision.reason.code())),
        ("detail", Some(detail.as_str())),
        ("application", decision.application.as_deref()),
        ("selected by", selected_by),
        ("route", decision.route.as_deref()),
        ("subject", decision.subject.as_deref()),
        ("resource", decision.resource.as_deref()),
        ("action", decision.action.as_deref()),
        ("decided by", rule.as_deref()),
        ("closest route", unmatched),
        ("policy version", Some(version)),
    ];
    let class = if decision.is_allowed() {
        "allow"
    } else {
        "deny"
    };
    format!(
        "<section id=\"answer\" aria-live=\"polite\"><h2>Answer: <span id=\"verdict\" class=\"{class}\">{}</span></h2>{}{}</section>",
        Esc(outcome),
        definitions(&rows),
        tried_list(tried)
    )
}

/// Every rule the engine tried, in its order, with each condition's value
/// and the one that decided ([`engine::trace`]). Every value is escaped.
fn tried_list(tried: &[Tried]) -> String {
    if tried.is_empty() {
        return "<h3>Rules tried</h3><p id=\"tried\">none: no deny rule, condition or grant was consulted</p>".into();
    }
    let mut out = String::from("<h3>Rules tried, in order</h3><ol id=\"tried\">");
    for step in tried.iter().take(MAX_TRIED_SHOWN) {
        let (text, decided) = match step {
            Tried::Deny {
                name,
                applies,
                decided,
            } => (
                format!(
                    "explicit deny {name:?}: {}",
                    if *applies {
                        "covers this resource and action"
                    } else {
                        "does not cover this resource and action"
                    }
                ),
                *decided,
            ),
            Tried::RouteCondition { condition, holds } => (
                format!("the route's condition {condition} is {holds}"),
                !holds,
            ),
            Tried::NothingHeld { holder, key } => (format!("{holder} on {key}: no role"), false),
            Tried::Role {
                holder,
                key,
                role,
                holds_action,
                condition,
                decided,
            } => {
                let mut text = format!(
                    "{holder} on {key}: role {role:?}, which {} the action",
                    if *holds_action {
                        "holds"
                    } else {
                        "does not hold"
                    }
                );
                if let Some((source, value)) = condition {
                    let value = match value {
                        Some(value) => value.to_string(),
                        None => "not evaluated".to_owned(),
                    };
                    text.push_str(&format!(", under the condition {source}: {value}"));
                }
                (text, *decided)
            }
        };
        let mark = if decided { " class=\"decided\"" } else { "" };
        let suffix = if decided { " — decided" } else { "" };
        out.push_str(&format!("<li{mark}>{}{suffix}</li>", Esc(&text)));
    }
    if tried.len() > MAX_TRIED_SHOWN {
        out.push_str(&format!(
            "<li>… and {} more</li>",
            tried.len() - MAX_TRIED_SHOWN
        ));
    }
    out.push_str("</ol>");
    out
}

/// Steps of a trace shown; a subject in very many groups tries many.
const MAX_TRIED_SHOWN: usize = 100;
