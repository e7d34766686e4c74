//! The AuthZEN Authorization API 1.0, end to end: the whole service
//! in-process (`App::build` and `App::run`, as `portcullis serve` runs them)
//! with the API on 127.0.0.1:0, asked over real sockets by a raw HTTP/1.1
//! client. Every request and response shape of the specification, batch
//! semantics, search pagination, metadata, every error status, the callers
//! (API key from a file, mTLS, bearer tokens, trusted or not), and the
//! documents cases through both the engine and the API.

use std::path::{Path, PathBuf};

use crate::support::{
    copy_policies, exchange_http1_with_body, repo_path, send, serve_config, token,
    token_with_groups, InProcess, MeshPki, Response, TlsClient,
};
use portcullis::cases::run_case_file;
use portcullis::tls::TlsFiles;
use serde_json::{json, Value};

/// The trusted caller's key (may ask about anyone, search, explain).
const REPORTING_KEY: &str = "reporting-key-0123456789abcdef";
/// A caller the policy names but trusts with nothing.
const LIMITED_KEY: &str = "limited-key-0123456789abcdef";

/// The bundled policies plus callers; the API keys in files beside them.
fn policies(gateway_dns: &str) -> tempfile::TempDir {
    let dir = copy_policies(|_, text| text);
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{name}: {e}"));
    };
    write("reporting.key", &format!("{REPORTING_KEY}\n"));
    write("limited.key", LIMITED_KEY);
    write(
        "api-callers.yaml",
        &format!(
            "callers:
  - name: reporting
    api_key: {{ secret_file: reporting.key }}
    may: [any_subject, search, explain]
  - name: limited
    api_key: {{ secret_file: limited.key }}
  - name: gateway
    client_certificate: {{ dns_name: {gateway_dns} }}
    may: [any_subject]
  - name: batch
    token_subject: svc-batch
    may: [any_subject, search]
  - name: self-search
    token_subject: erin
    may: [search]
  - name: checkout
    client_certificate: {{ spiffe_id: spiffe://cluster.local/ns/shop/sa/checkout }}
    may: [any_subject]
"
        ),
    );
    dir
}

/// The service with the API over `api_tls` (plain when `None`), every
/// allow logged.
fn start(policies: &Path, api_tls: Option<TlsFiles>) -> InProcess {
    start_with_url(policies, api_tls, None)
}

/// With `--api-url` `public_url`.
fn start_with_url(
    policies: &Path,
    api_tls: Option<TlsFiles>,
    public_url: Option<&str>,
) -> InProcess {
    let mut config = serve_config(policies);
    config.log_allow_rate = 1.0;
    if let Some(api) = config.api.as_mut() {
        api.tls = api_tls;
        api.public_url = public_url.map(str::to_owned);
    }
    InProcess::start(config)
}

/// One request over a fresh connection.
/// A credential a request carries.
#[derive(Clone, Copy)]
enum As<'a> {
    Nobody,
    Key(&'a str),
    Bearer(&'a str),
}

fn post(port: u16, path: &str, who: As<'_>, body: &Value) -> Response {
    let authorization;
    let mut headers = vec![("Content-Type", "application/json")];
    match who {
        As::Nobody => {}
        As::Key(key) => headers.push(("X-API-Key", key)),
        As::Bearer(token) => {
            authorization = format!("Bearer {token}");
            headers.push(("Authorization", authorization.as_str()));
        }
    }
    send(port, "POST", path, &headers, body.to_string().as_bytes())
}

fn json_of(response: &Response) -> Value {
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{response:?}"
    );
    response
        .json()
        .unwrap_or_else(|| panic!("not JSON: {}", response.text()))
}

fn evaluation(subject: &str, action: &str, kind: &str, id: &str) -> Value {
    json!({
        "subject": { "type": "user", "id": subject },
        "action": { "name": action },
        "resource": { "type": kind, "id": id },
    })
}

const EVALUATION: &str = "/access/v1/evaluation";
const EVALUATIONS: &str = "/access/v1/evaluations";

#[test]
fn evaluations_answer_the_specifications_shapes() {
    let dir = policies("gateway.internal");
    let service = start(dir.path(), None);
    let port = service.api_port();
    let reporting = As::Key(REPORTING_KEY);

    // Allowed, with the reason for a caller that may see it.
    let mut request = evaluation("alice", "read", "document", "1");
    request["subject"]["properties"] = json!({ "department": "Sales" });
    request["resource"]["properties"] = json!({ "ownerID": "alice" });
    request["action"]["properties"] = json!({ "method": "GET" });
    request["context"] = json!({ "time": "1985-10-26T01:22-07:00" });
    request["unknown_field"] = json!([1, 2, 3]);
    let allowed = post(port, EVALUATION, reporting, &request);
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    let answer = json_of(&allowed);
    assert_eq!(answer["decision"], json!(true));
    assert_eq!(answer["context"]["id"], json!("granted"));
    let why = answer["context"]["reason_admin"]["en"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("owner") && why.contains("document:1"), "{why}");

    // A deny is 200 with decision false, never an HTTP error.
    for (subject, action, id, reason) in [
        ("bob", "write", "1", "no_grant"),
        ("mallory", "read", "3", "explicit_deny"),
        ("alice", "fly", "1", "unknown_action"),
    ] {
        let denied = post(
            port,
            EVALUATION,
            reporting,
            &evaluation(subject, action, "document", id),
        );
        assert_eq!(denied.status, 200, "{}", denied.text());
        let answer = json_of(&denied);
        assert_eq!(answer["decision"], json!(false), "{subject} {action} {id}");
        assert_eq!(answer["context"]["id"], json!(reason));
    }
    // A collection: the type alone names it.
    let create = post(
        port,
        EVALUATION,
        reporting,
        &evaluation("alice", "create", "documents", ""),
    );
    assert_eq!(json_of(&create)["decision"], json!(true));
    // Only users are subjects: another type is the caller's error, never a
    // silent deny.
    let mut group = evaluation("staff", "create", "documents", "");
    group["subject"]["type"] = json!("group");
    let response = post(port, EVALUATION, reporting, &group);
    assert_eq!(response.status, 400, "{}", response.text());
    assert_eq!(json_of(&response)["error"], json!("invalid_request"));

    // The user's own token: a decision about that user, with the groups
    // the token asserts, and no reason.
    let dave = token_with_groups("dave", &["auditors"]);
    let own = post(
        port,
        EVALUATION,
        As::Bearer(&dave),
        &evaluation("dave", "read", "document", "42"),
    );
    assert_eq!(own.status, 200, "{}", own.text());
    assert_eq!(json_of(&own), json!({ "decision": true }));

    // X-Request-ID is echoed, on answers and errors alike.
    let body = evaluation("alice", "read", "document", "1").to_string();
    for key in [REPORTING_KEY, "not-a-key-0123456789"] {
        let echoed = send(
            port,
            "POST",
            EVALUATION,
            &[
                ("Content-Type", "application/json"),
                ("X-API-Key", key),
                ("X-Request-ID", "bfe9eb29-ab87-4ca3-be83-a1d5d8305716"),
            ],
            body.as_bytes(),
        );
        assert_eq!(
            echoed.header("x-request-id"),
            Some("bfe9eb29-ab87-4ca3-be83-a1d5d8305716"),
            "{echoed:?}"
        );
    }
}

#[test]
fn callers_are_authenticated_and_held_to_what_they_may_ask() {
    let dir = policies("gateway.internal");
    let service = start(dir.path(), None);
    let port = service.api_port();
    let about_alice = evaluation("alice", "read", "document", "1");

    // No credential: 401 with a challenge.
    let anonymous = post(port, EVALUATION, As::Nobody, &about_alice);
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    assert!(anonymous
        .header("www-authenticate")
        .is_some_and(|c| c.starts_with("Bearer")));
    // A key nobody holds, or a bad token: 401.
    let unknown = post(
        port,
        EVALUATION,
        As::Key("not-a-key-0123456789"),
        &about_alice,
    );
    assert_eq!(unknown.status, 401);
    let forged = post(port, EVALUATION, As::Bearer("e30.e30.c2ln"), &about_alice);
    assert_eq!(forged.status, 401);
    assert!(forged
        .header("www-authenticate")
        .is_some_and(|c| c.contains("invalid_token")));

    // A caller trusted with nothing, or a user, asking about someone else: 403.
    let limited = post(port, EVALUATION, As::Key(LIMITED_KEY), &about_alice);
    assert_eq!(limited.status, 403, "{}", limited.text());
    let bob = token("bob");
    let nosy = post(port, EVALUATION, As::Bearer(&bob), &about_alice);
    assert_eq!(nosy.status, 403, "{}", nosy.text());
    // ... but a user may ask about itself, and gets no reason.
    let own = post(
        port,
        EVALUATION,
        As::Bearer(&bob),
        &evaluation("bob", "read", "document", "1"),
    );
    assert_eq!(json_of(&own), json!({ "decision": true }));
    // An API key may also travel as a bearer credential, as many PEPs send
    // it: the same caller, with what it may see.
    let keyed = post(port, EVALUATION, As::Bearer(REPORTING_KEY), &about_alice);
    assert_eq!(keyed.status, 200, "{}", keyed.text());
    assert_eq!(json_of(&keyed)["context"]["id"], json!("granted"));
    let limited = post(port, EVALUATION, As::Bearer(LIMITED_KEY), &about_alice);
    assert_eq!(limited.status, 403, "{}", limited.text());
    // A token whose subject the policy names as a caller is that caller.
    let batch = token("svc-batch");
    let trusted = post(port, EVALUATION, As::Bearer(&batch), &about_alice);
    assert_eq!(json_of(&trusted), json!({ "decision": true }));

    // Search needs the permission.
    let search = json!({
        "subject": { "type": "user", "id": "alice" },
        "action": { "name": "read" },
        "resource": { "type": "document" },
    });
    let refused = post(
        port,
        "/access/v1/search/resource",
        As::Bearer(&token("alice")),
        &search,
    );
    assert_eq!(refused.status, 403);
    let allowed = post(
        port,
        "/access/v1/search/resource",
        As::Bearer(&batch),
        &search,
    );
    assert_eq!(allowed.status, 200, "{}", allowed.text());
}

#[test]
fn an_mtls_caller_is_known_by_its_certificate() {
    let pki = MeshPki::generate("authz", "gateway");
    let dir = policies(&pki.server_name);
    let tls = TlsFiles {
        cert: pki.dir().join("workload.pem"),
        key: pki.dir().join("workload-key.pem"),
        client_ca: Some(pki.dir().join("ca.pem")),
    };
    let service = start(dir.path(), Some(tls));
    let port = service.api_port();
    let body = evaluation("alice", "read", "document", "1").to_string();
    let ask = |client: &TlsClient, headers: &[(&str, &str)]| {
        let mut stream = client.connect(port).expect("connect");
        exchange_http1_with_body(
            &mut stream,
            "POST",
            EVALUATION.as_bytes(),
            headers,
            body.as_bytes(),
        )
        .unwrap()
    };
    let json_header = [("Content-Type", "application/json")];
    // The gateway's certificate carries the DNS name the policy names.
    let gateway = ask(&pki.client(Some(&pki.workload)), &json_header);
    assert_eq!(gateway.status, 200, "{}", gateway.text());
    assert_eq!(json_of(&gateway), json!({ "decision": true }));
    // A certificate of the same CA that names no caller proves nothing.
    let other = ask(&pki.client(Some(&pki.caller)), &json_header);
    assert_eq!(other.status, 401, "{}", other.text());
    // Without a client certificate there is no TLS connection at all.
    assert!(pki
        .client(None)
        .connect(port)
        .and_then(|mut s| {
            exchange_http1_with_body(
                &mut s,
                "POST",
                EVALUATION.as_bytes(),
                &json_header,
                body.as_bytes(),
            )
        })
        .is_err());
    // Exactly the name, in any case; never through a wildcard the
    // certificate presents.
    let upper = pki.issue(
        "spiffe://cluster.local/ns/x/sa/upper",
        &[&pki.server_name.to_ascii_uppercase()],
    );
    let upper = ask(&pki.client(Some(&upper)), &json_header);
    assert_eq!(upper.status, 200, "{}", upper.text());
    let suffix = pki.server_name.split_once('.').map_or("", |(_, rest)| rest);
    let wildcard = pki.issue(
        "spiffe://cluster.local/ns/x/sa/wild",
        &[&format!("*.{suffix}")],
    );
    let wildcard = ask(&pki.client(Some(&wildcard)), &json_header);
    assert_eq!(wildcard.status, 401, "{}", wildcard.text());
    // A SPIFFE id, as an Istio workload presents it, names its caller.
    let checkout = pki.issue("spiffe://cluster.local/ns/shop/sa/checkout", &[]);
    let checkout = ask(&pki.client(Some(&checkout)), &json_header);
    assert_eq!(checkout.status, 200, "{}", checkout.text());
    let near = pki.issue("spiffe://cluster.local/ns/shop/sa/checkout-2", &[]);
    let near = ask(&pki.client(Some(&near)), &json_header);
    assert_eq!(near.status, 401, "{}", near.text());
    // The API key still works over mTLS.
    let keyed = ask(
        &pki.client(Some(&pki.caller)),
        &[
            ("Content-Type", "application/json"),
            ("X-API-Key", REPORTING_KEY),
        ],
    );
    assert_eq!(json_of(&keyed)["decision"], json!(true));
}

#[test]
fn every_error_has_its_status() {
    let dir = policies("gateway.internal");
    let service = start(dir.path(), None);
    let port = service.api_port();
    let key = ("X-API-Key", REPORTING_KEY);
    let json_type = ("Content-Type", "application/json");
    // Every error is {"error": code, "message": text} as application/json.
    let is_json_error = |response: &Response| {
        let body = json_of(response);
        assert!(
            body["error"].as_str().is_some_and(|c| !c.is_empty()),
            "{body}"
        );
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    };
    let status = |headers: &[(&str, &str)], body: &[u8]| {
        let response = send(port, "POST", EVALUATION, headers, body);
        if response.status != 200 {
            is_json_error(&response);
        }
        response.status
    };
    let valid = evaluation("alice", "read", "document", "1").to_string();
    assert_eq!(status(&[json_type, key], valid.as_bytes()), 200);
    assert_eq!(
        status(
            &[("Content-Type", "application/json; charset=utf-8"), key],
            valid.as_bytes()
        ),
        200
    );
    // Malformed JSON, an empty body, a body that is not an object.
    assert_eq!(status(&[json_type, key], b"{\"subject\": "), 400);
    assert_eq!(status(&[json_type, key], b""), 400);
    assert_eq!(status(&[json_type, key], b"[1]"), 400);
    // A wrong or missing content type is 400, not 415.
    assert_eq!(
        status(&[("Content-Type", "text/plain"), key], valid.as_bytes()),
        400
    );
    assert_eq!(status(&[key], valid.as_bytes()), 400);
    // A missing or mistyped required field is 400, not 422.
    let mut missing = evaluation("alice", "read", "document", "1");
    if let Some(resource) = missing["resource"].as_object_mut() {
        resource.remove("id");
    }
    assert_eq!(
        status(&[json_type, key], missing.to_string().as_bytes()),
        400
    );
    let mut mistyped = evaluation("alice", "read", "document", "1");
    mistyped["subject"]["id"] = json!(7);
    let response = send(
        port,
        "POST",
        EVALUATION,
        &[json_type, key],
        mistyped.to_string().as_bytes(),
    );
    assert_eq!(response.status, 400);
    assert!(
        response.text().contains("subject.id"),
        "{}",
        response.text()
    );
    let mut no_action = evaluation("alice", "read", "document", "1");
    if let Some(request) = no_action.as_object_mut() {
        request.remove("action");
    }
    assert_eq!(
        status(&[json_type, key], no_action.to_string().as_bytes()),
        400
    );
    // Too large: 413.
    let mut huge = evaluation("alice", "read", "document", "1");
    huge["context"] = json!({ "padding": "x".repeat(70 * 1024) });
    assert_eq!(status(&[json_type, key], huge.to_string().as_bytes()), 413);
    // A wrong method is 405; an unknown path 404.
    let get = send(port, "GET", EVALUATION, &[key], b"");
    assert_eq!(get.status, 405);
    assert!(get.header("allow").is_some(), "{get:?}");
    is_json_error(&get);
    let nothing = send(
        port,
        "POST",
        "/access/v1/nothing",
        &[json_type, key],
        valid.as_bytes(),
    );
    assert_eq!(nothing.status, 404);
    is_json_error(&nothing);
    // 401 and 403 too.
    let anonymous = send(port, "POST", EVALUATION, &[json_type], valid.as_bytes());
    assert_eq!(anonymous.status, 401);
    is_json_error(&anonymous);
    let limited = send(
        port,
        "POST",
        EVALUATION,
        &[json_type, ("X-API-Key", LIMITED_KEY)],
        valid.as_bytes(),
    );
    assert_eq!(limited.status, 403);
    is_json_error(&limited);
    // A subject type the policy has none of is a 400, never a silent deny;
    // a type holding ':' would alias another resource; a subject is someone.
    for (field, value) in [
        ("subject", json!({ "type": "identity", "id": "alice" })),
        ("resource", json!({ "type": "document:1", "id": "" })),
        ("subject", json!({ "type": "user", "id": "" })),
        ("action", json!({ "name": "" })),
    ] {
        let mut request = evaluation("alice", "read", "document", "1");
        request[field] = value;
        assert_eq!(
            status(&[json_type, key], request.to_string().as_bytes()),
            400,
            "{request}"
        );
    }
    // Authentication comes before reading the body.
    assert_eq!(status(&[json_type], b"{"), 401);
}

#[test]
fn batches_merge_defaults_and_follow_their_semantics() {
    let dir = policies("gateway.internal");
    let service = start(dir.path(), None);
    let port = service.api_port();
    let reporting = As::Key(REPORTING_KEY);
    let batch = |semantic: Option<&str>| {
        let mut request = json!({
            "subject": { "type": "user", "id": "alice" },
            "action": { "name": "delete" },
            "context": { "time": "2024-05-31T15:22-07:00" },
            "evaluations": [
                { "resource": { "type": "document", "id": "1" } },
                { "resource": { "type": "document", "id": "2" } },
                { "action": { "name": "write" }, "resource": { "type": "document", "id": "2" } },
                { "subject": { "type": "user", "id": "bob" }, "resource": { "type": "document", "id": "1" } },
            ],
        });
        if let Some(semantic) = semantic {
            request["options"] = json!({ "evaluations_semantic": semantic, "another_option": 1 });
        }
        let response = post(port, EVALUATIONS, reporting, &request);
        assert_eq!(response.status, 200, "{}", response.text());
        let answer = json_of(&response);
        assert!(answer.get("decision").is_none(), "{answer}");
        answer["evaluations"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let decisions = |answers: &[Value]| -> Vec<bool> {
        answers
            .iter()
            .map(|a| a["decision"] == json!(true))
            .collect()
    };
    // alice deletes 1 (owner), not 2 (editor), writes 2; bob deletes nothing.
    let all = batch(None);
    assert_eq!(decisions(&all), [true, false, true, false]);
    assert_eq!(
        decisions(&batch(Some("execute_all"))),
        [true, false, true, false]
    );
    let deny_first = batch(Some("deny_on_first_deny"));
    assert_eq!(decisions(&deny_first), [true, false]);
    // With explain, the decision's reason and the batch's stop are kept
    // apart: the reason's id stays a reason, the stop has its own object.
    let stopped = &deny_first[1]["context"];
    assert_eq!(
        stopped["short_circuit"],
        json!({ "code": "200", "reason": "deny_on_first_deny" }),
        "{stopped}"
    );
    assert_eq!(stopped["id"], json!("no_grant"), "{stopped}");
    assert!(stopped.get("code").is_none(), "{stopped}");
    // Without explain, the specification's own marker.
    let mut plain = json!({
        "subject": { "type": "user", "id": "bob" },
        "action": { "name": "delete" },
        "options": { "evaluations_semantic": "deny_on_first_deny" },
        "evaluations": [{ "resource": { "type": "document", "id": "1" } }],
    });
    let bob = token("bob");
    let answer = json_of(&post(port, EVALUATIONS, As::Bearer(&bob), &plain));
    assert_eq!(
        answer["evaluations"][0]["context"],
        json!({ "code": "200", "reason": "deny_on_first_deny" })
    );
    // An item lacking a required type or id takes the default's.
    plain["resource"] = json!({ "type": "document" });
    plain["action"] = json!({ "name": "read" });
    plain["evaluations"] = json!([{ "resource": { "id": "1" } }]);
    let answer = json_of(&post(port, EVALUATIONS, As::Bearer(&bob), &plain));
    assert_eq!(
        answer["evaluations"][0]["decision"],
        json!(true),
        "{answer}"
    );
    assert_eq!(decisions(&batch(Some("permit_on_first_permit"))), [true]);

    // A failing item is a deny with its error; the others are decided.
    let broken = post(
        port,
        EVALUATIONS,
        reporting,
        &json!({
            "action": { "name": "read" },
            "evaluations": [
                { "subject": { "type": "user", "id": "bob" }, "resource": { "type": "document", "id": "1" } },
                { "resource": { "type": "document", "id": "1" } },
                { "subject": { "type": "user", "id": 5 }, "resource": { "type": "document", "id": "1" } },
            ],
        }),
    );
    let answers = json_of(&broken)["evaluations"].clone();
    assert_eq!(answers[0]["decision"], json!(true));
    for failed in [&answers[1], &answers[2]] {
        assert_eq!(failed["decision"], json!(false));
        assert_eq!(failed["context"]["error"]["status"], json!(400), "{failed}");
    }
    // A user's token: items about others fail alone, with 403.
    let bob = token("bob");
    let mixed = post(
        port,
        EVALUATIONS,
        As::Bearer(&bob),
        &json!({
            "action": { "name": "read" },
            "resource": { "type": "document", "id": "1" },
            "evaluations": [
                { "subject": { "type": "user", "id": "bob" } },
                { "subject": { "type": "user", "id": "alice" } },
            ],
        }),
    );
    let answers = json_of(&mixed)["evaluations"].clone();
    assert_eq!(answers[0], json!({ "decision": true }));
    assert_eq!(answers[1]["context"]["error"]["status"], json!(403));

    // Without evaluations it is one evaluation, answered as one.
    let single = post(
        port,
        EVALUATIONS,
        reporting,
        &evaluation("alice", "read", "document", "1"),
    );
    assert_eq!(json_of(&single)["decision"], json!(true));
    let mut empty = evaluation("bob", "write", "document", "1");
    empty["evaluations"] = json!([]);
    assert_eq!(
        json_of(&post(port, EVALUATIONS, reporting, &empty))["decision"],
        json!(false)
    );
    // An unknown semantic, or evaluations that are not an array: 400.
    let mut unknown = evaluation("alice", "read", "document", "1");
    unknown["options"] = json!({ "evaluations_semantic": "majority" });
    unknown["evaluations"] = json!([{}]);
    assert_eq!(post(port, EVALUATIONS, reporting, &unknown).status, 400);
    let mut not_array = evaluation("alice", "read", "document", "1");
    not_array["evaluations"] = json!({});
    assert_eq!(post(port, EVALUATIONS, reporting, &not_array).status, 400);
}

/// Every result of a search, page by page, with the tokens seen.
fn search_all(port: u16, path: &str, request: &Value, limit: u64) -> (Vec<Value>, usize) {
    let mut results = Vec::new();
    let mut pages = 0;
    let mut token: Option<String> = None;
    loop {
        let mut request = request.clone();
        request["page"] = json!({ "limit": limit });
        if let Some(token) = &token {
            request["page"]["token"] = json!(token);
        }
        let response = post(port, path, As::Key(REPORTING_KEY), &request);
        assert_eq!(response.status, 200, "{}", response.text());
        let answer = json_of(&response);
        pages += 1;
        let page = answer["results"].as_array().cloned().unwrap_or_default();
        assert_eq!(answer["page"]["count"], json!(page.len()));
        results.extend(page);
        let next = answer["page"]["next_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if next.is_empty() {
            return (results, pages);
        }
        assert!(pages < 100, "pagination does not end");
        token = Some(next);
    }
}

#[test]
fn searches_are_transitive_paged_and_respect_denies() {
    let dir = policies("gateway.internal");
    std::fs::write(
        dir.path().join("more-grants.yaml"),
        "grants:
  - { subject: alice, role: editor, resource: document:10 }
  - { subject: alice, role: viewer, resource: document:11 }
  - { subject: alice, role: editor, resource: document:12 }
  - { group: staff, role: editor, resource: document:20 }
  - { subject: erin, role: owner, resource: document:1 }
denies:
  - { name: not-12, subject: alice, resource: document:12, actions: [write] }
  - { name: not-erin, subject: erin, resource: \"document:*\" }
",
    )
    .unwrap();
    let service = start(dir.path(), None);
    let port = service.api_port();
    let ids = |results: &[Value]| -> Vec<String> {
        results
            .iter()
            .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };

    // Which documents may alice write? Her own grants and staff's, not the
    // one a deny takes back; in pages of two.
    let which = json!({
        "subject": { "type": "user", "id": "alice" },
        "action": { "name": "write" },
        "resource": { "type": "document", "id": "ignored" },
    });
    let (results, pages) = search_all(port, "/access/v1/search/resource", &which, 2);
    assert_eq!(ids(&results), ["1", "10", "2", "20"]);
    assert_eq!(pages, 2);
    assert!(results.iter().all(|r| r["type"] == json!("document")));
    // The same in one page.
    let (one_page, pages) = search_all(port, "/access/v1/search/resource", &which, 100);
    assert_eq!((ids(&one_page), pages), (ids(&results), 1));
    // A global grant is the pattern itself.
    let mut carol = which.clone();
    carol["subject"]["id"] = json!("carol");
    let (results, _) = search_all(port, "/access/v1/search/resource", &carol, 10);
    assert_eq!(ids(&results), ["*"]);

    // Who may read document 1? Through roles, a global grant, not erin
    // (denied); group members are expanded.
    let who = json!({
        "subject": { "type": "user" },
        "action": { "name": "read" },
        "resource": { "type": "document", "id": "1" },
    });
    let (results, _) = search_all(port, "/access/v1/search/subject", &who, 1);
    assert_eq!(ids(&results), ["alice", "bob", "carol"]);
    assert!(results.iter().all(|r| r["type"] == json!("user")));
    let mut twenty = who.clone();
    twenty["resource"]["id"] = json!("20");
    let (results, _) = search_all(port, "/access/v1/search/subject", &twenty, 10);
    assert_eq!(ids(&results), ["alice", "carol"]);

    // What may bob do on document 1? What may mallory do on 3?
    let what = |subject: &str, id: &str| {
        let request = json!({
            "subject": { "type": "user", "id": subject },
            "resource": { "type": "document", "id": id },
        });
        let (results, _) = search_all(port, "/access/v1/search/action", &request, 2);
        results
            .iter()
            .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(what("bob", "1"), ["read"]);
    assert_eq!(what("alice", "1"), ["delete", "read", "share", "write"]);
    assert!(what("mallory", "3").is_empty());

    // A token sent again with other parameters, or altered: 400.
    let mut first = which.clone();
    first["page"] = json!({ "limit": 2 });
    let answer = json_of(&post(
        port,
        "/access/v1/search/resource",
        As::Key(REPORTING_KEY),
        &first,
    ));
    let token = answer["page"]["next_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!token.is_empty());
    let mut changed = first.clone();
    changed["action"]["name"] = json!("read");
    changed["page"]["token"] = json!(token);
    let reused = post(
        port,
        "/access/v1/search/resource",
        As::Key(REPORTING_KEY),
        &changed,
    );
    assert_eq!(reused.status, 400, "{}", reused.text());
    // A token carries its limit; one sent beside it sets the page size
    // from there on (the cursor does not depend on it).
    let mut other_limit = first.clone();
    other_limit["page"] = json!({ "limit": 3, "token": token });
    let resized = post(
        port,
        "/access/v1/search/resource",
        As::Key(REPORTING_KEY),
        &other_limit,
    );
    assert_eq!(resized.status, 200, "{}", resized.text());
    assert!(json_of(&resized)["page"]["count"].as_u64() <= Some(3));
    let mut tampered = first.clone();
    let mut forged = token.clone();
    forged.replace_range(0..2, if &token[0..2] == "00" { "11" } else { "00" });
    tampered["page"]["token"] = json!(forged);
    assert_eq!(
        post(
            port,
            "/access/v1/search/resource",
            As::Key(REPORTING_KEY),
            &tampered
        )
        .status,
        400
    );
    // The same parameters continue.
    let mut next = first.clone();
    next["page"]["token"] = json!(token);
    assert_eq!(
        post(
            port,
            "/access/v1/search/resource",
            As::Key(REPORTING_KEY),
            &next
        )
        .status,
        200
    );
    // A mistyped page: 400.
    let mut bad_limit = which.clone();
    bad_limit["page"] = json!({ "limit": -1 });
    assert_eq!(
        post(
            port,
            "/access/v1/search/resource",
            As::Key(REPORTING_KEY),
            &bad_limit
        )
        .status,
        400
    );
}

#[test]
fn metadata_names_what_is_served() {
    let dir = policies("gateway.internal");
    let base = "https://pdp.example.com";
    let service = start_with_url(dir.path(), None, Some(base));
    let port = service.api_port();
    // The configured URL, whatever Host the request names.
    let response = send(
        port,
        "GET",
        "/.well-known/authzen-configuration",
        &[("Host", "evil.example")],
        b"",
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let metadata = json_of(&response);
    assert!(!metadata.to_string().contains("evil"), "{metadata}");
    assert_eq!(
        metadata,
        json!({
            "policy_decision_point": base,
            "access_evaluation_endpoint": format!("{base}/access/v1/evaluation"),
            "access_evaluations_endpoint": format!("{base}/access/v1/evaluations"),
            "search_subject_endpoint": format!("{base}/access/v1/search/subject"),
            "search_resource_endpoint": format!("{base}/access/v1/search/resource"),
            "search_action_endpoint": format!("{base}/access/v1/search/action"),
            "capabilities": [],
            "portcullis_limits": {
                "max_body_bytes": portcullis::api::MAX_BODY_BYTES,
                "max_evaluations": portcullis::api::MAX_EVALUATIONS,
                "max_page_limit": portcullis::api::MAX_PAGE_LIMIT,
                "default_page_limit": portcullis::api::DEFAULT_PAGE_LIMIT,
                "max_search_candidates": portcullis::search::MAX_SEARCH_CANDIDATES,
                "max_request_time_ms": 2000,
                "body_read_timeout_ms": 10000,
            },
        })
    );
    // Every endpoint it names answers (here: 401 without a credential).
    for path in [
        "/access/v1/evaluation",
        "/access/v1/evaluations",
        "/access/v1/search/subject",
        "/access/v1/search/resource",
        "/access/v1/search/action",
    ] {
        assert_eq!(
            post(port, path, As::Nobody, &json!({})).status,
            401,
            "{path}"
        );
    }
    let post_metadata = send(port, "POST", "/.well-known/authzen-configuration", &[], b"");
    assert_eq!(post_metadata.status, 405);

    // Without --api-url there is no metadata to give (the specification's
    // URLs are absolute): 404, never URLs made of the request's Host.
    let unnamed = start(dir.path(), None);
    let response = send(
        unnamed.api_port(),
        "GET",
        "/.well-known/authzen-configuration",
        &[("Host", "evil.example")],
        b"",
    );
    assert_eq!(response.status, 404, "{}", response.text());
    assert!(!response.text().contains("evil"), "{}", response.text());
}

/// `type:id` as the API's resource (the type alone when there is no `:`).
fn resource_entity(resource: &str) -> (String, String) {
    match resource.split_once(':') {
        Some((kind, id)) => (kind.to_owned(), id.to_owned()),
        None => (resource.to_owned(), String::new()),
    }
}

#[test]
fn the_documents_cases_decide_the_same_through_the_api() {
    let dir = policies("gateway.internal");
    let service = start(dir.path(), None);
    let port = service.api_port();
    let cases: PathBuf = repo_path("policies/tests/documents.yaml");
    let outcomes = run_case_file(&cases).unwrap();
    let mut compared = 0;
    for outcome in outcomes {
        let Some((subject, groups)) = &outcome.caller else {
            continue;
        };
        let decision = &outcome.decision;
        // The resource/action form, and every request a grant decided (a
        // route that needs a grant, mapped onto its resource and action).
        let granted_route = outcome.request.is_none()
            || matches!(
                decision.reason.code(),
                "granted" | "no_grant" | "explicit_deny"
            ) && decision.route.is_some();
        let (Some(resource), Some(action)) = (&decision.resource, &decision.action) else {
            continue;
        };
        if !granted_route {
            continue;
        }
        let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
        let user = token_with_groups(subject, &groups);
        let (kind, id) = resource_entity(resource);
        let asked = evaluation(subject, action, &kind, &id);
        for who in [As::Bearer(&user), As::Key(REPORTING_KEY)] {
            // The trusted caller knows no token groups: compare only
            // where the case has none.
            if matches!(who, As::Key(_)) && !groups.is_empty() {
                continue;
            }
            let response = post(port, EVALUATION, who, &asked);
            assert_eq!(
                response.status,
                200,
                "{}: {}",
                outcome.name,
                response.text()
            );
            assert_eq!(
                json_of(&response)["decision"],
                json!(decision.is_allowed()),
                "{} (line {}): the engine says {:?}",
                outcome.name,
                outcome.line,
                decision.reason
            );
            compared += 1;
        }
    }
    assert!(compared >= 30, "only {compared} comparisons");
}

#[test]
fn callers_that_cannot_load_are_reported_with_file_and_line() {
    let dir = policies("gateway.internal");
    std::fs::write(dir.path().join("short.key"), "too-short").unwrap();
    std::fs::write(
        dir.path().join("bad-callers.yaml"),
        "callers:
  - name: reporting
    token_subject: someone
  - name: two-credentials
    token_subject: svc-two
    api_key: { secret_file: limited.key }
  - name: inline
    api_key: { secret_file: short.key }
  - name: missing-file
    api_key: { secret_file: nowhere.key }
  - name: not-a-name
    client_certificate: { dns_name: \"*.example.com\" }
  - name: same-key-as-limited
    api_key: { secret_file: limited.key }
",
    )
    .unwrap();
    let errors = portcullis::policy::load_policies(dir.path())
        .expect_err("bad callers loaded")
        .to_string();
    for (line, needle) in [
        (2, "caller \"reporting\" is already defined at"),
        (
            4,
            "exactly one of api_key, client_certificate, token_subject",
        ),
        (8, "at least 16 are needed"),
        (10, "cannot read"),
        (12, "is not a DNS name"),
        (13, "the same credential as the caller at"),
    ] {
        let wanted = format!("bad-callers.yaml:{line}:");
        assert!(
            errors
                .lines()
                .any(|l| l.contains(&wanted) && l.contains(needle)),
            "no {wanted} {needle:?} in:\n{errors}"
        );
    }
    // A caller's key is never inline: the field does not exist.
    std::fs::write(
        dir.path().join("bad-callers.yaml"),
        "callers:\n  - name: inline\n    api_key: { key: reporting-key-0123456789abcdef }\n",
    )
    .unwrap();
    let errors = portcullis::policy::load_policies(dir.path())
        .expect_err("an inline key loaded")
        .to_string();
    assert!(errors.contains("bad-callers.yaml:3:"), "{errors}");
}

/// A grant under a condition, decided through the API: the condition reads
/// the request's resource properties and context; a property it needs that
/// the request lacks makes it false; a search never returns the grant.
#[test]
fn conditions_read_the_requests_attributes() {
    let dir = policies("gateway.example");
    std::fs::write(
        dir.path().join("conditional.yaml"),
        "grants:
  - subject: erin
    role: editor
    resource: \"note:*\"
    condition: resource.properties.ownerID == subject.id && context.properties.channel in [\"web\", \"cli\"]
",
    )
    .unwrap();
    let service = start(dir.path(), None);
    let port = service.api.port();
    let ask = |owner: Option<&str>, channel: &str| {
        let mut resource = json!({ "type": "note", "id": "7" });
        if let Some(owner) = owner {
            resource["properties"] = json!({ "ownerID": owner });
        }
        let body = json!({
            "subject": { "type": "user", "id": "erin" },
            "action": { "name": "write" },
            "resource": resource,
            "context": { "channel": channel },
        });
        let response = post(port, EVALUATION, As::Key(REPORTING_KEY), &body);
        assert_eq!(response.status, 200, "{response:?}");
        json_of(&response)["decision"].clone()
    };
    assert_eq!(ask(Some("erin"), "web"), json!(true));
    assert_eq!(ask(Some("frank"), "web"), json!(false));
    assert_eq!(ask(Some("erin"), "email"), json!(false));
    assert_eq!(ask(None, "web"), json!(false));

    let search = json!({
        "subject": { "type": "user", "id": "erin" },
        "action": { "name": "write" },
        "resource": { "type": "note" },
    });
    let (found, _) = search_all(port, "/access/v1/search/resource", &search, 10);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn searches_judge_conditions_with_the_request_and_the_clock() {
    let dir = policies("gateway.example");
    std::fs::write(
        dir.path().join("conditional.yaml"),
        "grants:
  - subject: erin
    role: editor
    resource: note:1
    condition: context.time < timestamp(\"2020-01-01T00:00:00Z\")
  - subject: erin
    role: viewer
    resource: note:2
    condition: context.properties.channel == \"web\"
  - subject: erin
    role: editor
    resource: note:3
    condition: resource.properties.ownerID == subject.id && action.properties.mode == \"draft\"
",
    )
    .unwrap();
    let service = start(dir.path(), None);
    let port = service.api_port();
    let names = |answer: &Value, field: &str| -> Vec<String> {
        answer["results"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r[field].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let search = |path: &str, body: Value| {
        let response = post(port, path, As::Key(REPORTING_KEY), &body);
        assert_eq!(response.status, 200, "{}", response.text());
        json_of(&response)
    };
    let actions = |resource: Value, context: Value| {
        let answer = search(
            "/access/v1/search/action",
            json!({
                "subject": { "type": "user", "id": "erin" },
                "resource": resource,
                "context": context,
            }),
        );
        names(&answer, "name")
    };
    // A time window that closed in 2020 is judged at the request's time:
    // its grant is no search result any more, as no evaluation allows it.
    assert_eq!(
        actions(json!({ "type": "note", "id": "1" }), json!({})),
        Vec::<String>::new()
    );
    // A condition on the context holds with the request's context only.
    assert_eq!(
        actions(
            json!({ "type": "note", "id": "2" }),
            json!({ "channel": "web" })
        ),
        ["read"]
    );
    assert_eq!(
        actions(
            json!({ "type": "note", "id": "2" }),
            json!({ "channel": "mail" })
        ),
        Vec::<String>::new()
    );
    // Subject and resource search return a grant under a condition when
    // the request's properties make it true (action properties too).
    let who = |resource_properties: Value, mode: &str| {
        let answer = search(
            "/access/v1/search/subject",
            json!({
                "subject": { "type": "user" },
                "action": { "name": "write", "properties": { "mode": mode } },
                "resource": { "type": "note", "id": "3", "properties": resource_properties },
            }),
        );
        names(&answer, "id")
    };
    // (carol, a global admin, may write anything.)
    assert_eq!(
        who(json!({ "ownerID": "erin" }), "draft"),
        ["carol", "erin"]
    );
    assert_eq!(who(json!({ "ownerID": "erin" }), "final"), ["carol"]);
    assert_eq!(who(json!({ "ownerID": "frank" }), "draft"), ["carol"]);
    let which = search(
        "/access/v1/search/resource",
        json!({
            "subject": { "type": "user", "id": "erin" },
            "action": { "name": "write", "properties": { "mode": "draft" } },
            "resource": { "type": "note", "properties": { "ownerID": "erin" } },
        }),
    );
    assert_eq!(names(&which, "id"), ["3"]);
}

#[test]
fn search_work_per_page_is_bounded_whatever_the_denies() {
    let dir = policies("gateway.example");
    let grants: String = (0..20_000)
        .map(|i| format!("subject:dan viewer document:{i}\n"))
        .collect();
    std::fs::write(dir.path().join("dan.grants"), grants).unwrap();
    std::fs::write(
        dir.path().join("dan.yaml"),
        "denies:\n  - { name: no-dan, subject: dan, resource: \"document:*\" }\n",
    )
    .unwrap();
    let service = start(dir.path(), None);
    let port = service.api_port();
    let request = json!({
        "subject": { "type": "user", "id": "dan" },
        "action": { "name": "read" },
        "resource": { "type": "document" },
        "page": { "limit": 1 },
    });
    // The deny removes every candidate: a page confirms at most its
    // budget of them, then ends with a token to go on from.
    let response = post(
        port,
        "/access/v1/search/resource",
        As::Key(REPORTING_KEY),
        &request,
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let first = json_of(&response);
    assert_eq!(first["results"], json!([]));
    let token = first["page"]["next_token"].as_str().unwrap_or_default();
    assert!(
        !token.is_empty(),
        "a page that spent its budget must say where to go on"
    );
    // Walking on ends, with nothing found: the token alone (no limit) is
    // enough, it carries its own.
    let mut token = token.to_owned();
    let mut pages = 1;
    while !token.is_empty() {
        let mut next = request.clone();
        next["page"] = json!({ "token": token });
        let response = post(
            port,
            "/access/v1/search/resource",
            As::Key(REPORTING_KEY),
            &next,
        );
        assert_eq!(response.status, 200, "{}", response.text());
        let answer = json_of(&response);
        assert_eq!(answer["results"], json!([]));
        token = answer["page"]["next_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        pages += 1;
        assert!(pages < 10, "pagination does not end");
    }

    // A zero limit is refused, not a page that never advances.
    let mut zero = request.clone();
    zero["page"] = json!({ "limit": 0 });
    let response = post(
        port,
        "/access/v1/search/resource",
        As::Key(REPORTING_KEY),
        &zero,
    );
    assert_eq!(response.status, 400, "{}", response.text());
}

#[test]
fn search_about_another_subject_needs_any_subject() {
    let dir = policies("gateway.example");
    let service = start(dir.path(), None);
    let port = service.api_port();
    // erin's caller may search, but not about anyone else.
    let erin = token("erin");
    let about = |subject: &str, path: &str| {
        let mut body = json!({
            "subject": { "type": "user", "id": subject },
            "action": { "name": "read" },
            "resource": { "type": "document", "id": "1" },
        });
        if path.ends_with("/resource") {
            body["resource"] = json!({ "type": "document" });
        }
        if path.ends_with("/action") {
            body.as_object_mut().map(|b| b.remove("action"));
        }
        if path.ends_with("/subject") {
            body["subject"] = json!({ "type": "user" });
        }
        post(port, path, As::Bearer(&erin), &body).status
    };
    assert_eq!(about("erin", "/access/v1/search/resource"), 200);
    assert_eq!(about("erin", "/access/v1/search/action"), 200);
    assert_eq!(about("alice", "/access/v1/search/resource"), 403);
    assert_eq!(about("alice", "/access/v1/search/action"), 403);
    // Who may read document 1 is about every subject.
    assert_eq!(about("", "/access/v1/search/subject"), 403);
}
