//! A key set served at a URL (an IdP's JWKS endpoint), as verification sees
//! it: the current keys, swapped whole when a fetch brings new ones, and
//! whether any fetch has succeeded yet. State only: fetching, and asking for
//! a fetch when a token names a key the set lacks, are the shell's
//! (`jwks.rs`); verification only reads the keys.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::AlgorithmFamily;

use super::JwkKey;

/// How often a remote key set is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// Lower bound on the refresh interval, whatever `Cache-Control` says.
    pub min: Duration,
    /// Upper bound, and the interval when the response gives no `max-age`.
    pub max: Duration,
    /// At most one extra fetch per this interval for tokens naming an
    /// unknown key id, so a flood of random kids is never a flood of fetches.
    pub unknown_kid: Duration,
}

/// The keys at one URL.
pub struct RemoteKeys {
    pub url: String,
    pub refresh: RefreshPolicy,
    /// The key type the issuer's pinned algorithms need.
    pub family: AlgorithmFamily,
    keys: ArcSwap<Vec<JwkKey>>,
    loaded: AtomicBool,
    /// Bumped each time the keys change.
    generation: AtomicU64,
    /// A digest of the last key set document fetched.
    fingerprint: Mutex<Option<[u8; 32]>>,
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("url", &self.url)
            .field("loaded", &self.is_loaded())
            .field("keys", &self.keys.load().len())
            .finish()
    }
}

impl RemoteKeys {
    /// A key set not fetched yet: it verifies nothing until it is.
    pub fn new(url: String, refresh: RefreshPolicy, family: AlgorithmFamily) -> Self {
        Self {
            url,
            refresh,
            family,
            keys: ArcSwap::from_pointee(Vec::new()),
            loaded: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            fingerprint: Mutex::new(None),
        }
    }

    /// The keys now.
    pub fn current(&self) -> Arc<Vec<JwkKey>> {
        self.keys.load_full()
    }

    /// True once a fetch has succeeded.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::SeqCst)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Publishes fetched keys, identified by a digest of the document they
    /// came from; returns whether they differ from the last ones.
    pub fn publish(&self, keys: Vec<JwkKey>, fingerprint: [u8; 32]) -> bool {
        let mut last = self.fingerprint.lock().unwrap_or_else(|p| p.into_inner());
        let changed = *last != Some(fingerprint);
        if changed {
            self.keys.store(Arc::new(keys));
            *last = Some(fingerprint);
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        self.loaded.store(true, Ordering::SeqCst);
        changed
    }
}
