//! `decide()` against grant sources of growing size: the time must stay flat.
//!
//! The bundled documents policy is loaded, then its grants are replaced by
//! an index of N grants spread over 10k subjects and N/10 documents, built
//! in code so the bench measures deciding, not YAML parsing. Tokens are out
//! of the picture: the caller is a verified principal.

use std::path::Path;
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use portcullis::engine::{self, Credential, KnownPrincipal, RequestAttrs};
use portcullis::policy::{load_policies, GrantIndex, Holder, PolicySet, ResourceKey};
use portcullis::token::Principal;

fn policy_with_grants(count: usize) -> PolicySet {
    std::env::set_var(
        "PORTCULLIS_DEMO_SECRET",
        "bench-secret-0123456789abcdef0123456789",
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut policy = load_policies(&dir).unwrap_or_else(|e| panic!("{e}"));
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
    policy
}

fn request(method: &str, path: &str) -> RequestAttrs {
    RequestAttrs {
        method: method.into(),
        path: path.into(),
        host: "documents.example.com".into(),
        credential: Credential::Bearer("verified".into()),
        ..Default::default()
    }
}

fn decide(c: &mut Criterion) {
    let caller = KnownPrincipal(Arc::new(Principal {
        issuer: Arc::from("demo-idp"),
        subject: "user42".into(),
        groups: vec!["readers".into()],
        expires_at: u64::MAX,
    }));
    let mut group = c.benchmark_group("decide");
    for count in [1_000usize, 100_000, 1_000_000] {
        let policy = policy_with_grants(count);
        // user42 holds document:42 in every size (i = 42 is a grant).
        let allow = request("GET", "/documents/42");
        let deny = request("DELETE", "/documents/43");
        assert!(engine::decide(&policy, &allow, &caller, 0).is_allowed());
        assert!(!engine::decide(&policy, &deny, &caller, 0).is_allowed());
        group.bench_with_input(BenchmarkId::new("allow", count), &allow, |b, r| {
            b.iter(|| engine::decide(black_box(&policy), black_box(r), &caller, 0))
        });
        group.bench_with_input(BenchmarkId::new("deny", count), &deny, |b, r| {
            b.iter(|| engine::decide(black_box(&policy), black_box(r), &caller, 0))
        });
    }
    group.finish();
}

fn normalize(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize");
    for path in [
        "/documents/42",
        "/documents/42/comments?page=2",
        "/%64ocuments/4%32/comments",
    ] {
        group.bench_with_input(BenchmarkId::from_parameter(path), path, |b, p| {
            b.iter(|| portcullis::path::normalize(black_box(p)))
        });
    }
    group.finish();
}

criterion_group!(benches, decide, normalize);
criterion_main!(benches);
