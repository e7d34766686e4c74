//! Whole decisions about verified callers, remembered per policy version.
//!
//! The key is a SHA-256 of the policy version, the key epoch of the keys
//! fetched from URLs ([`TokenCache::key_epoch`]) and everything a decision
//! reads from the request: method, raw path, host, destination principal,
//! context extensions, verified payloads and the credential (the key
//! function destructures the request, so a new field cannot be forgotten). A reload publishes a new version and a key change a new
//! epoch, so no decision made under an old policy or with removed keys can
//! ever be served again. Within one version a decision changes only with
//! time, through the token's validity: each entry carries the time until
//! which its subject may act, checked against the caller's clock on every
//! hit.
//!
//! Only decisions that established a principal are kept: verifying a token
//! is the expensive part of a check, and everything else (a missing or
//! malformed credential, a bad path, no application or route before
//! authentication, a public route) costs less to decide again than to hash,
//! store and look up. So requests without a credential never touch the
//! cache, and a flood of them cannot fill it. A decision about a token that
//! failed verification is never kept either (one not yet valid may become
//! valid). The cache is bounded by bytes, an estimate of each entry's
//! heap footprint, and one decision heavier than [`MAX_ENTRY_BYTES`] (a
//! long rendered resource) is decided afresh each time instead.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use sha2::{Digest, Sha256};

use crate::engine::{Credential, Decision, Reason, RequestAttrs};
use crate::metrics::{
    bounded_cache, CacheStats, ALLOCATION_OVERHEAD_BYTES, CACHE_ENTRY_OVERHEAD_BYTES,
};
use crate::token_cache::TokenCache;

type Key = [u8; 32];

/// Default number of decisions remembered by [`DecisionCache::new`].
pub const DEFAULT_DECISION_CACHE_CAPACITY: u64 = 100_000;
/// Default bound of `serve`'s decision cache: off. A decision from the
/// policy files costs about what a cache hit does (the engine is a few
/// hash lookups and verified tokens are cached), while holding a working
/// set of decisions costs megabytes, and a cache smaller than the working
/// set costs more than none (its inserts and evictions). Turn it on
/// (`--decision-cache-bytes 16Mi`) when decisions are dearer than that.
pub(crate) const DEFAULT_DECISION_CACHE_BYTES: u64 = 0;
/// Default longest time a decision is remembered.
pub(crate) const DEFAULT_DECISION_CACHE_TTL: Duration = Duration::from_secs(60);
/// The heaviest decision remembered, bookkeeping included. Typical
/// decisions weigh well under half of it.
pub(crate) const MAX_ENTRY_BYTES: usize = 2048;

/// A bounded cache of decisions.
#[derive(Clone)]
pub struct DecisionCache {
    entries: Cache<Key, Arc<Decision>>,
    stats: Arc<CacheStats>,
}

impl DecisionCache {
    /// A cache of at most `capacity` decisions, each kept at most `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self::bounded(capacity, None, ttl)
    }

    /// A cache whose decisions weigh at most `max_bytes` in all (by
    /// [`Self::entry_bytes`]), each kept at most `ttl`.
    pub(crate) fn with_max_bytes(max_bytes: u64, ttl: Duration) -> Self {
        Self::bounded(u64::MAX, Some(max_bytes), ttl)
    }

    fn bounded(max_entries: u64, max_bytes: Option<u64>, ttl: Duration) -> Self {
        let (builder, max_bytes) =
            bounded_cache(max_entries, max_bytes, |decision: &Arc<Decision>| {
                Self::entry_bytes(decision)
            });
        let entries = builder.time_to_live(ttl).build();
        let stats = CacheStats::measuring(&entries, max_bytes);
        Self { entries, stats }
    }

    /// The estimated memory one decision holds: key, decision, the text of
    /// its fields, and moka's own bookkeeping.
    pub(crate) fn entry_bytes(decision: &Decision) -> usize {
        let allocation = |bytes: usize| match bytes {
            0 => 0,
            n => n + ALLOCATION_OVERHEAD_BYTES,
        };
        // The names are shared with the policy and the verified token;
        // only the rendered resource and what the rule holds of its own
        // are the decision's. The principal is shared with the token
        // cache, but outlives its entry there when that is evicted first:
        // counted here too, so the bound holds either way.
        let text = decision
            .resource
            .as_ref()
            .map_or(0, |resource| allocation(resource.capacity()))
            + decision
                .matched_rule
                .as_ref()
                .map_or(0, |rule| allocation(rule.owned_bytes()))
            + decision
                .principal
                .as_deref()
                .map_or(0, TokenCache::principal_bytes);
        std::mem::size_of::<Key>()
            + CACHE_ENTRY_OVERHEAD_BYTES
            // The Arc's allocation: two counts and the decision.
            + allocation(2 * std::mem::size_of::<usize>() + std::mem::size_of::<Decision>())
            + text
    }

    /// Hit and miss counts and the size, for metrics.
    pub fn stats(&self) -> Arc<CacheStats> {
        self.stats.clone()
    }

    /// Whether a decision about `request` could be in the cache at all:
    /// only a request that offers a token (or a payload Envoy verified)
    /// can establish a principal.
    pub(crate) fn may_hold(request: &RequestAttrs) -> bool {
        matches!(request.credential, Credential::Bearer(_)) || !request.verified_payloads.is_empty()
    }

    /// The key of `request` under the policy `version` and key epoch
    /// `key_epoch`, read before the decision is made.
    pub fn key(version: &str, key_epoch: u64, request: &RequestAttrs) -> Key {
        let mut hasher = Sha256::new();
        // Each field is length-prefixed, so no two requests share a key.
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        // Every field the engine may read; a field added to the request is a
        // compile error here until the key covers it.
        let RequestAttrs {
            method,
            path,
            host,
            destination,
            context_extensions,
            credential,
            request_id: _, // for the log only
            verified_payloads,
            headers,
        } = request;
        field(version.as_bytes());
        field(&key_epoch.to_le_bytes());
        field(method.as_bytes());
        field(path.as_bytes());
        field(host.as_bytes());
        field(destination.as_bytes());
        field(&(context_extensions.len() as u64).to_le_bytes());
        for (name, value) in context_extensions {
            field(name.as_bytes());
            field(value.as_bytes());
        }
        field(&(verified_payloads.len() as u64).to_le_bytes());
        for (key, claims) in verified_payloads {
            field(key.as_bytes());
            field(
                serde_json::Value::Object(claims.clone())
                    .to_string()
                    .as_bytes(),
            );
        }
        field(&(headers.len() as u64).to_le_bytes());
        for (name, value) in headers {
            field(name.as_bytes());
            field(value.as_bytes());
        }
        match credential {
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

    /// Whether `decision` is kept: it established a principal, it depends
    /// on nothing the key leaves out, and it is not too heavy.
    pub fn keeps(decision: &Decision) -> bool {
        let verified = decision.subject.is_some() && decision.valid_until.is_some();
        let depends_on_more = matches!(
            decision.reason,
            Reason::InvalidToken(_) | Reason::InternalError
        );
        verified && !depends_on_more && Self::entry_bytes(decision) <= MAX_ENTRY_BYTES
    }

    /// Remembers `decision` if [`Self::keeps`] says so.
    pub fn insert(&self, key: Key, decision: &Arc<Decision>) {
        if Self::keeps(decision) {
            self.entries.insert(key, decision.clone());
        }
    }

    /// Forgets every decision.
    pub fn clear(&self) {
        self.entries.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_weighs_the_principal_it_keeps_alive() {
        use crate::engine::DenyStatus;
        use crate::token::Principal;
        let bare = Decision::deny(DenyStatus::Forbidden, Reason::NoGrant);
        let mut principal = Principal::named("demo", "alice");
        principal.groups = (0..50).map(|i| format!("group-{i:04}")).collect();
        let with = Decision {
            principal: Some(Arc::new(principal)),
            ..bare.clone()
        };
        let groups = 50 * "group-0000".len();
        assert!(
            DecisionCache::entry_bytes(&with) >= DecisionCache::entry_bytes(&bare) + groups,
            "{} vs {}",
            DecisionCache::entry_bytes(&with),
            DecisionCache::entry_bytes(&bare)
        );
    }

    #[test]
    fn requests_that_differ_in_what_the_engine_reads_never_share_a_key() {
        let base = RequestAttrs {
            method: "GET".into(),
            path: "/documents/1".into(),
            credential: Credential::Bearer("t".into()),
            ..Default::default()
        };
        let key = |r: &RequestAttrs| DecisionCache::key("v1", 0, r);
        let mut other_destination = base.clone();
        other_destination.destination = "spiffe://cluster.local/ns/billing/sa/api".into();
        let mut other_host = base.clone();
        other_host.host = "billing.example.com".into();
        let mut other_context = base.clone();
        other_context
            .context_extensions
            .insert("app".into(), "billing".into());
        let mut other_header = base.clone();
        other_header.headers.insert("x-tenant".into(), "t2".into());
        for other in [other_destination, other_host, other_context, other_header] {
            assert_ne!(key(&base), key(&other), "{other:?}");
        }
        assert_ne!(key(&base), DecisionCache::key("v2", 0, &base));
        assert_ne!(key(&base), DecisionCache::key("v1", 1, &base));
        let mut only_id = base.clone();
        only_id.request_id = Some("abc".into());
        assert_eq!(key(&base), key(&only_id));
    }
}
