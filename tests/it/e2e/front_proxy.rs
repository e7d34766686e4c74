//! End to end through a real Envoy: a raw HTTP/1.1 client → Envoy running
//! `envoy/front-proxy.yaml` (rendered, not copied) → ext_authz gRPC → the real
//! `portcullis` binary on the bundled `policies/` → on allow, a recording
//! upstream.
//!
//! Every probe carries a unique `x-e2e-probe` header, so "the upstream never
//! saw it" is exact even while other tests share the same stack. A test group
//! collects every failed probe and reports them together with the tail of
//! Envoy's and Portcullis's logs.
//!
//! Without Envoy the tests fail (see `support::find_envoy`).

use crate::support;

use std::sync::Arc;

use crate::support::{
    alg_none_token, assert_envoy_validates, b64url, bearer, corpus, demo_claims, demo_signer,
    find_envoy, mint, render_envoy_config, repo_path, sign, test_secret, token, Claims, EnvoyPorts,
    Stack, AUDIENCE, ISSUER,
};
use jsonwebtoken::Algorithm;
use portcullis::cases::Deployment;
use serde_json::{json, Value};

use crate::support::probes::{Expect, Probes, SUBJECT};
use Expect::{Allow, Deny, NotAllowed, OneOf};

// ---------------------------------------------------------------------------

/// The template names every placeholder once rendered and binds loopback
/// only. Needs no Envoy.
#[test]
fn front_proxy_template_renders_to_loopback_only() {
    let rendered = render_envoy_config(
        &repo_path("envoy/front-proxy.yaml"),
        &EnvoyPorts {
            listen: 40001,
            admin: 40002,
            portcullis: 40003,
            upstream: 40004,
            demo_upstream: 40005,
        },
    );
    for port in 40001..=40005 {
        assert!(
            rendered.contains(&format!("port_value: {port}")),
            "port {port} not rendered"
        );
    }
    for line in rendered.lines().filter(|l| l.contains("address:")) {
        assert!(
            !line.contains("0.0.0.0") && !line.contains("::"),
            "non-loopback bind: {line}"
        );
    }
}

/// `envoy --mode validate` accepts the rendered template.
#[test]
fn front_proxy_template_validates() {
    let envoy = find_envoy();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("front-proxy.yaml");
    let rendered = render_envoy_config(
        &repo_path("envoy/front-proxy.yaml"),
        &EnvoyPorts::ephemeral(9191, 8081),
    );
    std::fs::write(&path, rendered).expect("write");
    assert_envoy_validates(&envoy, &path);
}

/// For each person in policies/grants.yaml, what they may and may not do.
/// The decision case corpus (`policies/tests/*.yaml`), written once and run
/// here through the real front proxy with real tokens: every request case
/// must come back exactly as the engine decided it (allow with the same
/// subject upstream, or Portcullis's deny with the same status), unless the
/// case says how the front proxy changes it (`through: { front_proxy: ... }`,
/// with the reason). Cases the front proxy cannot express (another
/// application's context extension, a mesh identity) are counted as skipped.
#[test]
fn the_case_corpus_through_the_front_proxy() {
    let stack = Stack::shared();
    let mut p = Probes::new(&stack);
    corpus::send_through(
        &mut p,
        Deployment::FrontProxy,
        |request| {
            let front_proxy_context = request.context_extensions.is_empty()
                || request.context_extensions.get("app").map(|a| &**a) == Some("documents")
                    && request.context_extensions.len() == 1;
            front_proxy_context && request.destination.is_empty()
        },
        50,
    );
    p.finish();
}

#[test]
fn public_unknown_and_anonymous_requests() {
    let stack = Stack::shared();
    let mut p = Probes::new(&stack);
    let alice = bearer(&token("alice"));

    p.check(
        "health, no token",
        "GET",
        b"/healthz",
        None,
        &[],
        Allow(None),
    );
    p.check(
        "health by POST (no such route)",
        "POST",
        b"/healthz",
        None,
        &[],
        OneOf(&[401, 403]),
    );
    p.check(
        "unknown route",
        "GET",
        b"/admin",
        Some(&alice),
        &[],
        Deny(403),
    );
    p.check(
        "unknown sub-resource",
        "GET",
        b"/documents/1/history",
        Some(&alice),
        &[],
        Deny(403),
    );
    p.check("root", "GET", b"/", Some(&alice), &[], Deny(403));
    p.check(
        "prefix look-alike",
        "GET",
        b"/documentsX",
        Some(&alice),
        &[],
        Deny(403),
    );

    let (resp, _) = p.check(
        "read, no token",
        "GET",
        b"/documents/1",
        None,
        &[],
        Deny(401),
    );
    // RFC 6750 §3.1: a request with no credentials gets a challenge but no
    // error code.
    match resp.header("www-authenticate") {
        None => p.fail("read, no token: no www-authenticate header".to_string()),
        Some(challenge) if challenge.contains("error=") => p.fail(format!(
            "read, no token: the challenge carries an error code: {challenge}"
        )),
        Some(_) => {}
    }
    p.check("list, no token", "GET", b"/documents", None, &[], Deny(401));
    p.check(
        "create, no token",
        "POST",
        b"/documents",
        None,
        &[],
        Deny(401),
    );
    p.finish();
}

/// Only Portcullis names the subject the application sees.
#[test]
fn subject_header_cannot_be_forged() {
    let stack = Stack::shared();
    let mut p = Probes::new(&stack);
    let alice = bearer(&token("alice"));
    let erin = bearer(&token("erin"));
    let a = Some(alice.as_str());

    p.check(
        "alice claims to be carol",
        "GET",
        b"/documents/1",
        a,
        &[(SUBJECT, "carol")],
        Allow(Some("alice")),
    );
    p.check(
        "alice sends two forged copies",
        "GET",
        b"/documents/1",
        a,
        &[(SUBJECT, "carol"), (SUBJECT, "bob")],
        Allow(Some("alice")),
    );
    p.check(
        "alice forges with odd case",
        "GET",
        b"/documents/1",
        a,
        &[("X-Portcullis-Subject", "carol")],
        Allow(Some("alice")),
    );
    p.check(
        "forged subject on public health",
        "GET",
        b"/healthz",
        None,
        &[(SUBJECT, "carol")],
        Allow(None),
    );
    // Envoy refuses header names with underscores (REJECT_REQUEST) before
    // ext_authz: never upstream, even on a public route.
    p.check(
        "underscore look-alike on public health",
        "GET",
        b"/healthz",
        None,
        &[("x_portcullis_subject", "carol")],
        OneOf(&[400]),
    );
    p.check(
        "erin claims to be carol on doc 1",
        "GET",
        b"/documents/1",
        Some(&erin),
        &[(SUBJECT, "carol")],
        Deny(403),
    );
    p.check(
        "anonymous claims to be carol",
        "GET",
        b"/documents/1",
        None,
        &[(SUBJECT, "carol")],
        Deny(401),
    );
    p.finish();
}

/// Every token below is aimed at GET /documents/1, which a valid alice token
/// may read: any 2xx here is a real bypass.
#[test]
fn token_tricks_are_unauthorized() {
    let stack = Stack::shared();
    let mut p = Probes::new(&stack);
    let doc = b"/documents/1";
    let unauthorized = |p: &mut Probes<Arc<Stack>>, label: &str, authorization: &str| {
        p.check(label, "GET", doc, Some(authorization), &[], Deny(401));
    };
    // A bearer token was presented and refused: RFC 6750 §3.1 invalid_token.
    let invalid_token = |p: &mut Probes<Arc<Stack>>, label: &str, authorization: &str| {
        let (resp, _) = p.check(label, "GET", doc, Some(authorization), &[], Deny(401));
        let challenge = resp.header("www-authenticate");
        if resp.status == 401 && !challenge.is_some_and(|c| c.contains("invalid_token")) {
            p.fail(format!(
                "{label}: www-authenticate {challenge:?} does not say invalid_token"
            ));
        }
    };

    let valid = demo_claims("alice").to_json();
    invalid_token(&mut p, "alg none", &bearer(&alg_none_token(&valid)));
    let none_upper = format!(
        "{}.{}.",
        b64url(br#"{"alg":"None","typ":"JWT"}"#),
        b64url(valid.to_string().as_bytes())
    );
    invalid_token(&mut p, "alg None", &bearer(&none_upper));
    invalid_token(
        &mut p,
        "wrong secret",
        &bearer(&sign(
            &valid,
            Algorithm::HS256,
            b"not-the-demo-secret-but-long-enough-0123456789",
        )),
    );
    invalid_token(
        &mut p,
        "HS512 with the right secret (only HS256 allowed)",
        &bearer(&sign(&valid, Algorithm::HS512, test_secret().as_bytes())),
    );
    let real = token("alice");
    let (head, rest) = real.split_once('.').unwrap_or_default();
    let (_, sig) = rest.split_once('.').unwrap_or_default();
    let carol_payload = b64url(demo_claims("carol").to_json().to_string().as_bytes());
    invalid_token(
        &mut p,
        "payload swapped under alice's signature",
        &bearer(&format!("{head}.{carol_payload}.{sig}")),
    );

    let expired = Claims {
        exp_offset: Some(-120),
        iat_offset: Some(-600),
        ..demo_claims("alice")
    };
    invalid_token(
        &mut p,
        "expired beyond the 30 s leeway",
        &bearer(&expired.sign(demo_signer())),
    );
    let early = Claims {
        nbf_offset: Some(3600),
        ..demo_claims("alice")
    };
    invalid_token(
        &mut p,
        "not valid for another hour",
        &bearer(&early.sign(demo_signer())),
    );
    invalid_token(
        &mut p,
        "wrong issuer",
        &bearer(&mint(
            Some("alice"),
            None,
            Some(300),
            None,
            Some("https://evil.example.com"),
            Some(AUDIENCE),
        )),
    );
    invalid_token(
        &mut p,
        "wrong audience",
        &bearer(&mint(
            Some("alice"),
            None,
            Some(300),
            None,
            Some(ISSUER),
            Some("other-api"),
        )),
    );
    invalid_token(
        &mut p,
        "no exp",
        &bearer(&mint(
            Some("alice"),
            None,
            None,
            None,
            Some(ISSUER),
            Some(AUDIENCE),
        )),
    );
    invalid_token(
        &mut p,
        "no sub",
        &bearer(&mint(
            None,
            None,
            Some(300),
            None,
            Some(ISSUER),
            Some(AUDIENCE),
        )),
    );
    invalid_token(&mut p, "garbage", "Bearer not-a-jwt");
    invalid_token(&mut p, "three empty segments", "Bearer ..");
    invalid_token(&mut p, "three junk segments", "Bearer a.b.c");
    unauthorized(&mut p, "empty bearer", "Bearer ");
    unauthorized(&mut p, "basic scheme", "Basic YWxpY2U6cGFzc3dvcmQ=");
    unauthorized(&mut p, "token without a scheme", &real);

    let carol = bearer(&token("carol"));
    p.check(
        "two Authorization headers (alice, carol)",
        "GET",
        doc,
        Some(&bearer(&real)),
        &[("Authorization", &carol)],
        Deny(401),
    );
    p.check(
        "two Authorization headers (garbage, alice)",
        "GET",
        doc,
        Some("Bearer a.b.c"),
        &[("Authorization", &bearer(&real))],
        Deny(401),
    );

    // ~20 KB, validly signed: a size limit must stop it (Envoy itself may
    // answer 431 first).
    let mut huge = demo_claims("alice");
    huge.extra
        .insert("padding".into(), json!("x".repeat(15_000)));
    let huge = huge.sign(demo_signer());
    assert!(
        huge.len() >= 19_000,
        "huge token is only {} bytes",
        huge.len()
    );
    p.check(
        "huge token",
        "GET",
        doc,
        Some(&bearer(&huge)),
        &[],
        OneOf(&[401, 431]),
    );

    // Positive controls: the scheme is case-insensitive (RFC 6750 / 7235), and
    // the 30 s leeway is honoured.
    p.check(
        "lowercase bearer",
        "GET",
        doc,
        Some(&format!("bearer {real}")),
        &[],
        Allow(Some("alice")),
    );
    p.check(
        "uppercase BEARER",
        "GET",
        doc,
        Some(&format!("BEARER {real}")),
        &[],
        Allow(Some("alice")),
    );
    let just_expired = Claims {
        exp_offset: Some(-10),
        iat_offset: Some(-600),
        ..demo_claims("alice")
    };
    p.check(
        "expired 10 s ago, within leeway",
        "GET",
        doc,
        Some(&bearer(&just_expired.sign(demo_signer()))),
        &[],
        Allow(Some("alice")),
    );
    p.finish();
}

/// Paths bent to reach a document the caller may not touch. Envoy normalizes
/// some (e.g. `/documents/1/../2` → `/documents/2`), refuses others (escaped
/// slashes → 400); whatever happens, nothing forbidden reaches the upstream.
#[test]
fn path_tricks_never_reach_a_forbidden_document() {
    let stack = Stack::shared();
    let mut p = Probes::new(&stack);

    // bob may read document 1 only.
    let bob = bearer(&token("bob"));
    let b = Some(bob.as_str());
    let bob_to_doc_2: &[&[u8]] = &[
        b"/documents/1/../2",
        b"/documents/1/%2e%2e/2",
        b"/documents/1/%2E%2E/2",
        b"/documents/1%2F..%2F2",
        b"/documents/1/..%2f2",
        b"/documents/1/..%5c2",
        b"//documents/2",
        b"/documents//2",
        b"/documents/./2",
        b"/documents/2.",
        b"/documents/2;x",
        b"/documents/1/..;/2",
        b"/Documents/2",
        b"/DOCUMENTS/2",
        b"/documents/1\\..\\2",
        b"/documents/%32",
        b"/documents/%2e%2e/documents/2",
        b"/documents/1/%252e%252e/2",
        b"/documents/2/",
        b"/documents/2%20",
        b"/documents/2%00",
        b"/documents/2?id=1",
        b"/documents/1#/../2",
        b"/healthz/../documents/2",
        b"http://localhost/documents/2",
    ];
    for path in bob_to_doc_2 {
        p.check("bob → doc 2", "GET", path, b, &[], NotAllowed);
    }
    // Nothing bob sent anywhere in this process ever reached a document 2.
    let leaked: Vec<String> = stack
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.header_values(SUBJECT).contains(&"bob") && r.path_only().contains('2'))
        .map(|r| r.path)
        .collect();
    if !leaked.is_empty() {
        p.fail(format!("bob's requests reached the upstream at {leaked:?}"));
    }

    // Controls: bob's token works, and a path that normalizes onto doc 1
    // reaches the upstream as doc 1 (Portcullis decided on what the
    // application sees).
    p.check(
        "bob → doc 1",
        "GET",
        b"/documents/1",
        b,
        &[],
        Allow(Some("bob")),
    );
    let (_, seen) = p.check(
        "bob → doc 2/../1",
        "GET",
        b"/documents/2/../1",
        b,
        &[],
        Allow(Some("bob")),
    );
    if seen.iter().any(|r| r.path != "/documents/1") {
        p.fail(format!(
            "doc 2/../1 reached the upstream as {:?}",
            seen.iter().map(|r| &r.path).collect::<Vec<_>>()
        ));
    }

    // alice owns doc 1 but only edits doc 2: no delete on 2 via 1.
    let alice = bearer(&token("alice"));
    p.check(
        "alice deletes 2 via 1",
        "DELETE",
        b"/documents/1/../2",
        Some(&alice),
        &[],
        NotAllowed,
    );
    p.check(
        "alice deletes 2 via %2e%2e",
        "DELETE",
        b"/documents/1/%2e%2e/2",
        Some(&alice),
        &[],
        NotAllowed,
    );

    // mallory owns doc 3 but is suspended: no spelling of it gets through.
    let mallory = bearer(&token("mallory"));
    let m = Some(mallory.as_str());
    let mallory_to_doc_3: &[&[u8]] = &[
        b"/documents/3",
        b"/documents/%33",
        b"//documents/3",
        b"/documents/./3",
        b"/documents/1/../3",
        b"/documents/3/",
        b"/documents/3?x=1",
        b"/documents/3/comments",
        b"/DOCUMENTS/3",
        b"/documents/03",
        b"/healthz/../documents/3",
        b"/healthz/..%2fdocuments/3",
        b"/healthz%2f..%2fdocuments/3",
    ];
    for path in mallory_to_doc_3 {
        p.check("mallory → doc 3", "GET", path, m, &[], NotAllowed);
        p.check("mallory deletes doc 3", "DELETE", path, m, &[], NotAllowed);
    }
    // Anonymous through the public route's prefix.
    p.check(
        "anonymous via /healthz/..",
        "GET",
        b"/healthz/../documents/3",
        None,
        &[],
        NotAllowed,
    );

    p.finish();
}

/// No Portcullis, no entry: Envoy answers 503 (status_on_error) and the
/// upstream never hears of it. Needs a stack of its own.
#[test]
fn fails_closed_when_portcullis_is_down() {
    let mut stack = Stack::start();
    let alice = bearer(&token("alice"));
    {
        let mut p = Probes::new(&stack);
        p.check(
            "before: alice reads 1",
            "GET",
            b"/documents/1",
            Some(&alice),
            &[],
            Allow(Some("alice")),
        );
        p.finish();
    }
    stack.portcullis.kill();
    let mut p = Probes::new(&stack);
    for attempt in 1..=3 {
        p.check(
            &format!("after kill #{attempt}: alice reads 1"),
            "GET",
            b"/documents/1",
            Some(&alice),
            &[],
            OneOf(&[503]),
        );
    }
    p.check(
        "after kill: public health",
        "GET",
        b"/healthz",
        None,
        &[],
        OneOf(&[503]),
    );
    p.finish();
}

/// Dry-run mode through the real Envoy: a request the policy denies goes
/// through, is marked for the client, and is recorded as would-deny in the
/// metrics and the decision log. A bad path is still refused.
#[test]
fn dry_run_lets_denied_requests_through_and_records_them() {
    let dir = support::copy_policies(|name, text| {
        if name != "documents.yaml" {
            return text;
        }
        let dry = text.replace(
            "    issuers: [demo-idp]\n",
            "    issuers: [demo-idp]\n    mode: dry_run\n",
        );
        assert!(dry.contains("mode: dry_run"));
        dry
    });
    let stack = Stack::start_with_policies(dir.path());
    let mut p = Probes::new(&stack);
    let bob = bearer(&token("bob"));
    // bob may only read document 1; in dry run his delete reaches the upstream.
    let (response, _) = p.check(
        "dry run: bob deletes 1",
        "DELETE",
        b"/documents/1",
        Some(&bob),
        &[],
        Allow(Some("bob")),
    );
    assert_eq!(
        response.header("x-portcullis-dry-run"),
        Some("would-deny; status=403; reason=no_grant"),
        "{:?}",
        response.headers
    );
    let (response, _) = p.check(
        "dry run: no token",
        "GET",
        b"/documents/1",
        None,
        &[],
        Allow(None),
    );
    assert_eq!(
        response.header("x-portcullis-dry-run"),
        Some("would-deny; status=401; reason=missing_credentials")
    );
    let (response, _) = p.check(
        "dry run: an allowed request is not marked",
        "GET",
        b"/documents/1",
        Some(&bob),
        &[],
        Allow(Some("bob")),
    );
    assert_eq!(response.header("x-portcullis-dry-run"), None);
    // A path Portcullis refuses is refused in dry run too: it is refused
    // before any application is chosen, so nothing is dry-run about it.
    p.check(
        "dry run: a bad path is still refused",
        "GET",
        b"/documents/1.",
        Some(&bob),
        &[],
        Deny(400),
    );
    p.finish();

    let metrics = support::send_raw(stack.portcullis.admin_port(), "GET", b"/metrics", &[]).text();
    let would_deny = metrics
        .lines()
        .find(|l| l.starts_with("portcullis_checks_total{entry=\"ext_authz\",application=\"documents\",decision=\"would_deny\",reason=\"no_grant\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(would_deny, Some(1.0), "{metrics}");
    // The line reaches stderr through the log queue: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let logged = loop {
        let logged = stack
            .portcullis
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|l| l["fields"]["decision"] == "would_deny" && l["fields"]["subject"] == "bob");
        if logged || std::time::Instant::now() > deadline {
            break logged;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        logged,
        "no would_deny line in the log:\n{}",
        stack.portcullis.log()
    );
}

// ---------------------------------------------------------------------------
// envoy/sidecar.yaml: the plain sidecar's health route
// ---------------------------------------------------------------------------

/// Every check Portcullis has answered, over all labels.
fn checks_answered(admin_port: u16) -> f64 {
    support::send_raw(admin_port, "GET", b"/metrics", &[])
        .text()
        .lines()
        .filter(|l| l.starts_with("portcullis_checks_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The shipped plain sidecar (`envoy/sidecar.yaml`, its addresses moved to
/// 127.0.0.1) skips Portcullis only for reads of exactly `/healthz`: a write
/// to it, or a query after it, is asked about; and a client's
/// `x-portcullis-subject` never reaches the application, exempt or not.
#[test]
fn the_plain_sidecar_exempts_only_exact_health_reads() {
    let envoy_bin = find_envoy();
    let upstream = support::EchoUpstream::start();
    let portcullis = support::Portcullis::start(&support::bundled_policies());
    let text =
        std::fs::read_to_string(repo_path("envoy/sidecar.yaml")).expect("envoy/sidecar.yaml");
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).expect("envoy/sidecar.yaml");
    config["admin"]["address"]["socket_address"]["port_value"] = 0.into();
    let listener = &mut config["static_resources"]["listeners"][0]["address"]["socket_address"];
    listener["address"] = "127.0.0.1".into();
    listener["port_value"] = 0.into();
    for cluster in config["static_resources"]["clusters"]
        .as_sequence_mut()
        .expect("no clusters")
    {
        let port = match cluster["name"].as_str() {
            Some("portcullis") => portcullis.port(),
            Some("app") => upstream.port(),
            other => panic!("envoy/sidecar.yaml has a cluster {other:?} this test does not know"),
        };
        cluster["type"] = "STATIC".into();
        if let Some(c) = cluster.as_mapping_mut() {
            c.remove("dns_lookup_family");
        }
        let address = &mut cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
            ["endpoint"]["address"]["socket_address"];
        address["address"] = "127.0.0.1".into();
        address["port_value"] = port.into();
    }
    let rendered = serde_yaml::to_string(&config).unwrap();
    let envoy = support::Envoy::start(&envoy_bin, &rendered);
    let port = envoy.listener_port("inbound");
    let logs = || {
        format!(
            "--- envoy ---\n{}\n--- portcullis ---\n{}",
            support::tail(&envoy.log(), 20),
            support::tail(&portcullis.log(), 20)
        )
    };
    let admin = portcullis.admin_port();
    for (method, path, asked) in [
        ("GET", &b"/healthz"[..], false),
        ("GET", b"/healthz?verbose=1", true),
        ("POST", b"/healthz", true),
        ("DELETE", b"/healthz", true),
    ] {
        let before = checks_answered(admin);
        let probe = format!("sidecar-health-{method}-{}", String::from_utf8_lossy(path));
        let response = support::send_raw(
            port,
            method,
            path,
            &[
                ("x-portcullis-subject", "admin"),
                (support::probes::PROBE, &probe),
            ],
        );
        let shown = format!("{method} {}", String::from_utf8_lossy(path));
        assert_eq!(
            checks_answered(admin) > before,
            asked,
            "{shown}: asked Portcullis? (status {})\n{}",
            response.status,
            logs()
        );
        for seen in upstream.requests_with_header(support::probes::PROBE, &probe) {
            assert_eq!(
                seen.header(SUBJECT),
                None,
                "{shown}: a forged subject reached the application\n{}",
                logs()
            );
        }
    }
}
