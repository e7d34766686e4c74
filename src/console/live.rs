//! Live decisions: the decision log's lines as they are written, through
//! the log's tap, filtered in the console's own task (never on the check
//! path) and sent as server-sent events; and the count of every decision
//! per reason over the last minutes, from the decision counters.
//!
//! Nothing is shown that the log does not hold: each event is a log line
//! as written. Lines are read leniently (only the five fields filtered on,
//! the rest passed over unread), so fields added to the log later need no
//! change here. A browser that reads too
//! slowly loses lines (told as a `lagged` event); a check never waits.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::access::Viewer;
use super::html::{page, Esc, Tab};
use super::ConsoleState;
use crate::decision_log::TAP_CAPACITY;

/// Minutes the per-reason counts cover.
pub(crate) const COUNT_MINUTES: u64 = 10;

/// Event streams served at once; more are refused (503).
pub(crate) const MAX_STREAMS: usize = 16;

/// Decisions by (decision, reason).
type Counts = BTreeMap<(String, String), u64>;

/// How often the per-reason counts read the decision counters.
const COUNT_EVERY: Duration = Duration::from_secs(10);

/// Every decision per reason over the last [`COUNT_MINUTES`]: the totals
/// of `portcullis_checks_total` (every entry point, every decision, not
/// only the logged ones) read every [`COUNT_EVERY`], one reading kept per
/// minute; the counts are the latest reading less the oldest one in the
/// window. Nothing is added to the check path, and nothing runs on a
/// decision while no one looks.
#[derive(Debug, Default)]
pub(crate) struct ReasonCounts {
    readings: Mutex<VecDeque<(u64, Counts)>>,
}

impl ReasonCounts {
    /// Keeps `totals` (counters since the start) as read in `minute`.
    pub fn read(&self, minute: u64, totals: Counts) {
        let Ok(mut readings) = self.readings.lock() else {
            return;
        };
        // The first reading of a minute stays its minute's baseline; the
        // latest is always kept last.
        if readings.len() >= 2 && readings.back().is_some_and(|(m, _)| *m == minute) {
            readings.pop_back();
        }
        readings.push_back((minute, totals));
        while readings
            .front()
            .is_some_and(|(m, _)| *m + COUNT_MINUTES < minute)
        {
            readings.pop_front();
        }
    }

    /// (decision, reason) → decisions between the oldest reading of the
    /// window and the latest.
    pub fn totals(&self) -> Counts {
        let Ok(readings) = self.readings.lock() else {
            return Counts::new();
        };
        let (Some((_, first)), Some((_, last))) = (readings.front(), readings.back()) else {
            return Counts::new();
        };
        last.iter()
            .map(|(key, n)| {
                (
                    key.clone(),
                    n.saturating_sub(first.get(key).copied().unwrap_or(0)),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// The totals of `portcullis_checks_total` by (decision, reason), read
/// from the metrics as Prometheus would scrape them.
pub(crate) fn decision_totals(exposition: &str) -> Counts {
    let mut totals = Counts::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("portcullis_checks_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix("=\""))
                .and_then(|v| v.strip_suffix('"'))
                .map(str::to_owned)
        };
        let (Some(decision), Some(reason), Ok(n)) = (
            label("decision"),
            label("reason"),
            value.trim().parse::<f64>(),
        ) else {
            continue;
        };
        *totals.entry((decision, reason)).or_default() += n as u64;
    }
    totals
}

/// Reads the decision counters into `counts` every [`COUNT_EVERY`], until
/// aborted.
pub(crate) async fn count_reasons(
    metrics: Arc<crate::metrics::Metrics>,
    counts: Arc<ReasonCounts>,
) {
    let mut ticks = tokio::time::interval(COUNT_EVERY);
    loop {
        ticks.tick().await;
        let totals = decision_totals(&metrics.render());
        counts.read(crate::pdp::unix_now() / 60, totals);
    }
}

/// What the live view filters on, read from a log line without building
/// the rest of it (other fields, and fields added to the log later, are
/// passed over unread); a field absent or not text is "".
#[derive(Debug, Default, Deserialize)]
pub(crate) struct LineFields<'a> {
    #[serde(borrow, default)]
    fields: Shown<'a>,
}

#[derive(Debug, Default, Deserialize)]
struct Shown<'a> {
    #[serde(borrow, default, deserialize_with = "text")]
    application: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "text")]
    decision: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "text")]
    reason: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "text")]
    subject: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "text")]
    route: Cow<'a, str>,
}

/// Text, or "" for anything else (null, a number).
fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Cow<'de, str>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text<'a> {
        Text(#[serde(borrow)] Cow<'a, str>),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Text::deserialize(d)? {
        Text::Text(text) => text,
        Text::Other(_) => Cow::Borrowed(""),
    })
}

impl<'a> LineFields<'a> {
    pub fn read(line: &'a [u8]) -> Option<Self> {
        serde_json::from_slice(line).ok()
    }
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
    pub fn keeps(&self, line: &LineFields<'_>) -> bool {
        let line = &line.fields;
        let exact = |want: &str, got: &str| want.is_empty() || got == want;
        let part = |want: &str, got: &str| want.is_empty() || got.contains(want);
        exact(self.application.trim(), &line.application)
            && exact(self.decision.trim(), &line.decision)
            && exact(self.reason.trim(), &line.reason)
            && part(self.subject.trim(), &line.subject)
            && part(self.route.trim(), &line.route)
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
    let totals = state.counts.totals();
    let _ = write!(
        body,
        "<h2>Decisions per reason, last {COUNT_MINUTES} minutes (every decision, from the counters)</h2>"
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
    if let Some(shadow) = &state.shadow {
        shadow_section(&mut body, &shadow.summary());
    }
    body.push_str("<script src=\"/static/live.js\"></script>");
    Html(page("Live decisions", Tab::Live, viewer.name(), &body)).into_response()
}

/// What the shadow policy (`--shadow-policies`) would have answered
/// differently: counts by application and direction, checks it could not
/// keep up with, and the latest disagreements. Every value is escaped.
fn shadow_section(body: &mut String, summary: &crate::shadow::ShadowSummary) {
    let _ = write!(
        body,
        "<h2>Shadow policy {}: disagreements with the served answers</h2>\
<p class=\"note\" id=\"shadow-totals\">{} checks decided by the shadow policy, {} not shadowed (its worker was behind); the served answers never change.</p>",
        Esc(&summary.version),
        summary.decided,
        summary.dropped
    );
    if summary.disagreements.is_empty() {
        body.push_str("<p id=\"shadow-counts\">No disagreement yet.</p>");
        return;
    }
    body.push_str("<table id=\"shadow-counts\"><thead><tr><th>application</th><th>served</th><th>shadow</th><th>count</th></tr></thead><tbody>");
    for count in &summary.disagreements {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            Esc(&count.application),
            Esc(count.from),
            Esc(count.to),
            count.count
        );
    }
    body.push_str("</tbody></table><table id=\"shadow-recent\"><thead><tr><th>application</th><th>route</th><th>request id</th><th>served</th><th>shadow</th><th>shadow's rule</th></tr></thead><tbody>");
    for d in summary.recent.iter().rev() {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} ({})</td><td>{} ({})</td><td>{}</td></tr>",
            Esc(&d.application),
            Esc(&d.route),
            Esc(&d.request_id),
            Esc(d.from),
            Esc(d.served_reason),
            Esc(d.to),
            Esc(d.candidate_reason),
            Esc(&d.candidate_rule)
        );
    }
    body.push_str("</tbody></table>");
}

/// How often a stream takes what the tap holds: a live view is at most
/// this late, and the checks that write the lines never wake its task.
const DRAIN_EVERY: Duration = Duration::from_millis(25);

/// How long a stream may stay silent before it sends a comment, so
/// proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The event stream: log lines that pass `filters`, as `decision` events.
///
/// The stream's task wakes every [`DRAIN_EVERY`], never on a line: a task
/// waiting on the tap would be woken by each check that logs, a cross-
/// thread wake-up per line. It filters what the tap holds then and writes
/// it to the browser as one chunk of events.
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
    let (send, receive) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let _permit = permit;
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // None: nothing written yet, so a comment goes first.
        let mut last_write: Option<Instant> = None;
        loop {
            tokio::select! {
                () = send.closed() => return,
                _ = drain.tick() => {}
            }
            let mut chunk = Vec::new();
            let mut closed = false;
            // Bounded: the tap holds at most its capacity, plus one
            // `lagged` notice.
            for _ in 0..=TAP_CAPACITY {
                match tap.try_recv() {
                    Ok(line) => {
                        if LineFields::read(&line).is_some_and(|fields| filters.keeps(&fields)) {
                            write_event(&mut chunk, "decision", line.trim_ascii_end());
                        }
                    }
                    Err(TryRecvError::Lagged(n)) => {
                        write_event(&mut chunk, "lagged", n.to_string().as_bytes());
                    }
                    Err(TryRecvError::Closed) => {
                        closed = true;
                        break;
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            if chunk.is_empty() && last_write.is_none_or(|at| at.elapsed() >= KEEP_ALIVE) {
                // An SSE comment: the stream is alive.
                chunk.extend_from_slice(b":\n\n");
            }
            if !chunk.is_empty() {
                // A slow browser waits here, in this task only; meanwhile
                // the tap drops its lines for this receiver.
                if send.send(Bytes::from(chunk)).await.is_err() {
                    return;
                }
                last_write = Some(Instant::now());
            }
            if closed {
                return;
            }
        }
    });
    let chunks = ReceiverStream::new(receive).map(Ok::<_, Infallible>);
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(chunks),
    )
        .into_response()
}

/// Appends one server-sent event. `data` is one line: a log line is one
/// line of JSON, whose strings escape line breaks; anything else that
/// holds one is left out rather than split.
fn write_event(chunk: &mut Vec<u8>, event: &str, data: &[u8]) {
    if data.contains(&b'\n') || data.contains(&b'\r') {
        return;
    }
    chunk.extend_from_slice(b"event: ");
    chunk.extend_from_slice(event.as_bytes());
    chunk.extend_from_slice(b"\ndata: ");
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_line_of_data_or_nothing() {
        let mut chunk = Vec::new();
        write_event(&mut chunk, "decision", br#"{"a":"b\nc"}"#);
        write_event(&mut chunk, "lagged", b"7");
        assert_eq!(
            chunk,
            b"event: decision\ndata: {\"a\":\"b\\nc\"}\n\nevent: lagged\ndata: 7\n\n"
        );
        // A raw line break would end the event early and forge another.
        let before = chunk.len();
        write_event(&mut chunk, "decision", b"x\n\nevent: forged\ndata: y");
        write_event(&mut chunk, "decision", b"x\rdata: y");
        assert_eq!(chunk.len(), before);
    }

    #[test]
    fn counts_are_the_counters_growth_over_the_last_minutes() {
        let key = |d: &str, r: &str| (d.to_owned(), r.to_owned());
        let reading = |pairs: &[(&str, &str, u64)]| -> Counts {
            pairs.iter().map(|(d, r, n)| (key(d, r), *n)).collect()
        };
        let counts = ReasonCounts::default();
        assert!(counts.totals().is_empty());
        // Counters already at 5 when the console starts: not counted.
        counts.read(100, reading(&[("deny", "no_grant", 5)]));
        counts.read(100, reading(&[("deny", "no_grant", 7)]));
        counts.read(
            103,
            reading(&[("deny", "no_grant", 9), ("allow", "granted", 4)]),
        );
        let totals = counts.totals();
        assert_eq!(totals.get(&key("deny", "no_grant")), Some(&4));
        assert_eq!(totals.get(&key("allow", "granted")), Some(&4));
        // Past the window, minute 100's baseline is dropped for minute 103's.
        counts.read(
            100 + COUNT_MINUTES + 2,
            reading(&[("deny", "no_grant", 10), ("allow", "granted", 4)]),
        );
        let totals = counts.totals();
        assert_eq!(totals.get(&key("deny", "no_grant")), Some(&1));
        assert_eq!(totals.get(&key("allow", "granted")), None);
    }

    #[test]
    fn totals_are_read_from_the_exposition() {
        let metrics = crate::metrics::Metrics::new(Vec::new());
        let text = "# HELP portcullis_checks_total Decisions.\n\
            portcullis_checks_total{entry=\"ext_authz\",application=\"documents\",decision=\"deny\",reason=\"no_grant\"} 3\n\
            portcullis_checks_total{entry=\"authzen\",application=\"a,b\",decision=\"deny\",reason=\"no_grant\"} 2\n\
            portcullis_checks_total{entry=\"ext_authz\",application=\"documents\",decision=\"allow\",reason=\"granted\"} 5\n\
            portcullis_check_duration_seconds_count 10\n";
        let totals = decision_totals(text);
        assert_eq!(
            totals.get(&("deny".to_owned(), "no_grant".to_owned())),
            Some(&5)
        );
        assert_eq!(
            totals.get(&("allow".to_owned(), "granted".to_owned())),
            Some(&5)
        );
        assert_eq!(totals.len(), 2);
        // The service's own exposition parses too (no decision yet: empty).
        assert!(decision_totals(&metrics.render()).is_empty());
    }

    #[test]
    fn filters_read_lines_leniently() {
        let line = serde_json::json!({
            "timestamp": "t",
            "fields": {"application": "documents", "decision": "deny", "reason": "no_grant",
                       "subject": "alice", "route": "read-document", "new_field": [1, 2]},
        });
        let text = line.to_string();
        let fields = LineFields::read(text.as_bytes()).unwrap_or_default();
        let keep = |f: Filters| f.keeps(&fields);
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
        // Escaped text, a null subject, a number: read, never a skipped line.
        let odd = r#"{"fields":{"decision":"deny","reason":"no_\u0067rant","subject":null,"route":7,"request":{"method":"GET"}}}"#;
        let fields = LineFields::read(odd.as_bytes()).unwrap_or_default();
        assert!(Filters {
            reason: "no_grant".into(),
            ..Filters::default()
        }
        .keeps(&fields));
        assert!(!Filters {
            subject: "a".into(),
            ..Filters::default()
        }
        .keeps(&fields));
        assert!(LineFields::read(b"not json").is_none());
    }
}
