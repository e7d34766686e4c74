//! Verified tokens, remembered so a signature is checked once per token.
//!
//! The key is a SHA-256 of the policy version, the key epoch (see
//! [`TokenCache::key_epoch`]) and the token, so the cache holds no token, a
//! new policy (new keys, new issuers) never reuses a verification made under
//! the old one, and neither does a key set fetched from a URL once its keys
//! have changed: not even a verification that met the old keys and was
//! filed after the caches were cleared. An entry expires with its token:
//! moka evicts it at `exp`, and a hit is checked against the caller's clock
//! as well, so a stale entry can never outlive the token.
//!
//! `serve` bounds the cache by bytes (an estimate of each entry's heap
//! footprint, moka's bookkeeping included), so a burst of tokens with large
//! groups claims cannot grow it past what the pod can afford.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;
use sha2::{Digest, Sha256};

use crate::engine::Authenticate;
use crate::metrics::{
    bounded_cache, CacheStats, ALLOCATION_OVERHEAD_BYTES, CACHE_ENTRY_OVERHEAD_BYTES,
};
use crate::policy::PolicySet;
use crate::token::{Issuers, Principal, TokenError};

/// Where a verification is filed: SHA-256 of the policy version, the key
/// epoch and the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenKey([u8; 32]);

/// A bounded cache of successful verifications.
#[derive(Clone)]
pub struct TokenCache {
    entries: Cache<TokenKey, Arc<Principal>>,
    stats: Arc<CacheStats>,
}

/// Evicts an entry at its token's `exp`, or after `max_ttl`, whichever is first.
struct UntilExpiry {
    max_ttl: Duration,
}

impl Expiry<TokenKey, Arc<Principal>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenKey,
        principal: &Arc<Principal>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let now = crate::pdp::unix_now();
        let until_exp = Duration::from_secs(principal.expires_at.saturating_sub(now));
        Some(until_exp.min(self.max_ttl))
    }
}

/// Default longest time a verified token is remembered.
pub(crate) const DEFAULT_TOKEN_CACHE_TTL: Duration = Duration::from_secs(300);

impl TokenCache {
    /// A cache of at most `capacity` tokens, each kept at most
    /// [`DEFAULT_TOKEN_CACHE_TTL`].
    pub fn new(capacity: u64) -> Self {
        Self::with_ttl(capacity, DEFAULT_TOKEN_CACHE_TTL)
    }

    /// A cache of at most `capacity` tokens, each kept at most `max_ttl`
    /// (and never past its token's `exp`).
    pub(crate) fn with_ttl(capacity: u64, max_ttl: Duration) -> Self {
        Self::bounded(capacity, None, max_ttl)
    }

    /// A cache whose entries weigh at most `max_bytes` in all (by
    /// [`Self::entry_bytes`]), each kept at most `max_ttl` (and never past
    /// its token's `exp`).
    pub(crate) fn with_max_bytes(max_bytes: u64, max_ttl: Duration) -> Self {
        Self::bounded(u64::MAX, Some(max_bytes), max_ttl)
    }

    fn bounded(max_entries: u64, max_bytes: Option<u64>, max_ttl: Duration) -> Self {
        let (builder, max_bytes) =
            bounded_cache(max_entries, max_bytes, |principal: &Arc<Principal>| {
                Self::entry_bytes(principal)
            });
        let entries = builder.expire_after(UntilExpiry { max_ttl }).build();
        let stats = CacheStats::measuring(&entries, max_bytes);
        Self { entries, stats }
    }

    /// The estimated memory one verification holds: key, principal, its
    /// subject and groups, and moka's own bookkeeping. The issuer name is
    /// shared with the policy and not counted.
    pub(crate) fn entry_bytes(principal: &Principal) -> usize {
        std::mem::size_of::<TokenKey>()
            + CACHE_ENTRY_OVERHEAD_BYTES
            + Self::principal_bytes(principal)
    }

    /// The estimated memory a principal holds in its `Arc`: subject, groups
    /// and the claims kept for conditions.
    pub(crate) fn principal_bytes(principal: &Principal) -> usize {
        let allocation = |bytes: usize| match bytes {
            0 => 0,
            n => n + ALLOCATION_OVERHEAD_BYTES,
        };
        let groups: usize = principal
            .groups
            .iter()
            .map(|g| allocation(g.capacity()))
            .sum::<usize>()
            + allocation(principal.groups.capacity() * std::mem::size_of::<String>());
        // The Arc's allocation: two counts and the principal.
        allocation(2 * std::mem::size_of::<usize>() + std::mem::size_of::<Principal>())
            + allocation(principal.subject.len())
            + groups
            + claims_bytes(&principal.claims)
    }

    /// Forgets every verification, e.g. when an issuer's keys change.
    pub fn clear(&self) {
        self.entries.invalidate_all();
    }

    /// Hit and miss counts and the size, for metrics.
    pub fn stats(&self) -> Arc<CacheStats> {
        self.stats.clone()
    }

    /// A number that changes whenever the keys of any key set the issuers
    /// fetch from a URL change: the sum of their generations, each of which
    /// only grows. Read it before the keys are read (as [`Self::verify`]
    /// and the server's decision cache do): keys are published before
    /// their generation is bumped, so a check that reads the new epoch
    /// verifies with the new keys, and a check that read the old epoch
    /// files its result where no later lookup looks.
    pub fn key_epoch(issuers: &Issuers) -> u64 {
        issuers
            .remote_key_sets()
            .fold(0u64, |sum, keys| sum.wrapping_add(keys.generation()))
    }

    /// Verifies `token`, or returns the earlier verification of it under the
    /// same policy version and key epoch. `allowed` names the issuers the
    /// caller accepts.
    pub fn verify(
        &self,
        issuers: &Issuers,
        policy_version: &str,
        allowed: &[usize],
        token: &str,
        now: u64,
    ) -> Result<Arc<Principal>, TokenError> {
        let key = Self::key(issuers, policy_version, token);
        if let Some(found) = self.lookup(&key, issuers, allowed, now) {
            return found;
        }
        let principal = Arc::new(issuers.verify(allowed, token, now)?);
        self.remember(key, principal.clone());
        Ok(principal)
    }

    /// The first half of [`Self::verify`]: where the verification of
    /// `token` is filed, by the key epoch as of now.
    pub fn key(issuers: &Issuers, policy_version: &str, token: &str) -> TokenKey {
        let epoch = Self::key_epoch(issuers);
        let mut hasher = Sha256::new();
        hasher.update((policy_version.len() as u64).to_le_bytes());
        hasher.update(policy_version.as_bytes());
        hasher.update(epoch.to_le_bytes());
        hasher.update(token.as_bytes());
        TokenKey(hasher.finalize().into())
    }

    /// The verification filed under `key`, checked against `allowed` and
    /// the clock; `None` when there is none.
    fn lookup(
        &self,
        key: &TokenKey,
        issuers: &Issuers,
        allowed: &[usize],
        now: u64,
    ) -> Option<Result<Arc<Principal>, TokenError>> {
        let Some(principal) = self.entries.get(key) else {
            self.stats.miss();
            return None;
        };
        self.stats.hit();
        let issuer_allowed = allowed
            .iter()
            .filter_map(|&i| issuers.get(i))
            .any(|issuer| issuer.name == principal.issuer);
        if !issuer_allowed {
            return Some(Err(TokenError::UnknownIssuer));
        }
        if now > issuers.valid_until(&principal) {
            self.entries.invalidate(key);
            return Some(Err(TokenError::Expired));
        }
        Some(Ok(principal))
    }

    /// The second half of [`Self::verify`]: files a successful
    /// verification under the key computed before it started.
    pub fn remember(&self, key: TokenKey, principal: Arc<Principal>) {
        self.entries.insert(key, principal);
    }

    /// Entries currently held (approximate, as moka counts).
    pub fn len(&self) -> u64 {
        self.entries.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The estimated heap footprint of verified claims kept for conditions
/// (none unless the policy's conditions read claims): each map entry as a
/// tree node holding a key and a value, strings and arrays as allocations.
fn claims_bytes(claims: &serde_json::Map<String, serde_json::Value>) -> usize {
    use serde_json::Value;
    fn allocation(bytes: usize) -> usize {
        match bytes {
            0 => 0,
            n => n + ALLOCATION_OVERHEAD_BYTES,
        }
    }
    fn entry(key: &str, value: &Value) -> usize {
        allocation(std::mem::size_of::<String>() + std::mem::size_of::<Value>())
            + allocation(key.len())
            + inner(value)
    }
    fn inner(value: &Value) -> usize {
        match value {
            Value::String(s) => allocation(s.capacity()),
            Value::Array(items) => {
                allocation(items.capacity() * std::mem::size_of::<Value>())
                    + items.iter().map(inner).sum::<usize>()
            }
            Value::Object(map) => map.iter().map(|(k, v)| entry(k, v)).sum(),
            Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        }
    }
    claims.iter().map(|(k, v)| entry(k, v)).sum()
}

/// The server's way of authenticating: each token verified once, then
/// remembered (the engine itself caches nothing).
impl Authenticate for TokenCache {
    fn authenticate(
        &self,
        policy: &PolicySet,
        allowed: &[usize],
        token: &str,
        now: u64,
    ) -> Result<Arc<Principal>, TokenError> {
        self.verify(&policy.issuers, &policy.version, allowed, token, now)
    }
}
