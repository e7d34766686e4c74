//! What the fuzz targets and the seed writer share: the fuzz-only secret
//! and keys, the bundled policy, tokens that verify, and CheckRequests.
//!
//! Nothing here is a real secret. The HMAC secret is a labelled constant
//! and the RSA and P-256 keys are generated from a fixed seed at start-up
//! (never written to the repository), so the same tokens verify in every
//! run and the seed corpora can carry valid tokens. A target's invariant
//! "only these tokens ever verify" is then exact: the fuzzer holds no key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::{CheckRequest, HeaderValue};
use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::adapter::ResponseConfig;
use portcullis::decision_cache::DecisionCache;
use portcullis::policy::{load_policies, PolicySet};
use portcullis::server::Authorizer;
use portcullis::token_cache::TokenCache;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

/// FUZZING ONLY: the demo issuer's HMAC secret inside the fuzz targets.
pub const SECRET: &str = "fuzz-only-secret-not-for-anything-0123456789";
/// The targets' clock: 2096, so the token cache (which expires entries by
/// the wall clock at `exp`) keeps every seed token.
pub const NOW: u64 = 4_000_000_000;
/// `exp` of every seed token.
pub const EXP: u64 = NOW + 3_600;

/// The repository's bundled policy directory.
pub fn bundled_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// Sets the secret the bundled issuer reads.
pub fn set_secret() {
    std::env::set_var("PORTCULLIS_DEMO_SECRET", SECRET);
}

/// The bundled policy, loaded once.
pub fn bundled() -> Arc<PolicySet> {
    static POLICY: OnceLock<Arc<PolicySet>> = OnceLock::new();
    POLICY
        .get_or_init(|| {
            set_secret();
            Arc::new(load_policies(&bundled_dir()).unwrap_or_else(|e| panic!("{e}")))
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
        .with_allow_log_rate(0.0)
    })
}

/// A demo-issuer token (HS256, the fuzz secret) for `subject`.
pub fn demo_token(subject: &str, groups: &[&str]) -> String {
    let claims = serde_json::json!({
        "iss": "https://idp.example.com",
        "aud": "documents-api",
        "sub": subject,
        "groups": groups,
        "iat": NOW - 60,
        "exp": EXP,
    });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap_or_else(|e| panic!("{e}"))
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

/// One header for `header_map` (Envoy's `encode_raw_headers: true`).
pub fn raw_header(key: &str, value: &str) -> HeaderValue {
    HeaderValue {
        key: key.to_owned(),
        raw_value: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// A CheckRequest as Envoy sends one for the front proxy.
pub fn check_request(method: &str, path: &str, authorization: &[&str], raw: bool) -> CheckRequest {
    let mut listed = vec![
        raw_header(":authority", "localhost"),
        raw_header(":method", method),
        raw_header(":path", path),
        raw_header("x-request-id", "fuzz-seed"),
    ];
    let mut mapped = HashMap::new();
    for value in authorization {
        if raw {
            listed.push(raw_header("authorization", value));
        } else {
            mapped.insert("authorization".to_owned(), (*value).to_owned());
        }
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.to_owned(),
                    path: path.to_owned(),
                    host: "localhost".to_owned(),
                    headers: mapped,
                    header_map: raw.then_some(HeaderMap { headers: listed }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: HashMap::from([("app".to_owned(), "documents".to_owned())]),
            ..Default::default()
        }),
    }
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
        let mut rng = StdRng::seed_from_u64(0x5EED_F022);
        let rsa = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap_or_else(|e| panic!("{e}"));
        let ec = p256::SecretKey::random(&mut rng);
        let rsa_private = rsa.to_pkcs8_pem(LineEnding::LF).unwrap_or_else(|e| panic!("{e}"));
        let rsa_public = rsa
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_else(|e| panic!("{e}"));
        let ec_private = ec.to_pkcs8_pem(LineEnding::LF).unwrap_or_else(|e| panic!("{e}"));
        let ec_public = ec
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_else(|e| panic!("{e}"));

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{e}"))
        };
        write("hmac.secret", SECRET);
        write("rsa.pem", &rsa_public);
        write("ec.pem", &ec_public);
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
        let sign = |name: &str, alg: Algorithm, key: &EncodingKey| {
            let claims = serde_json::json!({
                "iss": format!("https://{name}.idp.test"),
                "aud": "api",
                "sub": "alice",
                "groups": ["staff"],
                "iat": NOW - 60,
                "exp": EXP,
            });
            jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap_or_else(|e| panic!("{e}"))
        };
        let valid = vec![
            sign("hs", Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes())),
            sign(
                "rs",
                Algorithm::RS256,
                &EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
            ),
            sign(
                "es",
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(ec_private.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
            ),
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
