//! The keys of signed events, as the policy's `events:` section names them:
//! the one key new envelopes are signed with, and every key an envelope may
//! name by its `kid` (the signing key and, after a rotation, the earlier
//! ones until their envelopes have expired).
//!
//! Keys are held parsed: an Ed25519 key as the curve point or scalar
//! ed25519-dalek works with, an HMAC key as the hash state already keyed.
//! They are built once, when the policy compiles, so signing or opening an
//! envelope never parses key bytes (the cost jsonwebtoken pays per call).

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer as _, Verifier as _};
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use sha2::{Sha256, Sha384, Sha512};

/// An HMAC key, keyed once: each use clones the keyed state.
#[derive(Clone)]
enum HmacKey {
    Sha256(Hmac<Sha256>),
    Sha384(Hmac<Sha384>),
    Sha512(Hmac<Sha512>),
}

impl HmacKey {
    fn new(algorithm: Algorithm, secret: &[u8]) -> Result<HmacKey, String> {
        // HMAC takes a key of any length; the error is never expected.
        let refused = |_| "the secret is not an HMAC key".to_owned();
        Ok(match algorithm {
            Algorithm::HS256 => HmacKey::Sha256(Hmac::new_from_slice(secret).map_err(refused)?),
            Algorithm::HS384 => HmacKey::Sha384(Hmac::new_from_slice(secret).map_err(refused)?),
            Algorithm::HS512 => HmacKey::Sha512(Hmac::new_from_slice(secret).map_err(refused)?),
            other => return Err(format!("{other:?} is not an HMAC algorithm")),
        })
    }

    fn tag(&self, message: &[u8]) -> Vec<u8> {
        fn run<M: Mac + Clone>(key: &M, message: &[u8]) -> Vec<u8> {
            let mut mac = key.clone();
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            HmacKey::Sha256(key) => run(key, message),
            HmacKey::Sha384(key) => run(key, message),
            HmacKey::Sha512(key) => run(key, message),
        }
    }

    /// Whether `tag` is `message`'s, compared in constant time.
    fn verifies(&self, message: &[u8], tag: &[u8]) -> bool {
        fn run<M: Mac + Clone>(key: &M, message: &[u8], tag: &[u8]) -> bool {
            let mut mac = key.clone();
            mac.update(message);
            mac.verify_slice(tag).is_ok()
        }
        match self {
            HmacKey::Sha256(key) => run(key, message, tag),
            HmacKey::Sha384(key) => run(key, message, tag),
            HmacKey::Sha512(key) => run(key, message, tag),
        }
    }
}

/// What signs: a keyed HMAC or an Ed25519 private key.
#[derive(Clone)]
enum Signs {
    Hmac(Box<HmacKey>),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

/// What verifies: a keyed HMAC or an Ed25519 public key.
#[derive(Clone)]
enum Verifies {
    Hmac(Box<HmacKey>),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// The key new envelopes are signed with.
#[derive(Clone)]
pub struct SigningKey {
    // Read-only: the header below was made from them.
    kid: String,
    algorithm: Algorithm,
    key: Signs,
    /// The envelope's JOSE header (`typ`, `alg`, `kid`), already in
    /// base64url: the same for every envelope this key signs.
    header: String,
}

impl SigningKey {
    /// An HMAC signing key (HS256, HS384 or HS512) over `secret`.
    pub fn hmac(kid: &str, algorithm: Algorithm, secret: &[u8]) -> Result<SigningKey, String> {
        Self::new(
            kid,
            algorithm,
            Signs::Hmac(Box::new(HmacKey::new(algorithm, secret)?)),
        )
    }

    /// An Ed25519 signing key from the PKCS#8 PEM of its private key.
    pub fn ed25519_pem(kid: &str, pem: &[u8]) -> Result<SigningKey, String> {
        // jsonwebtoken's PEM reader, as before: the same files are accepted.
        let encoding = EncodingKey::from_ed_pem(pem).map_err(|e| e.to_string())?;
        let key = ed25519_dalek::SigningKey::from_pkcs8_der(encoding.as_bytes())
            .map_err(|e| format!("not an Ed25519 private key: {e}"))?;
        Self::new(kid, Algorithm::EdDSA, Signs::Ed25519(Box::new(key)))
    }

    fn new(kid: &str, algorithm: Algorithm, key: Signs) -> Result<SigningKey, String> {
        let mut header = Header::new(algorithm);
        header.typ = Some(crate::envelope::ENVELOPE_TYPE.into());
        header.kid = Some(kid.to_owned());
        // jsonwebtoken's own encoding of a header: the wire format stays.
        let json = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
        Ok(SigningKey {
            kid: kid.to_owned(),
            algorithm,
            key,
            header: URL_SAFE_NO_PAD.encode(json),
        })
    }

    /// The `kid` its envelopes name.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The compact JWS of `claims` (already JSON): header, claims and
    /// signature in base64url, as `jsonwebtoken::encode` writes them.
    pub(crate) fn sign_compact(&self, claims_json: &[u8]) -> String {
        let mut token =
            String::with_capacity(self.header.len() + 2 + claims_json.len().div_ceil(3) * 4 + 88);
        token.push_str(&self.header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims_json, &mut token);
        let signature = match &self.key {
            Signs::Hmac(key) => key.tag(token.as_bytes()),
            Signs::Ed25519(key) => key.sign(token.as_bytes()).to_bytes().to_vec(),
        };
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        token
    }
}

/// A key an envelope may name.
#[derive(Clone)]
pub struct VerifyingKey {
    algorithm: Algorithm,
    key: Verifies,
}

impl VerifyingKey {
    /// An HMAC key (HS256, HS384 or HS512) over `secret`.
    pub fn hmac(algorithm: Algorithm, secret: &[u8]) -> Result<VerifyingKey, String> {
        Ok(VerifyingKey {
            algorithm,
            key: Verifies::Hmac(Box::new(HmacKey::new(algorithm, secret)?)),
        })
    }

    /// An Ed25519 key from the PEM of its public key (SubjectPublicKeyInfo).
    pub fn ed25519_pem(pem: &[u8]) -> Result<VerifyingKey, String> {
        // jsonwebtoken's PEM reader, as before: the same files are accepted.
        let decoding = DecodingKey::from_ed_pem(pem).map_err(|e| e.to_string())?;
        let bytes: &[u8; 32] = decoding
            .try_get_as_bytes()
            .map_err(|e| e.to_string())?
            .get(..32)
            .and_then(|b| b.try_into().ok())
            .ok_or("not an Ed25519 public key: too short")?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map_err(|e| format!("not an Ed25519 public key: {e}"))?;
        Ok(Self::ed25519(key))
    }

    fn ed25519(key: ed25519_dalek::VerifyingKey) -> VerifyingKey {
        VerifyingKey {
            algorithm: Algorithm::EdDSA,
            key: Verifies::Ed25519(key),
        }
    }

    /// The one algorithm an envelope under this key may use.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether `signature` (decoded) is this key's over `message`: in
    /// constant time for HMAC; for Ed25519 as jsonwebtoken checked it
    /// (`Verifier::verify`, a signature of any length but 64 refused).
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.key {
            Verifies::Hmac(key) => key.verifies(message, signature),
            Verifies::Ed25519(key) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|signature| key.verify(message, &signature).is_ok()),
        }
    }
}

/// Every event key of the policy.
#[derive(Clone)]
pub struct EventKeys {
    /// Absent: this policy only verifies.
    pub signing: Option<SigningKey>,
    /// By `kid`.
    pub verifying: HashMap<String, VerifyingKey>,
    /// Seconds an envelope lives when its signer asks for no lifetime.
    pub default_lifetime: u64,
    /// Most seconds an envelope may live.
    pub max_lifetime: u64,
}

impl std::fmt::Debug for EventKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only: never key material.
        let mut kids: Vec<&String> = self.verifying.keys().collect();
        kids.sort();
        f.debug_struct("EventKeys")
            .field("signing", &self.signing.as_ref().map(SigningKey::kid))
            .field("verifying", &kids)
            .field("default_lifetime", &self.default_lifetime)
            .field("max_lifetime", &self.max_lifetime)
            .finish()
    }
}
