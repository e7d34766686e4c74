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

mod line;
mod report;

pub use line::{decide, replay_line, undecidable, RecordedCaller};
pub use report::{BadLine, BadLines, ChangeGroup, ChangeKey, Example, Report, UndecidedGroup};

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
