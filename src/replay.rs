//! Replay: the decisions of a decision log decided again against another
//! policy, and what would change.
//!
//! Each line of the log (the JSON of [`crate::decision_log`]) is read back
//! into the [`RequestAttrs`] the engine read, with the verified principal
//! the line recorded taken as already verified (no token, no key: see
//! [`RecordedCaller`]) and the line's timestamp as the time, and decided by
//! the engine's one `decide` over the candidate policy and its file grants.
//! [`Replay`] compares each answer with the recorded one and keeps counts
//! by direction (allow→deny, deny→allow), application, route, reason and
//! rule, with a few examples of each. No file, clock or runtime here:
//! [`replay_lines`] reads what its caller opened, in batches of lines
//! handed to one thread per core, each with its own [`Replay`], merged at
//! the end (the first examples and bad lines by line number, whatever
//! thread saw them).
//!
//! A line that cannot be replayed is never skipped silently: malformed
//! lines (not JSON, or a decision line missing a field) are counted and the
//! first [`MAX_REPORTED_LINES`] named by line number; lines logged before
//! the replay fields existed are counted as such; checks of other forms
//! (AuthZEN, events, TCP connections) are counted as not replayable.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::sync::{mpsc, Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::app::Exit;
use crate::decision_log::credential;
use crate::engine::{
    self, Authenticate, Credential, CredentialError, Decision, MatchedRule, Reason, RequestAttrs,
};
use crate::policy::PolicySet;
use crate::token::{Principal, TokenError};

/// Lines handed to a worker at once.
const BATCH_LINES: usize = 4096;

/// Examples kept for each group of changes.
pub const EXAMPLES_PER_GROUP: usize = 3;

/// Lines named one by one in each list of lines that could not be
/// replayed; every one is counted.
pub const MAX_REPORTED_LINES: usize = 20;

/// The token error replay answers for a bearer token the log did not
/// verify (the recorded route was public, so no token was checked): the
/// candidate cannot be decided for such a request.
const NOT_VERIFIED: TokenError = TokenError::Malformed("not verified when the decision was logged");

/// The effect of a decision, as replay compares them: a dry-run
/// `would_deny` is a deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    pub fn of(decision: &Decision) -> Self {
        if decision.is_allowed() {
            Effect::Allow
        } else {
            Effect::Deny
        }
    }

    fn parse(outcome: &str) -> Option<Self> {
        match outcome {
            "allow" => Some(Effect::Allow),
            "deny" | "would_deny" => Some(Effect::Deny),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

/// What one line came to.
#[derive(Debug)]
pub enum LineOutcome {
    /// Not a decision line (another target of the same stream).
    NotDecision,
    /// A decision line unreadable or missing a field.
    Malformed(String),
    /// A decision line without the replay fields (logged by an older
    /// version of Portcullis).
    BeforeReplayFields,
    /// A decision of another form (`authzen`, `events`, a TCP connection
    /// or an unreadable CheckRequest: `connection_or_unreadable`).
    NotHttp(String),
    /// Decided again.
    Replayed(Box<Replayed>),
}

/// A line decided again: what the log says, and the candidate's answer.
#[derive(Debug)]
pub struct Replayed {
    pub recorded: Recorded,
    pub candidate: Decision,
}

/// What a line recorded of its decision and request (for the report).
#[derive(Debug, Clone)]
pub struct Recorded {
    pub effect: Effect,
    pub status: u16,
    pub application: String,
    pub route: String,
    pub reason: String,
    pub rule: String,
    pub request_id: String,
    pub policy_version: String,
    pub method: String,
    pub path: String,
    pub subject: String,
}

#[derive(Deserialize)]
struct LogLine<'a> {
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    target: Option<Cow<'a, str>>,
    #[serde(borrow)]
    fields: Option<LineFields<'a>>,
}

/// A line's fields; every one optional so that lines of other targets
/// read, and a decision line missing one is reported by name.
#[derive(Deserialize)]
struct LineFields<'a> {
    #[serde(borrow, default)]
    request_id: Cow<'a, str>,
    #[serde(borrow)]
    application: Option<Cow<'a, str>>,
    #[serde(borrow)]
    route: Option<Cow<'a, str>>,
    #[serde(borrow)]
    decision: Option<Cow<'a, str>>,
    status: Option<u16>,
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    detail: Cow<'a, str>,
    #[serde(borrow, default)]
    rule: Cow<'a, str>,
    #[serde(borrow, default)]
    policy_version: Cow<'a, str>,
    #[serde(borrow)]
    entry: Option<Cow<'a, str>>,
    #[serde(borrow)]
    request: Option<RequestLine<'a>>,
}

#[derive(Deserialize)]
struct RequestLine<'a> {
    #[serde(default)]
    oversized: bool,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    path: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    host: Cow<'a, str>,
    #[serde(borrow, default)]
    destination: Cow<'a, str>,
    #[serde(borrow, default)]
    context_extensions: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    #[serde(borrow, default)]
    headers: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    #[serde(borrow)]
    credential: Cow<'a, str>,
    principal: Option<PrincipalLine>,
}

#[derive(Deserialize)]
struct PrincipalLine {
    issuer: String,
    subject: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    claims: Map<String, Value>,
}

/// The caller a line recorded, as an [`Authenticate`]: the verified
/// principal, accepted again where the candidate's application trusts its
/// issuer (by name); the token error the line recorded; or, for a token
/// the log never verified, [`NOT_VERIFIED`].
pub struct RecordedCaller {
    principal: Option<Arc<Principal>>,
    refused: Option<TokenError>,
}

impl RecordedCaller {
    /// A caller the engine already verified: the shadow decision of a
    /// served check.
    pub fn verified(principal: Option<Arc<Principal>>) -> Self {
        Self {
            principal,
            refused: None,
        }
    }

    /// True when `decision` needed a token the log did not verify.
    pub fn unverified(decision: &Decision) -> bool {
        matches!(&decision.reason, Reason::InvalidToken(e) if *e == NOT_VERIFIED)
    }
}

impl Authenticate for RecordedCaller {
    fn authenticate(
        &self,
        policy: &PolicySet,
        allowed_issuers: &[usize],
        _: &str,
        _: u64,
    ) -> Result<Arc<Principal>, TokenError> {
        match (&self.principal, &self.refused) {
            (Some(principal), _) => {
                let trusted = allowed_issuers
                    .iter()
                    .filter_map(|&i| policy.issuers.get(i))
                    .any(|issuer| *issuer.name == *principal.issuer);
                if trusted {
                    Ok(principal.clone())
                } else {
                    Err(TokenError::UnknownIssuer)
                }
            }
            (None, Some(refused)) => Err(refused.clone()),
            (None, None) => Err(NOT_VERIFIED),
        }
    }
}

/// The token error a line recorded by its reason code.
fn token_error(code: &str) -> TokenError {
    match code {
        "token_too_large" => TokenError::TooLarge,
        "token_unknown_issuer" => TokenError::UnknownIssuer,
        "token_algorithm_not_allowed" => TokenError::AlgorithmNotAllowed(String::new()),
        "token_unknown_key" => TokenError::UnknownKey,
        "token_bad_signature" => TokenError::BadSignature,
        "token_wrong_audience" => TokenError::WrongAudience,
        "token_wrong_issuer" => TokenError::WrongIssuer,
        "token_missing_claim" => TokenError::MissingClaim(String::new()),
        "token_expired" => TokenError::Expired,
        "token_not_yet_valid" => TokenError::NotYetValid,
        "token_bad_subject" => TokenError::BadSubject,
        "token_bad_groups" => TokenError::BadGroups,
        _ => TokenError::Malformed("refused when the decision was logged"),
    }
}

/// The credential error a line's `detail` names.
fn credential_error(detail: &str) -> CredentialError {
    [
        CredentialError::Multiple,
        CredentialError::NotBearer,
        CredentialError::Malformed,
    ]
    .into_iter()
    .find(|e| e.to_string() == detail)
    .unwrap_or(CredentialError::Malformed)
}

/// Seconds since the epoch of an RFC 3339 timestamp.
fn unix_seconds(timestamp: &str) -> Option<u64> {
    let time = humantime::parse_rfc3339_weak(timestamp.trim_end_matches('Z')).ok()?;
    time.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Reads one line of a decision log and decides it again against
/// `candidate` (with its file grants).
pub fn replay_line(candidate: &PolicySet, text: &str) -> LineOutcome {
    let line: LogLine<'_> = match serde_json::from_str(text) {
        Ok(line) => line,
        Err(e) => return LineOutcome::Malformed(format!("not a JSON log line: {e}")),
    };
    if line.target.as_deref() != Some("decision") {
        return LineOutcome::NotDecision;
    }
    let Some(fields) = line.fields else {
        return LineOutcome::Malformed("a decision line without `fields`".into());
    };
    let (Some(application), Some(route), Some(decision), Some(status), Some(reason)) = (
        fields.application,
        fields.route,
        fields.decision,
        fields.status,
        fields.reason,
    ) else {
        return LineOutcome::Malformed(
            "a decision line without `application`, `route`, `decision`, `status` or `reason`"
                .into(),
        );
    };
    let Some(effect) = Effect::parse(&decision) else {
        return LineOutcome::Malformed(format!("unknown decision {decision:?}"));
    };
    let Some(entry) = fields.entry.as_deref() else {
        return LineOutcome::BeforeReplayFields;
    };
    let Some(request) = fields.request else {
        return LineOutcome::NotHttp(if entry == "ext_authz" {
            "connection_or_unreadable".into()
        } else {
            entry.to_owned()
        });
    };
    if request.oversized {
        return LineOutcome::Malformed(
            "cannot replay: its Host or method was too long to log".into(),
        );
    }
    let Some(now) = line.timestamp.as_deref().and_then(unix_seconds) else {
        return LineOutcome::Malformed("no readable `timestamp`".into());
    };
    let recorded = Recorded {
        effect,
        status,
        application: application.into_owned(),
        route: route.into_owned(),
        reason: reason.clone().into_owned(),
        rule: fields.rule.into_owned(),
        request_id: fields.request_id.into_owned(),
        policy_version: fields.policy_version.into_owned(),
        method: request.method.to_string(),
        path: request.path.as_deref().unwrap_or_default().to_owned(),
        subject: request
            .principal
            .as_ref()
            .map(|p| p.subject.clone())
            .unwrap_or_default(),
    };
    let Some(path) = request.path else {
        // A path the normalizer refuses is refused by every policy alike.
        let candidate = Decision::deny(
            engine::DenyStatus::BadRequest,
            Reason::BadPath(crate::path::PathError::Empty),
        );
        return LineOutcome::Replayed(Box::new(Replayed {
            recorded,
            candidate,
        }));
    };
    let principal = request.principal.map(|p| {
        Arc::new(Principal {
            issuer: Arc::from(p.issuer),
            subject: Arc::from(p.subject),
            groups: p.groups,
            expires_at: u64::MAX,
            claims: p.claims,
        })
    });
    let (attrs_credential, refused) = match &*request.credential {
        credential::ABSENT => (Credential::Absent, None),
        credential::INVALID => (Credential::Invalid(credential_error(&fields.detail)), None),
        credential::BEARER | credential::JWT_AUTHN => (
            Credential::Bearer(Cow::Borrowed("")),
            // No principal and a token reason: the token was refused.
            (principal.is_none() && reason.starts_with("token_")).then(|| token_error(&reason)),
        ),
        other => {
            return LineOutcome::Malformed(format!("unknown credential {other:?}"));
        }
    };
    let attrs = RequestAttrs {
        method: request.method,
        path,
        host: request.host,
        destination: request.destination,
        context_extensions: request.context_extensions,
        credential: attrs_credential,
        request_id: None,
        verified_payloads: BTreeMap::new(),
        headers: request.headers,
    };
    let caller = RecordedCaller { principal, refused };
    let candidate = decide(candidate, &attrs, &caller, now);
    LineOutcome::Replayed(Box::new(Replayed {
        recorded,
        candidate,
    }))
}

/// The engine's decision with the candidate's file grants; a panic is a
/// deny, as the service makes it.
pub fn decide(
    policy: &PolicySet,
    attrs: &RequestAttrs<'_>,
    caller: &RecordedCaller,
    now: u64,
) -> Decision {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine::decide(
            policy,
            &*policy.grants,
            &engine::Request::Http(attrs),
            caller,
            now,
        )
    }))
    .unwrap_or_else(|_| Decision::deny(engine::DenyStatus::Forbidden, Reason::InternalError))
}

/// Why the candidate cannot decide a request, if it cannot: an
/// application the log names that the candidate lacks, or a token the log
/// never verified.
pub fn undecidable(recorded_application: &str, candidate: &Decision) -> Option<&'static str> {
    if RecordedCaller::unverified(candidate) {
        return Some("token_not_verified_when_logged");
    }
    let no_application = matches!(
        candidate.reason,
        Reason::NoApplication | Reason::AmbiguousApplication
    ) || matches!(
        candidate.matched_rule,
        Some(MatchedRule::Unrouted(
            Reason::NoApplication | Reason::AmbiguousApplication
        ))
    );
    (no_application && !recorded_application.is_empty()).then_some("unknown_application")
}

/// A group of changes: same direction, application, route, reason and
/// rule (the candidate's).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ChangeKey {
    pub from: Effect,
    pub to: Effect,
    pub application: String,
    pub route: String,
    pub reason: String,
    pub rule: String,
}

/// One request of a group, as an example.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub line: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subject: String,
    /// What the log recorded: reason and rule.
    pub was: String,
}

/// A group of changes and its examples.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeGroup {
    #[serde(flatten)]
    pub key: ChangeKey,
    pub count: u64,
    pub examples: Vec<Example>,
}

/// Requests the candidate cannot decide, by why and application.
#[derive(Debug, Clone, Serialize)]
pub struct UndecidedGroup {
    pub why: &'static str,
    pub application: String,
    pub count: u64,
    pub examples: Vec<Example>,
}

/// A line that could not be replayed.
#[derive(Debug, Clone, Serialize)]
pub struct BadLine {
    pub line: u64,
    pub error: String,
}

/// Lines of one kind that could not be replayed: all counted, the first
/// [`MAX_REPORTED_LINES`] named.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BadLines {
    pub count: u64,
    pub first: Vec<BadLine>,
}

impl BadLines {
    fn add(&mut self, line: u64, error: impl FnOnce() -> String) {
        self.count += 1;
        if self.first.len() < MAX_REPORTED_LINES {
            self.first.push(BadLine {
                line,
                error: error(),
            });
        }
    }

    /// Each part keeps its own first lines, so the first of the whole
    /// are among them.
    fn merge(&mut self, other: BadLines) {
        self.count += other.count;
        self.first.extend(other.first);
        self.first.sort_by_key(|bad| bad.line);
        self.first.truncate(MAX_REPORTED_LINES);
    }
}

/// The comparison so far: feed it lines in order with [`Replay::line`],
/// then read the [`Report`].
pub struct Replay<'p> {
    candidate: &'p PolicySet,
    lines: u64,
    replayed: u64,
    unchanged: u64,
    status_changed: u64,
    not_decisions: u64,
    not_http: BTreeMap<String, u64>,
    policy_versions: BTreeMap<String, u64>,
    changes: HashMap<ChangeKey, (u64, Vec<Example>)>,
    undecided: HashMap<(&'static str, String), (u64, Vec<Example>)>,
    malformed: BadLines,
    before_replay_fields: BadLines,
}

impl<'p> Replay<'p> {
    pub fn new(candidate: &'p PolicySet) -> Self {
        Self {
            candidate,
            lines: 0,
            replayed: 0,
            unchanged: 0,
            status_changed: 0,
            not_decisions: 0,
            not_http: BTreeMap::new(),
            policy_versions: BTreeMap::new(),
            changes: HashMap::new(),
            undecided: HashMap::new(),
            malformed: BadLines::default(),
            before_replay_fields: BadLines::default(),
        }
    }

    /// Replays line number `number` (from 1), whose text is `text`.
    pub fn line(&mut self, number: u64, text: &str) {
        self.lines += 1;
        if text.trim().is_empty() {
            return;
        }
        match replay_line(self.candidate, text) {
            LineOutcome::NotDecision => self.not_decisions += 1,
            LineOutcome::Malformed(error) => self.malformed.add(number, || error),
            LineOutcome::BeforeReplayFields => self.before_replay_fields.add(number, || {
                format!("cannot replay (line {number}: logged before replay fields)")
            }),
            LineOutcome::NotHttp(entry) => *self.not_http.entry(entry).or_default() += 1,
            LineOutcome::Replayed(replayed) => self.compare(number, *replayed),
        }
    }

    /// A line that could not be read at all (not UTF-8, an I/O error).
    pub fn unreadable(&mut self, number: u64, error: String) {
        self.lines += 1;
        self.malformed.add(number, || error);
    }

    fn compare(
        &mut self,
        number: u64,
        Replayed {
            recorded,
            candidate,
        }: Replayed,
    ) {
        self.replayed += 1;
        if let Some(count) = self.policy_versions.get_mut(&recorded.policy_version) {
            *count += 1;
        } else {
            self.policy_versions
                .insert(recorded.policy_version.clone(), 1);
        }
        let example = |recorded: &Recorded| Example {
            line: number,
            request_id: recorded.request_id.clone(),
            method: recorded.method.clone(),
            path: recorded.path.clone(),
            subject: recorded.subject.clone(),
            was: if recorded.rule.is_empty() {
                recorded.reason.clone()
            } else {
                format!("{}: {}", recorded.reason, recorded.rule)
            },
        };
        if let Some(why) = undecidable(&recorded.application, &candidate) {
            let group = self
                .undecided
                .entry((why, recorded.application.clone()))
                .or_default();
            group.0 += 1;
            if group.1.len() < EXAMPLES_PER_GROUP {
                group.1.push(example(&recorded));
            }
            return;
        }
        let to = Effect::of(&candidate);
        if to == recorded.effect {
            self.unchanged += 1;
            if candidate.status_code() != recorded.status {
                self.status_changed += 1;
            }
            return;
        }
        let key = ChangeKey {
            from: recorded.effect,
            to,
            application: candidate
                .application
                .as_deref()
                .unwrap_or(&recorded.application)
                .to_owned(),
            route: candidate
                .route
                .as_deref()
                .unwrap_or(&recorded.route)
                .to_owned(),
            reason: candidate.reason.code().to_owned(),
            rule: candidate
                .rule()
                .map(|rule| rule.to_string())
                .unwrap_or_default(),
        };
        let group = self.changes.entry(key).or_default();
        group.0 += 1;
        if group.1.len() < EXAMPLES_PER_GROUP {
            group.1.push(example(&recorded));
        }
    }

    /// Adds what `other` (a later part of the same log) found.
    pub fn merge(&mut self, other: Replay<'_>) {
        self.lines += other.lines;
        self.replayed += other.replayed;
        self.unchanged += other.unchanged;
        self.status_changed += other.status_changed;
        self.not_decisions += other.not_decisions;
        for (entry, count) in other.not_http {
            *self.not_http.entry(entry).or_default() += count;
        }
        for (version, count) in other.policy_versions {
            *self.policy_versions.entry(version).or_default() += count;
        }
        for (key, (count, examples)) in other.changes {
            merge_group(self.changes.entry(key).or_default(), count, examples);
        }
        for (key, (count, examples)) in other.undecided {
            merge_group(self.undecided.entry(key).or_default(), count, examples);
        }
        self.malformed.merge(other.malformed);
        self.before_replay_fields.merge(other.before_replay_fields);
    }

    /// The report: groups ordered by count, largest first.
    pub fn report(self) -> Report {
        let mut changes: Vec<ChangeGroup> = self
            .changes
            .into_iter()
            .map(|(key, (count, examples))| ChangeGroup {
                key,
                count,
                examples,
            })
            .collect();
        changes.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        let mut undecided: Vec<UndecidedGroup> = self
            .undecided
            .into_iter()
            .map(|((why, application), (count, examples))| UndecidedGroup {
                why,
                application,
                count,
                examples,
            })
            .collect();
        undecided.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| (a.why, &a.application).cmp(&(b.why, &b.application)))
        });
        let count = |from: Effect| {
            changes
                .iter()
                .filter(|g| g.key.from == from)
                .map(|g| g.count)
                .sum()
        };
        Report {
            lines: self.lines,
            replayed: self.replayed,
            unchanged: self.unchanged,
            allow_to_deny: count(Effect::Allow),
            deny_to_allow: count(Effect::Deny),
            deny_status_changed: self.status_changed,
            undecided_total: undecided.iter().map(|g| g.count).sum(),
            not_decisions: self.not_decisions,
            not_http: self.not_http,
            policy_versions: self.policy_versions,
            changes,
            undecided,
            malformed: self.malformed,
            before_replay_fields: self.before_replay_fields,
        }
    }
}

/// 3 when a line could not be replayed (whatever else), 1 when a decision
/// changes, 0 otherwise.
pub fn exit_for(report: &Report) -> Exit {
    if report.incomplete() {
        Exit::Incomplete
    } else if report.changed() {
        Exit::Failure
    } else {
        Exit::Ok
    }
}

/// Adds a part's group to the whole's, keeping the earliest examples.
fn merge_group(group: &mut (u64, Vec<Example>), count: u64, examples: Vec<Example>) {
    group.0 += count;
    group.1.extend(examples);
    group.1.sort_by_key(|e| e.line);
    group.1.truncate(EXAMPLES_PER_GROUP);
}

/// What a replay found (`--format json` prints it as is).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Lines read, blank ones included.
    pub lines: u64,
    /// Decision lines decided again.
    pub replayed: u64,
    /// Decided again with the same effect.
    pub unchanged: u64,
    pub allow_to_deny: u64,
    pub deny_to_allow: u64,
    /// Denies still denied, with another status (401 and 403).
    pub deny_status_changed: u64,
    /// Requests the candidate cannot decide.
    pub undecided_total: u64,
    /// Other lines of the stream (not the `decision` target).
    pub not_decisions: u64,
    /// Decisions of other forms, by entry point (`authzen`, `events`,
    /// `connection_or_unreadable`): not replayable.
    pub not_http: BTreeMap<String, u64>,
    /// Replayed lines by the policy version that decided them.
    pub policy_versions: BTreeMap<String, u64>,
    pub changes: Vec<ChangeGroup>,
    pub undecided: Vec<UndecidedGroup>,
    pub malformed: BadLines,
    pub before_replay_fields: BadLines,
}

impl Report {
    /// Some replayed request would be decided otherwise, or not at all.
    pub fn changed(&self) -> bool {
        self.allow_to_deny + self.deny_to_allow + self.undecided_total > 0
    }

    /// Some line could not be replayed.
    pub fn incomplete(&self) -> bool {
        self.malformed.count + self.before_replay_fields.count > 0
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "replayed {} decisions of {} lines: {} unchanged, {} allow→deny, {} deny→allow, {} the candidate cannot decide",
            self.replayed,
            self.lines,
            self.unchanged,
            self.allow_to_deny,
            self.deny_to_allow,
            self.undecided_total
        )?;
        writeln!(
            f,
            "note: the log has every deny but only a sample of allows (--log-allow-rate), so allow→deny counts are of that sample"
        )?;
        if self.deny_status_changed > 0 {
            writeln!(
                f,
                "{} denies keep their effect with another status (401/403)",
                self.deny_status_changed
            )?;
        }
        if self.policy_versions.len() > 1 {
            writeln!(
                f,
                "decided by {} policy versions:",
                self.policy_versions.len()
            )?;
            for (version, count) in &self.policy_versions {
                writeln!(f, "  {version}: {count}")?;
            }
        }
        for group in &self.changes {
            let key = &group.key;
            writeln!(
                f,
                "\n{}→{} ×{}  application {:?} route {:?} reason {}{}",
                key.from.label(),
                key.to.label(),
                group.count,
                key.application,
                key.route,
                key.reason,
                if key.rule.is_empty() {
                    String::new()
                } else {
                    format!(" rule {}", key.rule)
                }
            )?;
            examples(f, &group.examples)?;
        }
        for group in &self.undecided {
            writeln!(
                f,
                "\ncannot decide ({}) ×{}  application {:?}",
                group.why, group.count, group.application
            )?;
            examples(f, &group.examples)?;
        }
        for (entry, count) in &self.not_http {
            writeln!(f, "not replayable ({entry} decisions): {count}")?;
        }
        for (what, bad) in [
            ("malformed", &self.malformed),
            ("logged before replay fields", &self.before_replay_fields),
        ] {
            if bad.count == 0 {
                continue;
            }
            writeln!(f, "\n{} lines cannot be replayed ({what}):", bad.count)?;
            for line in &bad.first {
                writeln!(f, "  line {}: {}", line.line, line.error)?;
            }
            if bad.count > bad.first.len() as u64 {
                writeln!(f, "  … and {} more", bad.count - bad.first.len() as u64)?;
            }
        }
        Ok(())
    }
}

fn examples(f: &mut std::fmt::Formatter<'_>, examples: &[Example]) -> std::fmt::Result {
    for e in examples {
        write!(f, "  line {}: {} {}", e.line, e.method, e.path)?;
        if !e.subject.is_empty() {
            write!(f, " as {}", e.subject)?;
        }
        if !e.request_id.is_empty() {
            write!(f, " (request {})", e.request_id)?;
        }
        writeln!(f, ", was {}", e.was)?;
    }
    Ok(())
}

/// Replays every line `input` holds against `candidate`, on one worker
/// per core. A line that is not UTF-8 is reported by its number; an error
/// reading the input stops the replay.
pub fn replay_lines(candidate: &PolicySet, mut input: impl BufRead) -> std::io::Result<Report> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (batches, queue) = mpsc::sync_channel::<(u64, Vec<Vec<u8>>)>(workers * 2);
    let queue = Mutex::new(queue);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut replay = Replay::new(candidate);
                    loop {
                        let next = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => break,
                        };
                        let Ok((first, lines)) = next else { break };
                        for (i, bytes) in lines.iter().enumerate() {
                            let number = first + i as u64;
                            match std::str::from_utf8(bytes) {
                                Ok(text) => replay.line(number, text),
                                Err(e) => replay.unreadable(number, format!("not UTF-8: {e}")),
                            }
                        }
                    }
                    replay
                })
            })
            .collect();
        let mut number = 1u64;
        let read = (|| loop {
            let mut lines = Vec::with_capacity(BATCH_LINES);
            while lines.len() < BATCH_LINES {
                let mut line = Vec::new();
                if input.read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                lines.push(line);
            }
            if lines.is_empty() {
                return Ok(());
            }
            let count = lines.len() as u64;
            if batches.send((number, lines)).is_err() {
                return Ok(());
            }
            number += count;
        })();
        drop(batches);
        let mut whole = Replay::new(candidate);
        for handle in handles {
            match handle.join() {
                Ok(part) => whole.merge(part),
                Err(_) => return Err(std::io::Error::other("a replay worker panicked")),
            }
        }
        read.map(|()| whole.report())
    })
}
