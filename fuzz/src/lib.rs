//! What the fuzz targets and the seed writer share: the fuzz-only secret
//! and keys, the bundled policy, tokens that verify, and CheckRequests.
//!
//! Nothing here is a real secret. The HMAC secret is a labelled constant
//! and the RSA and P-256 keys are generated from a fixed seed at start-up
//! (never written to the repository), so the same tokens verify in every
//! run and the seed corpora can carry valid tokens. A target's invariant
//! "only these tokens ever verify" is then exact: the fuzzer holds no key.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::CheckRequest;
use portcullis::adapter::ResponseConfig;
use portcullis::decision_cache::DecisionCache;
use portcullis::policy::{load_policies, PolicySet};
use portcullis::server::Authorizer;
use portcullis::token_cache::TokenCache;
use portcullis_testkit::{Check, Claims, Signer};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// FUZZING ONLY: the demo issuer's HMAC secret inside the fuzz targets.
pub const SECRET: &str = "fuzz-only-secret-not-for-anything-0123456789";
/// The targets' clock: 2096, so the token cache (which expires entries by
/// the wall clock at `exp`) keeps every seed token.
pub const NOW: u64 = 4_000_000_000;
/// `exp` of every seed token.
pub const EXP: u64 = NOW + 3_600;

/// The repository's bundled policy directory (read only: its demo issuer
/// names an environment variable; see [`bundled_copy`]).
pub fn bundled_dir() -> PathBuf {
    portcullis_testkit::bundled_dir()
}

/// The bundled policy files that `keep` accepts, copied into `into` with
/// the demo issuer reading [`SECRET`] from a file: no target sets the
/// process's environment.
pub fn bundled_copy(into: &std::path::Path, keep: impl Fn(&str) -> bool) {
    portcullis_testkit::copy_bundled(into, SECRET, keep, |_, text| text);
}

/// The bundled policy, loaded once.
pub fn bundled() -> Arc<PolicySet> {
    static POLICY: OnceLock<Arc<PolicySet>> = OnceLock::new();
    POLICY
        .get_or_init(|| {
            let dir = portcullis_testkit::bundled_with_secret(SECRET);
            Arc::new(load_policies(dir.path()).unwrap_or_else(|e| panic!("{e}")))
        })
        .clone()
}

/// An authorizer on the bundled policy, as the server builds it, with its
/// decision cache (no metrics, no decision log output).
pub fn authorizer() -> &'static Authorizer {
    static AUTHORIZER: OnceLock<Authorizer> = OnceLock::new();
    AUTHORIZER.get_or_init(|| {
        Authorizer::new(
            Arc::new(ArcSwap::new(bundled())),
            TokenCache::new(10_000),
            ResponseConfig::default(),
            Arc::new(|| NOW),
        )
        .with_decision_cache(DecisionCache::new(10_000, Duration::from_secs(600)))
    })
}

/// A demo-issuer token (HS256, the fuzz secret) for `subject`.
pub fn demo_token(subject: &str, groups: &[&str]) -> String {
    let claims = Claims {
        iat_offset: Some(-60),
        ..Claims::demo(subject, NOW).groups(groups).ttl(3_600)
    };
    claims.sign(&Signer::hs256(SECRET.as_bytes()))
}

/// Every demo-issuer token the seeds carry: the only ones that verify
/// against the bundled policy.
pub fn demo_tokens() -> &'static [String] {
    static TOKENS: OnceLock<Vec<String>> = OnceLock::new();
    TOKENS.get_or_init(|| {
        vec![
            demo_token("alice", &[]),
            demo_token("bob", &[]),
            demo_token("carol", &[]),
            demo_token("dave", &["auditors"]),
            demo_token("mallory", &[]),
            demo_token("erin", &["staff"]),
        ]
    })
}

/// A CheckRequest as Envoy sends one for the front proxy: with `raw`, every
/// header in `header_map` (Envoy's `encode_raw_headers: true`), otherwise
/// the Authorization values in the `headers` map.
pub fn check_request(method: &str, path: &str, authorization: &[&str], raw: bool) -> CheckRequest {
    let mut check = Check::http(method, path).host("localhost").app("documents");
    if raw {
        check = check
            .raw_header(":authority", "localhost")
            .raw_header(":method", method)
            .raw_header(":path", path)
            .raw_header("x-request-id", "fuzz-seed");
    }
    for value in authorization {
        check = if raw {
            check.raw_header("authorization", value)
        } else {
            check.header("authorization", value)
        };
    }
    check.build()
}

/// The token-parser target's world: a policy directory with one issuer
/// per algorithm family, its loaded policy, and the tokens that verify.
pub struct TokenWorld {
    _dir: tempfile::TempDir,
    pub policy: PolicySet,
    pub valid: Vec<String>,
}

/// Issuers `hs` (HS256), `rs` (RS256) and `es` (ES256) with keys from a
/// fixed seed, and a valid token from each.
pub fn token_world() -> &'static TokenWorld {
    static WORLD: OnceLock<TokenWorld> = OnceLock::new();
    WORLD.get_or_init(|| {
        // The same seed, drawn in the same order, makes the same keys in
        // every run: the committed seeds' tokens keep verifying.
        let mut rng = StdRng::seed_from_u64(0x5EED_F022);
        let rsa = Signer::rs256_from(&mut rng);
        let ec = Signer::es256_from(&mut rng);

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{e}"))
        };
        write("hmac.secret", SECRET);
        write("rsa.pem", rsa.public_pem());
        write("ec.pem", ec.public_pem());
        let issuer = |name: &str, alg: &str, key: &str| {
            format!(
                "  - name: {name}\n    issuer: https://{name}.idp.test\n    audiences: [api]\n    algorithms: [{alg}]\n    key: {{ {key} }}\n    subject_prefix: \"{name}:\"\n    groups_claim: groups\n    groups_allowed: [staff, readers, editors, \"g*\"]\n"
            )
        };
        write(
            "policy.yaml",
            &format!(
                "issuers:\n{}{}{}applications:\n  - name: api\n    select:\n      path_prefixes: [/api]\n    issuers: [hs, rs, es]\n    routes:\n      - name: whoami\n        methods: [GET]\n        path: /api/whoami\n        access: authenticated\n",
                issuer("hs", "HS256", "secret_file: hmac.secret"),
                issuer("rs", "RS256", "public_key_file: rsa.pem"),
                issuer("es", "ES256", "public_key_file: ec.pem"),
            ),
        );
        let policy = load_policies(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let sign = |name: &str, signer: &Signer| {
            let claims = Claims {
                iat_offset: Some(-60),
                ..Claims::new(&format!("https://{name}.idp.test"), "api", "alice", NOW)
                    .groups(&["staff"])
                    .ttl(3_600)
            };
            claims.sign(signer)
        };
        let valid = vec![
            sign("hs", &Signer::hs256(SECRET.as_bytes())),
            sign("rs", &rsa),
            sign("es", &ec),
        ];
        TokenWorld {
            _dir: dir,
            policy,
            valid,
        }
    })
}

/// Percent-decodes every valid escape, as a naive upstream would.
pub fn percent_decode(text: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(text).collect()
}
