//! JWT verification through the public API, with keys generated here.
//!
//! Every test writes its own policy directory (issuers, key files, one
//! `access: authenticated` route) into a temporary directory, loads it with
//! the one loader, and checks tokens signed by `jsonwebtoken` against it.
//! Keys are generated at run time and never committed; the RSA keys are
//! made once per test binary because generating them is slow. Time is a
//! parameter: tokens carry `iat`/`exp`/`nbf` relative to [`NOW`], never to
//! the wall clock, and nothing sleeps.

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::engine::{
    decide, Credential, Decision, DenyStatus, Effect, Reason, Request, RequestAttrs,
    VerifyEveryTime,
};
use portcullis::policy::{load_policies, LoadErrors, PolicySet};
use portcullis::token::{Principal, TokenError, MAX_SUBJECT_LEN, MAX_TOKEN_LEN};
use portcullis::token_cache::TokenCache;
use portcullis_testkit::Signer;
use serde_json::{json, Map, Value};
use tempfile::TempDir;

/// The clock of every test: 2027-01-15T08:00:00Z.
const NOW: u64 = 1_800_000_000;
/// The clock of the cache tests. The cache evicts an entry when the wall
/// clock passes the token's `exp`; a clock far beyond today keeps these
/// tests independent of the day they run on.
const CACHE_NOW: u64 = 4_000_000_000;
const AUDIENCE: &str = "api";
/// 70 bytes: enough for HS256, HS384 and HS512 alike.
const SECRET: &str = "tokens-test-secret-0123456789abcdef0123456789abcdef0123456789abcdefXY";
const OTHER_SECRET: &str = "another-secret-entirely-0123456789abcdef0123456789abcdef0123456789ab";
const LEEWAY: u64 = 30;

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

fn rsa_keys() -> &'static [Signer; 2] {
    static KEYS: OnceLock<[Signer; 2]> = OnceLock::new();
    KEYS.get_or_init(|| [Signer::rs256(), Signer::rs256()])
}

fn ec_keys() -> &'static [Signer; 2] {
    static KEYS: OnceLock<[Signer; 2]> = OnceLock::new();
    KEYS.get_or_init(|| [Signer::es256(), Signer::es256()])
}

fn ed_key() -> &'static Signer {
    static KEY: OnceLock<Signer> = OnceLock::new();
    KEY.get_or_init(Signer::eddsa)
}

fn rsa_signer(index: usize) -> EncodingKey {
    rsa_keys()[index].encoding_key().clone()
}

fn ec_signer(index: usize) -> EncodingKey {
    ec_keys()[index].encoding_key().clone()
}

fn ed_signer() -> EncodingKey {
    ed_key().encoding_key().clone()
}

/// The public JWK of `key` for `alg`, as JSON, with `kid` when given.
fn jwk(key: &EncodingKey, alg: Algorithm, kid: Option<&str>) -> Value {
    let jwk = Jwk::from_encoding_key(key, alg).expect("JWK");
    let mut value = serde_json::to_value(jwk).expect("JWK to JSON");
    if let (Some(kid), Some(object)) = (kid, value.as_object_mut()) {
        object.insert("kid".into(), json!(kid));
    }
    value
}

// ---------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------

/// One `issuers:` entry, written as YAML.
#[derive(Clone)]
struct IssuerYaml {
    name: String,
    issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<String>,
    /// The `key:` mapping, e.g. `[("secret_file", "hmac.secret")]`.
    key: Vec<(String, String)>,
    leeway_seconds: u64,
    subject_claim: String,
    groups_claim: Option<String>,
    /// The policy groups a token may assert (`groups_allowed`).
    groups_allowed: Vec<String>,
    /// Set by [`PolicyDir`] when it holds several issuers.
    subject_prefix: Option<String>,
}

impl IssuerYaml {
    fn new(name: &str, algorithms: &[&str], key_field: &str, key_file: &str) -> Self {
        IssuerYaml {
            name: name.to_owned(),
            issuer: iss_of(name),
            audiences: vec![AUDIENCE.to_owned()],
            algorithms: algorithms.iter().map(|a| (*a).to_owned()).collect(),
            key: vec![(key_field.to_owned(), key_file.to_owned())],
            leeway_seconds: LEEWAY,
            subject_claim: "sub".to_owned(),
            groups_claim: Some("groups".to_owned()),
            groups_allowed: ["staff", "editors", "admins", "reader", "g*"]
                .map(str::to_owned)
                .to_vec(),
            subject_prefix: None,
        }
    }

    fn hmac(name: &str, algorithms: &[&str]) -> Self {
        Self::new(name, algorithms, "secret_file", "hmac.secret")
    }

    fn yaml(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).unwrap();
        let list = |items: &[String]| {
            let quoted: Vec<String> = items.iter().map(|i| q(i)).collect();
            format!("[{}]", quoted.join(", "))
        };
        let key: Vec<String> = self
            .key
            .iter()
            .map(|(field, value)| format!("{field}: {}", q(value)))
            .collect();
        let mut out = format!(
            "  - name: {}\n    issuer: {}\n    audiences: {}\n    algorithms: {}\n    key: {{ {} }}\n    leeway_seconds: {}\n    subject_claim: {}\n",
            q(&self.name),
            q(&self.issuer),
            list(&self.audiences),
            list(&self.algorithms),
            key.join(", "),
            self.leeway_seconds,
            q(&self.subject_claim),
        );
        if let Some(groups) = &self.groups_claim {
            out.push_str(&format!("    groups_claim: {}\n", q(groups)));
            out.push_str(&format!(
                "    groups_allowed: {}\n",
                list(&self.groups_allowed)
            ));
        }
        if let Some(prefix) = &self.subject_prefix {
            out.push_str(&format!("    subject_prefix: {}\n", q(prefix)));
        }
        out
    }
}

/// The `iss` value of the issuer named `name`.
fn iss_of(name: &str) -> String {
    format!("https://{name}.idp.test")
}

/// A policy directory under construction.
struct PolicyDir {
    dir: TempDir,
    issuers: Vec<IssuerYaml>,
    /// Issuer names the application accepts; all when `None`.
    app_issuers: Option<Vec<String>>,
}

impl PolicyDir {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = PolicyDir {
            dir,
            issuers: Vec::new(),
            app_issuers: None,
        };
        policy.file("hmac.secret", SECRET);
        policy.file("other.secret", OTHER_SECRET);
        policy.file("rsa.pem", rsa_keys()[0].public_pem());
        policy.file("ec.pem", ec_keys()[0].public_pem());
        policy.file("ed.pem", ed_key().public_pem());
        policy
    }

    fn file(&self, name: &str, contents: &str) {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    fn issuer(mut self, issuer: IssuerYaml) -> Self {
        self.issuers.push(issuer);
        self
    }

    fn app_issuers(mut self, names: &[&str]) -> Self {
        self.app_issuers = Some(names.iter().map(|n| (*n).to_owned()).collect());
        self
    }

    fn try_load(&self) -> Result<PolicySet, LoadErrors> {
        // Several issuers: each subject carries its issuer's name as a
        // prefix, and the application lists its issuers, as the loader asks.
        let several = self.issuers.len() > 1;
        let mut text = String::from("issuers:\n");
        for issuer in &self.issuers {
            let mut issuer = issuer.clone();
            if several {
                issuer.subject_prefix = Some(format!("{}:", issuer.name));
            }
            text.push_str(&issuer.yaml());
        }
        let every: Vec<String> = self.issuers.iter().map(|i| i.name.clone()).collect();
        let listed = self.app_issuers.as_ref().or(several.then_some(&every));
        let app_issuers = match listed {
            Some(names) => format!("    issuers: {}\n", serde_json::to_string(names).unwrap()),
            None => String::new(),
        };
        text.push_str(&format!(
            "applications:\n  - name: api\n    select:\n      path_prefixes: [/api]\n{app_issuers}    routes:\n      - name: whoami\n        methods: [GET]\n        path: /api/whoami\n        access: authenticated\n"
        ));
        self.file("policy.yaml", &text);
        load_policies(self.dir.path())
    }

    fn load(&self) -> PolicySet {
        self.try_load()
            .unwrap_or_else(|e| panic!("the policy should load:\n{e}"))
    }

    /// The load errors, all on one string; panics if the policy loads.
    fn load_error(&self) -> String {
        match self.try_load() {
            Ok(_) => panic!("the policy should not load"),
            Err(e) => e.to_string(),
        }
    }
}

/// A policy with one HMAC issuer, `hs`, accepting `algorithms`.
fn hmac_policy(algorithms: &[&str]) -> PolicySet {
    PolicyDir::new()
        .issuer(IssuerYaml::hmac("hs", algorithms))
        .load()
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

/// Claims of a good token from the issuer named `issuer`.
fn claims(issuer: &str) -> Map<String, Value> {
    let value = json!({
        "iss": iss_of(issuer),
        "aud": AUDIENCE,
        "sub": "alice",
        "groups": ["staff", "editors"],
        "iat": NOW - 60,
        "exp": NOW + 3600,
    });
    match value {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// `claims(issuer)` with some claims replaced (`Value::Null` removes one).
fn claims_with(issuer: &str, changes: &[(&str, Value)]) -> Map<String, Value> {
    let mut map = claims(issuer);
    for (name, value) in changes {
        if value.is_null() {
            map.remove(*name);
        } else {
            map.insert((*name).to_owned(), value.clone());
        }
    }
    map
}

fn sign(header: &Header, claims: &Map<String, Value>, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).expect("signing")
}

fn hs(alg: Algorithm, claims: &Map<String, Value>, secret: &str) -> String {
    sign(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// An HS256 token of issuer `hs` with `changes`, signed with [`SECRET`].
fn hs256(changes: &[(&str, Value)]) -> String {
    hs(Algorithm::HS256, &claims_with("hs", changes), SECRET)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `token` with the first character of its signature changed.
fn flip_signature(token: &str) -> String {
    let Some(dot) = token.rfind('.') else {
        panic!("not a JWS: {token}")
    };
    let (head, signature) = token.split_at(dot + 1);
    let mut chars: Vec<char> = signature.chars().collect();
    // The first character carries six signature bits; the last may carry
    // padding bits that a decoder ignores.
    chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
    format!("{head}{}", chars.into_iter().collect::<String>())
}

// ---------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------

fn all_issuers(policy: &PolicySet) -> Vec<usize> {
    (0..policy.issuers.len()).collect()
}

fn verify_at(policy: &PolicySet, token: &str, now: u64) -> Result<Principal, TokenError> {
    policy.issuers.verify(&all_issuers(policy), token, now)
}

fn verify(policy: &PolicySet, token: &str) -> Result<Principal, TokenError> {
    verify_at(policy, token, NOW)
}

fn subject_of(policy: &PolicySet, token: &str) -> String {
    verify(policy, token)
        .expect("the token should verify, got")
        .subject
        .to_string()
}

fn decide_at(policy: &PolicySet, token: &str, now: u64) -> Decision {
    let request = RequestAttrs {
        method: "GET".into(),
        path: "/api/whoami".into(),
        host: "api.test".into(),
        credential: Credential::Bearer(token.into()),
        ..RequestAttrs::default()
    };
    decide(
        policy,
        &*policy.grants,
        &Request::Http(&request),
        &VerifyEveryTime,
        now,
    )
}

/// Asserts that the engine refuses `token` at `now` with `error`, as a 401.
fn assert_refused_by_engine(policy: &PolicySet, token: &str, now: u64, error: TokenError) {
    let decision = decide_at(policy, token, now);

    assert_eq!(
        decision.effect,
        Effect::Deny(DenyStatus::Unauthorized),
        "{decision:?}"
    );
    assert_eq!(decision.reason, Reason::InvalidToken(error), "{decision:?}");
    assert_eq!(decision.subject, None, "{decision:?}");
}

fn assert_malformed(policy: &PolicySet, token: &str) {
    let result = verify(policy, token);
    assert!(
        matches!(result, Err(TokenError::Malformed(_))),
        "{token:?}: expected Malformed, got {result:?}"
    );
}

// ---------------------------------------------------------------------------
// Accepted tokens
// ---------------------------------------------------------------------------

#[test]
fn hmac_tokens_of_every_pinned_size_are_accepted() {
    let policy = hmac_policy(&["HS256", "HS384", "HS512"]);
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token = hs(alg, &claims("hs"), SECRET);
        let principal = verify(&policy, &token)
            .unwrap_or_else(|e| panic!("{alg:?} token should verify, got {e:?}"));
        assert_eq!(
            principal,
            Principal {
                issuer: "hs".into(),
                subject: "alice".into(),
                groups: vec!["staff".into(), "editors".into()],
                expires_at: NOW + 3600,
                claims: Default::default(),
            },
            "{alg:?}"
        );
    }
}

#[test]
fn a_valid_token_is_allowed_by_the_engine() {
    let policy = hmac_policy(&["HS256"]);
    let decision = decide_at(&policy, &hs256(&[]), NOW);
    assert_eq!(decision.effect, Effect::Allow, "{decision:?}");
    assert_eq!(decision.effect, Effect::Allow);
    assert_eq!(decision.reason, Reason::Authenticated);
    assert_eq!(decision.subject.as_deref(), Some("alice"));
    assert_eq!(decision.route.as_deref(), Some("whoami"));
}

#[test]
fn rs256_token_is_accepted() {
    let policy = PolicyDir::new()
        .issuer(IssuerYaml::new(
            "rsa",
            &["RS256"],
            "public_key_file",
            "rsa.pem",
        ))
        .load();
    let token = sign(
        &Header::new(Algorithm::RS256),
        &claims("rsa"),
        &rsa_signer(0),
    );
    let principal = verify(&policy, &token).unwrap();
    assert_eq!(&*principal.issuer, "rsa");
    assert_eq!(&*principal.subject, "alice");
    assert_eq!(principal.groups, ["staff", "editors"]);
    assert_eq!(principal.expires_at, NOW + 3600);
}

#[test]
fn ps256_token_is_accepted_with_a_single_group_string() {
    let policy = PolicyDir::new()
        .issuer(IssuerYaml::new(
            "rsa",
            &["RS256", "PS256"],
            "public_key_file",
            "rsa.pem",
        ))
        .load();
    let token = sign(
        &Header::new(Algorithm::PS256),
        &claims_with("rsa", &[("groups", json!("admins"))]),
        &rsa_signer(0),
    );
    let principal = verify(&policy, &token).unwrap();
    assert_eq!(&*principal.subject, "alice");
    assert_eq!(principal.groups, ["admins"]);
}

#[test]
fn es256_token_is_accepted() {
    let policy = PolicyDir::new()
        .issuer(IssuerYaml::new(
            "ec",
            &["ES256"],
            "public_key_file",
            "ec.pem",
        ))
        .load();
    let token = sign(&Header::new(Algorithm::ES256), &claims("ec"), &ec_signer(0));
    let principal = verify(&policy, &token).unwrap();
    assert_eq!(&*principal.issuer, "ec");
    assert_eq!(&*principal.subject, "alice");
    assert_eq!(principal.groups, ["staff", "editors"]);
    let decision = decide_at(&policy, &token, NOW);
    assert!(decision.is_allowed(), "{decision:?}");
}

#[test]
fn eddsa_token_is_accepted() {
    let policy = PolicyDir::new()
        .issuer(IssuerYaml::new(
            "ed",
            &["EdDSA"],
            "public_key_file",
            "ed.pem",
        ))
        .load();
    let token = sign(&Header::new(Algorithm::EdDSA), &claims("ed"), &ed_signer());
    let principal = verify(&policy, &token).unwrap();
    assert_eq!(&*principal.issuer, "ed");
    assert_eq!(&*principal.subject, "alice");
    assert_eq!(principal.groups, ["staff", "editors"]);
}

#[test]
fn custom_subject_and_groups_claims_are_used() {
    let mut issuer = IssuerYaml::hmac("hs", &["HS256"]);
    issuer.subject_claim = "email".into();
    issuer.groups_claim = Some("roles".into());
    let policy = PolicyDir::new().issuer(issuer).load();

    let token = hs256(&[
        ("email", json!("alice@example.com")),
        ("roles", json!(["reader"])),
    ]);
    let principal = verify(&policy, &token).unwrap();
    assert_eq!(&*principal.subject, "alice@example.com");
    // `groups` is not the configured claim, so it is ignored.
    assert_eq!(principal.groups, ["reader"]);

    // `sub` alone does not stand in for the configured subject claim.
    let without_email = hs256(&[]);
    assert_eq!(verify(&policy, &without_email), Err(TokenError::BadSubject));
}

#[test]
fn absent_or_null_groups_and_no_groups_claim_give_no_groups() {
    let policy = hmac_policy(&["HS256"]);
    for changes in [vec![("groups", Value::Null)], vec![("groups", json!([]))]] {
        let principal = verify(&policy, &hs256(&changes)).unwrap();
        assert!(principal.groups.is_empty(), "{changes:?}");
    }
    let mut explicit_null = claims("hs");
    explicit_null.insert("groups".into(), Value::Null);
    let token = hs(Algorithm::HS256, &explicit_null, SECRET);
    let principal = verify(&policy, &token).unwrap();
    assert!(principal.groups.is_empty());

    let mut issuer = IssuerYaml::hmac("hs", &["HS256"]);
    issuer.groups_claim = None;
    let policy = PolicyDir::new().issuer(issuer).load();
    // Without a groups claim configured, even an invalid `groups` is ignored.
    let token = hs256(&[("groups", json!(42))]);
    let principal = verify(&policy, &token).unwrap();
    assert!(principal.groups.is_empty());
}

// ---------------------------------------------------------------------------
// Algorithms
// ---------------------------------------------------------------------------

/// A hand-built unsigned token: `alg` as given, the claims of issuer `hs`.
fn unsigned_token(alg: &str, signature: &str) -> String {
    let header = json!({ "alg": alg, "typ": "JWT" }).to_string();
    let payload = Value::Object(claims("hs")).to_string();
    format!(
        "{}.{}.{signature}",
        b64(header.as_bytes()),
        b64(payload.as_bytes())
    )
}

#[test]
fn alg_none_without_signature_is_malformed() {
    let policy = hmac_policy(&["HS256"]);
    for alg in ["none", "None", "NONE"] {
        let token = unsigned_token(alg, "");
        assert!(token.ends_with('.'));
        assert_malformed(&policy, &token);
    }
    let token = unsigned_token("none", "");
    let decision = decide_at(&policy, &token, NOW);
    assert_eq!(decision.effect, Effect::Deny(DenyStatus::Unauthorized));
    assert!(
        matches!(
            decision.reason,
            Reason::InvalidToken(TokenError::Malformed(_))
        ),
        "{decision:?}"
    );
}

#[test]
fn alg_none_with_a_signature_is_malformed() {
    let policy = hmac_policy(&["HS256"]);
    // A real HS256 signature over other bytes, and a made-up one.
    let borrowed = hs256(&[]);
    let signature = borrowed.rsplit('.').next().unwrap_or_default().to_owned();
    for signature in [signature.as_str(), "c2lnbmF0dXJl"] {
        assert_malformed(&policy, &unsigned_token("none", signature));
    }
}

#[test]
fn an_algorithm_not_pinned_for_the_issuer_is_refused() {
    let policy = hmac_policy(&["HS256"]);
    for (alg, name) in [(Algorithm::HS384, "HS384"), (Algorithm::HS512, "HS512")] {
        // Signed with the issuer's own secret: only the pin stops it.
        let token = hs(alg, &claims("hs"), SECRET);
        assert_eq!(
            verify(&policy, &token),
            Err(TokenError::AlgorithmNotAllowed(name.into()))
        );
    }
    let token = hs(Algorithm::HS384, &claims("hs"), SECRET);
    assert_refused_by_engine(
        &policy,
        &token,
        NOW,
        TokenError::AlgorithmNotAllowed("HS384".into()),
    );
}

#[test]
fn an_asymmetric_token_for_an_hmac_issuer_is_refused() {
    let policy = hmac_policy(&["HS256"]);
    let token = sign(
        &Header::new(Algorithm::RS256),
        &claims("hs"),
        &rsa_signer(0),
    );
    assert_eq!(
        verify(&policy, &token),
        Err(TokenError::AlgorithmNotAllowed("RS256".into()))
    );
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    // The classic key confusion: the attacker knows the public key and uses
    // its PEM bytes as an HMAC secret.
    let public_pem = rsa_keys()[0].public_pem();
    let policy = PolicyDir::new()
        .issuer(IssuerYaml::new(
            "rsa",
            &["RS256"],
            "public_key_file",
            "rsa.pem",
        ))
        .load();
    for secret in [public_pem, public_pem.trim_end()] {
        let token = hs(Algorithm::HS256, &claims("rsa"), secret);
        let result = verify(&policy, &token);
        assert!(result.is_err(), "key confusion accepted: {result:?}");
        assert_eq!(result, Err(TokenError::AlgorithmNotAllowed("HS256".into())));
        assert_refused_by_engine(
            &policy,
            &token,
            NOW,
            TokenError::AlgorithmNotAllowed("HS256".into()),
        );
    }

    // The same through a JWKS-backed issuer.
    let dir = PolicyDir::new().issuer(IssuerYaml::new("rsa", &["RS256"], "jwks_file", "jwks.json"));
    let set = json!({ "keys": [jwk(&rsa_signer(0), Algorithm::RS256, Some("k1"))] });
    dir.file("jwks.json", &set.to_string());
    let policy = dir.load();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let token = sign(
        &header,
        &claims("rsa"),
        &EncodingKey::from_secret(public_pem.as_bytes()),
    );
    assert_eq!(
        verify(&policy, &token),
        Err(TokenError::AlgorithmNotAllowed("HS256".into()))
    );
}

// ---------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------

#[test]
fn a_changed_signature_is_a_bad_signature() {
    let policy = PolicyDir::new()
        .issuer(IssuerYaml::hmac("hs", &["HS256"]))
        .issuer(IssuerYaml::new(
            "rsa",
            &["RS256"],
            "public_key_file",
            "rsa.pem",
        ))
        .issuer(IssuerYaml::new(
            "ec",
            &["ES256"],
            "public_key_file",
            "ec.pem",
        ))
        .issuer(IssuerYaml::new(
            "ed",
            &["EdDSA"],
            "public_key_file",
            "ed.pem",
        ))
        .load();
    let tokens = [
        hs256(&[]),
        sign(
            &Header::new(Algorithm::RS256),
            &claims("rsa"),
            &rsa_signer(0),
        ),
        sign(&Header::new(Algorithm::ES256), &claims("ec"), &ec_signer(0)),
        sign(&Header::new(Algorithm::EdDSA), &claims("ed"), &ed_signer()),
    ];
    for token in &tokens {
        assert!(verify(&policy, token).is_ok(), "the original must verify");
        let flipped = flip_signature(token);
        assert_ne!(&flipped, token);
        assert_eq!(
            verify(&policy, &flipped),
            Err(TokenError::BadSignature),
            "{flipped}"
        );
    }
    assert_refused_by_engine(
        &policy,
        &flip_signature(&tokens[0]),
        NOW,
        TokenError::BadSignature,
    );
}

#[test]
fn a_token_signed_with_another_secret_is_a_bad_signature() {
    let policy = hmac_policy(&["HS256"]);
    let token = hs(Algorithm::HS256, &claims("hs"), OTHER_SECRET);
    assert_eq!(verify(&policy, &token), Err(TokenError::BadSignature));
    assert_refused_by_engine(&policy, &token, NOW, TokenError::BadSignature);
}

#[test]
fn a_token_naming_one_issuer_but_signed_with_anothers_key_is_a_bad_signature() {
    let mut other = IssuerYaml::hmac("other", &["HS256"]);
    other.key = vec![("secret_file".into(), "other.secret".into())];
    let policy = PolicyDir::new()
        .issuer(IssuerYaml::hmac("hs", &["HS256"]))
        .issuer(other)
        .load();
    // Each issuer's own token verifies, its subject tied to that issuer...
    assert_eq!(subject_of(&policy, &hs256(&[])), "hs:alice");
    let own = hs(Algorithm::HS256, &claims("other"), OTHER_SECRET);
    assert_eq!(subject_of(&policy, &own), "other:alice");
    // ...but naming `hs` while signing with `other`'s secret does not.
    let forged = hs(Algorithm::HS256, &claims("hs"), OTHER_SECRET);
    assert_eq!(verify(&policy, &forged), Err(TokenError::BadSignature));
}

#[test]
fn claims_changed_after_signing_are_a_bad_signature() {
    let policy = hmac_policy(&["HS256"]);
    let token = hs256(&[]);
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let forged_claims = claims_with("hs", &[("sub", json!("admin"))]);
    let forged_payload = b64(Value::Object(forged_claims).to_string().as_bytes());
    let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    assert_eq!(verify(&policy, &forged), Err(TokenError::BadSignature));
}

#[test]
fn a_token_signed_by_an_unknown_rsa_key_is_a_bad_signature_even_with_its_jwk_embedded() {
    let policy = PolicyDir::new()
        .issuer(IssuerYaml::new(
            "rsa",
            &["RS256"],
            "public_key_file",
            "rsa.pem",
        ))
        .load();
    let attacker = rsa_signer(1);
    let plain = sign(&Header::new(Algorithm::RS256), &claims("rsa"), &attacker);
    assert_eq!(verify(&policy, &plain), Err(TokenError::BadSignature));

    // A header that carries the attacker's own key must not be trusted.
    let mut header = Header::new(Algorithm::RS256);
    header.jwk = Some(Jwk::from_encoding_key(&attacker, Algorithm::RS256).unwrap());
    header.jku = Some("https://attacker.test/jwks.json".into());
    let embedded = sign(&header, &claims("rsa"), &attacker);
    assert_eq!(verify(&policy, &embedded), Err(TokenError::BadSignature));
}

// ---------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------

#[test]
fn a_token_expired_beyond_the_leeway_is_expired() {
    let policy = hmac_policy(&["HS256"]);
    let token = hs256(&[("exp", json!(NOW - LEEWAY - 1))]);
    assert_eq!(verify(&policy, &token), Err(TokenError::Expired));
    assert_refused_by_engine(&policy, &token, NOW, TokenError::Expired);

    // The same token, checked by a clock one second earlier, is still good.
    assert!(verify_at(&policy, &token, NOW - 1).is_ok());

    // A good token becomes expired once the clock passes exp + leeway.
    let token = hs256(&[]);
    assert!(verify_at(&policy, &token, NOW + 3600 + LEEWAY).is_ok());
    assert_eq!(
        verify_at(&policy, &token, NOW + 3600 + LEEWAY + 1),
        Err(TokenError::Expired)
    );
}

#[test]
fn a_token_expired_within_the_leeway_is_accepted() {
    let policy = hmac_policy(&["HS256"]);
    for exp in [NOW - 1, NOW - LEEWAY / 2, NOW - LEEWAY] {
        let token = hs256(&[("exp", json!(exp))]);
        let principal = verify(&policy, &token).unwrap_or_else(|e| panic!("exp {exp}: {e:?}"));
        assert_eq!(principal.expires_at, exp);
    }
}

#[test]
fn without_leeway_expiry_is_exact() {
    let mut issuer = IssuerYaml::hmac("hs", &["HS256"]);
    issuer.leeway_seconds = 0;
    let policy = PolicyDir::new().issuer(issuer).load();
    assert!(verify(&policy, &hs256(&[("exp", json!(NOW))])).is_ok());
    assert_eq!(
        verify(&policy, &hs256(&[("exp", json!(NOW - 1))])),
        Err(TokenError::Expired)
    );
    assert_eq!(
        verify(&policy, &hs256(&[("nbf", json!(NOW + 1))])),
        Err(TokenError::NotYetValid)
    );
}

#[test]
fn a_token_not_yet_valid_beyond_the_leeway_is_refused() {
    let policy = hmac_policy(&["HS256"]);
    let token = hs256(&[("nbf", json!(NOW + LEEWAY + 1))]);
    assert_eq!(verify(&policy, &token), Err(TokenError::NotYetValid));
    assert_refused_by_engine(&policy, &token, NOW, TokenError::NotYetValid);
    // Within the leeway, and once the clock catches up, it is good.
    assert!(verify(&policy, &hs256(&[("nbf", json!(NOW + LEEWAY))])).is_ok());
    assert!(verify_at(&policy, &token, NOW + 1).is_ok());
}

#[test]
fn a_token_issued_in_the_future_is_not_yet_valid() {
    let policy = hmac_policy(&["HS256"]);
    let token = hs256(&[("iat", json!(NOW + 3000))]);
    assert_eq!(verify(&policy, &token), Err(TokenError::NotYetValid));
    assert!(verify(&policy, &hs256(&[("iat", json!(NOW + LEEWAY))])).is_ok());
    assert!(verify(&policy, &hs256(&[("iat", Value::Null)])).is_ok());
}

#[test]
fn time_claims_that_are_not_numbers_are_refused() {
    let policy = hmac_policy(&["HS256"]);
    for claim in ["nbf", "iat"] {
        for value in [json!("soon"), json!(-5), json!([NOW])] {
            let token = hs256(&[(claim, value.clone())]);
            let result = verify(&policy, &token);
            assert!(
                matches!(result, Err(TokenError::Malformed(_))),
                "{claim}: {value}: {result:?}"
            );
        }
    }
}

#[test]
fn a_token_without_exp_is_missing_a_claim() {
    let policy = hmac_policy(&["HS256"]);
    let token = hs256(&[("exp", Value::Null)]);
    assert_eq!(
        verify(&policy, &token),
        Err(TokenError::MissingClaim("exp".into()))
    );
    assert_refused_by_engine(&policy, &token, NOW, TokenError::MissingClaim("exp".into()));
    // An exp that is not a number of seconds is no exp either.
    for exp in [json!("tomorrow"), json!(-1)] {
        let token = hs256(&[("exp", exp.clone())]);
        assert_eq!(
            verify(&policy, &token),
            Err(TokenError::MissingClaim("exp".into())),
            "{exp}"
        );
    }
}

// ---------------------------------------------------------------------------
// Issuer and audience
// ---------------------------------------------------------------------------

#[test]
fn a_token_from_an_issuer_not_in_the_policy_is_refused() {
    let policy = hmac_policy(&["HS256"]);
    let token = hs256(&[("iss", json!("https://evil.idp.test"))]);
    assert_eq!(verify(&policy, &token), Err(TokenError::UnknownIssuer));
    assert_refused_by_engine(&policy, &token, NOW, TokenError::UnknownIssuer);
    // The issuer value is matched exactly.
    let trailing_slash = hs256(&[("iss", json!(format!("{}/", iss_of("hs"))))]);
    assert_eq!(
        verify(&policy, &trailing_slash),
        Err(TokenError::UnknownIssuer)
    );
}

#[test]
fn a_token_without_iss_is_missing_a_claim() {
    let policy = hmac_policy(&["HS256"]);
    let token = hs256(&[("iss", Value::Null)]);
    assert_eq!(
        verify(&policy, &token),
        Err(TokenError::MissingClaim("iss".into()))
    );
}

#[test]
fn a_known_issuer_not_allowed_for_the_application_is_refused() {
    let policy = hmac_policy(&["HS256"]);
    let token = hs256(&[]);
    assert!(verify(&policy, &token).is_ok());
    assert_eq!(
        policy.issuers.verify(&[], &token, NOW),
        Err(TokenError::UnknownIssuer)
    );

    // Through the engine: the application accepts only `hs`.
    let mut other = IssuerYaml::hmac("other", &["HS256"]);
    other.key = vec![("secret_file".into(), "other.secret".into())];
    let policy = PolicyDir::new()
        .issuer(other)
        .issuer(IssuerYaml::hmac("hs", &["HS256"]))
        .app_issuers(&["hs"])
        .load();
    assert!(decide_at(&policy, &hs256(&[]), NOW).is_allowed());
    let foreign = hs(Algorithm::HS256, &claims("other"), OTHER_SECRET);
    assert!(verify(&policy, &foreign).is_ok(), "other is in the policy");
    assert_refused_by_engine(&policy, &foreign, NOW, TokenError::UnknownIssuer);
}

#[test]
fn a_token_for_another_audience_is_refused() {
    let policy = hmac_policy(&["HS256"]);
    for aud in [json!("other-api"), json!(["other-api", "more"]), json!([])] {
        let token = hs256(&[("aud", aud.clone())]);
        assert_eq!(
            verify(&policy, &token),
            Err(TokenError::WrongAudience),
            "{aud}"
        );
    }
    let token = hs256(&[("aud", json!("API"))]);
    assert_refused_by_engine(&policy, &token, NOW, TokenError::WrongAudience);
}

#[test]
fn an_audience_list_with_one_accepted_value_is_accepted() {
    let mut issuer = IssuerYaml::hmac("hs", &["HS256"]);
    issuer.audiences = vec![AUDIENCE.into(), "second-api".into()];
    let policy = PolicyDir::new().issuer(issuer).load();
    for aud in [
        json!(["other-api", AUDIENCE]),
        json!([AUDIENCE]),
        json!("second-api"),
        json!(["second-api", "third"]),
    ] {
        let token = hs256(&[("aud", aud.clone())]);
        assert!(verify(&policy, &token).is_ok(), "{aud}");
    }
}

#[test]
fn a_token_without_aud_is_missing_a_claim() {
    let policy = hmac_policy(&["HS256"]);
    let token = hs256(&[("aud", Value::Null)]);
    assert_eq!(
        verify(&policy, &token),
        Err(TokenError::MissingClaim("aud".into()))
    );
}

// ---------------------------------------------------------------------------
// Subject and groups
// ---------------------------------------------------------------------------

#[test]
fn bad_subjects_are_refused() {
    let policy = hmac_policy(&["HS256"]);
    let too_long = "a".repeat(MAX_SUBJECT_LEN + 1);
    for sub in [
        json!(""),
        json!(42),
        json!(true),
        json!(too_long),
        json!("alice\nadmin"),
        json!("alice\u{0}"),
    ] {
        let token = hs256(&[("sub", sub.clone())]);
        assert_eq!(
            verify(&policy, &token),
            Err(TokenError::BadSubject),
            "{sub}"
        );
    }
    // jsonwebtoken reads a `sub` it cannot take as a string before we do,
    // and refuses the whole token when that `sub` is an array or an object.
    for sub in [json!(["alice"]), json!({ "name": "alice" })] {
        let token = hs256(&[("sub", sub.clone())]);
        assert_malformed(&policy, &token);
    }
    let token = hs256(&[("sub", Value::Null)]);
    assert_eq!(verify(&policy, &token), Err(TokenError::BadSubject));
    assert_refused_by_engine(&policy, &token, NOW, TokenError::BadSubject);

    let longest = "a".repeat(MAX_SUBJECT_LEN);
    assert_eq!(
        subject_of(&policy, &hs256(&[("sub", json!(longest))])),
        longest
    );
}

#[test]
fn bad_groups_are_refused() {
    let policy = hmac_policy(&["HS256"]);
    let too_many: Vec<String> = (0..=portcullis::token::MAX_GROUPS)
        .map(|i| format!("g{i}"))
        .collect();
    for groups in [
        json!(7),
        json!(true),
        json!({ "a": "b" }),
        json!(["staff", 3]),
        json!([["nested"]]),
        json!(too_many),
    ] {
        let token = hs256(&[("groups", groups.clone())]);
        assert_eq!(
            verify(&policy, &token),
            Err(TokenError::BadGroups),
            "{groups}"
        );
    }
    let token = hs256(&[("groups", json!(12))]);
    assert_refused_by_engine(&policy, &token, NOW, TokenError::BadGroups);

    let most: Vec<String> = (0..portcullis::token::MAX_GROUPS)
        .map(|i| format!("g{i}"))
        .collect();
    let principal = verify(&policy, &hs256(&[("groups", json!(most))])).unwrap();
    assert_eq!(principal.groups, most);
}

// ---------------------------------------------------------------------------
// Shape and size
// ---------------------------------------------------------------------------

#[test]
fn malformed_tokens_are_refused() {
    let policy = hmac_policy(&["HS256"]);
    let good = hs256(&[]);
    let parts: Vec<&str> = good.split('.').collect();
    let (h, p, s) = (parts[0], parts[1], parts[2]);
    let json_header = |text: &str| b64(text.as_bytes());
    let cases = [
        String::new(),
        "abc".to_owned(),
        format!("{h}.{p}"),
        format!("{h}.{p}.{s}.{s}"),
        format!(".{p}.{s}"),
        format!("{h}..{s}"),
        format!("{h}.{p}."),
        "..".to_owned(),
        format!("{h}.{p}.{s}="),
        format!("{h}=.{p}.{s}"),
        format!("{h}.{p}+.{s}"),
        format!("{h}.{p}./{}", &s[1..]),
        format!("{h} .{p}.{s}"),
        format!("{h}.{p}.{s}\n"),
        format!("{h}.{p}.{s}é"),
        format!("{}.{p}.{s}", json_header("not json at all")),
        format!("{}.{p}.{s}", json_header("[\"HS256\"]")),
        format!("{}.{p}.{s}", json_header(r#"{"typ":"JWT"}"#)),
        format!("{}.{p}.{s}", json_header(r#"{"alg":"HS999","typ":"JWT"}"#)),
        format!("{}.{p}.{s}", json_header(r#"{"alg":256}"#)),
        format!("{h}.{}.{s}", json_header("not json claims")),
        format!("{h}.{}.{s}", json_header("[1,2,3]")),
        format!("{h}.{}.{s}", json_header(r#"{"iss":["a","b"]}"#)),
    ];
    for token in &cases {
        assert_malformed(&policy, token);
    }
    let decision = decide_at(&policy, &format!("{h}.{p}"), NOW);
    assert_eq!(decision.effect, Effect::Deny(DenyStatus::Unauthorized));
    assert!(
        matches!(
            decision.reason,
            Reason::InvalidToken(TokenError::Malformed(_))
        ),
        "{decision:?}"
    );
}

/// A valid HS256 token of exactly `len` bytes, padded with a junk claim.
fn token_of_len(len: usize) -> String {
    for kid in ["", "k", "kk", "kkk"] {
        let mut header = Header::new(Algorithm::HS256);
        if !kid.is_empty() {
            header.kid = Some(kid.into());
        }
        for pad in 0..len {
            let claims = claims_with("hs", &[("pad", json!("x".repeat(pad)))]);
            let token = sign(
                &header,
                &claims,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            );
            if token.len() == len {
                return token;
            }
            if token.len() > len {
                break;
            }
        }
    }
    panic!("no token of {len} bytes")
}

#[test]
fn a_token_over_the_size_limit_is_too_large() {
    let policy = hmac_policy(&["HS256"]);
    let largest = token_of_len(MAX_TOKEN_LEN);
    assert_eq!(subject_of(&policy, &largest), "alice");

    let over = token_of_len(MAX_TOKEN_LEN + 1);
    assert_eq!(verify(&policy, &over), Err(TokenError::TooLarge));
    assert_refused_by_engine(&policy, &over, NOW, TokenError::TooLarge);
    // Size is checked before anything is parsed.
    let junk = "a".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(verify(&policy, &junk), Err(TokenError::TooLarge));
    assert_eq!(
        verify(&policy, &"x".repeat(1_000_000)),
        Err(TokenError::TooLarge)
    );
}

// ---------------------------------------------------------------------------
// JWKS
// ---------------------------------------------------------------------------

/// A policy whose issuer `jwks` (of `algorithms`) reads `keys` from a JWKS file.
fn jwks_policy(algorithms: &[&str], keys: Vec<Value>) -> PolicySet {
    let dir = PolicyDir::new().issuer(IssuerYaml::new(
        "jwks",
        algorithms,
        "jwks_file",
        "keys/jwks.json",
    ));
    let keys_dir = dir.dir.path().join("keys");
    std::fs::create_dir(&keys_dir).unwrap();
    dir.file("keys/jwks.json", &json!({ "keys": keys }).to_string());
    dir.load()
}

fn with_kid(alg: Algorithm, kid: Option<&str>) -> Header {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    header
}

fn two_rsa_jwks() -> PolicySet {
    jwks_policy(
        &["RS256"],
        vec![
            jwk(&rsa_signer(0), Algorithm::RS256, Some("rsa-1")),
            jwk(&rsa_signer(1), Algorithm::RS256, Some("rsa-2")),
        ],
    )
}

#[test]
fn a_jwks_key_is_chosen_by_kid() {
    let policy = two_rsa_jwks();
    for (index, kid) in [(0, "rsa-1"), (1, "rsa-2")] {
        let token = sign(
            &with_kid(Algorithm::RS256, Some(kid)),
            &claims("jwks"),
            &rsa_signer(index),
        );
        let principal = verify(&policy, &token).unwrap_or_else(|e| panic!("{kid}: {e:?}"));
        assert_eq!(&*principal.issuer, "jwks");
        assert_eq!(&*principal.subject, "alice");
    }
    // The kid chooses the key: naming the other key fails the signature.
    let crossed = sign(
        &with_kid(Algorithm::RS256, Some("rsa-2")),
        &claims("jwks"),
        &rsa_signer(0),
    );
    assert_eq!(verify(&policy, &crossed), Err(TokenError::BadSignature));
}

#[test]
fn an_unknown_kid_is_an_unknown_key() {
    let policy = two_rsa_jwks();
    let token = sign(
        &with_kid(Algorithm::RS256, Some("rsa-3")),
        &claims("jwks"),
        &rsa_signer(0),
    );
    assert_eq!(verify(&policy, &token), Err(TokenError::UnknownKey));
    assert_refused_by_engine(&policy, &token, NOW, TokenError::UnknownKey);
}

#[test]
fn no_kid_with_several_keys_is_an_unknown_key() {
    let policy = two_rsa_jwks();
    let token = sign(
        &with_kid(Algorithm::RS256, None),
        &claims("jwks"),
        &rsa_signer(0),
    );
    assert_eq!(verify(&policy, &token), Err(TokenError::UnknownKey));

    // With a single key, no kid is unambiguous.
    let policy = jwks_policy(
        &["RS256"],
        vec![jwk(&rsa_signer(0), Algorithm::RS256, Some("only"))],
    );
    assert_eq!(subject_of(&policy, &token), "alice");
}

#[test]
fn a_jwk_pinned_to_another_algorithm_is_an_unknown_key() {
    let policy = jwks_policy(
        &["RS256", "RS384"],
        vec![jwk(&rsa_signer(0), Algorithm::RS384, Some("rs384-only"))],
    );
    let rs256 = sign(
        &with_kid(Algorithm::RS256, Some("rs384-only")),
        &claims("jwks"),
        &rsa_signer(0),
    );
    assert_eq!(verify(&policy, &rs256), Err(TokenError::UnknownKey));
    let rs384 = sign(
        &with_kid(Algorithm::RS384, Some("rs384-only")),
        &claims("jwks"),
        &rsa_signer(0),
    );
    assert_eq!(subject_of(&policy, &rs384), "alice");
}

#[test]
fn a_jwks_of_ec_keys_is_chosen_by_kid() {
    let policy = jwks_policy(
        &["ES256"],
        vec![
            jwk(&ec_signer(0), Algorithm::ES256, Some("ec-1")),
            jwk(&ec_signer(1), Algorithm::ES256, Some("ec-2")),
            // A key of another family is skipped, not an error.
            jwk(&rsa_signer(0), Algorithm::RS256, Some("rsa")),
        ],
    );
    for (index, kid) in [(0, "ec-1"), (1, "ec-2")] {
        let token = sign(
            &with_kid(Algorithm::ES256, Some(kid)),
            &claims("jwks"),
            &ec_signer(index),
        );
        assert_eq!(subject_of(&policy, &token), "alice", "{kid}");
    }
    let crossed = sign(
        &with_kid(Algorithm::ES256, Some("ec-1")),
        &claims("jwks"),
        &ec_signer(1),
    );
    assert_eq!(verify(&policy, &crossed), Err(TokenError::BadSignature));
    let rsa = sign(
        &with_kid(Algorithm::RS256, Some("rsa")),
        &claims("jwks"),
        &rsa_signer(0),
    );
    assert_eq!(
        verify(&policy, &rsa),
        Err(TokenError::AlgorithmNotAllowed("RS256".into()))
    );
}

#[test]
fn a_jwk_for_encryption_is_never_used_to_verify() {
    let mut encryption = jwk(&rsa_signer(1), Algorithm::RS256, Some("enc"));
    if let Some(object) = encryption.as_object_mut() {
        object.insert("use".into(), json!("enc"));
    }
    let policy = jwks_policy(
        &["RS256"],
        vec![
            jwk(&rsa_signer(0), Algorithm::RS256, Some("sig")),
            encryption,
        ],
    );
    let token = sign(
        &with_kid(Algorithm::RS256, Some("enc")),
        &claims("jwks"),
        &rsa_signer(1),
    );
    assert_eq!(verify(&policy, &token), Err(TokenError::UnknownKey));
}

// ---------------------------------------------------------------------------
// Loader errors
// ---------------------------------------------------------------------------

#[test]
fn a_short_hmac_secret_is_rejected() {
    for (alg, min) in [("HS256", 32), ("HS384", 48), ("HS512", 64)] {
        let dir = PolicyDir::new().issuer(IssuerYaml::hmac("short-secret", &[alg]));
        dir.file("hmac.secret", &"s".repeat(min - 1));
        let error = dir.load_error();
        assert!(error.contains("short-secret"), "{alg}: {error}");
        assert!(error.contains(&format!("at least {min}")), "{alg}: {error}");
        assert!(error.contains("policy.yaml:"), "{alg}: {error}");

        // Exactly long enough loads; a trailing newline does not count.
        dir.file("hmac.secret", &format!("{}\n", "s".repeat(min)));
        assert!(dir.try_load().is_ok(), "{alg}: {min} bytes should do");
        dir.file("hmac.secret", &format!("{}\r\n", "s".repeat(min - 1)));
        assert!(dir.try_load().is_err(), "{alg}: the newline must not count");
    }
    // The longest pinned algorithm sets the minimum.
    let dir = PolicyDir::new().issuer(IssuerYaml::hmac("mixed-sizes", &["HS256", "HS512"]));
    dir.file("hmac.secret", &"s".repeat(40));
    let error = dir.load_error();
    assert!(
        error.contains("mixed-sizes") && error.contains("at least 64"),
        "{error}"
    );
}

#[test]
fn mixing_hmac_and_rsa_in_one_issuer_is_rejected() {
    for key in [
        ("secret_file", "hmac.secret"),
        ("public_key_file", "rsa.pem"),
    ] {
        let dir =
            PolicyDir::new().issuer(IssuerYaml::new("mixed", &["HS256", "RS256"], key.0, key.1));
        let error = dir.load_error();
        assert!(error.contains("one key type"), "{key:?}: {error}");
    }
}

#[test]
fn an_unset_secret_env_is_rejected() {
    let name = "PORTCULLIS_TOKENS_TEST_NEVER_SET_4F2A9C";
    assert!(std::env::var_os(name).is_none());
    let dir = PolicyDir::new().issuer(IssuerYaml::new("from-env", &["HS256"], "secret_env", name));
    let error = dir.load_error();
    assert!(error.contains("from-env"), "{error}");
    assert!(error.contains(name), "{error}");
}

#[test]
fn a_public_key_file_that_is_not_a_pem_is_rejected() {
    let dir = PolicyDir::new().issuer(IssuerYaml::new(
        "rsa",
        &["RS256"],
        "public_key_file",
        "bad.pem",
    ));
    for contents in [
        "not a key at all".to_owned(),
        String::new(),
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_owned(),
    ] {
        dir.file("bad.pem", &contents);
        let error = dir.load_error();
        assert!(error.contains("rsa"), "{contents:?}: {error}");
        assert!(error.contains("bad.pem"), "{contents:?}: {error}");
    }
    // A missing file is an error too.
    let dir = PolicyDir::new().issuer(IssuerYaml::new(
        "rsa",
        &["RS256"],
        "public_key_file",
        "missing.pem",
    ));
    assert!(dir.load_error().contains("missing.pem"));
}

#[test]
fn a_public_key_of_the_wrong_type_is_rejected() {
    for (algs, file) in [
        (&["RS256"][..], "ec.pem"),
        (&["ES256"][..], "rsa.pem"),
        (&["EdDSA"][..], "rsa.pem"),
        (&["RS256"][..], "ed.pem"),
    ] {
        let dir = PolicyDir::new().issuer(IssuerYaml::new("typed", algs, "public_key_file", file));
        let error = dir.load_error();
        assert!(
            error.contains("issuer \"typed\"") && error.contains("is not a PEM"),
            "{algs:?} {file}: {error}"
        );
    }
}

#[test]
fn a_key_that_cannot_serve_the_algorithms_is_rejected() {
    let mut two_sources = IssuerYaml::hmac("k", &["HS256"]);
    two_sources
        .key
        .push(("public_key_file".into(), "rsa.pem".into()));
    let cases = [
        (
            IssuerYaml::new("k", &["HS256"], "public_key_file", "rsa.pem"),
            "needs a secret, not a public key",
        ),
        (
            IssuerYaml::new("k", &["RS256"], "secret_file", "hmac.secret"),
            "a shared-secret key cannot verify",
        ),
        (
            IssuerYaml::new("k", &["none"], "secret_file", "hmac.secret"),
            "unknown algorithm \"none\"",
        ),
        (
            IssuerYaml::new("k", &[], "secret_file", "hmac.secret"),
            "pins no algorithm",
        ),
        (two_sources, "exactly one of"),
    ];
    for (issuer, expected) in cases {
        let error = PolicyDir::new().issuer(issuer).load_error();
        assert!(
            error.contains(expected),
            "expected {expected:?} in: {error}"
        );
        assert!(error.contains("policy.yaml:"), "{error}");
    }
}

#[test]
fn a_jwks_without_a_usable_key_is_rejected() {
    let dir = PolicyDir::new().issuer(IssuerYaml::new(
        "jwks",
        &["RS256"],
        "jwks_file",
        "jwks.json",
    ));
    for (contents, expected) in [
        (
            json!({ "keys": [jwk(&ec_signer(0), Algorithm::ES256, Some("ec"))] }).to_string(),
            "holds no Rsa signing key",
        ),
        (
            json!({ "keys": [] }).to_string(),
            "holds no Rsa signing key",
        ),
        ("not json".to_owned(), "is not a JWK set"),
    ] {
        dir.file("jwks.json", &contents);
        let error = dir.load_error();
        assert!(error.contains("issuer \"jwks\""), "{contents}: {error}");
        assert!(error.contains(expected), "{contents}: {error}");
    }
}

// ---------------------------------------------------------------------------
// Token cache
// ---------------------------------------------------------------------------

/// Claims of a good `hs` token for the cache clock.
fn cache_claims() -> Map<String, Value> {
    claims_with(
        "hs",
        &[
            ("iat", json!(CACHE_NOW - 60)),
            ("exp", json!(CACHE_NOW + 3600)),
        ],
    )
}

#[test]
fn the_cache_reuses_a_verification_under_the_same_policy_version() {
    let policy = hmac_policy(&["HS256"]);
    // The same issuer, but its secret rotated: the token no longer verifies.
    let mut rotated = IssuerYaml::hmac("hs", &["HS256"]);
    rotated.key = vec![("secret_file".into(), "other.secret".into())];
    let rotated = PolicyDir::new().issuer(rotated).load();

    let token = hs(Algorithm::HS256, &cache_claims(), SECRET);
    assert_eq!(
        verify_at(&rotated, &token, CACHE_NOW),
        Err(TokenError::BadSignature)
    );

    let cache = TokenCache::new(100);
    let first = cache
        .verify(&policy.issuers, "v1", &[0], &token, CACHE_NOW)
        .unwrap();
    assert_eq!(&*first.subject, "alice");
    // A second call under "v1" is answered from the cache: the rotated
    // issuers would refuse the signature, yet the answer is Ok.
    let second = cache
        .verify(&rotated.issuers, "v1", &[0], &token, CACHE_NOW + 10)
        .expect("expected a cache hit, got");
    assert_eq!(second, first);
    // Under another version the earlier verification is not reused.
    assert_eq!(
        cache.verify(&rotated.issuers, "v2", &[0], &token, CACHE_NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn a_cached_token_still_expires() {
    let policy = hmac_policy(&["HS256"]);
    let token = hs(Algorithm::HS256, &cache_claims(), SECRET);
    let exp = CACHE_NOW + 3600;
    let cache = TokenCache::new(100);
    assert!(cache
        .verify(&policy.issuers, "v1", &[0], &token, CACHE_NOW)
        .is_ok());
    assert!(cache
        .verify(&policy.issuers, "v1", &[0], &token, exp + LEEWAY)
        .is_ok());
    assert_eq!(
        cache.verify(&policy.issuers, "v1", &[0], &token, exp + LEEWAY + 1),
        Err(TokenError::Expired)
    );
    assert_eq!(
        cache.verify(&policy.issuers, "v1", &[0], &token, exp + 86_400),
        Err(TokenError::Expired)
    );
}

#[test]
fn a_cached_token_still_respects_the_allowed_issuers() {
    let policy = hmac_policy(&["HS256"]);
    let token = hs(Algorithm::HS256, &cache_claims(), SECRET);
    let cache = TokenCache::new(100);
    assert!(cache
        .verify(&policy.issuers, "v1", &[0], &token, CACHE_NOW)
        .is_ok());
    assert_eq!(
        cache.verify(&policy.issuers, "v1", &[], &token, CACHE_NOW),
        Err(TokenError::UnknownIssuer)
    );
    assert!(cache
        .verify(&policy.issuers, "v1", &[0], &token, CACHE_NOW)
        .is_ok());
}

#[test]
fn the_cache_does_not_remember_failures() {
    let policy = hmac_policy(&["HS256"]);
    let mut rotated = IssuerYaml::hmac("hs", &["HS256"]);
    rotated.key = vec![("secret_file".into(), "other.secret".into())];
    let rotated = PolicyDir::new().issuer(rotated).load();
    let token = hs(Algorithm::HS256, &cache_claims(), SECRET);

    let cache = TokenCache::new(100);
    assert_eq!(
        cache.verify(&rotated.issuers, "v1", &[0], &token, CACHE_NOW),
        Err(TokenError::BadSignature)
    );
    assert!(cache
        .verify(&policy.issuers, "v1", &[0], &token, CACHE_NOW)
        .is_ok());
    // Under a new version the token is verified afresh, against the clock.
    assert_eq!(
        cache.verify(&policy.issuers, "v2", &[0], &token, CACHE_NOW + 7200),
        Err(TokenError::Expired)
    );
}

#[test]
fn the_engine_decides_through_the_cache() {
    let policy = hmac_policy(&["HS256"]);
    let token = hs(Algorithm::HS256, &cache_claims(), SECRET);
    let request = RequestAttrs {
        method: "GET".into(),
        path: "/api/whoami".into(),
        credential: Credential::Bearer(token.into()),
        ..RequestAttrs::default()
    };
    let cache = TokenCache::new(100);
    for now in [CACHE_NOW, CACHE_NOW + 1] {
        let decision = decide(
            &policy,
            &*policy.grants,
            &Request::Http(&request),
            &cache,
            now,
        );
        assert!(decision.is_allowed(), "{decision:?}");
        assert_eq!(decision.subject.as_deref(), Some("alice"));
    }
    let decision = decide(
        &policy,
        &*policy.grants,
        &Request::Http(&request),
        &cache,
        CACHE_NOW + 3600 + LEEWAY + 1,
    );
    assert_eq!(decision.effect, Effect::Deny(DenyStatus::Unauthorized));
    assert_eq!(decision.reason, Reason::InvalidToken(TokenError::Expired));
}

#[test]
fn a_token_expiring_at_the_end_of_time_is_cached_safely() {
    let policy = hmac_policy(&["HS256"]);
    let token = hs(
        Algorithm::HS256,
        &claims_with("hs", &[("exp", json!(u64::MAX))]),
        SECRET,
    );
    let cache = TokenCache::new(100);
    for now in [NOW, u64::MAX - 1, u64::MAX] {
        let principal = cache
            .verify(&policy.issuers, "v1", &[0], &token, now)
            .unwrap_or_else(|e| panic!("{now}: {e:?}"));
        assert_eq!(principal.expires_at, u64::MAX);
    }
}

// ---------------------------------------------------------------------------
// Regressions: gaps found by these tests and fixed.
// ---------------------------------------------------------------------------

#[test]
fn a_jwk_without_alg_serves_the_issuers_algorithms() {
    // RFC 7517 4.4 makes `alg` optional and some providers omit it; such a
    // key should serve the issuer's pinned algorithms of its family.
    let mut key = jwk(&rsa_signer(0), Algorithm::RS256, Some("no-alg"));
    if let Some(object) = key.as_object_mut() {
        object.remove("alg");
    }
    let dir = PolicyDir::new().issuer(IssuerYaml::new(
        "jwks",
        &["RS256"],
        "jwks_file",
        "jwks.json",
    ));
    dir.file("jwks.json", &json!({ "keys": [key] }).to_string());
    let policy = dir.load();
    let token = sign(
        &with_kid(Algorithm::RS256, Some("no-alg")),
        &claims("jwks"),
        &rsa_signer(0),
    );
    assert_eq!(subject_of(&policy, &token), "alice");
    // The pin still holds for such a key.
    let hs = sign(
        &with_kid(Algorithm::HS256, Some("no-alg")),
        &claims("jwks"),
        &EncodingKey::from_secret(rsa_keys()[0].public_pem().as_bytes()),
    );
    assert_eq!(
        verify(&policy, &hs),
        Err(TokenError::AlgorithmNotAllowed("HS256".into()))
    );
}

#[test]
fn a_critical_header_that_is_not_understood_is_refused() {
    // RFC 7515 4.1.11: if a listed extension is not understood, the JWS is
    // invalid.
    let policy = hmac_policy(&["HS256"]);
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["x-must-understand".into()]);
    header.extras.insert("x-must-understand", json!(true));
    let token = sign(
        &header,
        &claims("hs"),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );
    let result = verify(&policy, &token);
    assert!(
        matches!(result, Err(TokenError::Malformed(_))),
        "{result:?}"
    );
}

// ---------------------------------------------------------------------------
// Keys the loader could not read (`portcullis test`)
// ---------------------------------------------------------------------------

/// A key file that is missing is an error for every loader but the case
/// runner's, which loads the issuer with a key set that refuses every
/// token (fail closed, never a dummy key): a token signed with the very
/// secret the file would hold is still refused.
#[test]
fn an_unreadable_key_is_unverifiable_and_refuses_every_token() {
    use portcullis::policy::{load_policies_with, UnreadableKeys};
    let policy = PolicyDir::new().issuer(IssuerYaml::new(
        "hs",
        &["HS256"],
        "secret_file",
        "gone.secret",
    ));
    let error = policy.load_error();
    assert!(error.contains("issuer \"hs\": cannot read"), "{error}");
    assert!(error.contains("gone.secret"), "{error}");

    let loaded = load_policies_with(policy.dir.path(), UnreadableKeys::Unverifiable)
        .unwrap_or_else(|e| panic!("the policy should load for cases:\n{e}"));
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    let warning = loaded.warnings[0].to_string();
    assert!(
        warning.contains("warning: issuer \"hs\": cannot read") && warning.contains("refused"),
        "{warning}"
    );
    for secret in [SECRET, OTHER_SECRET, ""] {
        let token = hs(Algorithm::HS256, &claims("hs"), secret);
        assert_refused_by_engine(&loaded.policy, &token, NOW, TokenError::UnknownKey);
    }

    // Only the missing bytes are forgiven: a secret for an RSA issuer is
    // still an error.
    let policy = PolicyDir::new().issuer(IssuerYaml::new(
        "rs",
        &["RS256"],
        "secret_file",
        "gone.secret",
    ));
    policy.try_load().expect_err("should not load");
    let errors = load_policies_with(policy.dir.path(), UnreadableKeys::Unverifiable)
        .expect_err("a secret for RS256 must not load");
    assert!(
        errors
            .to_string()
            .contains("shared-secret key cannot verify"),
        "{errors}"
    );
}
