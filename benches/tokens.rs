//! Token verification, cold and cached, for HS256, RS256 and ES256.
//!
//! Keys are generated here at start-up and written, with a policy naming
//! one issuer per algorithm, into a temporary directory that the one loader
//! reads, exactly as `serve` would; nothing is committed. "cold" is
//! `Issuers::verify` (parse, pick the key, check the signature and claims
//! every time); "cached" is `TokenCache::verify` after a first verification
//! (SHA-256 of the token and a cache lookup), which is what the server pays
//! for a token it has seen before.

use std::path::Path;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use portcullis::policy::{load_policies, PolicySet};
use portcullis::token_cache::TokenCache;
use portcullis_testkit::{Claims, Signer};
use tempfile::TempDir;

/// The benches' clock. The cache expires entries by the wall clock at the
/// token's `exp`, so `exp` must lie beyond today: 2096.
const NOW: u64 = 4_000_000_000;
const AUDIENCE: &str = "bench-api";
const SECRET: &str = "bench-only-hmac-secret-0123456789abcdef0123456789";

/// An issuer of the bench policy and its key.
struct Issuer {
    name: &'static str,
    signer: Signer,
}

fn write(dir: &Path, name: &str, contents: &str) {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// A policy directory with issuers `hs`, `rs` and `es`, and their keys.
fn setup() -> (TempDir, PolicySet, Vec<Issuer>) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (rsa, ec) = (Signer::rs256(), Signer::es256());
    write(dir.path(), "hmac.secret", SECRET);
    write(dir.path(), "rsa.pem", rsa.public_pem());
    write(dir.path(), "ec.pem", ec.public_pem());
    let issuer = |name: &str, alg: &str, key: &str| {
        format!(
            "  - name: {name}\n    issuer: https://{name}.idp.test\n    audiences: [{AUDIENCE}]\n    algorithms: [{alg}]\n    key: {{ {key} }}\n    subject_prefix: \"{name}:\"\n    groups_claim: groups\n    groups_allowed: [staff, readers, editors, \"g*\"]\n"
        )
    };
    let policy = format!(
        "issuers:\n{}{}{}applications:\n  - name: api\n    select:\n      path_prefixes: [/api]\n    issuers: [hs, rs, es]\n    routes:\n      - name: whoami\n        methods: [GET]\n        path: /api/whoami\n        access: authenticated\n",
        issuer("hs", "HS256", "secret_file: hmac.secret"),
        issuer("rs", "RS256", "public_key_file: rsa.pem"),
        issuer("es", "ES256", "public_key_file: ec.pem"),
    );
    write(dir.path(), "policy.yaml", &policy);
    let policy = load_policies(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let issuers = vec![
        Issuer {
            name: "hs",
            signer: Signer::hs256(SECRET.as_bytes()),
        },
        Issuer {
            name: "rs",
            signer: rsa,
        },
        Issuer {
            name: "es",
            signer: ec,
        },
    ];
    (dir, policy, issuers)
}

fn token(issuer: &Issuer) -> String {
    let iss = format!("https://{}.idp.test", issuer.name);
    let claims = Claims {
        iat_offset: Some(-60),
        ..Claims::new(&iss, AUDIENCE, "user42", NOW)
            .groups(&["staff", "readers"])
            .ttl(3600)
    };
    claims.sign(&issuer.signer)
}

fn verify(c: &mut Criterion) {
    let (_dir, policy, signers) = setup();
    let issuers = &policy.issuers;
    let all: Vec<usize> = (0..issuers.len()).collect();
    let mut group = c.benchmark_group("token");
    for issuer in &signers {
        let token = token(issuer);
        let alg = format!("{:?}", issuer.signer.alg());
        let verified = issuers
            .verify(&all, &token, NOW)
            .unwrap_or_else(|e| panic!("{alg} token does not verify: {e}"));
        assert_eq!(&*verified.subject, "user42");
        group.bench_with_input(BenchmarkId::new("cold", &alg), &token, |b, t| {
            b.iter(|| issuers.verify(black_box(&all), black_box(t), NOW))
        });
        let cache = TokenCache::new(1_000);
        cache
            .verify(issuers, &policy.version, &all, &token, NOW)
            .unwrap_or_else(|e| panic!("{alg} token does not verify through the cache: {e}"));
        group.bench_with_input(BenchmarkId::new("cached", &alg), &token, |b, t| {
            b.iter(|| cache.verify(issuers, &policy.version, black_box(&all), black_box(t), NOW))
        });
        assert!(cache.stats().hits() > 0, "the cached bench never hit");
    }
    // A malformed token is refused before any signature work.
    let garbage = "eyJhbGciOiJIUzI1NiJ9.not-json.c2ln";
    assert!(issuers.verify(&all, garbage, NOW).is_err());
    group.bench_function("cold/malformed", |b| {
        b.iter(|| issuers.verify(black_box(&all), black_box(garbage), NOW))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = verify
}
criterion_main!(benches);
