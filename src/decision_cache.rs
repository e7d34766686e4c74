//! Whole decisions, remembered per policy version.
//!
//! The key is a SHA-256 of the policy version and everything a decision
//! reads from the request: method, raw path, host, context extensions and
//! the credential. A reload publishes a new version, so no decision made
//! under an old policy can ever be served again; the first check after a
//! reload decides afresh. Within one version a decision changes only with
//! time, through the token's validity: each entry carries the time until
//! which its subject may act, checked against the caller's clock on every
//! hit, and decisions about tokens that failed verification (one not yet
//! valid may become valid) are never cached.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use sha2::{Digest, Sha256};

use crate::engine::{Credential, Decision, Reason, RequestAttrs};
use crate::metrics::CacheStats;

type Key = [u8; 32];

/// Default number of decisions remembered.
pub const DEFAULT_DECISION_CACHE_CAPACITY: u64 = 100_000;
/// Default longest time a decision is remembered.
pub const DEFAULT_DECISION_CACHE_TTL: Duration = Duration::from_secs(60);

/// A bounded cache of decisions.
#[derive(Clone)]
pub struct DecisionCache {
    entries: Cache<Key, Arc<Decision>>,
    stats: Arc<CacheStats>,
}

impl DecisionCache {
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            stats: Arc::default(),
        }
    }

    /// Hit and miss counts, for metrics.
    pub fn stats(&self) -> Arc<CacheStats> {
        self.stats.clone()
    }

    /// The key of `request` under the policy `version`.
    pub fn key(version: &str, request: &RequestAttrs) -> Key {
        let mut hasher = Sha256::new();
        // Each field is length-prefixed, so no two requests share a key.
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        field(version.as_bytes());
        field(request.method.as_bytes());
        field(request.path.as_bytes());
        field(request.host.as_bytes());
        field(&(request.context_extensions.len() as u64).to_le_bytes());
        for (name, value) in &request.context_extensions {
            field(name.as_bytes());
            field(value.as_bytes());
        }
        field(&(request.verified_payloads.len() as u64).to_le_bytes());
        for (key, claims) in &request.verified_payloads {
            field(key.as_bytes());
            field(
                serde_json::Value::Object(claims.clone())
                    .to_string()
                    .as_bytes(),
            );
        }
        match &request.credential {
            Credential::Absent => field(b"absent"),
            Credential::Bearer(token) => {
                field(b"bearer");
                field(token.as_bytes());
            }
            Credential::Invalid(error) => {
                field(b"invalid");
                field(error.to_string().as_bytes());
            }
        }
        hasher.finalize().into()
    }

    /// The decision remembered under `key`, if its subject may still act at `now`.
    pub fn get(&self, key: &Key, now: u64) -> Option<Arc<Decision>> {
        match self.entries.get(key) {
            Some(decision) if decision.valid_until.is_none_or(|until| now <= until) => {
                self.stats.hit();
                Some(decision)
            }
            Some(_) => {
                self.entries.invalidate(key);
                self.stats.miss();
                None
            }
            None => {
                self.stats.miss();
                None
            }
        }
    }

    /// Remembers `decision` unless it depends on more than the key says.
    pub fn insert(&self, key: Key, decision: &Arc<Decision>) {
        let cacheable = !matches!(
            decision.reason,
            Reason::InvalidToken(_) | Reason::InternalError
        );
        if cacheable {
            self.entries.insert(key, decision.clone());
        }
    }

    /// Forgets every decision.
    pub fn clear(&self) {
        self.entries.invalidate_all();
    }
}
