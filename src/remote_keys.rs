//! A key set served at a URL (an IdP's JWKS endpoint), as verification sees it.
//!
//! This is state, not I/O: the current keys (swapped whole when a fetch
//! brings new ones), whether any fetch has succeeded yet, and a flag that
//! verification raises when a token names a key the set lacks. The fetching
//! itself is done by `crate::jwks`, outside the engine; a check that met an
//! unknown key id may wait, briefly, for the fetch it asked for
//! ([`RemoteKeys::await_refetch`]) and decide once more.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::AlgorithmFamily;
use tokio::sync::{watch, Notify};

use crate::token::JwkKey;

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
    unknown_kid: Notify,
    /// Raised by verification on an unknown key id, lowered when a fetch ends.
    refetch_wanted: AtomicBool,
    /// When a fetch asked for now would start; `None` before the first one.
    early_fetch_at: Mutex<Option<Instant>>,
    /// Counts finished fetch attempts, for the checks waiting on one.
    attempts: watch::Sender<u64>,
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
            unknown_kid: Notify::new(),
            refetch_wanted: AtomicBool::new(false),
            early_fetch_at: Mutex::new(None),
            attempts: watch::Sender::new(0),
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

    /// Called by verification when a token names a key id the set lacks.
    pub fn note_unknown_kid(&self) {
        self.refetch_wanted.store(true, Ordering::SeqCst);
        self.unknown_kid.notify_one();
    }

    /// Told by the fetcher: a fetch asked for now would start at `at`.
    pub fn set_early_fetch_at(&self, at: Instant) {
        *self
            .early_fetch_at
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(at);
    }

    /// Told by the fetcher when a fetch attempt ends, whatever its result.
    pub fn fetch_attempted(&self) {
        self.refetch_wanted.store(false, Ordering::SeqCst);
        self.attempts.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Waits, until `deadline` at most, for the fetch that a token naming an
    /// unknown key id asked for, if it starts before then. True when a
    /// fetch ended since it was asked for, so verifying again may succeed.
    /// A fetch limited by the unknown-kid interval is not waited for, so a
    /// flood of random key ids costs no waiting either.
    pub async fn await_refetch(&self, deadline: Instant) -> bool {
        if !self.refetch_wanted.load(Ordering::SeqCst) {
            return true;
        }
        let starts = *self
            .early_fetch_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if starts.is_some_and(|at| at > deadline) {
            return false;
        }
        let mut attempts = self.attempts.subscribe();
        // The fetch may have ended between the first look and subscribing.
        if !self.refetch_wanted.load(Ordering::SeqCst) {
            return true;
        }
        tokio::time::timeout_at(deadline.into(), attempts.changed())
            .await
            .is_ok_and(|changed| changed.is_ok())
    }

    /// Completes when a token named an unknown key id since the last call.
    pub async fn unknown_kid_seen(&self) {
        self.unknown_kid.notified().await;
    }
}
