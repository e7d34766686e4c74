//! The `portcullis` binary: exit codes and messages a script relies on.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const SECRET: &str = "cli-test-secret-0123456789abcdef-0123456";

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env("PORTCULLIS_DEMO_SECRET", SECRET)
        .output()
        .expect("cannot run portcullis")
}

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A copy of the bundled policies with `edit` applied to one file.
fn broken_copy(file: &str, edit: impl Fn(&str) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(bundled()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let name = path.file_name().unwrap_or_default().to_owned();
            let mut content = std::fs::read_to_string(&path).unwrap();
            if name == file {
                content = edit(&content);
            }
            std::fs::write(dir.path().join(name), content).unwrap();
        }
    }
    dir
}

fn line_of(content: &str, needle: &str) -> usize {
    content
        .lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not found"))
}

#[test]
fn validate_accepts_the_bundled_policies() {
    let out = portcullis(&["validate", bundled().to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("ok: 1 applications, 8 routes"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn validate_reports_each_error_with_file_and_line() {
    let original = std::fs::read_to_string(bundled().join("grants.yaml")).unwrap_or_default();
    let dir = broken_copy("grants.yaml", |c| {
        c.replace("role: editor", "role: editr")
            .replace("group: auditors", "group: auditorz")
    });
    let out = portcullis(&["validate", dir.path().to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let role_line = line_of(&original, "role: editor");
    let group_line = line_of(&original, "group: auditors");
    let file = dir.path().join("grants.yaml");
    assert!(
        stderr.contains(&format!(
            "{}:{role_line}: unknown role \"editr\" in grant",
            file.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{}:{group_line}: unknown group \"auditorz\"",
            file.display()
        )),
        "{stderr}"
    );
}

#[test]
fn validate_reports_yaml_syntax_and_unknown_fields() {
    let dir = broken_copy("roles.yaml", |c| {
        c.replace("actions: [read]", "actions: [read")
    });
    let out = portcullis(&["validate", dir.path().to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("roles.yaml:"),
        "{}",
        text(&out.stderr)
    );

    let dir = broken_copy("documents.yaml", |c| {
        c.replacen("action: read", "acton: read", 1)
    });
    let out = portcullis(&["validate", dir.path().to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("documents.yaml:") && stderr.contains("unknown field `acton`"),
        "{stderr}"
    );

    // A deny rule defines no action: one that no route or role names is a
    // misspelling.
    let dir = broken_copy("grants.yaml", |c| {
        c.replace(
            "    subject: mallory\n",
            "    subject: mallory\n    actions: [wirte]\n",
        )
    });
    let out = portcullis(&["validate", dir.path().to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "unknown action \"wirte\" in deny rule \"suspend-mallory\" (no route or role names it)"
        ),
        "{stderr}"
    );
}

/// Actions a role lists are actions, whether or not a route maps to one:
/// cases (and evaluation-style checks) ask about them directly, and deny
/// rules may name them. `validate` lists them, so a misspelling shows.
#[test]
fn role_actions_are_actions_without_a_route() {
    let dir = broken_copy("roles.yaml", |c| {
        c.replace("actions: [create]", "actions: [create, can_audit]")
    });
    let grants = dir.path().join("grants.yaml");
    let text_before = std::fs::read_to_string(&grants).unwrap_or_default();
    std::fs::write(
        &grants,
        text_before.replace(
            "    subject: mallory\n",
            "    subject: mallory\n    actions: [read, can_audit]\n",
        ),
    )
    .unwrap();
    let policies = dir.path().to_str().unwrap_or_default();
    let out = portcullis(&["validate", policies]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(
            "note: actions no route names (only resource/action checks ask about them): can_audit"
        ),
        "{}",
        text(&out.stdout)
    );

    let tests = dir.path().join("tests");
    std::fs::create_dir(&tests).unwrap();
    let file = tests.join("audit.yaml");
    std::fs::write(
        &file,
        "cases:\n  - name: an admin may audit\n    as: { subject: carol }\n    resource: document:1\n    action: can_audit\n    expect: { decision: allow, reason: granted }\n  - name: mallory may not\n    as: { subject: mallory }\n    resource: document:1\n    action: can_audit\n    expect: { decision: deny, reason: explicit_deny }\n  - name: nobody names this one\n    as: { subject: carol }\n    resource: document:1\n    action: can_fly\n    expect: { decision: deny }\n",
    )
    .unwrap();
    let out = portcullis(&["test", file.to_str().unwrap_or_default()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("nobody names this one: no route or role names the action \"can_fly\""),
        "{stdout}"
    );
    assert!(stdout.ends_with("2 passed, 1 failed\n"), "{stdout}");
}

#[test]
fn validate_refuses_an_emptied_file() {
    let dir = broken_copy("grants.yaml", |_| "# truncated by a writer\n".into());
    let out = portcullis(&["validate", dir.path().to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("grants.yaml: file holds nothing but blanks and comments"),
        "{stderr}"
    );
}

#[test]
fn check_exit_codes() {
    let policies = bundled();
    let policies = policies.to_str().unwrap_or_default();
    let public = portcullis(&[
        "check",
        "--policies",
        policies,
        "--method",
        "GET",
        "--path",
        "/healthz",
    ]);
    assert_eq!(public.status.code(), Some(0), "{}", text(&public.stdout));
    assert!(text(&public.stdout).starts_with("allow (200)"));

    let token = portcullis(&[
        "token",
        "--policies",
        policies,
        "--issuer",
        "demo-idp",
        "--subject",
        "alice",
    ]);
    assert!(token.status.success(), "{}", text(&token.stderr));
    let token = text(&token.stdout).trim().to_owned();
    let allow = portcullis(&[
        "check",
        "--policies",
        policies,
        "--method",
        "GET",
        "--path",
        "/documents/1",
        "--token",
        &token,
    ]);
    assert_eq!(allow.status.code(), Some(0), "{}", text(&allow.stdout));
    assert!(
        text(&allow.stdout).contains("grant of role \"owner\" on document:1"),
        "{}",
        text(&allow.stdout)
    );

    let deny = portcullis(&[
        "check",
        "--policies",
        policies,
        "--method",
        "DELETE",
        "--path",
        "/documents/2",
        "--token",
        &token,
    ]);
    assert_eq!(deny.status.code(), Some(2), "{}", text(&deny.stdout));
    assert!(text(&deny.stdout).starts_with("deny (403)"));

    let missing = portcullis(&[
        "check",
        "--policies",
        "/nonexistent",
        "--method",
        "GET",
        "--path",
        "/",
    ]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn serve_refuses_bad_policies_before_binding() {
    let dir = broken_copy("grants.yaml", |c| c.replace("role: viewer", "role: nobody"));
    let out = portcullis(&[
        "serve",
        "--policies",
        dir.path().to_str().unwrap_or_default(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out.stderr).contains("unknown role \"nobody\""));
    assert!(!text(&out.stdout).contains("listening"));

    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "serve",
            "--policies",
            bundled().to_str().unwrap_or_default(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env_remove("PORTCULLIS_DEMO_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        text(&out.stderr).contains("PORTCULLIS_DEMO_SECRET is not set"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn serve_exits_cleanly_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "serve",
            "--policies",
            bundled().to_str().unwrap_or_default(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("PORTCULLIS_DEMO_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().expect("no stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.starts_with("listening on 127.0.0.1:"), "{line:?}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("portcullis did not exit within 5 s of SIGTERM");
}

#[test]
fn test_runs_case_files_and_exits_by_outcome() {
    let cases = bundled().join("tests");
    let out = portcullis(&["test", cases.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.ends_with("passed, 0 failed"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wrong.yaml");
    let cases = format!(
        "policies: {}\ncases:\n  - name: fine\n    request: {{ method: GET, path: /healthz }}\n    expect: {{ decision: allow }}\n  - name: bob writes 1\n    as: {{ subject: bob }}\n    resource: document:1\n    action: write\n    expect: {{ decision: allow }}\n",
        bundled().display()
    );
    std::fs::write(&file, cases).unwrap();
    let out = portcullis(&["test", file.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "{}:6: bob writes 1: expected allow, got deny",
            file.display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("no grant holds the action"), "{stdout}");
    assert!(stdout.ends_with("1 passed, 1 failed\n"), "{stdout}");

    // No case at all is a failure, not a pass.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = portcullis(&["test", empty.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn grants_files_load_in_bulk_and_report_lines() {
    let dir = broken_copy("grants.yaml", str::to_owned);
    let bulk = dir.path().join("bulk.grants");
    std::fs::write(
        &bulk,
        "# holder role resource\nsubject:zoe editor document:7\n\ngroup:auditors owner document:9\n",
    )
    .unwrap();
    let policies = dir.path().to_str().unwrap_or_default();
    let out = portcullis(&["validate", policies]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(" 9 grants"),
        "{}",
        text(&out.stdout)
    );
    let token = portcullis(&[
        "token",
        "--policies",
        policies,
        "--issuer",
        "demo-idp",
        "--subject",
        "zoe",
    ]);
    let token = text(&token.stdout).trim().to_owned();
    let check = |method: &str, path: &str| {
        portcullis(&[
            "check",
            "--policies",
            policies,
            "--method",
            method,
            "--path",
            path,
            "--token",
            &token,
        ])
        .status
        .code()
    };
    assert_eq!(check("PUT", "/documents/7"), Some(0));
    assert_eq!(check("DELETE", "/documents/7"), Some(2));

    std::fs::write(
        &bulk,
        "subject:zoe editor document:7\nsubject:zoe ownr document:8\nzoe viewer document:1\ngroup:nobody viewer document:1\nsubject:zoe viewer doc*\nsubject:zoe viewer\n",
    )
    .unwrap();
    let out = portcullis(&["validate", policies]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let file = bulk.display();
    for expected in [
        format!("{file}:2: unknown role \"ownr\" in grant"),
        format!("{file}:3: holder \"zoe\" must be subject:NAME, group:NAME or authenticated"),
        format!("{file}:4: unknown group \"nobody\""),
        format!("{file}:5: resource \"doc*\""),
        format!("{file}:6: expected three fields"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

/// `portcullis ARGS` with the environment variables `unset` removed from
/// the child's environment only.
fn portcullis_without(args: &[&str], unset: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command.args(args);
    for name in unset {
        command.env_remove(name);
    }
    command.output().expect("cannot run portcullis")
}

/// Case files never verify a token (`as:` stands for a verified one), so a
/// CI without the issuers' secrets still runs every case. The missing
/// secret is one warning, named as what it is, once per policy directory
/// however many case files use it; nothing reads as an unknown issuer.
#[test]
fn test_runs_every_case_without_the_issuers_secrets() {
    let cases = bundled().join("tests").join("documents.yaml");
    let cases = cases.to_str().unwrap_or_default();
    let with_secret = portcullis(&["test", cases]);
    assert_eq!(
        with_secret.status.code(),
        Some(0),
        "{}",
        text(&with_secret.stdout)
    );
    let summary = text(&with_secret.stdout);
    let summary = summary.lines().last().unwrap_or_default().to_owned();

    // The same file twice: the policy directory is loaded (and warned about) once.
    let out = portcullis_without(&["test", cases, cases], &["PORTCULLIS_DEMO_SECRET"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let passed: usize = summary
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {summary:?}"));
    assert!(passed > 0, "{summary}");
    assert_eq!(
        stdout.lines().last(),
        Some(format!("{} passed, 0 failed", 2 * passed).as_str()),
        "{stdout}"
    );
    let warnings: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    let issuers = std::fs::read_to_string(bundled().join("issuers.yaml")).unwrap_or_default();
    let key_line = line_of(&issuers, "key:");
    assert!(
        warnings[0].contains(&format!("issuers.yaml:{key_line}: "))
            && warnings[0].contains("warning: issuer \"demo-idp\": environment variable PORTCULLIS_DEMO_SECRET is not set"),
        "{stderr}"
    );
    assert!(!stdout.contains("unknown issuer"), "{stdout}");
}

/// `validate` still refuses a missing secret, with that one error: the
/// application that names the issuer does not get a second one saying the
/// issuer is unknown (it is declared; it failed to load).
#[test]
fn validate_reports_a_missing_secret_once() {
    let policies = bundled();
    let out = portcullis_without(
        &["validate", policies.to_str().unwrap_or_default()],
        &["PORTCULLIS_DEMO_SECRET"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let errors: Vec<&str> = stderr.lines().collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(
            "issuer \"demo-idp\": environment variable PORTCULLIS_DEMO_SECRET is not set"
        ),
        "{stderr}"
    );

    // The same for an issuer that fails for another reason.
    let dir = broken_copy("issuers.yaml", |c| c.replace("[HS256]", "[HS999]"));
    let out = portcullis(&["validate", dir.path().to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown algorithm \"HS999\""), "{stderr}");
    assert!(!stderr.contains("unknown issuer"), "{stderr}");
}

/// A run where nothing ran never reads as a pass: policies that do not load
/// leave no `0 passed, 0 failed` behind, but a failure saying no case ran.
#[test]
fn test_says_no_case_ran_when_the_policies_do_not_load() {
    let dir = broken_copy("roles.yaml", |c| format!("{c}\nnot yaml: [\n"));
    let tests = dir.path().join("tests");
    std::fs::create_dir(&tests).unwrap();
    let file = tests.join("cases.yaml");
    std::fs::write(
        &file,
        "cases:\n  - name: health\n    request: { method: GET, path: /healthz }\n    expect: { decision: allow }\n",
    )
    .unwrap();
    let out = portcullis(&["test", file.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("0 passed"), "{stdout}");
    assert!(
        stdout.ends_with("FAILED: no case ran: 1 of 1 case files could not be run\n"),
        "{stdout}"
    );
}

/// `check` says why no route took a request: the route that came closest
/// and the segment (or method) that failed.
#[test]
fn check_explains_which_route_came_closest() {
    let policies = bundled();
    let policies = policies.to_str().unwrap_or_default();
    let token = portcullis(&[
        "token",
        "--policies",
        policies,
        "--issuer",
        "demo-idp",
        "--subject",
        "alice",
    ]);
    let token = text(&token.stdout).trim().to_owned();
    let check = |method: &str, path: &str| {
        let out = portcullis(&[
            "check",
            "--policies",
            policies,
            "--method",
            method,
            "--path",
            path,
            "--token",
            &token,
        ]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
        text(&out.stdout)
    };
    let out = check("GET", "/documents/beth@the-smiths.com");
    assert!(out.starts_with("deny (403): no route matches"), "{out}");
    assert!(
        out.contains("  why          no route of application \"documents\" takes GET /documents/beth@the-smiths.com; closest: route \"read-document\" (/documents/{id:uint}): segment 2 \"beth@the-smiths.com\" holds characters a capture does not accept (`@`)"),
        "{out}"
    );
    let out = check("GET", "/documents/01");
    assert!(
        out.contains("segment 2: `{id:uint}` does not accept \"01\""),
        "{out}"
    );
    let out = check("DELETE", "/documents/1/comments");
    assert!(
        out.contains(
            "route \"read-comments\" (/documents/{id:uint}/comments) takes GET, not DELETE"
        ),
        "{out}"
    );
    // A decision past route matching has nothing to explain.
    let out = check("DELETE", "/documents/2");
    assert!(
        out.contains("no_grant") || out.contains("no grant"),
        "{out}"
    );
    assert!(!out.contains("why"), "{out}");
}

/// JSON is YAML, and what a generator writes: a failing case of a JSON case
/// file is reported at its own line, not at line 1.
#[test]
fn test_reports_the_line_of_a_failing_case_in_a_json_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("generated.json");
    let policies = serde_json::to_string(&bundled().display().to_string()).unwrap_or_default();
    let json = format!(
        r#"{{
  "policies": {policies},
  "cases": [
    {{"name": "health", "request": {{"method": "GET", "path": "/healthz"}},
      "expect": {{"decision": "allow"}}}},
    {{"name": "bob reads 1", "request": {{"method": "GET", "path": "/documents/1"}},
      "as": {{"subject": "bob"}}, "expect": {{"decision": "allow"}}}},
    {{
      "name": "bob deletes 1",
      "request": {{"method": "DELETE", "path": "/documents/1"}},
      "as": {{"subject": "bob"}},
      "expect": {{"decision": "allow"}}
    }}
  ]
}}
"#
    );
    std::fs::write(&file, &json).unwrap();
    // A directory's *.json files are case files too.
    let out = portcullis(&["test", dir.path().to_str().unwrap_or_default()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = line_of(&json, "\"bob deletes 1\"") - 1;
    assert!(
        stdout.contains(&format!(
            "{}:{line}: bob deletes 1: expected allow, got deny",
            file.display()
        )),
        "{stdout}"
    );
    assert!(stdout.ends_with("2 passed, 1 failed\n"), "{stdout}");
}

// ---------------------------------------------------------------------------
// The lint (`validate`, `validate --strict`) and `test --explore`
// ---------------------------------------------------------------------------

/// The bundled documents policy written the natural way: untyped `{id}`
/// captures, bob viewing every document by a pattern grant, and a deny on
/// document 1 for him. `/documents/01` and `/documents/1.json` are other
/// resources to this policy.
fn untyped_documents(typed: bool) -> tempfile::TempDir {
    let dir = broken_copy("documents.yaml", |c| {
        if typed {
            c.to_owned()
        } else {
            c.replace("path: /documents/{id:uint}", "path: /documents/{id}")
        }
    });
    let grants = dir.path().join("grants.yaml");
    let before = std::fs::read_to_string(&grants).unwrap();
    let after = before.replace(
        "  - subject: bob\n    role: viewer\n    resource: document:1\n",
        "  - subject: bob\n    role: viewer\n    resource: document:*\n",
    ) + "  - name: freeze-one\n    subject: bob\n    resource: document:1\n";
    assert_ne!(before, after, "policies/grants.yaml changed shape");
    std::fs::write(&grants, after).unwrap();
    dir
}

/// The documents application replaced by one with a catch-all route for
/// any authenticated subject beside `/admin/{rest...}` for those who may
/// create documents; case-sensitive unless `fixed`.
fn admin_catch_all(fixed: bool) -> tempfile::TempDir {
    let case = if fixed {
        "    case_insensitive: true\n"
    } else {
        ""
    };
    broken_copy("documents.yaml", |_| {
        format!(
            "applications:\n  - name: console\n    select:\n      context_extensions: {{ app: documents }}\n{case}    routes:\n      - name: admin\n        methods: [GET]\n        path: /admin/{{rest...}}\n        resource: documents\n        action: create\n      - name: everything-else\n        methods: [GET]\n        path: /{{rest...}}\n        access: authenticated\n"
        )
    })
}

fn lint_lines(out: &Output) -> Vec<String> {
    text(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn validate_warns_of_sidesteps_and_strict_fails_on_them() {
    let natural = untyped_documents(false);
    let path = natural.path().to_str().unwrap_or_default();
    let out = portcullis(&["validate", path]);
    assert!(
        out.status.success(),
        "warnings alone do not fail: {}",
        text(&out.stderr)
    );
    let warnings = lint_lines(&out).join("\n");
    let grants_line = line_of(
        &std::fs::read_to_string(natural.path().join("grants.yaml")).unwrap_or_default(),
        "name: freeze-one",
    );
    assert!(
        warnings.contains(&format!(
            "grants.yaml:{grants_line}: deny rule \"freeze-one\" names document:1"
        )) && warnings.contains("document:01")
            && warnings.contains("document:1.json")
            && warnings.contains("{id:uint}"),
        "{warnings}"
    );
    let strict = portcullis(&["validate", "--strict", path]);
    assert_eq!(strict.status.code(), Some(1), "{}", text(&strict.stderr));
    assert!(
        text(&strict.stderr).contains("error: --strict:"),
        "{}",
        text(&strict.stderr)
    );

    let fixed = untyped_documents(true);
    let out = portcullis(&[
        "validate",
        "--strict",
        fixed.path().to_str().unwrap_or_default(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(lint_lines(&out).is_empty(), "{}", text(&out.stderr));

    let case = admin_catch_all(false);
    let out = portcullis(&["validate", case.path().to_str().unwrap_or_default()]);
    let warnings = lint_lines(&out).join("\n");
    assert!(
        warnings.contains("GET /ADMIN/x differs from route \"admin\" only in case")
            && warnings.contains("case_insensitive: true")
            && warnings.contains("route \"everything-else\" (authenticated) takes GET /ADMIN/x"),
        "{warnings}"
    );
    let fixed = admin_catch_all(true);
    let out = portcullis(&[
        "validate",
        "--strict",
        fixed.path().to_str().unwrap_or_default(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn validate_warns_of_unknown_resource_types_and_unused_roles() {
    let dir = broken_copy("documents.yaml", |c| c.to_owned());
    let grants = dir.path().join("grants.yaml");
    let before = std::fs::read_to_string(&grants).unwrap_or_default();
    std::fs::write(
        &grants,
        before.replace("resource: document:2", "resource: documnet:2"),
    )
    .unwrap();
    let roles = dir.path().join("roles.yaml");
    let before = std::fs::read_to_string(&roles).unwrap_or_default();
    std::fs::write(&roles, before + "  auditor:\n    actions: [read]\n").unwrap();
    let out = portcullis(&["validate", dir.path().to_str().unwrap_or_default()]);
    let warnings = lint_lines(&out).join("\n");
    assert!(
        warnings.contains("names resource type \"documnet\", which no route produces"),
        "{warnings}"
    );
    assert!(
        warnings.contains("role \"auditor\" is granted to no one"),
        "{warnings}"
    );
}

#[test]
fn explore_finds_the_sidesteps_an_attacker_would() {
    let natural = untyped_documents(false);
    let out = portcullis(&[
        "test",
        "--explore",
        natural.path().to_str().unwrap_or_default(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let found = text(&out.stdout);
    assert!(
        found.contains("GET /documents/01 as \"bob\": allow")
            && found.contains("(canonical GET /documents/1: deny explicit_deny"),
        "{found}"
    );
    let case = admin_catch_all(false);
    let out = portcullis(&[
        "test",
        "--explore",
        case.path().to_str().unwrap_or_default(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("GET /ADMIN/x as"),
        "{}",
        text(&out.stdout)
    );

    for dir in [untyped_documents(true), admin_catch_all(true)] {
        let out = portcullis(&["test", "--explore", dir.path().to_str().unwrap_or_default()]);
        assert!(out.status.success(), "{}", text(&out.stdout));
    }
    let out = portcullis(&["test", "--explore", bundled().to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("no spelling answered differently"));
}

/// Every policy the project ships passes `validate --strict`.
#[test]
fn shipped_policies_pass_strict() {
    let secret = "strict-check-secret-0123456789abcdef-0123";
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (dir, env) in [
        ("policies", "PORTCULLIS_DEMO_SECRET"),
        ("examples/todo", "TODO_IDP_SECRET"),
        ("examples/conditions", "NOTES_IDP_SECRET"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["validate", "--strict"])
            .arg(root.join(dir))
            .env(env, secret)
            .output()
            .expect("cannot run portcullis");
        assert!(out.status.success(), "{dir}: {}", text(&out.stderr));
    }
}
