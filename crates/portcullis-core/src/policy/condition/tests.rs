use super::*;

fn compile(source: &str) -> Result<Condition, ConditionError> {
    Condition::compile(&ConditionEnv::new(), source)
}

fn message(source: &str) -> String {
    match compile(source) {
        Ok(_) => panic!("{source:?} compiled"),
        Err(e) => e.to_string(),
    }
}

fn holds(source: &str, inputs: &Inputs<'_>) -> bool {
    let env = ConditionEnv::new();
    let condition = Condition::compile(&env, source).unwrap_or_else(|e| panic!("{source}: {e}"));
    condition.holds(&Scope::new(&env, inputs.clone()))
}

#[test]
fn good_conditions_compile() {
    for source in [
        "resource.properties.ownerID == subject.id",
        "subject.claims.department in [\"eng\", \"ops\"]",
        "context.time.getHours(\"UTC\") >= 9 && context.time.getHours(\"UTC\") < 17",
        "context.time < timestamp(\"2030-01-01T00:00:00Z\")",
        "has(resource.properties.ownerID) && resource.properties.ownerID == subject.id",
        "subject.groups.exists(g, g.startsWith(\"team-\"))",
        "context.headers[\"x-tenant\"] == subject.claims.tenant",
        "size(subject.groups) > 0",
        "action.name == \"update\" || resource.type == \"todo\"",
        "subject.claims.level >= 3",
    ] {
        if let Err(e) = compile(source) {
            panic!("{source}: {e}");
        }
    }
}

#[test]
fn bad_conditions_are_refused_with_a_reason() {
    let cases = [
        ("user.id == \"x\"", "unknown attribute `user`"),
        ("subject.name == \"x\"", "unknown attribute `subject.name`"),
        ("context.time > 5", "cannot be compared"),
        ("subject.id == 1", "never equal"),
        ("subject.id + 1 == 2", "does not apply"),
        ("subject.groups", "must be true or false"),
        (
            "resource.id.size() > 1 && frobnicate(1)",
            "unknown function `frobnicate`",
        ),
        ("resource.properties.ownerID ==", "syntax error"),
        ("subject.id in subject.id", "needs a list or a map"),
        ("timestamp(\"yesterday\") < context.time", "not RFC 3339"),
        ("subject.id.getHours() == 1", "works on a timestamp"),
        ("!subject.id", "needs true or false"),
        ("", "empty"),
    ];
    for (source, expected) in cases {
        let got = message(source);
        assert!(got.contains(expected), "{source:?}: {got}");
    }
}

#[test]
fn a_check_error_says_where() {
    let got = message("subject.id == \"a\" && subjct.id == \"b\"");
    assert!(got.contains("column 22"), "{got}");
}

#[test]
fn reads_are_recorded() {
    let condition = compile("subject.claims.x == 1 && context.time > timestamp(0)");
    let reads = condition.map(|c| c.reads()).unwrap_or_default();
    assert!(reads.claims && reads.time);
    let condition = compile("context.headers[\"x-tenant\"] == \"a\"");
    let headers = condition.map(|c| c.headers().to_vec()).unwrap_or_default();
    assert_eq!(headers, ["x-tenant"]);
}

#[test]
fn conditions_read_action_properties() {
    let props: Map<String, Json> = serde_json::from_str(r#"{"soft": true}"#).unwrap_or_default();
    let inputs = Inputs {
        subject_id: "alice",
        action: Some("delete"),
        action_properties: Some(&props),
        ..Inputs::default()
    };
    assert!(holds("action.properties.soft == true", &inputs));
    assert!(!holds("action.properties.hard == true", &inputs));
    let none = Inputs {
        action: Some("delete"),
        ..Inputs::default()
    };
    assert!(!holds("action.properties.soft == true", &none));
}

#[test]
fn conditions_evaluate_and_fail_closed() {
    let claims: Map<String, Json> =
        serde_json::from_str(r#"{"department": "eng", "level": 3, "tenant": "t1"}"#)
            .unwrap_or_default();
    let props: Map<String, Json> =
        serde_json::from_str(r#"{"ownerID": "alice", "tenant": "t1"}"#).unwrap_or_default();
    let inputs = Inputs {
        subject_id: "alice",
        groups: vec!["staff"],
        claims: Some(&claims),
        resource: Some("todo:7"),
        resource_properties: Some(&props),
        action: Some("update"),
        now: 1_767_607_200, // 2026-01-05T10:00:00Z
        ..Inputs::default()
    };
    assert!(holds("resource.properties.ownerID == subject.id", &inputs));
    assert!(holds(
        "subject.claims.tenant == resource.properties.tenant",
        &inputs
    ));
    assert!(holds(
        "subject.claims.department in [\"eng\", \"ops\"]",
        &inputs
    ));
    assert!(holds("subject.claims.level >= 3", &inputs));
    assert!(holds(
        "resource.type == \"todo\" && resource.id == \"7\"",
        &inputs
    ));
    assert!(holds("action.name == \"update\"", &inputs));
    assert!(holds("\"staff\" in subject.groups", &inputs));
    assert!(holds(
        "context.time.getHours(\"UTC\") >= 9 && context.time.getHours(\"UTC\") < 17",
        &inputs
    ));
    // Missing attributes, and errors, are false.
    assert!(!holds("resource.properties.missing == subject.id", &inputs));
    assert!(!holds("resource.properties.missing != subject.id", &inputs));
    assert!(!holds(
        "subject.claims.department == 1 || subject.claims.nope",
        &inputs
    ));
    assert!(!holds("context.headers[\"x-tenant\"] == \"t1\"", &inputs));
    assert!(!holds("subject.claims.level / 0 == 1", &inputs));
    assert!(!holds("dyn(subject.claims.department)", &inputs));
}

// ---------------------------------------------------------------------------
// The fast path against cel's own evaluation.

/// Conditions of the shapes the fast path compiles, and some it leaves to
/// cel part way (mixed types, doubles, functions).
const CORPUS: &[&str] = &[
    "resource.properties.owner == subject.id",
    "resource.properties.ownerID == subject.id",
    "resource.type == \"document\" && resource.properties.id == resource.id && \"readers\" in subject.groups",
    "resource.type == \"document\" || resource.id == \"7\"",
    "resource.id != \"7\"",
    "action.name == \"update\" || resource.type == \"todo\"",
    "!(action.name == \"delete\")",
    "!(resource.properties.missing == \"x\")",
    "\"staff\" in subject.groups",
    "!(\"staff\" in subject.groups) || subject.id == \"alice\"",
    "subject.claims.department in [\"eng\", \"ops\"]",
    "subject.claims.department in [\"eng\", 1]",
    "subject.claims.tenant == resource.properties.tenant",
    "subject.claims.level >= 3",
    "subject.claims.level < 3 || subject.claims.level > 10",
    "subject.claims.level == 3",
    "subject.claims.level == 3u",
    "subject.claims.level == 3.0",
    "subject.claims.big == 18446744073709551615u",
    "subject.claims.ratio > 0.5",
    "subject.claims.admin == true",
    "subject.claims.admin",
    "subject.claims.admin && subject.claims.department == \"eng\"",
    "subject.claims.department == 1 || subject.claims.nope",
    "subject.claims.nope || subject.claims.admin",
    "subject.claims.nope && false",
    "false && subject.claims.nope",
    "subject.claims.nope || true",
    "subject.claims.department && true",
    "true && subject.claims.department",
    "subject.claims.manager == null",
    "subject.claims.department == null",
    "subject.claims.nested.team == \"core\"",
    "subject.claims.nested[\"team\"] == \"core\"",
    "has(subject.claims.nested.team)",
    "has(subject.claims.nested.nope)",
    "has(subject.claims.department.x)",
    "subject.claims.department.x == \"y\"",
    "\"team\" in subject.claims.nested",
    "\"eng\" in subject.claims.tags",
    "subject.claims.tags == [\"eng\"]",
    "has(resource.properties.ownerID) && resource.properties.ownerID == subject.id",
    "has(resource.properties.id)",
    "\"id\" in resource.properties",
    "resource.properties.id == \"7\"",
    "resource[\"id\"] == \"7\"",
    "context.headers[\"x-tenant\"] == subject.claims.tenant",
    "context.headers[\"x-tenant\"] == \"t1\"",
    "\"x-tenant\" in context.headers",
    "context.extensions.app == \"docs\"",
    "context.properties.ip == \"10.0.0.1\"",
    "subject.properties.level == 2",
    "action.properties.soft == true",
    "action.properties.soft != true",
    "size(subject.groups) > 0",
    "subject.groups.exists(g, g.startsWith(\"team-\"))",
    "resource.id.startsWith(\"7\") && subject.id == \"alice\"",
    "context.time < timestamp(\"2030-01-01T00:00:00Z\")",
    "subject.claims.level / 0 == 1",
    "dyn(subject.claims.department)",
];

/// The inputs the corpus is run against: full, sparse and empty.
fn corpus_inputs() -> Vec<(Inputs<'static>, &'static str)> {
    use std::borrow::Cow;
    use std::sync::OnceLock;
    struct Data {
        claims: Map<String, Json>,
        other_claims: Map<String, Json>,
        props: Map<String, Json>,
        action_props: Map<String, Json>,
        headers: BTreeMap<Cow<'static, str>, Cow<'static, str>>,
        extensions: BTreeMap<Cow<'static, str>, Cow<'static, str>>,
    }
    static DATA: OnceLock<Data> = OnceLock::new();
    let object = |text: &str| -> Map<String, Json> {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    };
    let d = DATA.get_or_init(|| Data {
        claims: object(
            r#"{"department": "eng", "level": 3, "tenant": "t1", "admin": true,
                "manager": null, "ratio": 0.75, "big": 18446744073709551615,
                "nested": {"team": "core"}, "tags": ["eng", "ops"]}"#,
        ),
        other_claims: object(
            r#"{"department": 7, "level": "high", "admin": "yes", "tenant": null,
                "nested": ["core"], "tags": [1, "eng"]}"#,
        ),
        props: object(r#"{"ownerID": "alice", "owner": "bob", "tenant": "t1", "id": "8"}"#),
        action_props: object(r#"{"soft": true}"#),
        headers: [(Cow::Borrowed("x-tenant"), Cow::Borrowed("t1"))].into(),
        extensions: [(Cow::Borrowed("app"), Cow::Borrowed("docs"))].into(),
    });
    vec![
        (
            Inputs {
                subject_id: "alice",
                groups: vec!["staff", "readers"],
                claims: Some(&d.claims),
                resource: Some("todo:7"),
                resource_properties: Some(&d.props),
                action: Some("update"),
                action_properties: Some(&d.action_props),
                now: 1_767_607_200,
                headers: Some(&d.headers),
                extensions: Some(&d.extensions),
                ..Inputs::default()
            },
            "full",
        ),
        (
            Inputs {
                subject_id: "bob",
                groups: vec![],
                claims: Some(&d.other_claims),
                resource: Some("document:7"),
                resource_properties: Some(&d.props),
                // A capture overrides the property of the same name.
                captures: vec![("id", "7"), ("owner", "bob")],
                action: Some("delete"),
                ..Inputs::default()
            },
            "odd types, captures",
        ),
        (
            Inputs {
                subject_id: "carol",
                groups: vec!["readers"],
                resource: Some("document:"),
                captures: vec![("id", "999999")],
                ..Inputs::default()
            },
            "resource without id",
        ),
        (
            Inputs {
                resource: Some("document"),
                ..Inputs::default()
            },
            "no subject",
        ),
        (Inputs::default(), "empty"),
    ]
}

#[test]
fn the_fast_path_agrees_with_cel() {
    let env = ConditionEnv::new();
    let mut answered = 0;
    for source in CORPUS {
        let condition =
            Condition::compile(&env, source).unwrap_or_else(|e| panic!("{source}: {e}"));
        for (inputs, name) in corpus_inputs() {
            let scope = Scope::new(&env, inputs);
            let by_cel = condition.holds_in_cel(&scope);
            assert_eq!(
                condition.holds(&scope),
                by_cel,
                "{source:?} on {name}: the fast path says otherwise than cel"
            );
            if condition.fast_answers(&scope) {
                answered += 1;
            }
        }
    }
    // Most of the corpus is answered without cel (else this test proves little).
    let total = CORPUS.len() * corpus_inputs().len();
    assert!(
        answered * 2 > total,
        "{answered} of {total} answered by the fast path"
    );
}

#[test]
fn typical_conditions_take_the_fast_path() {
    let env = ConditionEnv::new();
    let props: Map<String, Json> =
        serde_json::from_str(r#"{"owner": "alice"}"#).unwrap_or_default();
    for source in [
        "resource.properties.owner == subject.id",
        "resource.type == \"document\" && resource.properties.id == resource.id && \"readers\" in subject.groups",
        "has(resource.properties.owner) && resource.properties.owner == subject.id",
        "subject.claims.department in [\"eng\", \"ops\"]",
    ] {
        let condition = compile(source).unwrap_or_else(|e| panic!("{source}: {e}"));
        let scope = Scope::new(
            &env,
            Inputs {
                subject_id: "alice",
                groups: vec!["readers"],
                resource: Some("document:9"),
                resource_properties: Some(&props),
                captures: vec![("id", "9")],
                ..Inputs::default()
            },
        );
        assert!(condition.fast_answers(&scope), "{source}");
        // And the cel context was never built.
        assert!(!scope.built(), "{source}");
    }
}

#[test]
fn the_claims_a_condition_reads_are_named_when_every_read_names_one() {
    let names = |source: &str| {
        compile(source)
            .unwrap_or_else(|e| panic!("{source}: {e}"))
            .claim_names()
            .map(<[String]>::to_vec)
    };
    assert_eq!(
        names(r#"subject.claims.department in ["eng", "ops"]"#),
        Some(vec!["department".to_owned()])
    );
    assert_eq!(
        names(
            r#"subject.claims["email"] == resource.properties.email && has(subject.claims.tenant)"#
        ),
        Some(vec!["email".to_owned(), "tenant".to_owned()])
    );
    assert_eq!(names("subject.id == resource.id"), Some(vec![]));
    // The whole map, or a key computed at run time: any claim.
    assert_eq!(names(r#""eng" in subject.claims"#), None);
    assert_eq!(
        names("subject.claims[resource.properties.key] == true"),
        None
    );
}
