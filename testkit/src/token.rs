//! Keys, claims and signed tokens.
//!
//! A [`Signer`] is a key of one family with the algorithm it signs with and
//! an optional `kid`: HMAC from a secret, RSA, P-256 and Ed25519 generated
//! at run time (from the thread RNG, or from a caller's RNG when a run must
//! make the same keys every time, as the fuzz seeds do). Nothing here is a
//! real key and nothing is written to the repository.
//!
//! [`Claims`] is a claim set whose times are offsets from an explicit
//! `now`: tests that pass a clock to the engine give it that clock, tests
//! of the running binary give it [`unix_now`]. Any claim can be left out or
//! bent for negative tests.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::{CryptoRng, RngCore};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{json, Map, Value};

/// The bundled demo issuer (`policies/issuers.yaml`).
pub const DEMO_ISSUER: &str = "https://idp.example.com";
/// The audience the bundled demo issuer requires.
pub const DEMO_AUDIENCE: &str = "documents-api";

/// Seconds since the Unix epoch by the wall clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A signing key, its algorithm, its `kid`, and its public half as the
/// verifier is given it.
#[derive(Clone)]
pub struct Signer {
    alg: Algorithm,
    key: EncodingKey,
    kid: Option<String>,
    private_pem: Option<String>,
    public_pem: Option<String>,
}

impl std::fmt::Debug for Signer {
    // The key itself stays out of failure messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// HS256 with `secret`.
    pub fn hs256(secret: &[u8]) -> Signer {
        Signer::hmac(Algorithm::HS256, secret)
    }

    /// An HMAC algorithm (HS256, HS384, HS512) with `secret`.
    pub fn hmac(alg: Algorithm, secret: &[u8]) -> Signer {
        Signer {
            alg,
            key: EncodingKey::from_secret(secret),
            kid: None,
            private_pem: None,
            public_pem: None,
        }
    }

    /// A new 2048-bit RSA key signing RS256 (slow to make: share it).
    pub fn rs256() -> Signer {
        Signer::rs256_from(&mut rand::thread_rng())
    }

    /// An RS256 key made from `rng`.
    pub fn rs256_from(rng: &mut (impl CryptoRng + RngCore)) -> Signer {
        let private = rsa::RsaPrivateKey::new(rng, 2048).expect("generating an RSA key");
        let private_pem = private
            .to_pkcs8_pem(LineEnding::LF)
            .expect("encoding the RSA private key")
            .to_string();
        let public_pem = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("encoding the RSA public key");
        let key =
            EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("the RSA key as a signer");
        Signer::asymmetric(Algorithm::RS256, key, private_pem, public_pem)
    }

    /// A new P-256 key signing ES256.
    pub fn es256() -> Signer {
        Signer::es256_from(&mut rand::thread_rng())
    }

    /// An ES256 key made from `rng`.
    pub fn es256_from(rng: &mut (impl CryptoRng + RngCore)) -> Signer {
        let secret = p256::SecretKey::random(rng);
        let private_pem = secret
            .to_pkcs8_pem(LineEnding::LF)
            .expect("encoding the P-256 private key")
            .to_string();
        let public_pem = secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("encoding the P-256 public key");
        let key =
            EncodingKey::from_ec_pem(private_pem.as_bytes()).expect("the P-256 key as a signer");
        Signer::asymmetric(Algorithm::ES256, key, private_pem, public_pem)
    }

    /// A new Ed25519 key signing EdDSA.
    pub fn eddsa() -> Signer {
        Signer::eddsa_from(&mut rand::thread_rng())
    }

    /// An EdDSA key made from `rng`.
    pub fn eddsa_from(rng: &mut (impl CryptoRng + RngCore)) -> Signer {
        let signing = ed25519_dalek::SigningKey::generate(rng);
        let private_pem = signing
            .to_pkcs8_pem(LineEnding::LF)
            .expect("encoding the Ed25519 private key")
            .to_string();
        let public_pem = signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("encoding the Ed25519 public key");
        let key =
            EncodingKey::from_ed_pem(private_pem.as_bytes()).expect("the Ed25519 key as a signer");
        Signer::asymmetric(Algorithm::EdDSA, key, private_pem, public_pem)
    }

    fn asymmetric(alg: Algorithm, key: EncodingKey, private: String, public: String) -> Signer {
        Signer {
            alg,
            key,
            kid: None,
            private_pem: Some(private),
            public_pem: Some(public),
        }
    }

    /// The same key under another `kid` (put in every header it signs).
    pub fn with_kid(mut self, kid: &str) -> Signer {
        self.kid = Some(kid.to_owned());
        self
    }

    /// The same key signing with another algorithm of its family (RS384,
    /// PS256, HS512, ...).
    pub fn with_alg(mut self, alg: Algorithm) -> Signer {
        self.alg = alg;
        self
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub fn encoding_key(&self) -> &EncodingKey {
        &self.key
    }

    /// The public key as PEM (SPKI), for a `public_key_file`; panics for
    /// an HMAC signer, which has none.
    pub fn public_pem(&self) -> &str {
        self.public_pem
            .as_deref()
            .expect("an HMAC signer has no public key")
    }

    /// The private key as PKCS#8 PEM; panics for an HMAC signer.
    pub fn private_pem(&self) -> &str {
        self.private_pem
            .as_deref()
            .expect("an HMAC signer has no private key")
    }

    /// The public key as a JWK, with this signer's `kid`.
    pub fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg)
            .unwrap_or_else(|e| panic!("{:?} key as a JWK: {e}", self.alg));
        jwk.common.key_id = self.kid.clone();
        jwk
    }

    /// The header it signs with: its algorithm and `kid`.
    pub fn header(&self) -> Header {
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        header
    }

    /// `claims` signed under [`Signer::header`].
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with(&self.header(), claims)
    }

    /// `claims` signed under any `header` (an algorithm the key was not
    /// made for, a foreign `kid`, extra fields).
    pub fn sign_with(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.key)
            .unwrap_or_else(|e| panic!("signing a test token with {:?}: {e}", header.alg))
    }
}

/// A JWKS document holding `signers`' public keys.
pub fn jwks(signers: &[&Signer]) -> String {
    let set = JwkSet {
        keys: signers.iter().map(|s| s.jwk()).collect(),
    };
    serde_json::to_string(&set).expect("a JWKS as JSON")
}

/// A claim set to sign. Times are offsets in seconds from `now`; `None`
/// leaves a claim out.
#[derive(Debug, Clone)]
pub struct Claims {
    pub sub: Option<String>,
    pub groups: Option<Vec<String>>,
    pub iss: Option<String>,
    pub aud: Option<String>,
    /// The clock the offsets count from.
    pub now: u64,
    pub exp_offset: Option<i64>,
    pub nbf_offset: Option<i64>,
    pub iat_offset: Option<i64>,
    /// Further claims merged in last (and so able to override the above).
    pub extra: Map<String, Value>,
}

impl Claims {
    /// What `iss` would hand `sub` for `aud` at `now`: issued at `now`,
    /// valid for 5 minutes, no groups.
    pub fn new(iss: &str, aud: &str, sub: &str, now: u64) -> Claims {
        Claims {
            sub: Some(sub.to_owned()),
            groups: None,
            iss: Some(iss.to_owned()),
            aud: Some(aud.to_owned()),
            now,
            exp_offset: Some(300),
            nbf_offset: None,
            iat_offset: Some(0),
            extra: Map::new(),
        }
    }

    /// The bundled demo issuer's claims for `sub` at `now`.
    pub fn demo(sub: &str, now: u64) -> Claims {
        Claims::new(DEMO_ISSUER, DEMO_AUDIENCE, sub, now)
    }

    /// A `groups` claim.
    pub fn groups(mut self, groups: &[&str]) -> Claims {
        self.groups = Some(groups.iter().map(|g| (*g).to_owned()).collect());
        self
    }

    /// Valid for `seconds` from `now`.
    pub fn ttl(mut self, seconds: i64) -> Claims {
        self.exp_offset = Some(seconds);
        self
    }

    /// Any other claim (replacing one of the above of the same name).
    pub fn claim(mut self, name: &str, value: Value) -> Claims {
        self.extra.insert(name.to_owned(), value);
        self
    }

    /// The claims as JSON.
    pub fn to_json(&self) -> Value {
        let at = |offset: i64| json!(self.now.saturating_add_signed(offset));
        let mut map = Map::new();
        if let Some(sub) = &self.sub {
            map.insert("sub".into(), json!(sub));
        }
        if let Some(groups) = &self.groups {
            map.insert("groups".into(), json!(groups));
        }
        if let Some(iss) = &self.iss {
            map.insert("iss".into(), json!(iss));
        }
        if let Some(aud) = &self.aud {
            map.insert("aud".into(), json!(aud));
        }
        if let Some(offset) = self.exp_offset {
            map.insert("exp".into(), at(offset));
        }
        if let Some(offset) = self.nbf_offset {
            map.insert("nbf".into(), at(offset));
        }
        if let Some(offset) = self.iat_offset {
            map.insert("iat".into(), at(offset));
        }
        for (name, value) in &self.extra {
            map.insert(name.clone(), value.clone());
        }
        Value::Object(map)
    }

    /// Signed by `signer`.
    pub fn sign(&self, signer: &Signer) -> String {
        signer.sign(&self.to_json())
    }
}

/// `Bearer TOKEN`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Base64url without padding, as JWS segments are written.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An unsigned token (`{"alg":"none"}`, empty signature) carrying `claims`.
pub fn alg_none_token(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64url(br#"{"alg":"none"}"#),
        b64url(claims.to_string().as_bytes())
    )
}
