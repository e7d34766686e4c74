//! `serve --shadow-policies` through the real Envoy front proxy: every
//! answer is the served policy's, the candidate's disagreements are
//! counted exactly, and a reload of the shadow directory takes effect.

use std::time::Duration;

use crate::support::{bearer, copy_policies, eventually, metric, token, wait_for_log, Stack};

const BOB_VIEWER: &str = "  - subject: bob\n    role: viewer\n    resource: document:1\n";
const DAVE_VIEWER: &str = "  - subject: dave\n    role: viewer\n    resource: document:5\n";

fn series(from: &str, to: &str) -> String {
    format!(
        "portcullis_shadow_disagreements_total{{application=\"documents\",from=\"{from}\",to=\"{to}\"}}"
    )
}

#[test]
fn a_shadow_policy_never_changes_an_answer_and_counts_each_disagreement() {
    let served = copy_policies(|_, text| text);
    // The candidate revokes bob's grant on document 1 and gives dave one
    // on document 5.
    let candidate = copy_policies(|file, text| match file {
        "grants.yaml" => text.replace(BOB_VIEWER, DAVE_VIEWER),
        _ => text,
    });
    let shadow_dir = candidate.path().to_str().unwrap().to_owned();
    let stack = Stack::start_with_env(
        served.path(),
        "envoy/front-proxy.yaml",
        &[],
        &[("PORTCULLIS_SHADOW_POLICIES", &shadow_dir)],
    );
    let admin = stack.portcullis.admin_port();
    let get = |path: &str, subject: Option<&str>| {
        let auth = subject.map(|s| bearer(&token(s)));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        stack.send("GET", path.as_bytes(), &headers).status
    };
    let mut sent = 0;
    for (count, path, subject, status) in [
        (5, "/documents/1", Some("bob"), 200),
        (3, "/documents/5", Some("dave"), 403),
        (4, "/documents/1", Some("alice"), 200),
        (2, "/healthz", None, 200),
    ] {
        for _ in 0..count {
            sent += 1;
            assert_eq!(
                get(path, subject),
                status,
                "{path} as {subject:?}: {}",
                stack.logs()
            );
        }
    }
    let checks = |n: f64| metric(admin, "portcullis_shadow_checks_total") == Some(n);
    eventually(Duration::from_secs(10), "every check shadowed", || {
        checks(f64::from(sent))
    });
    assert_eq!(metric(admin, &series("allow", "deny")), Some(5.0));
    assert_eq!(metric(admin, &series("deny", "allow")), Some(3.0));
    assert_eq!(metric(admin, "portcullis_shadow_dropped_total"), Some(0.0));
    wait_for_log(|| stack.portcullis.log(), "the shadow policy disagrees");

    // A reload of the shadow directory: bob's grant back, so his checks
    // agree again; the served policy is untouched.
    let grants = candidate.path().join("grants.yaml");
    let text = std::fs::read_to_string(&grants).unwrap();
    let restored = text.replace(DAVE_VIEWER, &format!("{DAVE_VIEWER}{BOB_VIEWER}"));
    std::fs::write(&grants, restored).unwrap();
    eventually(
        Duration::from_secs(10),
        "the shadow policy reloaded",
        || {
            stack
                .portcullis
                .log()
                .lines()
                .any(|l| l.contains("policy reloaded") && l.contains("\"policies\":\"shadow\""))
        },
    );
    for _ in 0..2 {
        sent += 1;
        assert_eq!(get("/documents/1", Some("bob")), 200);
    }
    eventually(
        Duration::from_secs(10),
        "the checks after the reload shadowed",
        || checks(f64::from(sent)),
    );
    assert_eq!(metric(admin, &series("allow", "deny")), Some(5.0));
}
