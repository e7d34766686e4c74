//! Regression tests for the outside review's bypasses that the engine and
//! loader own: subjects and groups tied to their issuer, dry run only where
//! the client cannot choose the application, typed and case-insensitive
//! routes, invisible characters in subjects, and connection checks.
//!
//! Each test writes its own policy directory; keys are files in it, so no
//! test touches the process environment.

use std::path::Path;

use portcullis::engine::{
    decide, ConnectionAttrs, Credential, Decision, Request, RequestAttrs, VerifyEveryTime,
};
use portcullis::policy::{load_policies, LoadErrors, PolicySet};
use portcullis_testkit::{Claims, Signer};
use serde_json::json;
use tempfile::TempDir;

const NOW: u64 = 1_800_000_000;
const CORP_SECRET: &str = "corp-secret-0123456789abcdef0123456789";
const PARTNER_SECRET: &str = "partner-secret-0123456789abcdef01234567";

fn write_dir(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("corp.secret"), CORP_SECRET).unwrap();
    std::fs::write(dir.path().join("partner.secret"), PARTNER_SECRET).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn load(dir: &Path) -> Result<PolicySet, LoadErrors> {
    load_policies(dir)
}

fn loaded(files: &[(&str, &str)]) -> PolicySet {
    let dir = write_dir(files);
    load(dir.path()).unwrap_or_else(|e| panic!("the policy should load:\n{e}"))
}

fn load_errors(files: &[(&str, &str)]) -> String {
    let dir = write_dir(files);
    match load(dir.path()) {
        Ok(_) => panic!("the policy should not load"),
        Err(e) => e.to_string(),
    }
}

const CORP_ISSUER: &str = "
  - name: corp
    issuer: https://corp.example.com
    audiences: [api]
    algorithms: [HS256]
    key: { secret_file: corp.secret }
    groups_claim: groups
    groups_allowed: [auditors]
";

const PARTNER_ISSUER: &str = "
  - name: partner
    issuer: https://partner.example.com
    audiences: [api]
    algorithms: [HS256]
    key: { secret_file: partner.secret }
    groups_claim: groups
    groups_allowed: [partner-*]
";

const ROLES: &str = "
roles:
  viewer: { actions: [read] }
  admin: { includes: [viewer], actions: [delete] }
groups:
  auditors: { members: [] }
  staff: { members: [] }
  partner-readers: { members: [] }
";

fn app(extra_select: &str, extra: &str) -> String {
    format!(
        "
applications:
  - name: docs
    select:
      path_prefixes: [/docs]
{extra_select}
{extra}
    routes:
      - {{ name: read, methods: [GET], path: '/docs/{{id:uint}}', resource: 'doc:{{id}}', action: read }}
      - {{ name: delete, methods: [DELETE], path: '/docs/{{id:uint}}', resource: 'doc:{{id}}', action: delete }}
      - {{ name: admin, methods: [GET], path: /docs/admin/users, access: authenticated }}
"
    )
}

/// A token of `iss` for audience `api`, issued 10 s before [`NOW`], with
/// `claims` (the subject among them) merged in.
fn token(iss: &str, secret: &str, claims: serde_json::Value) -> String {
    let mut body = Claims {
        sub: None,
        iat_offset: Some(-10),
        ..Claims::new(iss, "api", "", NOW).ttl(600)
    };
    if let Some(extra) = claims.as_object() {
        body.extra.extend(extra.clone());
    }
    body.sign(&Signer::hs256(secret.as_bytes()))
}

fn corp(claims: serde_json::Value) -> String {
    token("https://corp.example.com", CORP_SECRET, claims)
}

fn partner(claims: serde_json::Value) -> String {
    token("https://partner.example.com", PARTNER_SECRET, claims)
}

fn request<'a>(method: &'a str, path: &'a str, token: Option<&'a str>) -> RequestAttrs<'a> {
    RequestAttrs {
        method: method.into(),
        path: path.into(),
        credential: match token {
            Some(t) => Credential::Bearer(t.into()),
            None => Credential::Absent,
        },
        ..Default::default()
    }
}

fn check(policy: &PolicySet, request: &RequestAttrs) -> Decision {
    decide(
        policy,
        &*policy.grants,
        &Request::Http(request),
        &VerifyEveryTime,
        NOW,
    )
}

fn two_issuers(corp_prefix: &str, partner_prefix: &str, grants: &str) -> Vec<(String, String)> {
    let issuers = format!(
        "issuers:{}{}{}{}",
        CORP_ISSUER, corp_prefix, PARTNER_ISSUER, partner_prefix
    );
    vec![
        ("issuers.yaml".into(), issuers),
        ("roles.yaml".into(), ROLES.into()),
        ("grants.yaml".into(), grants.into()),
        ("app.yaml".into(), app("", "    issuers: [corp, partner]")),
    ]
}

fn as_refs(files: &[(String, String)]) -> Vec<(&str, &str)> {
    files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect()
}

#[test]
fn several_issuers_need_subject_prefixes() {
    let files = two_issuers("", "", "grants: []\n");
    let errors = load_errors(&as_refs(&files));
    assert!(
        errors.contains("issuer \"corp\" needs a subject_prefix")
            && errors.contains("issuer \"partner\" needs a subject_prefix"),
        "{errors}"
    );
    let files = two_issuers(
        "    subject_prefix: 'p'\n",
        "    subject_prefix: 'partner:'\n",
        "grants: []\n",
    );
    let errors = load_errors(&as_refs(&files));
    assert!(errors.contains("could collide"), "{errors}");
}

#[test]
fn an_application_must_name_its_issuers_when_there_are_several() {
    let mut files = two_issuers(
        "    subject_prefix: 'corp:'\n",
        "    subject_prefix: 'partner:'\n",
        "grants: []\n",
    );
    files[3].1 = app("", "");
    let errors = load_errors(&as_refs(&files));
    assert!(
        errors.contains("application \"docs\" must list its issuers"),
        "{errors}"
    );
}

#[test]
fn a_partner_subject_is_not_the_corporate_subject_of_the_same_name() {
    let grants = "grants:\n  - { subject: 'corp:carol', role: admin, resource: '*' }\n";
    let files = two_issuers(
        "    subject_prefix: 'corp:'\n",
        "    subject_prefix: 'partner:'\n",
        grants,
    );
    let policy = loaded(&as_refs(&files));
    let corp_carol = corp(json!({ "sub": "carol" }));
    let partner_carol = partner(json!({ "sub": "carol" }));

    let d = check(&policy, &request("DELETE", "/docs/7", Some(&corp_carol)));
    assert!(d.is_allowed(), "{d:?}");
    assert_eq!(d.subject.as_deref(), Some("corp:carol"));

    let d = check(&policy, &request("DELETE", "/docs/7", Some(&partner_carol)));
    assert!(!d.is_allowed(), "{d:?}");
    assert_eq!(d.reason.code(), "no_grant");
    assert_eq!(d.subject.as_deref(), Some("partner:carol"));

    // A partner subject that spells out the corporate prefix is still a
    // partner subject.
    let spoof = partner(json!({ "sub": "corp:carol" }));
    let d = check(&policy, &request("DELETE", "/docs/7", Some(&spoof)));
    assert!(!d.is_allowed(), "{d:?}");
    assert_eq!(d.subject.as_deref(), Some("partner:corp:carol"));
}

#[test]
fn token_groups_are_limited_to_what_the_issuer_may_assert() {
    let grants = "grants:\n  - { group: auditors, role: viewer, resource: 'doc:*' }\n  - { group: staff, role: admin, resource: '*' }\n  - { group: partner-readers, role: viewer, resource: 'doc:1' }\n";
    let files = two_issuers(
        "    subject_prefix: 'corp:'\n",
        "    subject_prefix: 'partner:'\n",
        grants,
    );
    let policy = loaded(&as_refs(&files));

    // corp may assert auditors, not staff.
    let dave = corp(json!({ "sub": "dave", "groups": ["auditors", "staff"] }));
    assert!(check(&policy, &request("GET", "/docs/5", Some(&dave))).is_allowed());
    let d = check(&policy, &request("DELETE", "/docs/5", Some(&dave)));
    assert_eq!(d.reason.code(), "no_grant", "{d:?}");

    // partner may assert partner-* only: not auditors.
    let eve = partner(json!({ "sub": "eve", "groups": ["auditors", "partner-readers"] }));
    assert!(check(&policy, &request("GET", "/docs/1", Some(&eve))).is_allowed());
    let d = check(&policy, &request("GET", "/docs/5", Some(&eve)));
    assert_eq!(d.reason.code(), "no_grant", "{d:?}");
}

#[test]
fn a_groups_claim_needs_an_allowed_set() {
    let issuers = "issuers:\n  - { name: corp, issuer: https://corp.example.com, audiences: [api], algorithms: [HS256], key: { secret_file: corp.secret }, groups_claim: groups }\n";
    let errors = load_errors(&[
        ("issuers.yaml", issuers),
        ("roles.yaml", ROLES),
        ("app.yaml", &app("", "")),
    ]);
    assert!(errors.contains("lists no groups_allowed"), "{errors}");
    let issuers = "issuers:\n  - { name: corp, issuer: https://corp.example.com, audiences: [api], algorithms: [HS256], key: { secret_file: corp.secret }, groups_claim: groups, groups_allowed: ['*'] }\n";
    let errors = load_errors(&[
        ("issuers.yaml", issuers),
        ("roles.yaml", ROLES),
        ("app.yaml", &app("", "")),
    ]);
    assert!(errors.contains("a bare * would let the token"), "{errors}");
}

fn one_issuer(app_yaml: &str) -> PolicySet {
    loaded(&[
        ("issuers.yaml", &format!("issuers:{CORP_ISSUER}")),
        ("roles.yaml", ROLES),
        (
            "grants.yaml",
            "grants:\n  - { subject: alice, role: viewer, resource: 'doc:1' }\n",
        ),
        ("app.yaml", app_yaml),
    ])
}

#[test]
fn a_single_issuer_policy_needs_no_prefix() {
    let policy = one_issuer(&app("", ""));
    let alice = corp(json!({ "sub": "alice" }));
    let d = check(&policy, &request("GET", "/docs/1", Some(&alice)));
    assert!(d.is_allowed(), "{d:?}");
    assert_eq!(d.subject.as_deref(), Some("alice"));
}

#[test]
fn dry_run_needs_a_selector_the_client_cannot_choose() {
    let errors = load_errors(&[
        ("issuers.yaml", &format!("issuers:{CORP_ISSUER}")),
        ("roles.yaml", ROLES),
        (
            "app.yaml",
            &app("      hosts: [docs.example.com]", "    mode: dry_run"),
        ),
    ]);
    assert!(
        errors.contains("is in dry_run but only hosts or path_prefixes select it"),
        "{errors}"
    );
}

#[test]
fn dry_run_is_enforced_when_the_client_chose_the_application() {
    let policy = one_issuer(&app(
        "      context_extensions: { app: docs }\n      hosts: [docs.example.com]",
        "    mode: dry_run",
    ));
    let bob = corp(json!({ "sub": "bob" }));
    // Chosen by Envoy's configuration: dry run applies, the deny is let through.
    let mut trusted = request("GET", "/docs/1", Some(&bob));
    trusted
        .context_extensions
        .insert("app".into(), "docs".into());
    let d = check(&policy, &trusted);
    assert_eq!(d.outcome(), "would_deny", "{d:?}");
    assert!(d.lets_through());
    // Chosen by the Host or the path the client wrote: enforced.
    let mut by_host = request("GET", "/docs/1", Some(&bob));
    by_host.host = "docs.example.com".into();
    for chosen in [by_host, request("GET", "/docs/1", Some(&bob))] {
        let d = check(&policy, &chosen);
        assert_eq!(d.outcome(), "deny", "{d:?}");
        assert!(!d.lets_through());
    }
}

#[test]
fn the_destination_workload_outranks_the_host() {
    let policy = loaded(&[
        ("issuers.yaml", &format!("issuers:{CORP_ISSUER}")),
        ("roles.yaml", ROLES),
        (
            "app.yaml",
            "
applications:
  - name: billing
    select: { hosts: [billing.example.com] }
    routes:
      - { name: any, methods: [GET], path: '/{rest...}', access: public }
  - name: docs
    select: { destination_principals: ['spiffe://cluster.local/ns/docs/sa/api'] }
    routes:
      - { name: read, methods: [GET], path: '/docs/{id:uint}', resource: 'doc:{id}', action: read }
      - { name: delete, methods: [DELETE], path: '/docs/{id:uint}', resource: 'doc:{id}', action: delete }
",
        ),
    ]);
    let mut r = request("GET", "/docs/1", None);
    r.host = "billing.example.com".into();
    r.destination = "spiffe://cluster.local/ns/docs/sa/api".into();
    let d = check(&policy, &r);
    assert_eq!(d.application.as_deref(), Some("docs"), "{d:?}");
    assert_eq!(d.status_code(), 401);
    // Without the mesh identity the host decides (and the public route allows).
    r.destination = "".into();
    let d = check(&policy, &r);
    assert_eq!(d.application.as_deref(), Some("billing"), "{d:?}");
}

#[test]
fn case_insensitive_routes_match_every_spelling() {
    let bob = corp(json!({ "sub": "bob" }));
    let sensitive = one_issuer(&app("", ""));
    let insensitive = one_issuer(&app("", "    case_insensitive: true"));
    let upper = request("GET", "/DOCS/ADMIN/USERS", Some(&bob));
    let d = check(&insensitive, &upper);
    assert_eq!(d.route.as_deref(), Some("admin"), "{d:?}");
    assert!(d.is_allowed());
    let d = check(&sensitive, &upper);
    assert_ne!(d.route.as_deref(), Some("admin"), "{d:?}");
    assert!(!d.is_allowed());
}

#[test]
fn invisible_characters_in_subjects_and_groups_are_refused() {
    let policy = one_issuer(&app("", ""));
    for sub in [
        "alice\u{202E}",
        "\u{200B}alice",
        "al\u{2066}ice",
        "alice\u{FEFF}",
        "alice\u{E0041}",
        "alice\n",
    ] {
        let t = corp(json!({ "sub": sub }));
        let d = check(&policy, &request("GET", "/docs/1", Some(&t)));
        assert_eq!(d.reason.code(), "token_bad_subject", "{sub:?}: {d:?}");
        assert_eq!(d.status_code(), 401);
    }
    let t = corp(json!({ "sub": "alice", "groups": ["audi\u{200D}tors"] }));
    let d = check(&policy, &request("GET", "/docs/1", Some(&t)));
    assert_eq!(d.reason.code(), "token_bad_groups", "{d:?}");
    // Ordinary non-ASCII names are fine.
    let t = corp(json!({ "sub": "zoë" }));
    let d = check(&policy, &request("GET", "/docs/1", Some(&t)));
    assert_eq!(d.reason.code(), "no_grant", "{d:?}");
}

#[test]
fn connection_checks_follow_the_connection_rules() {
    let connection = |port| ConnectionAttrs {
        source_principal: "spiffe://cluster.local/ns/billing/sa/client".into(),
        destination_principal: "spiffe://cluster.local/ns/db/sa/postgres".into(),
        destination_port: Some(port),
        destination_address: format!("10.0.0.7:{port}"),
    };
    let default = one_issuer(&app("", ""));
    let d = decide(
        &default,
        &*default.grants,
        &Request::Connection(&connection(5432)),
        &VerifyEveryTime,
        0,
    );
    assert_eq!(
        (d.is_allowed(), d.reason.code()),
        (false, "connection_denied")
    );
    let issuers = format!("issuers:{CORP_ISSUER}");
    let app_yaml = app("", "");
    let with = |extra: &[(&'static str, &'static str)]| {
        let dir = write_dir(
            &[
                ("issuers.yaml", issuers.as_str()),
                ("roles.yaml", ROLES),
                ("app.yaml", app_yaml.as_str()),
            ]
            .iter()
            .chain(extra)
            .copied()
            .collect::<Vec<_>>(),
        );
        load(dir.path()).map_err(|e| e.to_string())
    };
    let errors_of = |extra: &[(&'static str, &'static str)]| match with(extra) {
        Ok(_) => panic!("the policy should not load: {extra:?}"),
        Err(e) => e,
    };
    let allowing = with(&[(
        "connections.yaml",
        "connections:\n  - name: db\n    ports: [5432]\n    destination_namespaces: [db]\n    source_namespaces: [billing]\n",
    )])
    .unwrap_or_else(|e| panic!("the policy should load:\n{e}"));
    let d = decide(
        &allowing,
        &*allowing.grants,
        &Request::Connection(&connection(5432)),
        &VerifyEveryTime,
        0,
    );
    assert_eq!(
        (d.is_allowed(), d.reason.code(), d.route.as_deref()),
        (true, "connection_allowed", Some("db"))
    );
    // Another port of the same workload (HTTP disguised as TCP, say).
    let d = decide(
        &allowing,
        &*allowing.grants,
        &Request::Connection(&connection(8080)),
        &VerifyEveryTime,
        0,
    );
    assert_eq!(
        (d.is_allowed(), d.reason.code()),
        (false, "connection_denied")
    );
    // Plaintext: no principals, so no namespace to match.
    let plaintext = ConnectionAttrs {
        destination_port: Some(5432),
        ..ConnectionAttrs::default()
    };
    assert!(!decide(
        &allowing,
        &*allowing.grants,
        &Request::Connection(&plaintext),
        &VerifyEveryTime,
        0
    )
    .is_allowed());

    // The old one-word forms are refused with what to write instead.
    for word in ["connections: allow\n", "connections: deny\n"] {
        let errors = errors_of(&[("connections.yaml", word)]);
        assert!(
            errors.contains("connections is a list of rules") && errors.contains("ports: [5432]"),
            "{errors}"
        );
    }
    // Names are unique across files; every rule names its ports; ids are
    // SPIFFE ids.
    let errors = errors_of(&[
        ("a.yaml", "connections:\n  - { name: db, ports: [5432] }\n"),
        ("b.yaml", "connections:\n  - { name: db, ports: [6379] }\n"),
    ]);
    assert!(errors.contains("\"db\" is already defined at"), "{errors}");
    let errors = errors_of(&[(
        "c.yaml",
        "connections:\n  - { name: any, ports: [] }\n  - { name: bad, ports: [1], source_principals: [billing] }\n",
    )]);
    assert!(errors.contains("ports must list at least one"), "{errors}");
    assert!(errors.contains("c.yaml:3:"), "{errors}");
    assert!(
        errors.contains("\"billing\" is not a SPIFFE id"),
        "{errors}"
    );
}
