//! The AuthZEN Authorization API 1.0 certification scenario
//! (openid/authzen, `certification/authorization-api-1_0-scenario.md`)
//! against the real `portcullis serve`, over a socket on 127.0.0.1, with
//! the scenario's fixture as a Portcullis policy
//! (`tests/authzen-certification/certification.yaml`), whose conditions
//! read subject, resource and action properties.
//!
//! One check per test id of the scenario's Test ID Matrix (36) and one for
//! its transport requirements (C-5): 37. Each asserts what the scenario's
//! harness validates (status, structure, the fixture decisions, expected
//! search results). The scenario's harness speaks HTTPS to a deployed PDP;
//! here the listener is plain HTTP on loopback, and discovery is checked
//! against the configured `--api-url`.

use crate::support::{repo_path, send, Portcullis, Response};
use serde_json::{json, Value};

const KEY: &str = "certification-harness-key-0123456789";
const BASE: &str = "https://pdp.example.com";

struct Harness {
    portcullis: Portcullis,
}

impl Harness {
    fn start() -> (tempfile::TempDir, Harness) {
        let dir = tempfile::tempdir().unwrap();
        let fixture = repo_path("tests/authzen-certification/certification.yaml");
        std::fs::copy(&fixture, dir.path().join("certification.yaml"))
            .unwrap_or_else(|e| panic!("{}: {e}", fixture.display()));
        std::fs::write(dir.path().join("harness.key"), KEY).unwrap();
        std::fs::write(
            dir.path().join("issuer.key"),
            "records-issuer-secret-0123456789abcdef",
        )
        .unwrap();
        let portcullis = Portcullis::start_with_api(dir.path(), &[("PORTCULLIS_API_URL", BASE)]);
        (dir, Harness { portcullis })
    }

    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        send(self.portcullis.api_port(), method, path, headers, body)
    }

    /// A POST as the harness sends it: JSON, with its API key as a bearer
    /// credential (as the interop harness does).
    fn post_raw(&self, path: &str, body: &[u8], extra: &[(&str, &str)]) -> Response {
        let authorization = format!("Bearer {KEY}");
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("Authorization", authorization.as_str()),
        ];
        headers.extend_from_slice(extra);
        self.send("POST", path, &headers, body)
    }

    fn post(&self, path: &str, body: &Value) -> Response {
        self.post_raw(path, body.to_string().as_bytes(), &[])
    }
}

const EVALUATION: &str = "/access/v1/evaluation";
const EVALUATIONS: &str = "/access/v1/evaluations";
const SEARCH_SUBJECT: &str = "/access/v1/search/subject";
const SEARCH_RESOURCE: &str = "/access/v1/search/resource";
const SEARCH_ACTION: &str = "/access/v1/search/action";

type Check = Result<(), String>;

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Check {
    if condition {
        Ok(())
    } else {
        Err(message())
    }
}

/// A 200 with a JSON body (`application/json`).
fn ok_json(response: &Response) -> Result<Value, String> {
    ensure(response.status == 200, || {
        format!("status {}: {}", response.status, response.text())
    })?;
    ensure(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        || format!("content type {:?}", response.header("content-type")),
    )?;
    response
        .json()
        .ok_or_else(|| format!("not JSON: {}", response.text()))
}

/// A 200 whose `decision` is `want`.
fn decision(response: &Response, want: bool) -> Check {
    let body = ok_json(response)?;
    ensure(body["decision"] == json!(want), || {
        format!("decision {} not {want}", body["decision"])
    })
}

fn status(response: &Response, want: u16) -> Check {
    ensure(response.status == want, || {
        format!("status {} not {want}: {}", response.status, response.text())
    })
}

/// The decisions of an evaluations answer, which must have `n` items.
fn decisions(response: &Response, n: usize) -> Result<Vec<Value>, String> {
    let body = ok_json(response)?;
    let items = body["evaluations"]
        .as_array()
        .ok_or_else(|| format!("no evaluations array: {body}"))?;
    ensure(items.len() == n, || {
        format!("{} items, not {n}", items.len())
    })?;
    items
        .iter()
        .map(|item| match &item["decision"] {
            Value::Bool(_) => Ok(item["decision"].clone()),
            other => Err(format!("decision {other} is not a boolean")),
        })
        .collect()
}

/// The results of a search answer, each checked for its fields.
fn results(response: &Response, fields: &[&str]) -> Result<Vec<Value>, String> {
    let body = ok_json(response)?;
    let results = body["results"]
        .as_array()
        .ok_or_else(|| format!("no results array: {body}"))?;
    for result in results {
        for field in fields {
            ensure(result[*field].is_string(), || {
                format!("result {result} has no string {field}")
            })?;
        }
    }
    if let Some(page) = body.get("page") {
        ensure(page.is_object(), || format!("page {page} is not an object"))?;
        if let Some(token) = page.get("next_token") {
            ensure(token.is_string(), || format!("next_token {token}"))?;
        }
    }
    Ok(results.clone())
}

fn includes(results: &[Value], field: &str, wanted: &[&str]) -> Check {
    for want in wanted {
        ensure(results.iter().any(|r| r[field] == json!(want)), || {
            format!("{want} not among {results:?}")
        })?;
    }
    Ok(())
}

fn eval(subject: &str, action: &str, resource: &str) -> Value {
    json!({
        "subject": { "type": "user", "id": subject },
        "action": { "name": action },
        "resource": { "type": "record", "id": resource },
    })
}

fn scenario(h: &Harness) -> Vec<(&'static str, Check)> {
    let mut checks: Vec<(&'static str, Check)> = Vec::new();
    let mut check = |id: &'static str, outcome: Check| checks.push((id, outcome));

    // Basic: Access Evaluation.
    check(
        "C-2-2-1",
        decision(
            &h.post(EVALUATION, &eval("alice", "read", "record-1")),
            true,
        ),
    );
    check(
        "C-2-2-2",
        decision(
            &h.post(EVALUATION, &eval("bob", "write", "record-1")),
            false,
        ),
    );
    let mut with_context = eval("alice", "read", "record-1");
    with_context["context"] = json!({ "time": "2025-06-27T18:03-07:00", "ip": "192.168.1.1" });
    check(
        "C-2-2-3",
        decision(&h.post(EVALUATION, &with_context), true),
    );
    let mut archived = eval("alice", "write", "record-2");
    archived["resource"]["properties"] = json!({ "status": "archived" });
    check("C-2-2-4", decision(&h.post(EVALUATION, &archived), false));
    let mut admin = eval("bob", "write", "record-2");
    admin["subject"]["properties"] = json!({ "role": "admin" });
    admin["resource"]["properties"] = json!({ "status": "archived" });
    check("C-2-2-5", decision(&h.post(EVALUATION, &admin), true));
    let delete = |soft: bool| {
        let mut request = eval("alice", "delete", "record-1");
        request["action"]["properties"] = json!({ "soft": soft });
        request
    };
    check(
        "C-2-2-6",
        decision(&h.post(EVALUATION, &delete(true)), true),
    );
    check(
        "C-2-2-7",
        decision(&h.post(EVALUATION, &delete(false)), false),
    );
    let mut extra = eval("alice", "read", "record-1");
    extra["subject"]["properties"] = json!({ "department": "Sales", "role": "manager" });
    extra["action"]["properties"] = json!({ "method": "GET" });
    extra["resource"]["properties"] = json!({ "status": "active", "owner": "bob" });
    check("C-2-2-8", decision(&h.post(EVALUATION, &extra), true));
    let mut unknown = eval("alice", "read", "record-1");
    unknown["foo"] = json!("bar");
    unknown["futureField"] = json!({ "nested": true });
    check("C-2-2-9", decision(&h.post(EVALUATION, &unknown), true));
    // C-2-3: a boolean decision; a context, if any, is an object.
    check("C-2-3", {
        let response = h.post(EVALUATION, &eval("alice", "read", "record-1"));
        ok_json(&response).and_then(|body| {
            ensure(body["decision"].is_boolean(), || format!("{body}"))?;
            ensure(body.get("context").is_none_or(Value::is_object), || {
                format!("{body}")
            })
        })
    });
    // C-2-4: errors are 400.
    check("C-2-4", {
        let mut outcome = Ok(());
        let base = eval("alice", "read", "record-1");
        let mut bad: Vec<Value> = Vec::new();
        for field in ["subject", "action", "resource"] {
            let mut request = base.clone();
            request.as_object_mut().map(|r| r.remove(field));
            bad.push(request);
        }
        for (field, sub) in [
            ("subject", "type"),
            ("subject", "id"),
            ("action", "name"),
            ("resource", "type"),
            ("resource", "id"),
        ] {
            let mut request = base.clone();
            request[field].as_object_mut().map(|o| o.remove(sub));
            bad.push(request);
        }
        let mut mistyped = base.clone();
        mistyped["subject"] = json!("alice");
        bad.push(mistyped);
        let mut mistyped = base.clone();
        mistyped["action"]["name"] = json!(123);
        bad.push(mistyped);
        for request in &bad {
            outcome = outcome.and_then(|()| {
                status(&h.post(EVALUATION, request), 400).map_err(|e| format!("{request}: {e}"))
            });
        }
        let authorization = format!("Bearer {KEY}");
        let text = h.send(
            "POST",
            EVALUATION,
            &[
                ("Content-Type", "text/plain"),
                ("Authorization", authorization.as_str()),
            ],
            base.to_string().as_bytes(),
        );
        outcome
            .and_then(|()| status(&text, 400).map_err(|e| format!("content type: {e}")))
            .and_then(|()| status(&h.post_raw(EVALUATION, b"{\"subject\":", &[]), 400))
            .and_then(|()| status(&h.post_raw(EVALUATION, b"", &[]), 400))
    });
    // C-2-5: X-Request-ID echoed; its absence no failure.
    check("C-2-5", {
        let body = eval("alice", "read", "record-1").to_string();
        let with = h.post_raw(EVALUATION, body.as_bytes(), &[("X-Request-ID", "cert-42")]);
        decision(&with, true)
            .and_then(|()| {
                ensure(with.header("x-request-id") == Some("cert-42"), || {
                    format!("x-request-id {:?}", with.header("x-request-id"))
                })
            })
            .and_then(|()| decision(&h.post_raw(EVALUATION, body.as_bytes(), &[]), true))
    });
    // C-2-6: the same answer every time.
    check(
        "C-2-6",
        (0..5).try_for_each(|_| {
            decision(
                &h.post(EVALUATION, &eval("alice", "read", "record-1")),
                true,
            )
        }),
    );

    // Batch: Access Evaluations.
    check("C-3-2-1", {
        let request = json!({
            "subject": { "type": "user", "id": "alice" },
            "action": { "name": "read" },
            "evaluations": [
                { "resource": { "type": "record", "id": "record-1" } },
                { "resource": { "type": "record", "id": "record-2" } },
            ],
        });
        decisions(&h.post(EVALUATIONS, &request), 2).map(|_| ())
    });
    let expect = |request: Value, want: &[bool]| -> Check {
        let got = decisions(&h.post(EVALUATIONS, &request), want.len())?;
        let want: Vec<Value> = want.iter().map(|w| json!(w)).collect();
        ensure(got == want, || format!("decisions {got:?} not {want:?}"))
    };
    check(
        "C-3-2-2",
        expect(
            json!({
                "subject": { "type": "user", "id": "bob" },
                "resource": { "type": "record", "id": "record-1" },
                "evaluations": [
                    { "action": { "name": "read" } },
                    { "action": { "name": "write" } },
                ],
            }),
            &[true, false],
        ),
    );
    check(
        "C-3-2-3",
        expect(
            json!({
                "subject": { "type": "user", "id": "alice" },
                "action": { "name": "write" },
                "evaluations": [
                    { "resource": { "type": "record", "id": "record-1", "properties": { "status": "active" } } },
                    { "resource": { "type": "record", "id": "record-2", "properties": { "status": "archived" } } },
                ],
            }),
            &[true, false],
        ),
    );
    check(
        "C-3-2-4",
        expect(
            json!({
                "action": { "name": "write" },
                "resource": { "type": "record", "id": "record-2", "properties": { "status": "archived" } },
                "evaluations": [
                    { "subject": { "type": "user", "id": "alice" } },
                    { "subject": { "type": "user", "id": "bob", "properties": { "role": "admin" } } },
                ],
            }),
            &[false, true],
        ),
    );
    check(
        "C-3-2-5",
        expect(
            json!({
                "evaluations": [
                    eval("alice", "read", "record-1"),
                    eval("bob", "write", "record-1"),
                ],
            }),
            &[true, false],
        ),
    );
    check("C-3-2-6", {
        let request = json!({
            "subject": { "type": "user", "id": "alice" },
            "action": { "name": "read" },
            "context": { "time": "2025-06-27T18:03-07:00" },
            "evaluations": [
                { "resource": { "type": "record", "id": "record-1" } },
                {
                    "resource": { "type": "record", "id": "record-2" },
                    "context": { "time": "2025-06-27T19:00-07:00", "source": "batch-override" },
                },
            ],
        });
        decisions(&h.post(EVALUATIONS, &request), 2).map(|_| ())
    });
    check(
        "C-3-2-7",
        expect(
            json!({
                "subject": { "type": "user", "id": "alice" },
                "action": { "name": "write" },
                "resource": { "type": "record" },
                "evaluations": [
                    { "resource": { "id": "record-1", "properties": { "status": "active" } } },
                    { "resource": { "type": "record", "id": "record-2", "properties": { "status": "archived" } } },
                ],
            }),
            &[true, false],
        ),
    );
    // C-3-3: as many answers as items, in order, each a boolean decision;
    // no top-level decision.
    check("C-3-3", {
        let request = json!({
            "evaluations": [
                eval("bob", "write", "record-1"),
                eval("alice", "read", "record-1"),
                eval("bob", "read", "record-1"),
            ],
        });
        let response = h.post(EVALUATIONS, &request);
        decisions(&response, 3).and_then(|got| {
            ensure(got == [json!(false), json!(true), json!(true)], || {
                format!("{got:?}")
            })
        })
    });
    // C-3-4: an item's error is its own deny; no or empty evaluations is
    // one evaluation.
    check("C-3-4", {
        let item_error = json!({
            "subject": { "type": "user", "id": "alice" },
            "action": { "name": "read" },
            "evaluations": [
                { "resource": { "type": "record", "id": "record-1" } },
                {},
            ],
        });
        let got = decisions(&h.post(EVALUATIONS, &item_error), 2);
        got.and_then(|got| ensure(got == [json!(true), json!(false)], || format!("{got:?}")))
            .and_then(|()| {
                decision(
                    &h.post(EVALUATIONS, &eval("alice", "read", "record-1")),
                    true,
                )
            })
            .and_then(|()| {
                let mut empty = eval("alice", "read", "record-1");
                empty["evaluations"] = json!([]);
                decision(&h.post(EVALUATIONS, &empty), true)
            })
    });

    // Search.
    let who_reads = json!({
        "subject": { "type": "user" },
        "action": { "name": "read" },
        "resource": { "type": "record", "id": "record-1" },
    });
    check(
        "C-4-2-1",
        results(&h.post(SEARCH_SUBJECT, &who_reads), &["type", "id"]).and_then(|r| {
            ensure(r.iter().all(|s| s["type"] == json!("user")), || {
                format!("{r:?}")
            })?;
            includes(&r, "id", &["alice", "bob"])
        }),
    );
    let mut with_context = who_reads.clone();
    with_context["context"] = json!({ "time": "2025-06-27T18:03-07:00" });
    check(
        "C-4-2-2",
        results(&h.post(SEARCH_SUBJECT, &with_context), &["type", "id"])
            .and_then(|r| includes(&r, "id", &["alice", "bob"])),
    );
    // C-4-2-3: the harness omits subject.id; one sent anyway is ignored.
    let mut with_id = who_reads.clone();
    with_id["subject"]["id"] = json!("ignored");
    check(
        "C-4-2-3",
        results(&h.post(SEARCH_SUBJECT, &with_id), &["type", "id"])
            .and_then(|r| includes(&r, "id", &["alice", "bob"])),
    );
    check(
        "C-4-2-4",
        results(
            &h.post(
                SEARCH_SUBJECT,
                &json!({
                    "subject": { "type": "user" },
                    "action": { "name": "write" },
                    "resource": { "type": "record", "id": "record-2", "properties": { "status": "archived" } },
                }),
            ),
            &["type", "id"],
        )
        .and_then(|r| includes(&r, "id", &["bob"])),
    );
    let alice_reads = json!({
        "subject": { "type": "user", "id": "alice" },
        "action": { "name": "read" },
        "resource": { "type": "record" },
    });
    check(
        "C-4-3-1",
        results(&h.post(SEARCH_RESOURCE, &alice_reads), &["type", "id"]).and_then(|r| {
            ensure(r.iter().all(|s| s["type"] == json!("record")), || {
                format!("{r:?}")
            })?;
            includes(&r, "id", &["record-1"])
        }),
    );
    let mut with_id = alice_reads.clone();
    with_id["resource"]["id"] = json!("ignored");
    check(
        "C-4-3-2",
        results(&h.post(SEARCH_RESOURCE, &with_id), &["type", "id"])
            .and_then(|r| includes(&r, "id", &["record-1"])),
    );
    check(
        "C-4-3-3",
        results(
            &h.post(
                SEARCH_RESOURCE,
                &json!({
                    "subject": { "type": "user", "id": "bob", "properties": { "role": "admin" } },
                    "action": { "name": "write" },
                    "resource": { "type": "record" },
                }),
            ),
            &["type", "id"],
        )
        .and_then(|r| includes(&r, "id", &["record-2"])),
    );
    let alice_on_1 = json!({
        "subject": { "type": "user", "id": "alice" },
        "resource": { "type": "record", "id": "record-1" },
    });
    check(
        "C-4-4-1",
        results(&h.post(SEARCH_ACTION, &alice_on_1), &["name"])
            .and_then(|r| includes(&r, "name", &["read", "write"])),
    );
    let mut with_context = alice_on_1.clone();
    with_context["context"] = json!({ "time": "2025-06-27T18:03-07:00" });
    check(
        "C-4-4-2",
        results(&h.post(SEARCH_ACTION, &with_context), &["name"])
            .and_then(|r| includes(&r, "name", &["read", "write"])),
    );
    check(
        "C-4-4-3",
        results(
            &h.post(
                SEARCH_ACTION,
                &json!({
                    "subject": { "type": "user", "id": "bob", "properties": { "role": "admin" } },
                    "resource": { "type": "record", "id": "record-2", "properties": { "status": "archived" } },
                }),
            ),
            &["name"],
        )
        .and_then(|r| includes(&r, "name", &["write"])),
    );
    // C-4-5: a limit is accepted; a token sent alone (no limit) pages on,
    // and the last page's token is empty.
    check("C-4-5", {
        let mut limited = who_reads.clone();
        limited["page"] = json!({ "limit": 1 });
        let response = h.post(SEARCH_SUBJECT, &limited);
        let mut seen = Vec::new();
        let mut outcome = results(&response, &["type", "id"]).map(|r| seen.extend(r));
        let mut token = ok_json(&response)
            .ok()
            .and_then(|b| b["page"]["next_token"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut pages = 0;
        while outcome.is_ok() && !token.is_empty() && pages < 10 {
            pages += 1;
            let mut next = who_reads.clone();
            next["page"] = json!({ "token": token });
            let response = h.post(SEARCH_SUBJECT, &next);
            outcome = results(&response, &["type", "id"]).and_then(|r| {
                ensure(r.len() <= 1, || {
                    format!("a page of {} with limit 1", r.len())
                })?;
                seen.extend(r);
                Ok(())
            });
            token = ok_json(&response)
                .ok()
                .and_then(|b| b["page"]["next_token"].as_str().map(str::to_owned))
                .unwrap_or_default();
        }
        outcome
            .and_then(|()| ensure(pages >= 1, || "no second page with limit 1".into()))
            .and_then(|()| includes(&seen, "id", &["alice", "bob"]))
    });
    // C-4-6: nothing found is an empty array, not an error.
    check("C-4-6", {
        let unknown_subject = json!({
            "subject": { "type": "user", "id": "nonexistent-user" },
            "resource": { "type": "record", "id": "record-1" },
        });
        let unknown_type = json!({
            "subject": { "type": "spaceship" },
            "action": { "name": "read" },
            "resource": { "type": "record", "id": "record-1" },
        });
        results(&h.post(SEARCH_ACTION, &unknown_subject), &["name"])
            .and_then(|r| ensure(r.is_empty(), || format!("{r:?}")))
            .and_then(|()| results(&h.post(SEARCH_SUBJECT, &unknown_type), &["id"]))
            .and_then(|r| ensure(r.is_empty(), || format!("{r:?}")))
    });
    // C-4-7: missing fields and sub-fields are 400.
    check("C-4-7", {
        let cases = [
            (
                SEARCH_SUBJECT,
                json!({ "subject": { "type": "user" }, "resource": { "type": "record", "id": "record-1" } }),
            ),
            (
                SEARCH_RESOURCE,
                json!({ "action": { "name": "read" }, "resource": { "type": "record" } }),
            ),
            (
                SEARCH_ACTION,
                json!({ "subject": { "type": "user", "id": "alice" } }),
            ),
            (
                SEARCH_SUBJECT,
                json!({ "subject": { "type": "user" }, "action": { "name": "read" }, "resource": { "type": "record" } }),
            ),
            (
                SEARCH_RESOURCE,
                json!({ "subject": { "type": "user" }, "action": { "name": "read" }, "resource": { "type": "record" } }),
            ),
        ];
        cases.iter().try_for_each(|(path, request)| {
            status(&h.post(path, request), 400).map_err(|e| format!("{path} {request}: {e}"))
        })
    });

    // C-5: JSON in, 200 JSON out, 400 for a missing field, the request id
    // echoed, unknown fields ignored (each also checked above, here on
    // every endpoint).
    check("C-5", {
        let endpoints = [
            (EVALUATION, eval("alice", "read", "record-1")),
            (EVALUATIONS, eval("alice", "read", "record-1")),
            (SEARCH_SUBJECT, who_reads.clone()),
            (SEARCH_RESOURCE, alice_reads.clone()),
            (SEARCH_ACTION, alice_on_1.clone()),
        ];
        endpoints.iter().try_for_each(|(path, request)| {
            let mut request = request.clone();
            request["unknown"] = json!({ "x": 1 });
            let response = h.post_raw(
                path,
                request.to_string().as_bytes(),
                &[("X-Request-ID", "c5")],
            );
            ok_json(&response)?;
            ensure(response.header("x-request-id") == Some("c5"), || {
                format!("{path}: no x-request-id")
            })?;
            let mut missing = request.clone();
            missing.as_object_mut().map(|r| r.remove("subject"));
            status(&h.post(path, &missing), 400).map_err(|e| format!("{path}: {e}"))
        })
    });

    // Discovery: the metadata, from the configured URL.
    check("C-6", {
        let response = h.send("GET", "/.well-known/authzen-configuration", &[], b"");
        ok_json(&response).and_then(|metadata| {
            ensure(metadata["policy_decision_point"] == json!(BASE), || {
                format!("{metadata}")
            })?;
            for field in [
                "access_evaluation_endpoint",
                "access_evaluations_endpoint",
                "search_subject_endpoint",
                "search_resource_endpoint",
                "search_action_endpoint",
            ] {
                ensure(
                    metadata[field]
                        .as_str()
                        .is_some_and(|url| url.starts_with(&format!("{BASE}/"))),
                    || format!("{field}: {}", metadata[field]),
                )?;
            }
            ensure(
                metadata["capabilities"]
                    .as_array()
                    .is_some_and(|c| c.iter().all(Value::is_string)),
                || format!("capabilities: {}", metadata["capabilities"]),
            )
        })
    });
    checks
}

#[test]
fn the_certification_scenario_passes_whole() {
    let (_dir, harness) = Harness::start();
    let checks = scenario(&harness);
    let passed = checks.iter().filter(|(_, outcome)| outcome.is_ok()).count();
    let failed: Vec<String> = checks
        .iter()
        .filter_map(|(id, outcome)| outcome.as_ref().err().map(|e| format!("{id}: {e}")))
        .collect();
    eprintln!(
        "AuthZEN 1.0 certification scenario: {passed}/{} passed",
        checks.len()
    );
    assert_eq!(checks.len(), 37, "the scenario has 37 tests");
    assert!(
        failed.is_empty(),
        "{passed}/37 passed; failed:\n{}",
        failed.join("\n")
    );
}
