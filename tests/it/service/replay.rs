//! `portcullis replay`: a decision log written by the real check path
//! (adapter, decision service, decision log) replayed against a candidate
//! policy with a known impact (a revoked grant, a new deny rule, a changed
//! route template, a new grant, an application removed), in-process and
//! through the binary; lines that cannot be replayed are reported by line
//! number, never skipped.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use portcullis::adapter::ResponseConfig;
use portcullis::app::Exit;
use portcullis::decision_log::DecisionLog;
use portcullis::logging::LogLines;
use portcullis::replay::{replay_lines, Effect, Report};
use portcullis::server::Authorizer;
use portcullis::token_cache::TokenCache;
use portcullis_testkit::Check;
use serde_json::Value;

use crate::support::{copy_policies, load, token};

/// A second application the candidate removes.
const WIKI: &str = "applications:
  - name: wiki
    select:
      context_extensions:
        app: wiki
    issuers: [demo-idp]
    routes:
      - name: read-page
        methods: [GET]
        path: /pages/{id:uint}
        access: authenticated
";

/// The served policy: the bundled one and the wiki.
fn served() -> tempfile::TempDir {
    let dir = copy_policies(|_, text| text);
    std::fs::write(dir.path().join("wiki.yaml"), WIKI).unwrap();
    dir
}

/// The candidate: bob's viewer grant on document 1 revoked, dave given
/// viewer on document 5, writes to document 2 denied, the comments route
/// moved to `/notes`, and no wiki.
fn candidate() -> tempfile::TempDir {
    copy_policies(|file, text| match file {
        "grants.yaml" => {
            let revoked = "  - subject: bob\n    role: viewer\n    resource: document:1\n";
            assert!(text.contains(revoked), "{text}");
            let granted = "  - subject: dave\n    role: viewer\n    resource: document:5\n";
            let text = text.replace(revoked, granted);
            format!(
                "{text}  - name: freeze-document-2\n    resource: document:2\n    actions: [write]\n    reason: legal hold\n"
            )
        }
        "documents.yaml" => {
            let moved = text.replace(
                "path: /documents/{id:uint}/comments",
                "path: /documents/{id:uint}/notes",
            );
            assert_ne!(moved, text);
            moved
        }
        _ => text,
    })
}

/// A `Write` the test reads back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Requests of the log: how many, subject or none, application, method,
/// path, served status.
type Requests = (
    usize,
    Option<&'static str>,
    &'static str,
    &'static str,
    &'static str,
    u16,
);

const TRAFFIC: &[Requests] = &[
    // allow → deny: a revoked grant.
    (5, Some("bob"), "documents", "GET", "/documents/1", 200),
    // allow → deny: a new deny rule.
    (3, Some("alice"), "documents", "PUT", "/documents/2", 200),
    // allow → deny: a changed route template.
    (
        4,
        Some("alice"),
        "documents",
        "GET",
        "/documents/1/comments",
        200,
    ),
    // deny → allow: a new grant.
    (6, Some("dave"), "documents", "GET", "/documents/5", 403),
    // cannot decide: the application is gone.
    (2, Some("carol"), "wiki", "GET", "/pages/7", 200),
    // unchanged.
    (3, None, "documents", "GET", "/healthz", 200),
    (2, Some("mallory"), "documents", "GET", "/documents/3", 403),
    (1, None, "documents", "GET", "/documents/1", 401),
    (
        2,
        Some("alice"),
        "documents",
        "GET",
        "/documents/1?secret=hunter2",
        200,
    ),
];

const DECISIONS: u64 = 28;

/// The decision log of [`TRAFFIC`] decided by the served policy in `dir`,
/// every allow logged, through the check path `serve` runs.
fn decision_log(dir: &Path) -> Vec<String> {
    let sink = Captured::default();
    let lines = LogLines::to(sink.clone());
    let authorizer = Authorizer::new(
        Arc::new(ArcSwap::from_pointee(load(dir))),
        TokenCache::new(1000),
        ResponseConfig::new("x-subject"),
        portcullis::server::system_clock(),
    )
    .with_decision_log(DecisionLog::new(1.0, lines.clone()));
    // The decision target enabled, as `serve`'s subscriber does.
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
    let mut n = 0;
    for &(count, subject, app, method, path, status) in TRAFFIC {
        for _ in 0..count {
            n += 1;
            let mut check = Check::http(method, path)
                .app(app)
                .header("x-request-id", &format!("req-{n}"));
            if let Some(subject) = subject {
                check = check.bearer(&token(subject));
            }
            let (decision, _) = portcullis_testkit::ready(authorizer.check_request(&check.build()));
            assert_eq!(
                decision.status_code(),
                status,
                "{method} {path} as {subject:?}"
            );
        }
    }
    lines.close();
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(lines.len() as u64, DECISIONS, "{text}");
    lines
}

fn replay(candidate: &Path, lines: &[String]) -> Report {
    let text = lines.join("\n") + "\n";
    replay_lines(&load(candidate), text.as_bytes()).unwrap()
}

fn group<'a>(
    report: &'a Report,
    from: Effect,
    route: &str,
    reason: &str,
) -> &'a portcullis::replay::ChangeGroup {
    report
        .changes
        .iter()
        .find(|g| g.key.from == from && g.key.route == route && g.key.reason == reason)
        .unwrap_or_else(|| panic!("no {from:?} change on {route} for {reason}: {report:#?}"))
}

#[test]
fn a_candidate_with_known_impact_changes_exactly_the_expected_decisions() {
    let served = served();
    let log = decision_log(served.path());
    assert!(
        log.iter()
            .all(|line| !line.contains("hunter2") && !line.contains("eyJ")),
        "a query or a token reached the log: {log:#?}"
    );

    let report = replay(candidate().path(), &log);
    eprintln!("{report}");
    assert_eq!(report.replayed, DECISIONS, "{report}");
    assert_eq!(report.allow_to_deny, 5 + 3 + 4, "{report}");
    assert_eq!(report.deny_to_allow, 6, "{report}");
    assert_eq!(report.undecided_total, 2, "{report}");
    assert_eq!(report.unchanged, 3 + 2 + 1 + 2, "{report}");
    assert_eq!(report.changes.len(), 4, "{report}");
    assert_eq!(
        group(&report, Effect::Allow, "read-document", "no_grant").count,
        5
    );
    let frozen = group(&report, Effect::Allow, "write-document", "explicit_deny");
    assert_eq!(frozen.count, 3);
    assert!(frozen.key.rule.contains("freeze-document-2"), "{report}");
    let moved = group(&report, Effect::Allow, "read-comments", "no_route");
    assert_eq!(moved.count, 4);
    assert_eq!(moved.examples.len(), 3, "a few examples, not all");
    assert_eq!(moved.examples[0].path, "/documents/1/comments");
    assert_eq!(moved.examples[0].subject, "alice");
    let granted = group(&report, Effect::Deny, "read-document", "granted");
    assert_eq!(granted.count, 6);
    assert_eq!(granted.key.to, Effect::Allow);
    assert!(granted.key.rule.contains("viewer"), "{report}");
    assert_eq!(report.undecided.len(), 1, "{report}");
    assert_eq!(report.undecided[0].why, "unknown_application");
    assert_eq!(report.undecided[0].application, "wiki");
    assert_eq!(report.undecided[0].count, 2);
    assert!(report.changed() && !report.incomplete());
    assert_eq!(
        portcullis::replay::exit_for(&report),
        Exit::Failure,
        "changes exit 1"
    );
    let text = report.to_string();
    assert!(text.contains("allow→deny ×5"), "{text}");
    assert!(text.contains("only a sample of allows"), "{text}");
}

#[test]
fn the_served_policy_replayed_over_its_own_log_changes_nothing() {
    let served = served();
    let log = decision_log(served.path());
    let report = replay(served.path(), &log);
    assert_eq!(report.replayed, DECISIONS, "{report}");
    assert_eq!(report.unchanged, DECISIONS, "{report}");
    assert_eq!(report.deny_status_changed, 0, "{report}");
    assert!(!report.changed() && !report.incomplete(), "{report}");
    assert_eq!(portcullis::replay::exit_for(&report), Exit::Ok);
}

#[test]
fn lines_that_cannot_be_replayed_are_reported_by_line_number() {
    let served = served();
    let log = decision_log(served.path());
    let mut lines = vec![
        // Line 1: another target of the same stream.
        r#"{"timestamp":"2026-12-06T10:00:00.000000Z","level":"INFO","fields":{"message":"serving"},"target":"portcullis::app"}"#.to_owned(),
    ];
    lines.extend(log.iter().cloned());
    // Line 30: not JSON.
    lines.push("this is not a log line".to_owned());
    // Line 31: a line of an older Portcullis, without the replay fields.
    let mut old: Value = serde_json::from_str(&log[0]).unwrap();
    let fields = old["fields"].as_object_mut().unwrap();
    fields.remove("entry");
    fields.remove("request");
    lines.push(old.to_string());
    // Line 32: an AuthZEN decision (no HTTP request to replay).
    let mut authzen: Value = serde_json::from_str(&log[0]).unwrap();
    let fields = authzen["fields"].as_object_mut().unwrap();
    fields.insert("entry".into(), "authzen".into());
    fields.remove("request");
    lines.push(authzen.to_string());
    // Line 33: a decision line missing its decision.
    let mut cut: Value = serde_json::from_str(&log[1]).unwrap();
    cut["fields"].as_object_mut().unwrap().remove("decision");
    lines.push(cut.to_string());

    let report = replay(served.path(), &lines);
    assert_eq!(report.lines, 33);
    assert_eq!(report.replayed, DECISIONS);
    assert_eq!(report.not_decisions, 1);
    assert_eq!(report.not_http.get("authzen"), Some(&1));
    assert_eq!(report.malformed.count, 2, "{report}");
    assert_eq!(report.malformed.first[0].line, 30);
    assert_eq!(report.malformed.first[1].line, 33);
    assert_eq!(report.before_replay_fields.count, 1);
    assert_eq!(report.before_replay_fields.first[0].line, 31);
    assert!(report.before_replay_fields.first[0]
        .error
        .contains("cannot replay (line 31: logged before replay fields)"));
    assert!(!report.changed() && report.incomplete());
    assert_eq!(portcullis::replay::exit_for(&report), Exit::Incomplete);
    let text = report.to_string();
    assert!(text.contains("line 30: not a JSON log line"), "{text}");
}

#[test]
fn a_log_from_an_older_policy_version_is_replayed_and_its_versions_counted() {
    let served = served();
    let mut log = decision_log(served.path());
    // An older version of the served policy (the wiki not yet added)
    // decided the first lines.
    let older = copy_policies(|_, text| text);
    let older_log = decision_log_of(older.path(), "dave", "/documents/5");
    log.splice(0..0, older_log);
    let report = replay(candidate().path(), &log);
    assert_eq!(report.policy_versions.len(), 2, "{report}");
    assert_eq!(report.replayed, DECISIONS + 1);
    assert_eq!(report.deny_to_allow, 6 + 1, "{report}");
}

/// One decision of `subject` reading `path`, logged by the policy in `dir`.
fn decision_log_of(dir: &Path, subject: &str, path: &str) -> Vec<String> {
    let sink = Captured::default();
    let lines = LogLines::to(sink.clone());
    let authorizer = Authorizer::new(
        Arc::new(ArcSwap::from_pointee(load(dir))),
        TokenCache::new(1000),
        ResponseConfig::new("x-subject"),
        portcullis::server::system_clock(),
    )
    .with_decision_log(DecisionLog::new(1.0, lines.clone()));
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
    let check = Check::get(path).app("documents").bearer(&token(subject));
    portcullis_testkit::ready(authorizer.check_request(&check.build()));
    lines.close();
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    text.lines().map(str::to_owned).collect()
}

#[test]
fn the_binary_prints_json_for_tools_and_exits_one_on_changes() {
    let served = served();
    let candidate = candidate();
    let log = decision_log(served.path());
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), log.join("\n") + "\n").unwrap();
    let run = |policies: &Path| {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["replay", "--format", "json", "--decisions"])
            .arg(file.path())
            .arg("--policies")
            .arg(policies)
            .output()
            .unwrap()
    };
    let out = run(candidate.path());
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["allow_to_deny"], 12);
    assert_eq!(json["deny_to_allow"], 6);
    assert_eq!(json["undecided_total"], 2);
    assert_eq!(json["changes"][0]["count"], 6, "largest group first");

    let out = run(served.path());
    assert_eq!(out.status.code(), Some(0));

    let missing = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "replay",
            "--decisions",
            "/nonexistent/decisions.log",
            "--policies",
        ])
        .arg(served.path())
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(66));
}

/// An archive readable until the end of 2026 by the records department.
const ARCHIVE: &str = r#"applications:
  - name: archive
    select:
      context_extensions:
        app: archive
    issuers: [demo-idp]
    routes:
      - name: read-archive
        methods: [GET]
        path: /archive/{id:uint}
        resource: archive:{id}
        action: read_archive
roles:
  archivist:
    actions: [read_archive]
grants:
  - authenticated: true
    role: archivist
    resource: archive:*
    condition: context.time < timestamp("2027-01-01T00:00:00Z") && subject.claims.department == "records"
"#;

#[test]
fn a_time_condition_is_replayed_at_the_lines_time_and_only_claims_conditions_read_are_logged() {
    let dir = copy_policies(|_, text| text);
    std::fs::write(dir.path().join("archive.yaml"), ARCHIVE).unwrap();
    // September 2026, by the token's and the check's clock alike.
    const THEN: u64 = 1_790_000_000;
    let mut claims = portcullis_testkit::Claims::demo("ann", THEN).ttl(3600);
    claims.extra.insert("department".into(), "records".into());
    claims.extra.insert("name".into(), "Ann Example".into());
    let token = claims.sign(crate::support::demo_signer());

    let sink = Captured::default();
    let lines = LogLines::to(sink.clone());
    let authorizer = Authorizer::new(
        Arc::new(ArcSwap::from_pointee(load(dir.path()))),
        TokenCache::new(1000),
        ResponseConfig::new("x-subject"),
        Arc::new(|| THEN + 10),
    )
    .with_decision_log(DecisionLog::new(1.0, lines.clone()));
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
    let check = Check::get("/archive/7").app("archive").bearer(&token);
    let (decision, _) = portcullis_testkit::ready(authorizer.check_request(&check.build()));
    lines.close();
    let line = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let line = line.trim_end().to_owned();
    assert!(decision.is_allowed(), "{decision:?}");

    let logged: Value = serde_json::from_str(&line).unwrap();
    let principal = &logged["fields"]["request"]["principal"];
    assert_eq!(
        principal["claims"],
        serde_json::json!({"department": "records"}),
        "only the claims a condition reads: {line}"
    );
    assert!(!line.contains("Ann Example"), "{line}");

    // The same request, logged in 2026 and in 2027.
    let mut later: Value = logged.clone();
    later["timestamp"] = "2027-03-01T09:00:00.000000Z".into();
    let mut earlier = logged;
    earlier["timestamp"] = "2026-12-01T09:00:00.000000Z".into();
    let report = replay(dir.path(), &[earlier.to_string(), later.to_string()]);
    assert_eq!(report.replayed, 2, "{report}");
    assert_eq!(report.unchanged, 1, "{report}");
    assert_eq!(report.allow_to_deny, 1, "{report}");
    assert_eq!(report.changes[0].examples[0].line, 2, "{report}");
    assert_eq!(report.changes[0].key.reason, "no_grant");
}

#[test]
fn a_token_the_log_never_verified_is_undecidable_and_a_refused_one_stays_refused() {
    let served = served();
    let sink = Captured::default();
    let lines = LogLines::to(sink.clone());
    let authorizer = Authorizer::new(
        Arc::new(ArcSwap::from_pointee(load(served.path()))),
        TokenCache::new(1000),
        ResponseConfig::new("x-subject"),
        portcullis::server::system_clock(),
    )
    .with_decision_log(DecisionLog::new(1.0, lines.clone()));
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
    // A public route: nobody verifies the token it carries.
    let public = Check::get("/healthz")
        .app("documents")
        .bearer(&token("alice"));
    // An expired token: 401 token_expired.
    let expired = portcullis_testkit::Claims::demo("alice", 1_700_000_000)
        .ttl(60)
        .sign(crate::support::demo_signer());
    let refused = Check::get("/documents/1").app("documents").bearer(&expired);
    for check in [public, refused] {
        portcullis_testkit::ready(authorizer.check_request(&check.build()));
    }
    lines.close();
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let log: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(log.len(), 2, "{text}");
    assert!(log[1].contains("token_expired"), "{}", log[1]);

    // The candidate makes the health route need a token.
    let candidate = copy_policies(|file, text| match file {
        "documents.yaml" => {
            let protected = text.replacen("access: public", "access: authenticated", 1);
            assert_ne!(protected, text);
            protected
        }
        _ => text,
    });
    let report = replay(candidate.path(), &log);
    assert_eq!(report.undecided_total, 1, "{report}");
    assert_eq!(report.undecided[0].why, "token_not_verified_when_logged");
    assert_eq!(
        report.unchanged, 1,
        "the expired token is refused again: {report}"
    );
    assert_eq!(report.allow_to_deny + report.deny_to_allow, 0, "{report}");
}

#[test]
fn a_host_too_long_to_log_is_left_out_and_its_line_reported() {
    let served = served();
    let long_host = format!("{}.example.com", "a.".repeat(1000));
    let log = {
        let sink = Captured::default();
        let lines = LogLines::to(sink.clone());
        let authorizer = Authorizer::new(
            Arc::new(ArcSwap::from_pointee(load(served.path()))),
            TokenCache::new(1000),
            ResponseConfig::new("x-subject"),
            portcullis::server::system_clock(),
        )
        .with_decision_log(DecisionLog::new(1.0, lines.clone()));
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        let check = Check::get("/documents/1").host(&long_host).app("documents");
        portcullis_testkit::ready(authorizer.check_request(&check.build()));
        lines.close();
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(log.len(), 1);
    assert!(!log[0].contains(&long_host), "{}", log[0]);
    assert!(log[0].contains("\"oversized\":true"), "{}", log[0]);
    let report = replay(served.path(), &log);
    assert_eq!(report.malformed.count, 1, "{report}");
    assert!(report.malformed.first[0].error.contains("too long to log"));
}
