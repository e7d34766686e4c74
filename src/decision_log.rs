//! The decision log: one JSON line per logged decision, on the `decision`
//! target, queued to stderr through [`LogLines`] so a check never waits on
//! a write.
//!
//! Denies are always logged; allows are sampled (`--log-allow-rate`, one
//! in a hundred by default). The line is serialized here, straight from
//! the decision's borrowed fields, in the shape `tracing`'s JSON formatter
//! gives every other line (`timestamp`, `level`, `fields`, `target`), so
//! one parser reads the whole stream. Tokens are never part of a decision,
//! so they cannot reach the log.
//!
//! An HTTP check's line also carries what `portcullis replay` needs to
//! decide it again against another policy, and no more ([`Replayable`],
//! the `request` object): the method, the normalized path (no query), the
//! Host, the destination principal, the context extensions, the headers
//! the served policy's conditions read, how the caller authenticated, and
//! the verified principal's issuer, token groups and the claims the served
//! policy's conditions read (kept only when one reads them). Never a token.
//! Allows are sampled, so a replay sees every deny but only a sample of
//! allows.
//!
//! A tap ([`DecisionLog::tap`]) hands the same lines, as written, to the
//! console's live view: only while a subscriber is attached, through a
//! bounded broadcast channel whose slow readers lose lines, so a check
//! never waits for a browser.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};
use tokio::sync::broadcast;

use crate::engine::{Credential, Decision, Reason, RequestAttrs, RuleText, Unmatched};
use crate::logging::LogLines;
use crate::path;

/// The allow sampling rate a new `serve` has: every deny, one allow in a
/// hundred. Metrics count every decision; the log is for reading.
pub const DEFAULT_ALLOW_RATE: f64 = 0.01;

/// Writes decision lines to a [`LogLines`] queue.
#[derive(Debug)]
pub struct DecisionLog {
    /// Log one allow in this many; 0 logs none.
    allow_every: u64,
    allows: AtomicU64,
    lines: LogLines,
    /// Every line written, for the console's live view.
    tap: broadcast::Sender<Arc<[u8]>>,
}

/// Lines the tap holds for its slowest subscriber; past it, that
/// subscriber loses the oldest (and is told how many). The console takes
/// them every 25 ms: this holds that long at 80k logged lines a second.
pub const TAP_CAPACITY: usize = 2048;

impl DecisionLog {
    /// `rate` is the fraction of allows logged, clamped to 0.0..=1.0.
    pub fn new(rate: f64, lines: LogLines) -> Self {
        Self {
            allow_every: allow_interval(rate),
            allows: AtomicU64::new(0),
            lines,
            tap: broadcast::Sender::new(TAP_CAPACITY),
        }
    }

    /// Every line this log writes from now on (the serialized JSON, with
    /// its newline), for as long as the receiver lives. A receiver that
    /// falls [`TAP_CAPACITY`] lines behind loses the oldest; the writer
    /// never waits.
    pub fn tap(&self) -> broadcast::Receiver<Arc<[u8]>> {
        self.tap.subscribe()
    }

    fn should_log(&self, decision: &Decision) -> bool {
        if !decision.is_allowed() {
            return true;
        }
        self.allow_every != 0
            && self
                .allows
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(self.allow_every)
    }

    /// True for a deny that no application or route took (a 403
    /// `no_route` or `no_application`, or the 401 such a request gets
    /// without a valid token): its log line carries the method, the
    /// normalized path and an explanation. Every decision past route
    /// matching names its route; bad paths and Hosts have nothing to match.
    pub(crate) fn explains(decision: &Decision) -> bool {
        !decision.is_allowed()
            && decision.route.is_none()
            && !matches!(
                decision.reason,
                Reason::BadPath(_)
                    | Reason::BadHost
                    | Reason::InternalError
                    | Reason::ConnectionDenied
            )
    }

    /// Queues the line for `decision` when it is to be logged (sampling,
    /// and `PORTCULLIS_LOG` enabling the `decision` target at `info`).
    /// `unmatched` (a deny no route took) adds `method`, `path`
    /// (normalized, no query, bounded) and `why`, and leaves out
    /// `resource` and `action`.
    pub fn record(
        &self,
        decision: &Decision,
        request_id: Option<&str>,
        version: &str,
        elapsed: Duration,
        unmatched: Option<&Unmatched>,
    ) {
        self.record_replayable(decision, request_id, version, elapsed, unmatched, None);
    }

    /// [`Self::record`], with what a replay needs of the request
    /// (`replayable`): the line's `entry` and `request` fields.
    pub fn record_replayable(
        &self,
        decision: &Decision,
        request_id: Option<&str>,
        version: &str,
        elapsed: Duration,
        unmatched: Option<&Unmatched>,
        replayable: Option<Replayable<'_>>,
    ) {
        if !tracing::enabled!(target: "decision", tracing::Level::INFO)
            || !self.should_log(decision)
        {
            return;
        }
        fn field<T: std::ops::Deref<Target = str>>(value: &Option<T>) -> &str {
            value.as_deref().unwrap_or_default()
        }
        let (resource, action) = match unmatched {
            Some(_) => (None, None),
            None => (
                Some(field(&decision.resource)),
                Some(field(&decision.action)),
            ),
        };
        let line = Line {
            timestamp: Shown(humantime::format_rfc3339_micros(SystemTime::now())),
            level: "INFO",
            fields: Fields {
                request_id: request_id.unwrap_or_default(),
                application: field(&decision.application),
                route: field(&decision.route),
                subject: field(&decision.subject),
                resource,
                action,
                method: unmatched.map(|u| u.method.as_str()),
                path: unmatched.map(|u| u.path.as_str()),
                why: unmatched.map(|u| u.explanation.as_str()),
                decision: decision.outcome(),
                status: decision.status_code(),
                reason: decision.reason.code(),
                detail: Shown(&decision.reason),
                rule: Shown(Blank(decision.rule())),
                policy_version: version,
                latency_us: elapsed.as_micros() as u64,
                entry: replayable.as_ref().map(|r| r.entry),
                request: replayable
                    .as_ref()
                    .and_then(|r| Some((r.http?, r.claims)))
                    .map(|(attrs, claims)| RequestFields::new(attrs, decision, claims)),
            },
            target: "decision",
        };
        let mut bytes = Vec::with_capacity(512);
        if serde_json::to_writer(&mut bytes, &line).is_ok() {
            bytes.push(b'\n');
            // One copy, and only while the console watches.
            if self.tap.receiver_count() > 0 {
                let _ = self.tap.send(Arc::from(bytes.as_slice()));
            }
            self.lines.write_line(bytes);
        }
    }
}

/// `rate` as "one in this many"; 0 for none.
fn allow_interval(rate: f64) -> u64 {
    let rate = rate.clamp(0.0, 1.0);
    if rate == 0.0 {
        0
    } else {
        (1.0 / rate).round() as u64
    }
}

#[derive(Serialize)]
struct Line<'a> {
    timestamp: Shown<humantime::Rfc3339Timestamp>,
    level: &'static str,
    fields: Fields<'a>,
    target: &'static str,
}

#[derive(Serialize)]
struct Fields<'a> {
    request_id: &'a str,
    application: &'a str,
    route: &'a str,
    subject: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<&'a str>,
    decision: &'static str,
    status: u16,
    reason: &'static str,
    detail: Shown<&'a Reason>,
    rule: Shown<Blank<RuleText<'a>>>,
    policy_version: &'a str,
    latency_us: u64,
    /// The door the decision came through (`ext_authz`, `authzen`,
    /// `events`); absent from lines logged before replay fields existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    entry: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<RequestFields<'a>>,
}

/// What a decision log line needs beyond the decision to be replayed.
#[derive(Debug, Clone, Copy)]
pub struct Replayable<'a> {
    /// The entry point's label ([`crate::pdp::Entry::label`]).
    pub entry: &'static str,
    /// The HTTP request decided; `None` for other forms (not replayable).
    pub http: Option<&'a RequestAttrs<'a>>,
    /// The claims the policy's conditions read
    /// ([`crate::policy::PolicySet::condition_claims`]): only these of the
    /// principal's claims are logged; `None`, all it kept.
    pub claims: Option<&'a [String]>,
}

/// How the caller of a logged HTTP check authenticated, for replay.
pub mod credential {
    /// No Authorization header and no payload verified by jwt_authn.
    pub const ABSENT: &str = "absent";
    /// A bearer token (verified when the line has a `principal`).
    pub const BEARER: &str = "bearer";
    /// A payload Envoy's jwt_authn filter verified.
    pub const JWT_AUTHN: &str = "jwt_authn";
    /// An Authorization header refused outright (`reason` says how).
    pub const INVALID: &str = "invalid";
}

/// Longest Host and method a line records; a longer one (no real client
/// sends one) leaves both out and marks the request `oversized`, so a line
/// stays small whatever a client sends.
const MAX_LOGGED_HOST: usize = 1024;
const MAX_LOGGED_METHOD: usize = 64;

/// The `request` object of an HTTP check's line: everything the engine
/// reads of the request, but the token.
#[derive(Serialize)]
struct RequestFields<'a> {
    /// The Host or the method was too long to log: replay reports the line
    /// as one it cannot replay.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    oversized: bool,
    method: &'a str,
    /// Normalized, without the query; absent for a path the normalizer
    /// refuses (a bad path is refused by every policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    host: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    destination: &'a str,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    context_extensions:
        &'a std::collections::BTreeMap<std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    headers: &'a std::collections::BTreeMap<std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>>,
    credential: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<PrincipalFields<'a>>,
}

/// The verified principal: issuer, token groups (the policy's are the
/// policy's, added again by whichever policy replays) and, of the claims
/// it kept, those a condition of the served policy reads (by name, when
/// every read names its claim).
#[derive(Serialize)]
struct PrincipalFields<'a> {
    issuer: &'a str,
    subject: &'a str,
    groups: &'a [String],
    #[serde(skip_serializing_if = "ClaimsRead::is_empty")]
    claims: ClaimsRead<'a>,
}

/// The principal's claims that the policy's conditions read.
struct ClaimsRead<'a> {
    claims: &'a serde_json::Map<String, serde_json::Value>,
    /// `None`: every claim kept may be read.
    names: Option<&'a [String]>,
}

impl ClaimsRead<'_> {
    fn read(&self) -> impl Iterator<Item = (&String, &serde_json::Value)> {
        self.claims
            .iter()
            .filter(|(name, _)| self.names.is_none_or(|names| names.contains(name)))
    }

    fn is_empty(&self) -> bool {
        self.read().next().is_none()
    }
}

impl Serialize for ClaimsRead<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.read())
    }
}

impl<'a> RequestFields<'a> {
    fn new(
        attrs: &'a RequestAttrs<'a>,
        decision: &'a Decision,
        claims: Option<&'a [String]>,
    ) -> Self {
        let credential = if attrs.verified_payloads.is_empty() {
            match &attrs.credential {
                Credential::Absent => credential::ABSENT,
                Credential::Bearer(_) => credential::BEARER,
                Credential::Invalid(_) => credential::INVALID,
            }
        } else {
            credential::JWT_AUTHN
        };
        let oversized =
            attrs.host.len() > MAX_LOGGED_HOST || attrs.method.len() > MAX_LOGGED_METHOD;
        let bounded = |text: &'a str| if oversized { "" } else { text };
        RequestFields {
            oversized,
            method: bounded(&attrs.method),
            path: path::normalize(&attrs.path)
                .ok()
                .map(|p| p.as_str().to_owned()),
            host: bounded(&attrs.host),
            destination: &attrs.destination,
            context_extensions: &attrs.context_extensions,
            headers: &attrs.headers,
            credential,
            principal: decision.principal.as_deref().map(|p| PrincipalFields {
                issuer: &p.issuer,
                subject: &p.subject,
                groups: &p.groups,
                claims: ClaimsRead {
                    claims: &p.claims,
                    names: claims,
                },
            }),
        }
    }
}

/// Serializes a value as the string its `Display` writes, without an
/// intermediate `String`.
struct Shown<T>(T);

impl<T: Display> Serialize for Shown<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// Writes the value, or nothing for `None`.
struct Blank<T>(Option<T>);

impl<T: Display> Display for Blank<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::allow_interval;

    #[test]
    fn allow_sampling_rate_becomes_an_interval() {
        assert_eq!(allow_interval(1.0), 1);
        assert_eq!(allow_interval(0.5), 2);
        assert_eq!(allow_interval(0.01), 100);
        assert_eq!(allow_interval(0.0), 0);
        assert_eq!(allow_interval(7.0), 1);
    }
}
