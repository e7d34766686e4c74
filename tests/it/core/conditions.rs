//! Attribute conditions beyond the case files: load errors with their
//! `file:line`, verified claims carried from a real token only when a
//! condition reads them, headers shown to conditions only when a route
//! names them (through the adapter), the decision's validity when it read
//! the clock, and the resource/action form with explicit attributes.
//!
//! Each test writes its own policy directory; the key is a file in it.

use portcullis::adapter::{read_check_with, Check as Read};
use portcullis::engine::{
    decide, Attributes, Credential, Decision, Reason, Request, RequestAttrs, ResourceAction,
    VerifyEveryTime,
};
use portcullis::policy::{load_policies, PolicySet};
use portcullis_testkit::{Check, Claims, Signer};
use serde_json::json;
use tempfile::TempDir;

const NOW: u64 = 1_800_000_000;
const SECRET: &str = "conditions-secret-0123456789abcdef0123";

const ISSUER: &str = "
issuers:
  - name: idp
    issuer: https://idp.example.com
    audiences: [api]
    algorithms: [HS256]
    key: { secret_file: idp.secret }
";

const ROLES: &str = "
roles:
  viewer: { actions: [read] }
  editor: { includes: [viewer], actions: [update] }
groups:
  staff: { members: [] }
";

fn write_dir(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("idp.secret"), SECRET).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn app(routes_extra: &str) -> String {
    format!(
        "
applications:
  - name: docs
    select:
      path_prefixes: [/docs]
    routes:
      - name: read
        methods: [GET]
        path: /docs/{{id:uint}}
        resource: doc:{{id}}
        action: read
      - name: update
        methods: [PUT]
        path: /docs/{{id:uint}}
        resource: doc:{{id}}
        action: update
{routes_extra}
"
    )
}

fn loaded(files: &[(&str, &str)]) -> (TempDir, PolicySet) {
    let dir = write_dir(files);
    let policy = load_policies(dir.path()).unwrap_or_else(|e| panic!("should load:\n{e}"));
    (dir, policy)
}

/// The load errors of `grants` (with the app, roles and issuer), as text,
/// and the path of the grants file.
fn grant_errors(grants: &str) -> (String, String) {
    let app = app("");
    let dir = write_dir(&[
        ("issuer.yaml", ISSUER),
        ("roles.yaml", ROLES),
        ("app.yaml", &app),
        ("grants.yaml", grants),
    ]);
    let file = dir.path().join("grants.yaml").display().to_string();
    match load_policies(dir.path()) {
        Ok(_) => panic!("the policy should not load:\n{grants}"),
        Err(e) => (e.to_string(), file),
    }
}

fn token(claims: serde_json::Value) -> String {
    let mut body = Claims::new("https://idp.example.com", "api", "", NOW).ttl(600);
    body.sub = None;
    if let Some(extra) = claims.as_object() {
        body.extra.extend(extra.clone());
    }
    body.sign(&Signer::hs256(SECRET.as_bytes()))
}

fn request<'a>(method: &'a str, path: &'a str, token: &'a str) -> RequestAttrs<'a> {
    RequestAttrs {
        method: method.into(),
        path: path.into(),
        credential: Credential::Bearer(token.into()),
        ..Default::default()
    }
}

#[test]
fn condition_errors_are_reported_with_file_and_line() {
    let cases = [
        (
            "user.id == \"x\"",
            "unknown attribute `user` (a condition reads subject, resource, action and context)",
        ),
        ("subject.name == \"x\"", "unknown attribute `subject.name`"),
        (
            "context.time > 5",
            "a timestamp cannot be compared with an int",
        ),
        ("subject.id == 1", "a string is never equal to an int"),
        (
            "resource.properties.ownerID ==",
            "grant condition: syntax error in condition",
        ),
    ];
    for (condition, expected) in cases {
        let grants = format!(
            "grants:\n  - subject: alice\n    role: viewer\n    resource: doc:1\n  - authenticated: true\n    role: editor\n    resource: doc:*\n    condition: '{condition}'\n"
        );
        let (errors, file) = grant_errors(&grants);
        assert!(
            errors.contains(&format!("{file}:8: grant condition: ")),
            "{condition}: {errors}"
        );
        assert!(errors.contains(expected), "{condition}: {errors}");
    }
}

#[test]
fn route_condition_errors_name_the_route_and_line() {
    let routes = "      - name: open
        methods: [POST]
        path: /docs/open
        access: authenticated
        condition: context.tim.getHours() > 8
";
    let app = app(routes);
    let dir = write_dir(&[
        ("issuer.yaml", ISSUER),
        ("roles.yaml", ROLES),
        ("app.yaml", &app),
    ]);
    let errors = match load_policies(dir.path()) {
        Ok(_) => panic!("should not load"),
        Err(e) => e.to_string(),
    };
    let file = dir.path().join("app.yaml").display().to_string();
    let line = app
        .lines()
        .position(|l| l.contains("condition:"))
        .map_or(0, |i| i + 1);
    assert!(
        errors.contains(&format!(
            "{file}:{line}: route \"open\": unknown attribute `context.tim`"
        )),
        "{errors}"
    );
}

#[test]
fn headers_must_be_named_and_public_routes_take_no_condition() {
    let routes = "      - name: report
        methods: [GET]
        path: /docs/report
        access: authenticated
        condition: context.headers[\"x-tenant\"] == \"t1\"
      - name: health
        methods: [GET]
        path: /docs/health
        access: public
        condition: context.time.getHours(\"UTC\") > 8
      - name: leak
        methods: [GET]
        path: /docs/leak
        access: authenticated
        headers: [Authorization]
";
    let app = app(routes);
    let grants = "grants:\n  - authenticated: true\n    role: viewer\n    resource: doc:*\n    condition: context.headers[\"x-other\"] == \"a\"\n";
    let dir = write_dir(&[
        ("issuer.yaml", ISSUER),
        ("roles.yaml", ROLES),
        ("app.yaml", &app),
        ("grants.yaml", grants),
    ]);
    let errors = match load_policies(dir.path()) {
        Ok(_) => panic!("should not load"),
        Err(e) => e.to_string(),
    };
    for expected in [
        "route \"report\": the condition reads header \"x-tenant\", which the route's headers: do not name",
        "route \"health\" is public: it reads no token, so it cannot have a condition",
        "route \"leak\": header \"Authorization\" carries credentials",
        "grants.yaml:5: grant condition reads header \"x-other\", which no route's headers: name",
    ] {
        assert!(errors.contains(expected), "{expected}\n{errors}");
    }
}

#[test]
fn the_all_authenticated_form_is_checked() {
    let (errors, file) = grant_errors(
        "grants:\n  - authenticated: true\n    subject: alice\n    role: viewer\n    resource: doc:*\n  - subject: \"*\"\n    role: viewer\n    resource: doc:*\n",
    );
    assert!(
        errors.contains(&format!("{file}:2: authenticated: true grants every authenticated subject; name no subject or group with it")),
        "{errors}"
    );
    assert!(
        errors.contains(&format!("{file}:6: subject \"*\" is not a pattern")),
        "{errors}"
    );
}

#[test]
fn bulk_grants_files_take_authenticated_holders() {
    let app = app("");
    let (_dir, policy) = loaded(&[
        ("issuer.yaml", ISSUER),
        ("roles.yaml", ROLES),
        ("app.yaml", &app),
        ("bulk.grants", "authenticated viewer doc:*\n"),
    ]);
    let decision = decide(
        &policy,
        &*policy.grants,
        &Request::Http(&request("GET", "/docs/5", &token(json!({"sub": "anyone"})))),
        &VerifyEveryTime,
        NOW,
    );
    assert!(decision.is_allowed(), "{decision:?}");
    assert_eq!(
        decision.rule_text().as_deref(),
        Some("grant of role \"viewer\" on doc:* to every authenticated subject")
    );
    let dir = write_dir(&[
        ("issuer.yaml", ISSUER),
        ("roles.yaml", ROLES),
        ("app.yaml", &app),
        ("bulk.grants", "subject:* viewer doc:*\n"),
    ]);
    let errors = match load_policies(dir.path()) {
        Ok(_) => panic!("subject:* should not load"),
        Err(e) => e.to_string(),
    };
    assert!(
        errors.contains("bulk.grants:1: subject:* is not a pattern"),
        "{errors}"
    );
}

#[test]
fn claims_of_a_real_token_reach_conditions_only_when_read() {
    let app = app("");
    let grants = "grants:\n  - authenticated: true\n    role: editor\n    resource: doc:*\n    condition: subject.claims.department in [\"eng\", \"ops\"]\n";
    let (_dir, policy) = loaded(&[
        ("issuer.yaml", ISSUER),
        ("roles.yaml", ROLES),
        ("app.yaml", &app),
        ("grants.yaml", grants),
    ]);
    let eng = token(json!({"sub": "eve", "department": "eng"}));
    let sales = token(json!({"sub": "sid", "department": "sales"}));
    let put = |t: &str| {
        decide(
            &policy,
            &*policy.grants,
            &Request::Http(&request("PUT", "/docs/1", t)),
            &VerifyEveryTime,
            NOW,
        )
    };
    assert!(put(&eng).is_allowed());
    assert!(!put(&sales).is_allowed());
    let principal = policy.issuers.verify(&[0], &eng, NOW).unwrap();
    assert_eq!(principal.claims.get("department"), Some(&json!("eng")));

    // A policy whose conditions read no claims keeps none.
    let plain = "grants:\n  - authenticated: true\n    role: editor\n    resource: doc:*\n    condition: resource.properties.ownerID == subject.id\n";
    let (_dir, policy) = loaded(&[
        ("issuer.yaml", ISSUER),
        ("roles.yaml", ROLES),
        ("app.yaml", &app),
        ("grants.yaml", plain),
    ]);
    let principal = policy.issuers.verify(&[0], &eng, NOW).unwrap();
    assert!(principal.claims.is_empty());
}

#[test]
fn only_named_headers_reach_conditions_through_the_adapter() {
    let routes = "      - name: report
        methods: [GET]
        path: /docs/report/{tenant}
        access: authenticated
        headers: [x-tenant]
        condition: context.headers[\"x-tenant\"] == resource.properties.tenant
";
    let app = app(routes);
    let (_dir, policy) = loaded(&[
        ("issuer.yaml", ISSUER),
        ("roles.yaml", ROLES),
        ("app.yaml", &app),
    ]);
    assert_eq!(policy.condition_headers, ["x-tenant"]);
    let t = token(json!({"sub": "tom"}));
    let check = |headers: &[(&str, &str)]| {
        let request = Check::get("/docs/report/t1")
            .bearer(&t)
            .headers(headers)
            .build();
        let attrs = match read_check_with(&request, &policy.condition_headers) {
            Ok(Read::Http(attrs)) => attrs,
            other => panic!("{other:?}"),
        };
        (
            attrs
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
            decide(
                &policy,
                &*policy.grants,
                &Request::Http(&attrs),
                &VerifyEveryTime,
                NOW,
            ),
        )
    };
    let (seen, decision) = check(&[("X-Tenant", "t1"), ("x-secret", "s")]);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(decision.is_allowed(), "{decision:?}");
    let (_, decision) = check(&[("x-tenant", "t2")]);
    assert_eq!(decision.reason.code(), "condition_not_met");
    let (seen, decision) = check(&[]);
    assert!(seen.is_empty());
    assert_eq!(decision.reason.code(), "condition_not_met");
    // A policy that names no header copies none.
    let request = Check::get("/docs/1")
        .bearer(&t)
        .header("x-tenant", "t1")
        .build();
    match read_check_with(&request, &[]) {
        Ok(Read::Http(attrs)) => assert!(attrs.headers.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_decision_that_read_the_clock_holds_for_that_second_only() {
    let routes = "      - name: open
        methods: [POST]
        path: /docs/open
        access: authenticated
        condition: context.time.getHours(\"UTC\") >= 0
";
    let app = app(routes);
    let (_dir, policy) = loaded(&[
        ("issuer.yaml", ISSUER),
        ("roles.yaml", ROLES),
        ("app.yaml", &app),
    ]);
    let t = token(json!({"sub": "cleo"}));
    let decision = decide(
        &policy,
        &*policy.grants,
        &Request::Http(&request("POST", "/docs/open", &t)),
        &VerifyEveryTime,
        NOW,
    );
    assert!(decision.is_allowed(), "{decision:?}");
    assert_eq!(decision.valid_until, Some(NOW));
}

#[test]
fn the_resource_action_form_takes_explicit_attributes() {
    let app = app("");
    let grants = "grants:\n  - authenticated: true\n    role: editor\n    resource: doc:*\n    condition: resource.properties.ownerID == subject.id && context.properties.channel == \"web\" && subject.properties.verified == true\n";
    let (_dir, policy) = loaded(&[
        ("issuer.yaml", ISSUER),
        ("roles.yaml", ROLES),
        ("app.yaml", &app),
        ("grants.yaml", grants),
    ]);
    let principal = policy
        .issuers
        .verify(&[0], &token(json!({"sub": "ana"})), NOW)
        .unwrap();
    let object = |value: serde_json::Value| {
        std::sync::Arc::new(value.as_object().cloned().unwrap_or_default())
    };
    let attributes = |owner: &str| Attributes {
        subject: object(json!({"verified": true})),
        resource: object(json!({"ownerID": owner})),
        action: Default::default(),
        context: object(json!({"channel": "web"})),
    };
    let yes = decided(
        &policy,
        &principal,
        "doc:1",
        "update",
        &attributes("ana"),
        NOW,
    );
    assert!(yes.is_allowed(), "{yes:?}");
    assert_eq!(yes.subject.as_deref(), Some("ana"));
    let no = decided(
        &policy,
        &principal,
        "doc:1",
        "update",
        &attributes("ben"),
        NOW,
    );
    assert!(!no.is_allowed());
    assert!(
        no.rule_text()
            .is_some_and(|r| r.contains("under a condition that does not hold")),
        "{no:?}"
    );
    let none = decided(
        &policy,
        &principal,
        "doc:1",
        "update",
        Attributes::none(),
        NOW,
    );
    assert!(!none.is_allowed());
    let unknown = decided(
        &policy,
        &principal,
        "doc:1",
        "frobnicate",
        &attributes("ana"),
        NOW,
    );
    assert_eq!(unknown.reason, Reason::UnknownAction, "{unknown:?}");
    assert!(!unknown.is_allowed());
}

/// The resource/action decision of an action the policy knows.
fn decided(
    policy: &portcullis::policy::PolicySet,
    principal: &portcullis::token::Principal,
    resource: &str,
    action: &str,
    attributes: &Attributes,
    now: u64,
) -> Decision {
    let request = Request::ResourceAction(ResourceAction {
        principal,
        resource,
        action,
        attributes,
    });
    decide(policy, &*policy.grants, &request, &VerifyEveryTime, now)
}
