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
    condition.holds(&Scope::new(&env, inputs))
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
