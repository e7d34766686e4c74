//! Fetching the key sets issuers publish at a URL (JWKS endpoints).
//!
//! One task per URL keeps its [`RemoteKeys`] fresh: it fetches at start,
//! then again after the response's `Cache-Control: max-age` clamped to the
//! issuer's refresh bounds, and early when a check met a token naming an
//! unknown key id ([`JwksFetcher::refetch`]), but never more than once per
//! `unknown_kid` interval. Verification itself (in the core) only reads the
//! keys; asking for a fetch and waiting for it are this module's.
//! A failed fetch keeps the last good keys and retries with a growing delay.
//! Key sets are shared across policy reloads by URL, so a reload neither
//! refetches nor loses keys; a change of keys clears the verification
//! caches through the callback given at start.
//!
//! Redirects are refused: the loader checked the configured URL (https, or
//! http to loopback only), and a hop to another host or down to plain http
//! would let whoever answers there choose the keys. A redirect is a failed
//! fetch like any other: logged, counted, and the last good keys are kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};

use crate::metrics::Metrics;
use crate::policy::PolicySet;
use crate::token::{self, RemoteKeys};

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Time allowed for one fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a fetch failed; the last good keys stay in use.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("answered HTTP {status} redirecting to {location:?}; redirects are refused, configure the final URL")]
    Redirect { status: u16, location: String },
    #[error("document is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("not a JWK set: {0}")]
    Json(#[from] serde_json::Error),
    #[error("holds no usable signing key")]
    NoKey,
}

/// What the checks that met an unknown key id share with the fetch task
/// of one URL: they ask for an early fetch and may wait for it to end.
#[derive(Default)]
struct Refetch {
    asked: Notify,
    /// Raised by a check on an unknown key id, lowered when a fetch ends.
    wanted: AtomicBool,
    /// When a fetch asked for now would start; `None` before the first one.
    early_fetch_at: Mutex<Option<Instant>>,
    /// Counts finished fetch attempts, for the checks waiting on one.
    attempts: watch::Sender<u64>,
}

impl Refetch {
    fn ask(&self) {
        self.wanted.store(true, Ordering::SeqCst);
        self.asked.notify_one();
    }

    /// Told by the task: a fetch asked for now would start at `at`.
    fn set_early_fetch_at(&self, at: Instant) {
        *self
            .early_fetch_at
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(at);
    }

    /// Told by the task when a fetch attempt ends, whatever its result.
    fn attempted(&self) {
        self.wanted.store(false, Ordering::SeqCst);
        self.attempts.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Waits, until `deadline` at most, for the fetch asked for, if it
    /// starts before then. True when a fetch ended since it was asked for.
    /// A fetch limited by the unknown-kid interval is not waited for, so a
    /// flood of random key ids costs no waiting either.
    async fn wait(&self, deadline: Instant) -> bool {
        if !self.wanted.load(Ordering::SeqCst) {
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
        if !self.wanted.load(Ordering::SeqCst) {
            return true;
        }
        tokio::time::timeout_at(deadline.into(), attempts.changed())
            .await
            .is_ok_and(|changed| changed.is_ok())
    }
}

/// One URL's keys and its fetch task's signals.
struct Fetched {
    keys: Arc<RemoteKeys>,
    refetch: Arc<Refetch>,
}

/// Keeps every JWKS URL of the served policies fetched.
pub struct JwksFetcher {
    client: reqwest::Client,
    sets: Mutex<HashMap<String, Fetched>>,
    on_change: Box<dyn Fn() + Send + Sync>,
    metrics: Option<Arc<Metrics>>,
}

impl JwksFetcher {
    /// `on_change` runs whenever a fetch brings keys that differ from the last.
    pub fn new(
        on_change: Box<dyn Fn() + Send + Sync>,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Arc<Self>, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Arc::new(Self {
            client,
            sets: Mutex::new(HashMap::new()),
            on_change,
            metrics,
        }))
    }

    /// Gives `policy` the key sets already fetched for its URLs, starts a
    /// fetch task for each new URL, and forgets URLs no longer named.
    /// Must be called within a tokio runtime.
    pub(crate) fn adopt(self: &Arc<Self>, policy: &mut PolicySet) {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        let mut named = HashMap::new();
        for remote in policy.issuers.remote_key_sets_mut() {
            let refetch = match sets.get(&remote.url) {
                Some(existing)
                    if existing.keys.refresh == remote.refresh
                        && existing.keys.family == remote.family =>
                {
                    *remote = existing.keys.clone();
                    existing.refetch.clone()
                }
                _ => {
                    let refetch = Arc::new(Refetch::default());
                    tokio::spawn(self.clone().keep_fresh(remote.clone(), refetch.clone()));
                    refetch
                }
            };
            named.insert(
                remote.url.clone(),
                Fetched {
                    keys: remote.clone(),
                    refetch,
                },
            );
        }
        // A task whose URL is no longer named stops once no policy holds its set.
        *sets = named;
    }

    /// Fetches every key set of `policy` once (for one-shot commands).
    pub async fn fetch_all_once(&self, policy: &PolicySet) -> Result<(), (String, FetchError)> {
        for remote in policy.issuers.remote_key_sets() {
            self.fetch(remote)
                .await
                .map_err(|e| (remote.url.clone(), e))?;
        }
        Ok(())
    }

    /// Asks for an early fetch of every key set of `policy` (a check met a
    /// token naming a key id they lack: perhaps the IdP rotated) and waits,
    /// until `deadline` at most, for those fetches. True when one ended, so
    /// verifying again may succeed.
    pub async fn refetch(&self, policy: &PolicySet, deadline: Instant) -> bool {
        let refetches: Vec<Arc<Refetch>> = {
            let sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
            policy
                .issuers
                .remote_key_sets()
                .filter_map(|remote| sets.get(&remote.url))
                .map(|fetched| fetched.refetch.clone())
                .collect()
        };
        for refetch in &refetches {
            refetch.ask();
        }
        let mut fetched = false;
        for refetch in refetches {
            fetched |= refetch.wait(deadline).await;
        }
        fetched
    }

    async fn keep_fresh(self: Arc<Self>, keys: Arc<RemoteKeys>, refetch: Arc<Refetch>) {
        let mut wait = Duration::ZERO;
        let mut last_attempt: Option<Instant> = None;
        let mut failures = 0u32;
        loop {
            let scheduled = Instant::now() + wait;
            // Early, but not before the unknown-kid interval has passed
            // since the last fetch, nor later than planned.
            let early = last_attempt
                .map_or(scheduled, |at| at + keys.refresh.unknown_kid)
                .min(scheduled);
            refetch.set_early_fetch_at(early);
            tokio::select! {
                () = tokio::time::sleep_until(scheduled.into()) => {}
                () = refetch.asked.notified() => {
                    tokio::time::sleep_until(early.into()).await;
                }
            }
            // No policy and no registry hold the set any more: stop.
            if Arc::strong_count(&keys) == 1 {
                tracing::debug!(url = %keys.url, "JWKS no longer used");
                return;
            }
            last_attempt = Some(Instant::now());
            let result = self.fetch(&keys).await;
            refetch.attempted();
            wait = match result {
                Ok(next) => {
                    failures = 0;
                    next
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_secs(1u64 << failures.min(6));
                    tracing::warn!(
                        url = %keys.url, %error, failures, kept_keys = keys.is_loaded(),
                        "JWKS fetch failed; keeping the last good keys"
                    );
                    backoff.min(keys.refresh.min)
                }
            };
        }
    }

    /// Fetches `keys` once; returns the time until the next refresh.
    async fn fetch(&self, keys: &RemoteKeys) -> Result<Duration, FetchError> {
        let result = self.fetch_keys(keys).await;
        if let Some(metrics) = &self.metrics {
            metrics.record_jwks_fetch(result.is_ok());
        }
        let (found, digest, max_age) = result?;
        let count = found.len();
        if keys.publish(found, digest) {
            tracing::info!(url = %keys.url, keys = count, generation = keys.generation(), "JWKS keys updated");
            (self.on_change)();
        }
        let next = max_age.unwrap_or(keys.refresh.max);
        Ok(next.clamp(keys.refresh.min, keys.refresh.max))
    }

    /// The usable keys at `keys.url`, a digest of the document, and its max-age.
    async fn fetch_keys(
        &self,
        keys: &RemoteKeys,
    ) -> Result<(Vec<token::JwkKey>, [u8; 32], Option<Duration>), FetchError> {
        let (body, max_age) = self.fetch_document(keys).await?;
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&body)?;
        let found = token::jwk_keys(&set, keys.family);
        if found.is_empty() {
            return Err(FetchError::NoKey);
        }
        Ok((found, Sha256::digest(&body).into(), max_age))
    }

    async fn fetch_document(
        &self,
        keys: &RemoteKeys,
    ) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
        let mut response = self.client.get(&keys.url).send().await?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .map(|v| {
                    String::from_utf8_lossy(v.as_bytes())
                        .chars()
                        .take(200)
                        .collect()
                })
                .unwrap_or_default();
            return Err(FetchError::Redirect {
                status: status.as_u16(),
                location,
            });
        }
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }
}

/// `max-age` of a `Cache-Control` value; `no-cache`/`no-store` mean zero.
fn max_age(value: &str) -> Option<Duration> {
    let mut seconds = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = lower.strip_prefix("max-age=") {
            seconds = n.trim_matches('"').parse::<u64>().ok();
        }
    }
    seconds.map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            max_age("Max-Age=\"60\", must-revalidate"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("private"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }
}
