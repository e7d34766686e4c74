//! Adapter tests: hand-built CheckRequests through the adapter and engine,
//! checking the CheckResponse Envoy would act on.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use portcullis::adapter::ResponseConfig;
use portcullis::engine::{Decision, Reason};
use portcullis::policy::load_policies;
use portcullis::server::Authorizer;
use portcullis::token_cache::TokenCache;
use portcullis_testkit::{connection_check, Check, Claims, Signer};

const SECRET: &str = "adapter-test-secret-0123456789abcdef-xyz";
const NOW: u64 = 1_800_000_000;

fn authorizer() -> &'static Authorizer {
    static AUTHORIZER: OnceLock<(tempfile::TempDir, Authorizer)> = OnceLock::new();
    let (_, authorizer) = AUTHORIZER.get_or_init(|| {
        let dir = portcullis_testkit::bundled_with_secret(SECRET);
        let policy = load_policies(dir.path()).unwrap();
        let authorizer = Authorizer::new(
            Arc::new(ArcSwap::from_pointee(policy)),
            TokenCache::new(1000),
            ResponseConfig::default(),
            Arc::new(|| NOW),
        );
        (dir, authorizer)
    });
    authorizer
}

/// A demo-issuer token for `sub`, issued 10 s before [`NOW`].
fn token(sub: &str, groups: &[&str]) -> String {
    let claims = Claims {
        iat_offset: Some(-10),
        ..Claims::demo(sub, NOW).groups(groups).ttl(600)
    };
    claims.sign(&Signer::hs256(SECRET.as_bytes()))
}

/// A documents request with `headers` (no context extension yet).
fn http(method: &str, path: &str, headers: &[(&str, &str)]) -> Check {
    Check::http(method, path)
        .host("documents.example.com")
        .headers(headers)
}

fn request(http: Check, context: &[(&str, &str)]) -> CheckRequest {
    context
        .iter()
        .fold(http, |check, (key, value)| check.context(key, value))
        .build()
}

fn check(request: &CheckRequest) -> (Arc<Decision>, CheckResponse) {
    portcullis_testkit::ready(authorizer().check_request(request))
}

fn bearer(sub: &str) -> String {
    portcullis_testkit::bearer(&token(sub, &[]))
}

/// (HTTP status, headers, body) of a denied response; panics on an allow.
fn denied(response: &CheckResponse) -> (i32, HashMap<String, String>, serde_json::Value) {
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("expected a denied response, got {response:?}");
    };
    let headers = denied
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    let body =
        serde_json::from_str(&denied.body).unwrap_or_else(|e| panic!("{e}: {}", denied.body));
    (denied.status.as_ref().map_or(0, |s| s.code), headers, body)
}

#[test]
fn allow_sets_the_subject_header_and_overwrites_the_clients() {
    let auth = bearer("alice");
    let req = request(
        http(
            "GET",
            "/documents/1",
            &[("authorization", &auth), ("x-portcullis-subject", "carol")],
        ),
        &[("app", "documents")],
    );
    let (decision, response) = check(&req);
    assert!(decision.is_allowed(), "{decision:?}");
    assert_eq!(response.status.as_ref().map(|s| s.code), Some(0));
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("expected OkResponse: {response:?}");
    };
    let set: Vec<_> = ok
        .headers
        .iter()
        .map(|h| {
            let header = h.header.as_ref().expect("empty header option");
            (header.key.as_str(), header.value.as_str(), h.append_action)
        })
        .collect();
    // 2 = OVERWRITE_IF_EXISTS_OR_ADD: the client's copy is replaced.
    assert_eq!(set, [("x-portcullis-subject", "alice", 2)]);
    // Every other `-`/`_` spelling is removed: frameworks that fold `_` into
    // `-` would read a client's `x_portcullis_subject` as the subject.
    let mut removed = ok.headers_to_remove.clone();
    removed.sort();
    assert_eq!(
        removed,
        [
            "x-portcullis_subject",
            "x_portcullis-subject",
            "x_portcullis_subject"
        ]
    );
}

#[test]
fn public_allow_removes_a_client_sent_subject_header() {
    let req = request(
        http("GET", "/healthz", &[("x-portcullis-subject", "carol")]),
        &[],
    );
    let (decision, response) = check(&req);
    assert_eq!(decision.reason, Reason::PublicRoute);
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("expected OkResponse: {response:?}");
    };
    assert!(ok.headers.is_empty());
    let mut removed = ok.headers_to_remove.clone();
    removed.sort();
    assert_eq!(
        removed,
        [
            "x-portcullis-subject",
            "x-portcullis_subject",
            "x_portcullis-subject",
            "x_portcullis_subject"
        ]
    );
}

#[test]
fn a_check_without_http_attributes_is_a_connection_check() {
    // What Envoy's network ext_authz filter sends for a TCP connection.
    let connection = connection_check(
        "spiffe://cluster.local/ns/app/sa/client",
        "spiffe://cluster.local/ns/db/sa/postgres",
        5432,
    );
    let (decision, response) = check(&connection);
    // The bundled policy allows no connection (policies/connections.yaml).
    assert_eq!(decision.reason.code(), "connection_denied");
    assert!(!decision.is_allowed());
    assert_eq!(response.status.as_ref().map(|s| s.code), Some(7));
    assert!(response.http_response.is_none(), "{response:?}");
    assert_eq!(
        decision.rule_text().as_deref(),
        Some("connection from spiffe://cluster.local/ns/app/sa/client to port 5432")
    );
    assert_eq!(
        decision.resource.as_deref(),
        Some("spiffe://cluster.local/ns/db/sa/postgres")
    );
}

#[test]
fn forbidden_is_403_with_a_json_body_and_no_internals() {
    let auth = bearer("alice");
    let req = request(
        http("DELETE", "/documents/2", &[("authorization", &auth)]),
        &[],
    );
    let (decision, response) = check(&req);
    assert_eq!(decision.reason, Reason::NoGrant);
    assert_eq!(response.status.as_ref().map(|s| s.code), Some(7));
    let (status, headers, body) = denied(&response);
    assert_eq!(status, 403);
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert!(!headers.contains_key("www-authenticate"));
    assert_eq!(body["error"], "forbidden");
    let text = body.to_string();
    for secret in ["alice", "document:2", "editor", "grant", &auth[7..]] {
        assert!(!text.contains(secret), "body leaks {secret:?}: {text}");
    }
}

#[test]
fn missing_token_is_401_with_a_bearer_challenge() {
    let req = request(http("GET", "/documents/1", &[]), &[]);
    let (_, response) = check(&req);
    assert_eq!(response.status.as_ref().map(|s| s.code), Some(16));
    let (status, headers, body) = denied(&response);
    assert_eq!(status, 401);
    assert_eq!(
        headers.get("www-authenticate").map(String::as_str),
        Some("Bearer realm=\"portcullis\"")
    );
    assert_eq!(body["error"], "unauthorized");
}

#[test]
fn bad_credentials_are_401_invalid_token() {
    let good = bearer("alice");
    let two = format!("{good},{good}");
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "two headers joined by Envoy",
            vec![("authorization", two.as_str())],
        ),
        (
            "basic scheme",
            vec![("authorization", "Basic YWxpY2U6cGFzcw==")],
        ),
        ("scheme only", vec![("authorization", "Bearer")]),
        ("garbage token", vec![("authorization", "Bearer not-a-jwt")]),
        (
            "token with a space",
            vec![("authorization", "Bearer a.b c.d")],
        ),
    ];
    for (name, headers) in cases {
        let req = request(http("GET", "/documents/1", &headers), &[]);
        let (decision, response) = check(&req);
        let (status, headers, _) = denied(&response);
        assert_eq!(status, 401, "{name}: {decision:?}");
        let challenge = headers.get("www-authenticate").cloned().unwrap_or_default();
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{name}: {challenge}"
        );
    }
}

#[test]
fn lower_case_bearer_scheme_is_accepted() {
    let auth = format!("bearer {}", token("bob", &[]));
    let req = request(
        http("GET", "/documents/1", &[("authorization", &auth)]),
        &[],
    );
    assert!(check(&req).0.is_allowed());
}

#[test]
fn headers_are_read_from_header_map_too() {
    let auth = bearer("bob");
    let h = http("GET", "/documents/1", &[]);
    let (decision, _) = check(&request(h.clone().raw_header("authorization", &auth), &[]));
    assert!(decision.is_allowed(), "{decision:?}");
    assert_eq!(decision.subject.as_deref(), Some("bob"));

    // Two Authorization lines in header_map are two headers.
    let other = bearer("carol");
    let two = h
        .clone()
        .raw_header("Authorization", &auth)
        .raw_header("Authorization", &other);
    let (decision, _) = check(&request(two, &[]));
    assert_eq!(decision.status_code(), 401, "{decision:?}");

    // One in each place, disagreeing, is two headers as well (the map
    // entry in `value`, as Envoy sends it without raw headers).
    let both = h.header("authorization", &auth).with_http(|http| {
        http.header_map = Some(HeaderMap {
            headers: vec![HeaderValue {
                key: "authorization".into(),
                value: other.clone(),
                ..Default::default()
            }],
        })
    });
    let (decision, _) = check(&request(both, &[]));
    assert_eq!(decision.status_code(), 401, "{decision:?}");
}

#[test]
fn path_tricks_never_reach_the_route() {
    // bob may read document 1 only; each path aims at document 2 or beyond.
    let auth = bearer("bob");
    let tricks = [
        "/documents/1/../2",
        "/documents/1/%2e%2e/2",
        "/documents/1/%2E%2E/2",
        "/documents/1/.%2e/2",
        "/documents/1%2F..%2F2",
        "/documents/1%2f..%2f2",
        "/documents/1/..%2f2",
        "/documents/1\\..\\2",
        "/documents/1%5C..%5C2",
        "/documents/2.",
        "/documents/2%2e",
        "/documents/2;1",
        "/documents/1;/../2",
        "//documents/2",
        "/documents//2",
        "/Documents/2",
        "/DOCUMENTS/2",
        "/documents/%32",
        "/documents/2%00",
        "/documents/2%0d%0a",
        "/documents/2\u{0}",
        "documents/2",
        "/documents/1/./../2",
    ];
    for path in tricks {
        let req = request(
            http("GET", path, &[("authorization", &auth)]),
            &[("app", "documents")],
        );
        let (decision, response) = check(&req);
        assert!(!decision.is_allowed(), "{path:?} was allowed: {decision:?}");
        let reached_doc2 =
            decision.resource.as_deref() == Some("document:2") && decision.is_allowed();
        assert!(!reached_doc2, "{path:?}");
        let (status, _, _) = denied(&response);
        assert!(matches!(status, 400 | 403), "{path:?}: {status}");
    }
    // A query is cut before matching: this is document 1, which bob may read.
    let req = request(
        http("GET", "/documents/1?/../2", &[("authorization", &auth)]),
        &[],
    );
    assert_eq!(check(&req).0.resource.as_deref(), Some("document:1"));
}

#[test]
fn huge_and_hostile_inputs_are_denied_not_panicked() {
    let huge_token = format!("Bearer {}", "a".repeat(100_000));
    let huge_path = format!("/documents/{}", "1".repeat(10_000));
    let cases = [
        http("GET", "/documents/1", &[("authorization", &huge_token)]),
        http("GET", &huge_path, &[("authorization", &bearer("carol"))]),
        http("", "", &[]),
        http("GET", "/documents/1", &[("authorization", "Bearer ....")]),
        http(
            "GET",
            "/documents/1",
            &[(
                "authorization",
                "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJjYXJvbCJ9.",
            )],
        ),
    ];
    for h in cases {
        let (decision, response) = check(&request(h, &[]));
        assert!(!decision.is_allowed());
        assert!(matches!(
            response.http_response,
            Some(HttpResponse::DeniedResponse(_))
        ));
    }
    // A CheckRequest without any attributes.
    let (decision, _) = check(&CheckRequest::default());
    assert!(!decision.is_allowed());
    assert_eq!(decision.reason.code(), "internal_error");
}

#[test]
fn groups_from_the_token_count() {
    let auth = format!("Bearer {}", token("dave", &["auditors"]));
    let req = request(
        http("GET", "/documents/77", &[("authorization", &auth)]),
        &[],
    );
    let (decision, _) = check(&req);
    assert!(decision.is_allowed(), "{decision:?}");
    let auth = format!("Bearer {}", token("dave", &[]));
    let req = request(
        http("GET", "/documents/77", &[("authorization", &auth)]),
        &[],
    );
    assert!(!check(&req).0.is_allowed());
}
