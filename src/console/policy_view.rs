//! The policy as served: version, when it was published, the last failed
//! reload's errors (`file:line: message`), applications with their
//! selectors, mode, issuers and routes, roles as action sets, issuers,
//! callers (name, kind of credential, permissions) and how many grants
//! serve. Never a secret: no key, no key digest, no environment value.

use std::fmt::Write;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;

use super::access::Viewer;
use super::html::{page, Esc, Tab};
use super::ConsoleState;
use crate::policy::callers::CallerCredential;
use crate::policy::routes::Segment;
use crate::policy::Access;

pub(crate) async fn policy_page(
    State(state): State<ConsoleState>,
    Extension(viewer): Extension<Viewer>,
) -> Response {
    let policy = state.pdp.policy();
    let status = state.reloads.read();
    let mut out = String::new();
    let loaded = humantime::format_rfc3339_seconds(status.loaded_at).to_string();
    let grants = match state.pdp.grants_db() {
        Some(_) => "kept in PostgreSQL (the policy files' grants are ignored)".to_owned(),
        None => policy.grants.len().to_string(),
    };
    let _ = write!(
        out,
        "<dl><dt>version</dt><dd id=\"version\">{}</dd><dt>published</dt><dd id=\"published\">{}</dd><dt>grants</dt><dd id=\"grants\">{}</dd></dl>",
        Esc(&policy.version),
        Esc(&loaded),
        Esc(&grants)
    );
    match &status.last_failure {
        None => out.push_str("<p id=\"reload\">The last reload loaded (or found nothing new).</p>"),
        Some((when, errors)) => {
            let _ = write!(
                out,
                "<section id=\"reload-errors\"><h2 class=\"error\">The last reload failed ({}); the version above is still served</h2><ul>",
                Esc(&humantime::format_rfc3339_seconds(*when).to_string())
            );
            for e in errors {
                let _ = write!(out, "<li class=\"mono\">{}</li>", Esc(e));
            }
            out.push_str("</ul></section>");
        }
    }

    out.push_str("<h2>Applications</h2>");
    for (index, app) in policy.applications.iter().enumerate() {
        let issuers: Vec<String> = app
            .issuers
            .iter()
            .filter_map(|i| policy.issuers.get(*i).map(|i| i.name.to_string()))
            .collect();
        let mode = if app.dry_run {
            "dry run (denies recorded, not enforced, when chosen by a selector the client cannot write)"
        } else {
            "enforce"
        };
        let _ = write!(
            out,
            "<h3 id=\"app-{}\">{}</h3><dl><dt>mode</dt><dd>{}</dd><dt>selectors</dt><dd>{}</dd><dt>issuers</dt><dd>{}</dd><dt>paths</dt><dd>{}</dd></dl>",
            Esc(&app.name),
            Esc(&app.name),
            Esc(mode),
            Esc(&policy.application_selectors(index).join("; ")),
            Esc(&issuers.join(", ")),
            if app.case_insensitive { "case-insensitive" } else { "case-sensitive" },
        );
        out.push_str("<table><thead><tr><th>route</th><th>methods</th><th>path</th><th>access</th><th>resource</th><th>action</th><th>condition</th></tr></thead><tbody>");
        for route in app.routes.iter() {
            let captures: Vec<String> = route
                .template
                .segments()
                .iter()
                .filter_map(|s| match s {
                    Segment::Capture(name, _) | Segment::Rest(name) => Some(format!("{{{name}}}")),
                    Segment::Literal(_) => None,
                })
                .collect();
            let captures: Vec<&str> = captures.iter().map(String::as_str).collect();
            let resource = route
                .resource
                .as_ref()
                .map(|r| r.render(&captures))
                .unwrap_or_default();
            let access = match route.access {
                Access::Public => "public",
                Access::Authenticated => "authenticated",
                Access::Granted => "granted",
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td>{access}</td><td class=\"mono\">{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
                Esc(&route.name),
                Esc(&route.methods.join(", ")),
                Esc(&route.template.to_string()),
                Esc(&resource),
                Esc(route.action.as_ref().map_or("", |(a, _)| a)),
                Esc(route.condition.as_ref().map_or("", |c| c.source())),
            );
        }
        out.push_str("</tbody></table>");
    }

    out.push_str("<h2>Roles</h2><table id=\"roles\"><thead><tr><th>role</th><th>actions</th><th>condition</th></tr></thead><tbody>");
    for role in &policy.roles {
        let actions = policy.action_names(&role.actions);
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
            Esc(&role.name),
            Esc(&actions.join(", ")),
            Esc(role.condition.as_ref().map_or("", |c| c.source()))
        );
    }
    out.push_str("</tbody></table>");

    out.push_str("<h2>Deny rules</h2><table id=\"denies\"><thead><tr><th>rule</th><th>denies</th><th>resource</th><th>actions</th><th>reason</th></tr></thead><tbody>");
    for deny in policy.deny_rules() {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td></tr>",
            Esc(deny.name),
            Esc(&deny
                .holder
                .map_or_else(|| "everyone".to_owned(), |h| h.to_string())),
            Esc(&deny.resource.to_string()),
            Esc(&deny
                .actions
                .map_or_else(|| "every action".to_owned(), |a| a.join(", "))),
            Esc(deny.reason.unwrap_or(""))
        );
    }
    out.push_str("</tbody></table>");

    out.push_str("<h2>Issuers</h2><table id=\"issuers\"><thead><tr><th>name</th><th>iss</th><th>audiences</th><th>algorithms</th><th>subject prefix</th></tr></thead><tbody>");
    for issuer in (0..policy.issuers.len()).filter_map(|i| policy.issuers.get(i)) {
        let algorithms: Vec<String> = issuer.algorithms.iter().map(|a| format!("{a:?}")).collect();
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
            Esc(&issuer.name),
            Esc(&issuer.issuer),
            Esc(&issuer.audiences.join(", ")),
            Esc(&algorithms.join(", ")),
            Esc(&issuer.subject_prefix)
        );
    }
    out.push_str("</tbody></table>");

    out.push_str("<h2>API callers</h2><table id=\"callers\"><thead><tr><th>name</th><th>proves itself by</th><th>may</th></tr></thead><tbody>");
    for caller in policy.callers.iter() {
        // The kind of credential and a public name; never a key or digest.
        let credential = match &caller.credential {
            CallerCredential::ApiKey(_) => "an API key".to_owned(),
            CallerCredential::ClientCertificate { dns_name } => {
                format!("a client certificate for {dns_name}")
            }
            CallerCredential::SpiffeId(id) => format!("a client certificate for {id}"),
            CallerCredential::TokenSubject(subject) => format!("a token for subject {subject}"),
        };
        let may = caller.may;
        let rights: Vec<&str> = [
            (may.any_subject, "any_subject"),
            (may.search, "search"),
            (may.explain, "explain"),
            (may.sign, "sign"),
            (may.write_grants, "write_grants"),
            (may.console, "console"),
        ]
        .into_iter()
        .filter_map(|(yes, name)| yes.then_some(name))
        .collect();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            Esc(&caller.name),
            Esc(&credential),
            Esc(&rights.join(", "))
        );
    }
    out.push_str("</tbody></table>");
    Html(page(
        "The policy as served",
        Tab::Policy,
        viewer.name(),
        &out,
    ))
    .into_response()
}
