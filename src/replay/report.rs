//! What a replay found: groups of changes with their first examples, the
//! lines that could not be replayed, and the report as text.

use super::*;

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
    pub(super) fn add(&mut self, line: u64, error: impl FnOnce() -> String) {
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
    pub(super) fn merge(&mut self, other: BadLines) {
        self.count += other.count;
        self.first.extend(other.first);
        self.first.sort_by_key(|bad| bad.line);
        self.first.truncate(MAX_REPORTED_LINES);
    }
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
