//! Verified tokens, remembered so a signature is checked once per token.
//!
//! The key is a SHA-256 of the policy version and the token, so the cache
//! holds no token and a new policy (new keys, new issuers) never reuses a
//! verification made under the old one. An entry expires with its token:
//! moka evicts it at `exp`, and a hit is checked against the caller's clock
//! as well, so a stale entry can never outlive the token.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::sync::Cache;
use moka::Expiry;
use sha2::{Digest, Sha256};

use super::{Issuers, Principal, TokenError};
use crate::metrics::CacheStats;

type Key = [u8; 32];

/// A bounded cache of successful verifications.
#[derive(Clone)]
pub struct TokenCache {
    entries: Cache<Key, Arc<Principal>>,
    stats: Arc<CacheStats>,
}

/// Evicts an entry at its token's `exp`, or after `max_ttl`, whichever is first.
struct UntilExpiry {
    max_ttl: Duration,
}

impl Expiry<Key, Arc<Principal>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &Key,
        principal: &Arc<Principal>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let until_exp = Duration::from_secs(principal.expires_at.saturating_sub(now));
        Some(until_exp.min(self.max_ttl))
    }
}

/// Default longest time a verified token is remembered.
pub const DEFAULT_TOKEN_CACHE_TTL: Duration = Duration::from_secs(300);

impl TokenCache {
    /// A cache of at most `capacity` tokens, each kept at most
    /// [`DEFAULT_TOKEN_CACHE_TTL`].
    pub fn new(capacity: u64) -> Self {
        Self::with_ttl(capacity, DEFAULT_TOKEN_CACHE_TTL)
    }

    /// A cache of at most `capacity` tokens, each kept at most `max_ttl`
    /// (and never past its token's `exp`).
    pub fn with_ttl(capacity: u64, max_ttl: Duration) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilExpiry { max_ttl })
                .build(),
            stats: Arc::default(),
        }
    }

    /// Forgets every verification, e.g. when an issuer's keys change.
    pub fn clear(&self) {
        self.entries.invalidate_all();
    }

    /// Hit and miss counts, for metrics.
    pub fn stats(&self) -> Arc<CacheStats> {
        self.stats.clone()
    }

    /// Verifies `token`, or returns the earlier verification of it under the
    /// same policy version. `allowed` names the issuers the caller accepts.
    pub fn verify(
        &self,
        issuers: &Issuers,
        policy_version: &str,
        allowed: &[usize],
        token: &str,
        now: u64,
    ) -> Result<Arc<Principal>, TokenError> {
        let key = cache_key(policy_version, token);
        if let Some(principal) = self.entries.get(&key) {
            self.stats.hit();
            let issuer_allowed = allowed
                .iter()
                .filter_map(|&i| issuers.get(i))
                .any(|issuer| issuer.name == principal.issuer);
            if !issuer_allowed {
                return Err(TokenError::UnknownIssuer);
            }
            if now > issuers.valid_until(&principal) {
                self.entries.invalidate(&key);
                return Err(TokenError::Expired);
            }
            return Ok(principal);
        }
        self.stats.miss();
        let principal = Arc::new(issuers.verify(allowed, token, now)?);
        self.entries.insert(key, principal.clone());
        Ok(principal)
    }

    /// Entries currently held (approximate, as moka counts).
    pub fn len(&self) -> u64 {
        self.entries.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn cache_key(policy_version: &str, token: &str) -> Key {
    let mut hasher = Sha256::new();
    hasher.update(policy_version.as_bytes());
    hasher.update([0u8]);
    hasher.update(token.as_bytes());
    hasher.finalize().into()
}
