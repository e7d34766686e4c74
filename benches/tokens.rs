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
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::policy::{load_policies, PolicySet};
use portcullis::token_cache::TokenCache;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use tempfile::TempDir;

/// The benches' clock. The cache expires entries by the wall clock at the
/// token's `exp`, so `exp` must lie beyond today: 2096.
const NOW: u64 = 4_000_000_000;
const AUDIENCE: &str = "bench-api";
const SECRET: &str = "bench-only-hmac-secret-0123456789abcdef0123456789";

struct Signer {
    name: &'static str,
    alg: Algorithm,
    key: EncodingKey,
}

fn write(dir: &Path, name: &str, contents: &str) {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// A policy directory with issuers `hs`, `rs` and `es`, and their signers.
fn setup() -> (TempDir, PolicySet, Vec<Signer>) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let rsa = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
        .unwrap_or_else(|e| panic!("RSA key: {e}"));
    let rsa_private = rsa
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap_or_else(|e| panic!("RSA private PEM: {e}"));
    let rsa_public = rsa
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap_or_else(|e| panic!("RSA public PEM: {e}"));
    let ec = p256::SecretKey::random(&mut rand::thread_rng());
    let ec_private = ec
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap_or_else(|e| panic!("EC private PEM: {e}"));
    let ec_public = ec
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap_or_else(|e| panic!("EC public PEM: {e}"));

    write(dir.path(), "hmac.secret", SECRET);
    write(dir.path(), "rsa.pem", &rsa_public);
    write(dir.path(), "ec.pem", &ec_public);
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

    let signers = vec![
        Signer {
            name: "hs",
            alg: Algorithm::HS256,
            key: EncodingKey::from_secret(SECRET.as_bytes()),
        },
        Signer {
            name: "rs",
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_pem(rsa_private.as_bytes())
                .unwrap_or_else(|e| panic!("RSA signer: {e}")),
        },
        Signer {
            name: "es",
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_pem(ec_private.as_bytes())
                .unwrap_or_else(|e| panic!("EC signer: {e}")),
        },
    ];
    (dir, policy, signers)
}

fn token(signer: &Signer) -> String {
    let claims = serde_json::json!({
        "iss": format!("https://{}.idp.test", signer.name),
        "aud": AUDIENCE,
        "sub": "user42",
        "groups": ["staff", "readers"],
        "iat": NOW - 60,
        "exp": NOW + 3600,
    });
    jsonwebtoken::encode(&Header::new(signer.alg), &claims, &signer.key)
        .unwrap_or_else(|e| panic!("signing: {e}"))
}

fn verify(c: &mut Criterion) {
    let (_dir, policy, signers) = setup();
    let issuers = &policy.issuers;
    let all: Vec<usize> = (0..issuers.len()).collect();
    let mut group = c.benchmark_group("token");
    for signer in &signers {
        let token = token(signer);
        let alg = format!("{:?}", signer.alg);
        let verified = issuers
            .verify(&all, &token, NOW)
            .unwrap_or_else(|e| panic!("{alg} token does not verify: {e}"));
        assert_eq!(verified.subject, "user42");
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
