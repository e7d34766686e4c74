//! The keys of signed events, as the policy's `events:` section names them:
//! the one key new envelopes are signed with, and every key an envelope may
//! name by its `kid` (the signing key and, after a rotation, the earlier
//! ones until their envelopes have expired).

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

/// The key new envelopes are signed with.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub algorithm: Algorithm,
    pub key: EncodingKey,
}

/// A key an envelope may name.
#[derive(Clone)]
pub struct VerifyingKey {
    pub algorithm: Algorithm,
    pub key: DecodingKey,
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
            .field("signing", &self.signing.as_ref().map(|s| &s.kid))
            .field("verifying", &kids)
            .field("default_lifetime", &self.default_lifetime)
            .field("max_lifetime", &self.max_lifetime)
            .finish()
    }
}
