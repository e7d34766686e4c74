//! Live decisions: the decision log's lines as they are written, through
//! the log's tap, filtered in the console's own task (never on the check
//! path) and sent as server-sent events; and the count of logged decisions
//! per reason over the last minutes.
//!
//! Nothing is shown that the log does not hold: each event is a log line
//! as written. Lines are read leniently (`serde_json::Value`), so fields
//! added to the log later need no change here. A browser that reads too
//! slowly loses lines (told as a `lagged` event); a check never waits.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::access::Viewer;
use super::html::{page, Esc, Tab};
use super::ConsoleState;

/// Minutes the per-reason counts cover.
pub(crate) const COUNT_MINUTES: u64 = 10;

/// Event streams served at once; more are refused (503).
pub(crate) const MAX_STREAMS: usize = 16;

/// Logged decisions by (decision, reason).
type Counts = BTreeMap<(String, String), u64>;

/// Logged decisions per minute and reason, for the last [`COUNT_MINUTES`].
#[derive(Debug, Default)]
pub(crate) struct ReasonCounts {
    minutes: Mutex<VecDeque<(u64, Counts)>>,
}

impl ReasonCounts {
    /// Counts one line (its `decision` and `reason`) in minute `minute`.
    pub fn count(&self, minute: u64, decision: &str, reason: &str) {
        let Ok(mut minutes) = self.minutes.lock() else {
            return;
        };
        if minutes.back().is_none_or(|(m, _)| *m != minute) {
            minutes.push_back((minute, BTreeMap::new()));
        }
        while minutes
            .front()
            .is_some_and(|(m, _)| *m + COUNT_MINUTES <= minute)
        {
            minutes.pop_front();
        }
        if let Some((_, counts)) = minutes.back_mut() {
            *counts
                .entry((decision.to_owned(), reason.to_owned()))
                .or_default() += 1;
        }
    }

    /// (decision, reason) → count over the minutes up to `minute`.
    pub fn totals(&self, minute: u64) -> Counts {
        let mut out = BTreeMap::new();
        if let Ok(minutes) = self.minutes.lock() {
            for (m, counts) in minutes.iter() {
                if *m + COUNT_MINUTES > minute {
                    for (key, n) in counts {
                        *out.entry(key.clone()).or_default() += n;
                    }
                }
            }
        }
        out
    }
}

/// Feeds `counts` from the decision log's tap until the tap closes.
pub(crate) async fn count_reasons(
    mut tap: broadcast::Receiver<Arc<[u8]>>,
    counts: Arc<ReasonCounts>,
) {
    loop {
        let line = match tap.recv().await {
            Ok(line) => line,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Ok(value) = serde_json::from_slice::<Value>(&line) else {
            continue;
        };
        let minute = crate::pdp::unix_now() / 60;
        counts.count(minute, field(&value, "decision"), field(&value, "reason"));
    }
}

/// A field of a log line, under `fields` (as every line has it) or at the
/// top; text, or a number written as text; "" when absent.
fn field<'v>(line: &'v Value, name: &str) -> &'v str {
    line.get("fields")
        .and_then(|f| f.get(name))
        .or_else(|| line.get(name))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The live view's filters: each, when given, must match (`decision`,
/// `reason`, `application` exactly; `subject` and `route` as a part).
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct Filters {
    #[serde(default)]
    pub application: String,
    #[serde(default)]
    pub decision: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub route: String,
}

impl Filters {
    pub fn keeps(&self, line: &Value) -> bool {
        let exact = |want: &str, name: &str| want.is_empty() || field(line, name) == want;
        let part = |want: &str, name: &str| want.is_empty() || field(line, name).contains(want);
        exact(self.application.trim(), "application")
            && exact(self.decision.trim(), "decision")
            && exact(self.reason.trim(), "reason")
            && part(self.subject.trim(), "subject")
            && part(self.route.trim(), "route")
    }
}

pub(crate) async fn live_page(
    State(state): State<ConsoleState>,
    Extension(viewer): Extension<Viewer>,
    Query(filters): Query<Filters>,
) -> Response {
    let mut body = String::new();
    let policy = state.pdp.policy();
    let _ = write!(
        body,
        "<p class=\"note\">Every decision the decision log writes, as it is written: denies always, allows as sampled by <code>--log-allow-rate</code>. Filters apply on the server.</p>\
<form class=\"filters\" method=\"get\" action=\"/live\">"
    );
    let mut apps: Vec<&str> = policy.applications.iter().map(|a| &*a.name).collect();
    apps.sort_unstable();
    let _ = write!(
        body,
        "<label for=\"application\">Application</label><select id=\"application\" name=\"application\"><option value=\"\">any</option>"
    );
    for app in apps {
        let selected = if filters.application == app {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            body,
            "<option value=\"{}\"{selected}>{}</option>",
            Esc(app),
            Esc(app)
        );
    }
    body.push_str("</select>");
    let _ = write!(
        body,
        "<label for=\"decision\">Decision</label><select id=\"decision\" name=\"decision\">"
    );
    for (value, label) in [("", "any"), ("allow", "allow"), ("deny", "deny")] {
        let selected = if filters.decision == value {
            " selected"
        } else {
            ""
        };
        let _ = write!(body, "<option value=\"{value}\"{selected}>{label}</option>");
    }
    body.push_str("</select>");
    for (name, label, value) in [
        ("reason", "Reason", &filters.reason),
        ("subject", "Subject", &filters.subject),
        ("route", "Route", &filters.route),
    ] {
        body.push_str(&super::html::input(name, label, value, "text"));
    }
    body.push_str("<button type=\"submit\">Filter</button></form>");
    body.push_str(
        "<p><button type=\"button\" id=\"pause\" aria-pressed=\"false\" hidden>Pause</button> \
<span id=\"status\" role=\"status\">waiting for the stream</span> <span id=\"dropped\"></span></p>\
<noscript><p class=\"note\">The live stream needs JavaScript; the counts below are the server's. Explain and the other pages work without it.</p></noscript>\
<table><thead><tr><th>decision</th><th>status</th><th>time</th><th>application</th><th>route</th><th>subject</th><th>request or resource</th><th>action</th><th>reason</th><th>rule or why</th><th></th></tr></thead>\
<tbody id=\"events\"></tbody></table>",
    );
    let totals = state.counts.totals(crate::pdp::unix_now() / 60);
    let _ = write!(
        body,
        "<h2>Logged decisions per reason, last {COUNT_MINUTES} minutes</h2>"
    );
    if totals.is_empty() {
        body.push_str("<p id=\"counts\">None yet.</p>");
    } else {
        body.push_str("<table id=\"counts\"><thead><tr><th>decision</th><th>reason</th><th>count</th></tr></thead><tbody>");
        for ((decision, reason), n) in &totals {
            let _ = write!(
                body,
                "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{n}</td></tr>",
                if decision == "allow" { "allow" } else { "deny" },
                Esc(decision),
                Esc(reason)
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("<script src=\"/static/live.js\"></script>");
    Html(page("Live decisions", Tab::Live, viewer.name(), &body)).into_response()
}

/// The event stream: log lines that pass `filters`, as `decision` events.
pub(crate) async fn events(
    State(state): State<ConsoleState>,
    Query(filters): Query<Filters>,
) -> Response {
    let Some(log) = state.pdp.decision_log() else {
        return (
            axum::http::StatusCode::NOT_FOUND,
            "this server writes no decision log",
        )
            .into_response();
    };
    let Ok(permit) = state.streams.clone().try_acquire_owned() else {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too many live views are open",
        )
            .into_response();
    };
    let mut tap = log.tap();
    let (send, receive) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let _permit = permit;
        loop {
            let line = tokio::select! {
                () = send.closed() => return,
                line = tap.recv() => line,
            };
            let event = match line {
                Ok(line) => {
                    let Ok(value) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    if !filters.keeps(&value) {
                        continue;
                    }
                    let text = String::from_utf8_lossy(&line);
                    Event::default().event("decision").data(text.trim_end())
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    Event::default().event("lagged").data(n.to_string())
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            // A slow browser waits here, in this task only; meanwhile the
            // tap drops its lines for this receiver.
            if send.send(event).await.is_err() {
                return;
            }
        }
    });
    let stream = ReceiverStream::new(receive).map(Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cover_the_last_minutes_only() {
        let counts = ReasonCounts::default();
        counts.count(100, "deny", "no_grant");
        counts.count(100, "deny", "no_grant");
        counts.count(105, "allow", "granted");
        let key = |d: &str, r: &str| (d.to_owned(), r.to_owned());
        let totals = counts.totals(105);
        assert_eq!(totals.get(&key("deny", "no_grant")), Some(&2));
        assert_eq!(totals.get(&key("allow", "granted")), Some(&1));
        let later = counts.totals(100 + COUNT_MINUTES);
        assert_eq!(later.get(&key("deny", "no_grant")), None);
        counts.count(100 + COUNT_MINUTES + 1, "deny", "x");
        assert_eq!(counts.totals(100 + COUNT_MINUTES + 1).len(), 2);
    }

    #[test]
    fn filters_read_lines_leniently() {
        let line: Value = serde_json::json!({
            "timestamp": "t",
            "fields": {"application": "documents", "decision": "deny", "reason": "no_grant",
                       "subject": "alice", "route": "read-document", "new_field": [1, 2]},
        });
        let keep = |f: Filters| f.keeps(&line);
        assert!(keep(Filters::default()));
        assert!(keep(Filters {
            decision: "deny".into(),
            subject: "ali".into(),
            ..Filters::default()
        }));
        assert!(!keep(Filters {
            decision: "allow".into(),
            ..Filters::default()
        }));
        assert!(!keep(Filters {
            application: "docs".into(),
            ..Filters::default()
        }));
        assert!(keep(Filters {
            route: "document".into(),
            ..Filters::default()
        }));
    }
}
