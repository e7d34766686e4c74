//! Who can access what: "who may write document:7", "what may alice do on
//! document:7", "which documents may alice read", through the decision
//! service's search (the one the AuthZEN API serves), on the API's pool,
//! a page at a time. Plain GET forms and links: no JavaScript.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;

use super::access::Viewer;
use super::html::{get, page, query_value, Esc, Fields, Tab};
use super::ConsoleState;
use crate::engine::Attributes;
use crate::pdp::Search;
use crate::search;
use crate::token::Principal;

/// Results per page unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 20;

/// Most results per page.
const MAX_LIMIT: usize = 200;

/// Longest field the forms take, in bytes.
const MAX_FIELD: usize = 1024;

pub(crate) async fn access(
    State(state): State<ConsoleState>,
    Extension(viewer): Extension<Viewer>,
    Query(fields): Query<Fields>,
) -> Response {
    let mut body = String::new();
    if !get(&fields, "kind").is_empty() {
        match run(&state, &fields).await {
            Ok(section) => body.push_str(&section),
            Err(message) => {
                let _ = write!(
                    body,
                    "<section id=\"results\"><p class=\"error\" id=\"error\">{}</p></section>",
                    Esc(&message)
                );
            }
        }
    }
    body.push_str(&forms(&fields));
    Html(page(
        "Who can access what",
        Tab::Access,
        viewer.name(),
        &body,
    ))
    .into_response()
}

fn forms(fields: &Fields) -> String {
    let kind = get(fields, "kind");
    let value = |form: &str, name: &str| {
        if kind == form {
            get(fields, name).to_owned()
        } else {
            String::new()
        }
    };
    let mut out = String::new();
    // (form, question, its fields as (name, label)).
    type Form<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let forms: [Form<'_>; 3] = [
        (
            "subjects",
            "Who may do an action on a resource?",
            &[("action", "Action"), ("resource", "Resource (type:id)")],
        ),
        (
            "actions",
            "What may a subject do on a resource?",
            &[
                ("subject", "Subject"),
                ("groups", "Groups (comma-separated)"),
                ("resource", "Resource (type:id)"),
            ],
        ),
        (
            "resources",
            "Which resources of a type may a subject act on?",
            &[
                ("subject", "Subject"),
                ("groups", "Groups (comma-separated)"),
                ("action", "Action"),
                ("type", "Resource type"),
            ],
        ),
    ];
    for (form, title, inputs) in forms {
        let _ = write!(
            out,
            "<h2>{}</h2><form class=\"query\" method=\"get\" action=\"/access\"><input type=\"hidden\" name=\"kind\" value=\"{form}\">",
            Esc(title)
        );
        for (name, label) in inputs {
            let _ = write!(
                out,
                "<label for=\"{form}-{name}\">{}</label><input type=\"text\" id=\"{form}-{name}\" name=\"{name}\" value=\"{}\" autocomplete=\"off\">",
                Esc(label),
                Esc(&value(form, name))
            );
        }
        let _ = write!(
            out,
            "<button type=\"submit\" id=\"search-{form}\">Search</button></form>"
        );
    }
    out
}

async fn run(state: &ConsoleState, fields: &Fields) -> Result<String, String> {
    if fields.values().any(|v| v.len() > MAX_FIELD) {
        return Err(format!("a field is longer than {MAX_FIELD} bytes"));
    }
    let kind = get(fields, "kind").to_owned();
    let (subject, action, resource, kind_of) = (
        get(fields, "subject").to_owned(),
        get(fields, "action").to_owned(),
        get(fields, "resource").to_owned(),
        get(fields, "type").to_owned(),
    );
    let needs = |present: &[&str]| -> Result<(), String> {
        match present.iter().find(|f| get(fields, f).is_empty()) {
            Some(missing) => Err(format!("fill in {missing}")),
            None => Ok(()),
        }
    };
    match kind.as_str() {
        "subjects" => needs(&["action", "resource"])?,
        "actions" => needs(&["subject", "resource"])?,
        "resources" => needs(&["subject", "action", "type"])?,
        _ => return Err("choose one of the three searches".into()),
    }
    let limit = get(fields, "limit")
        .parse::<usize>()
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT);
    let after = fields
        .get("after")
        .filter(|a| !a.is_empty())
        .map(|a| a.to_owned());
    let mut principal = Principal::named("console", subject.clone());
    principal.groups = get(fields, "groups")
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect();
    let principal = Arc::new(principal);
    let pdp = state.pdp.clone();
    let (job_kind, job_after) = (kind.clone(), after.clone());
    let (job_action, job_resource, job_type) = (action.clone(), resource.clone(), kind_of.clone());
    let found = state
        .bulkhead
        .run(move |_| async move {
            let policy = pdp.policy();
            let search = match job_kind.as_str() {
                "subjects" => Search::Subjects {
                    resource: &job_resource,
                    action: &job_action,
                },
                "actions" => Search::Actions {
                    principal: &principal,
                    resource: &job_resource,
                },
                _ => Search::Resources {
                    principal: &principal,
                    action: &job_action,
                    kind: &job_type,
                },
            };
            let given = search::Circumstances {
                attributes: Attributes::none(),
                now: pdp.now(),
            };
            pdp.search(&policy, search, job_after.as_deref(), limit, given)
                .await
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let question = match kind.as_str() {
        "subjects" => format!("Who may {action} {resource}?"),
        "actions" => format!("What may {subject} do on {resource}?"),
        _ => format!("Which {kind_of} may {subject} {action}?"),
    };
    let mut out = format!("<section id=\"results\"><h2>{}</h2>", Esc(&question));
    if found.items.is_empty() {
        out.push_str("<p id=\"none\">No one and nothing, on this page.</p>");
    } else {
        out.push_str("<ul id=\"found\">");
        for item in &found.items {
            let _ = write!(out, "<li>{}</li>", Esc(item));
        }
        out.push_str("</ul>");
    }
    if let (true, Some(next)) = (found.more, &found.next) {
        let mut link = String::from("/access?");
        for (name, value) in fields.iter().filter(|(n, _)| n.as_str() != "after") {
            let _ = write!(link, "{}={}&", query_value(name), query_value(value));
        }
        let _ = write!(link, "after={}", query_value(next));
        let _ = write!(
            out,
            "<p><a id=\"next-page\" href=\"{}\">Next page</a></p>",
            Esc(&link)
        );
    }
    out.push_str(
        "<p class=\"note\">Each result is confirmed by the decision the same question would get now, with no properties or context: a grant under a condition on them is left out.</p></section>",
    );
    Ok(out)
}
