//! Instruction counts of the hot path, under Valgrind's callgrind (gungraun).
//!
//! On a shared, noisy 2-core machine wall-clock benches wander from run to
//! run; instruction counts do not. Each bench runs once under callgrind and
//! counts only the benchmarked call: the setup (loading policies, building
//! the grant index, warming the token cache) is an argument expression and
//! is not counted.
//!
//! Needs `gungraun-runner` at the version of the `gungraun` dev-dependency
//! (`make bench` installs it when missing) and valgrind. Run alone with
//! `cargo bench --bench hot_path`.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use gungraun::{library_benchmark, library_benchmark_group, main};
use jsonwebtoken::{EncodingKey, Header};
use portcullis::adapter::ResponseConfig;
use portcullis::engine::{self, Credential, Decision, KnownPrincipal, RequestAttrs};
use portcullis::path::{normalize, NormalPath, PathError};
use portcullis::policy::{load_policies, GrantIndex, Holder, PolicySet, ResourceKey};
use portcullis::server::Authorizer;
use portcullis::token::{Principal, TokenCache};

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
/// Beyond today: the token cache expires entries by the wall clock at `exp`.
const NOW: u64 = 4_000_000_000;

fn bundled() -> PolicySet {
    std::env::set_var("PORTCULLIS_DEMO_SECRET", SECRET);
    load_policies(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The bundled policy with its grants replaced by `count` grants over 10k
/// subjects (as in benches/decide.rs), and a request by user42.
fn decide_setup(count: usize, method: &str, path: &str) -> (PolicySet, RequestAttrs) {
    let mut policy = bundled();
    let role = |name: &str| {
        policy
            .roles
            .iter()
            .position(|r| r.name == name)
            .unwrap_or_else(|| panic!("no role {name}")) as u32
    };
    let (viewer, editor) = (role("viewer"), role("editor"));
    let mut index = GrantIndex::new();
    let documents = (count / 10).max(1);
    for i in 0..count {
        let subject = format!("user{}", i % 10_000);
        let resource = format!("document:{}", i % documents);
        let role = if i % 3 == 0 { editor } else { viewer };
        index.insert(
            Holder::Subject(&subject),
            ResourceKey::Exact(&resource),
            role,
        );
    }
    policy.grants = Box::new(index);
    let request = RequestAttrs {
        method: method.into(),
        path: path.into(),
        host: "documents.example.com".into(),
        credential: Credential::Bearer("verified".into()),
        ..Default::default()
    };
    (policy, request)
}

fn user42() -> KnownPrincipal {
    KnownPrincipal(Arc::new(Principal {
        issuer: Arc::from("demo-idp"),
        subject: "user42".into(),
        groups: vec!["readers".into()],
        expires_at: u64::MAX,
    }))
}

#[library_benchmark]
#[bench::plain("/documents/42")]
#[bench::query("/documents/42/comments?page=2")]
#[bench::escaped("/%64ocuments/4%32/comments")]
#[bench::dot_segment("/documents/1/../2")]
fn path_normalize(path: &str) -> Result<NormalPath, PathError> {
    black_box(normalize(black_box(path)))
}

#[library_benchmark]
#[bench::allow_1k(decide_setup(1_000, "GET", "/documents/42"))]
#[bench::deny_1k(decide_setup(1_000, "DELETE", "/documents/43"))]
#[bench::allow_100k(decide_setup(100_000, "GET", "/documents/42"))]
#[bench::deny_100k(decide_setup(100_000, "DELETE", "/documents/43"))]
fn decide(input: (PolicySet, RequestAttrs)) -> Decision {
    let caller = user42();
    let decision = engine::decide(black_box(&input.0), black_box(&input.1), &caller, 0);
    // Dropping a 100k-grant index is not part of a decision.
    std::mem::forget(input);
    black_box(decision)
}

/// An authorizer on the bundled policy whose token cache already holds
/// alice's token, and a CheckRequest from alice.
fn check_setup(method: &str, path: &str) -> (Authorizer, CheckRequest) {
    let tokens = TokenCache::new(1_000);
    let authorizer = Authorizer::new(
        Arc::new(ArcSwap::from_pointee(bundled())),
        tokens,
        ResponseConfig::default(),
        Arc::new(|| NOW),
    )
    .with_allow_log_rate(0.0);
    let claims = serde_json::json!({
        "iss": "https://idp.example.com", "aud": "documents-api", "sub": "alice", "exp": NOW + 3600,
    });
    let token = jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    host: "documents.example.com".into(),
                    headers: HashMap::from([
                        ("authorization".to_owned(), format!("Bearer {token}")),
                        ("x-request-id".to_owned(), "bench-request".to_owned()),
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: HashMap::from([("app".to_owned(), "documents".to_owned())]),
            ..Default::default()
        }),
    };
    // Verify once, so the measured check is a cache hit as in production.
    let _ = authorizer.check_request(&request);
    (authorizer, request)
}

#[library_benchmark]
#[bench::allow(check_setup("GET", "/documents/1"))]
#[bench::deny(check_setup("DELETE", "/documents/2"))]
fn check_request(input: (Authorizer, CheckRequest)) -> CheckResponse {
    let (_, response) = input.0.check_request(black_box(&input.1));
    // Dropping the authorizer and its policy is not part of a check.
    std::mem::forget(input);
    black_box(response)
}

library_benchmark_group!(
    name = hot_path,
    benchmarks = [path_normalize, decide, check_request]
);

main!(library_benchmark_groups = hot_path);
