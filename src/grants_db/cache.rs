//! The grants cache: one replica's layer over a [`GrantReader`], as
//! SpiceDB's caching proxy sits over its datastore interface.
//!
//! Lookups (holder × resource key) are cached with their role names,
//! negative answers too, bounded and with a time-to-live. The cache knows
//! the revision it reflects ("every change up to `applied`", of one
//! database identity); the change feed advances it ([`GrantCache::invalidate`])
//! or drops everything when the database's history changed
//! ([`GrantCache::reset`]). A fill read before a change never lands after
//! its invalidation (the gate), nor a fill read before a reset (the
//! generation). While the feed is down the cache serves for the grace
//! period, then is not trusted.
//!
//! The lookups sit in a `quick_cache` cache rather than moka (which the
//! token and decision caches use): a check reads several lookups, and
//! quick_cache's read is a shard's read lock and a hash probe, where
//! moka's records every read for its eviction policy and now and then
//! applies the record on the reading thread, the warm path's tail.
//!
//! PostgreSQL is one reader ([`super::postgres`]); [`super::memory`] is
//! another, so every property above is a unit test without a database.
//! The two-pass decision over the cache is the decision service's
//! (`crate::pdp`).

use std::future::Future;
use std::pin::Pin;

use quick_cache::sync::Cache;

use super::*;

/// A cached lookup and when it expires (the time-to-live).
#[derive(Clone)]
struct Cached {
    held: Arc<HeldRoles>,
    expires: Instant,
}

/// Where grants are read from, under the cache.
pub trait GrantReader: Send + Sync {
    /// Each lookup's role names (in order), read in one snapshot, and the
    /// revision and database identity of that snapshot.
    fn read<'a>(&'a self, lookups: &'a [Lookup]) -> ReadFuture<'a>;
}

/// What [`GrantReader::read`] returns.
pub type ReadFuture<'a> = Pin<Box<dyn Future<Output = Result<ReadAt, DbError>> + Send + 'a>>;

/// One snapshot's answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadAt {
    pub revision: i64,
    pub database: String,
    /// Role names per lookup, in the order asked.
    pub names: Vec<Box<[Box<str>]>>,
}

/// How the cache holds and trusts what it read.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub entries: u64,
    pub ttl: Duration,
    /// How long the cache serves while the feed is disconnected.
    pub grace: Duration,
    /// How long a check waits for the feed to reach its revision.
    pub revision_wait: Duration,
}

/// Whether the change feed is connected, and since when it is not, read
/// on every check without a lock: nanoseconds after `base`, plus one, or
/// 0 while connected.
#[derive(Debug)]
struct Health {
    base: Instant,
    down_since: AtomicU64,
}

impl Health {
    fn new() -> Self {
        Health {
            base: Instant::now(),
            down_since: AtomicU64::new(0),
        }
    }

    fn down_for(&self) -> Option<Duration> {
        match self.down_since.load(Ordering::Acquire) {
            0 => None,
            since => {
                let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
                Some(Duration::from_nanos(now.saturating_sub(since - 1)))
            }
        }
    }

    fn set_down(&self, down: bool) {
        if down {
            let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
            // Only the first failure of an outage sets the time.
            let _ =
                self.down_since
                    .compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Acquire);
        } else {
            self.down_since.store(0, Ordering::Release);
        }
    }
}

/// Counters read by the metrics collector.
#[derive(Debug, Default)]
pub struct Counters {
    pub fetches: AtomicU64,
    pub fetch_failures: AtomicU64,
    pub notifications: AtomicU64,
    pub changes_applied: AtomicU64,
    pub feed_reconnects: AtomicU64,
    pub full_invalidations: AtomicU64,
    pub unavailable_denies: AtomicU64,
    /// The feed found another database identity, or a counter below the
    /// applied revision (a restore, a failover): the cache was reset.
    pub revision_resets: AtomicU64,
    /// Checks that carried a revision of another database identity.
    pub foreign_revisions: AtomicU64,
}

/// What the cache reflects: every change up to `revision` of the database
/// `database`. `generation` grows on every reset, so a fill read before a
/// reset never lands after it even when the counter went back.
#[derive(Debug, Clone)]
struct Applied {
    generation: u64,
    database: Arc<str>,
    revision: i64,
}

/// The lookup cache over one reader, and the revision it reflects.
pub struct GrantCache {
    config: CacheConfig,
    reader: Arc<dyn GrantReader>,
    cache: Arc<Cache<SharedLookup, Cached>>,
    stats: Arc<CacheStats>,
    /// The revision the cache reflects: every change up to it is applied.
    applied: watch::Sender<Applied>,
    /// Held (read) by a fill while it checks the applied revision and
    /// inserts, and (write) by the feed while it applies changes, so a
    /// fill read before a change never lands after its invalidation.
    gate: RwLock<()>,
    /// The start time of the server the feed last connected to.
    server: std::sync::Mutex<Option<String>>,
    health: Health,
    pub counters: Counters,
}

impl std::fmt::Debug for GrantCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantCache")
            .field("config", &self.config)
            .field("applied", &*self.applied.borrow())
            .finish_non_exhaustive()
    }
}

impl GrantCache {
    /// An empty cache over `reader`, reflecting nothing until
    /// [`Self::begin`].
    pub fn new(reader: Arc<dyn GrantReader>, config: CacheConfig) -> Self {
        let cache = Arc::new(Cache::new(
            usize::try_from(config.entries.max(1)).unwrap_or(usize::MAX),
        ));
        let stats = {
            let cache = cache.clone();
            CacheStats::counting(move || cache.len() as u64)
        };
        GrantCache {
            config,
            reader,
            cache,
            stats,
            applied: watch::Sender::new(Applied {
                generation: 0,
                database: Arc::from(""),
                revision: 0,
            }),
            gate: RwLock::new(()),
            server: std::sync::Mutex::new(None),
            health: Health::new(),
            counters: Counters::default(),
        }
    }

    /// Empties the cache, which now reflects `revision` of `database`, read
    /// from the server started at `server`.
    pub fn begin(&self, database: &str, revision: i64, server: Option<String>) {
        let _gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        self.cache.clear();
        self.applied.send_modify(|applied| {
            applied.generation += 1;
            applied.database = Arc::from(database);
            applied.revision = revision;
        });
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = server;
    }

    /// Hits, misses and size of the lookup cache, for the metrics.
    pub fn cache_stats(&self) -> Arc<CacheStats> {
        self.stats.clone()
    }

    /// Lookups in the cache (expired ones until they are next asked for).
    pub fn cached_entries(&self) -> u64 {
        self.cache.len() as u64
    }

    /// The revision every cached entry reflects.
    pub fn applied_revision(&self) -> i64 {
        self.applied.borrow().revision
    }

    /// The identity of the database the cache reflects ("" before
    /// [`Self::start`]).
    pub fn database_id(&self) -> Arc<str> {
        self.applied.borrow().database.clone()
    }

    /// Since when the change feed is disconnected, if it is.
    pub fn down_for(&self) -> Option<Duration> {
        self.health.down_for()
    }

    /// True while checks can be answered: connected, or within the grace
    /// period. `/ready` and gRPC health say not ready past it.
    pub fn serving(&self) -> bool {
        self.down_for().is_none_or(|d| d < self.config.grace)
    }

    /// Told by the feed: connected or not.
    pub(crate) fn set_down(&self, down: bool) {
        self.health.set_down(down);
    }

    /// Waits (at most the configured wait) for the feed to reach `wanted`
    /// of `wanted`'s database. Another identity is waited for too: the
    /// feed may not have seen a new identity yet; if it never does, the
    /// check goes to the database, which refuses it.
    async fn caught_up(&self, wanted: &Revision) -> bool {
        let reached = |a: &Applied| *a.database == *wanted.database && a.revision >= wanted.number;
        if reached(&self.applied.borrow()) {
            return true;
        }
        if !is_database_id(&wanted.database) {
            // Unreadable: no feed will ever reach it.
            return false;
        }
        let mut applied = self.applied.subscribe();
        let waited = tokio::time::timeout(self.config.revision_wait, async {
            applied.wait_for(reached).await.is_ok()
        })
        .await;
        waited.unwrap_or(false)
    }

    /// Whether a decision at `min_revision` may answer from the cache: the
    /// feed reached that revision of that database (waiting briefly for it),
    /// and the cache is trusted (connected, or within the grace period).
    /// While the feed is disconnected, "applied" may count in a history the
    /// database no longer has (a restore or failover is what disconnects
    /// it): only the database can vouch for a revision then.
    pub async fn may_answer(&self, min_revision: Option<&Revision>) -> bool {
        let fresh = match min_revision {
            Some(_) if self.down_for().is_some() => false,
            Some(wanted) => self.caught_up(wanted).await,
            None => true,
        };
        fresh && self.serving()
    }

    /// The cached roles of `lookup`, resolved against `policy`; an entry
    /// expired at `now` is not an answer. A decision reads the clock once
    /// for all its lookups.
    pub fn cached(
        &self,
        policy: &PolicySet,
        asked: &Asked<'_>,
        now: Instant,
    ) -> Option<Arc<HeldRoles>> {
        if asked.holder.contains('\0') || asked.resource.contains('\0') {
            // Never stored (PostgreSQL text holds no NUL): holds nothing.
            return Some(Arc::new(HeldRoles::none(
                policy,
                Arc::new(asked.to_owned()),
            )));
        }
        let key = asked as &dyn LookupKey;
        let held = match self.cache.get(key) {
            Some(cached) if cached.expires > now => Some(cached.held),
            Some(_) => {
                // Remove only what expired: a fill may have replaced it since.
                self.cache.remove_if(key, |cached| cached.expires <= now);
                None
            }
            None => None,
        };
        match held {
            Some(held) => {
                self.stats.hit();
                if *held.version == *policy.version {
                    Some(held)
                } else {
                    Some(Arc::new(HeldRoles::resolve(
                        policy,
                        held.lookup.clone(),
                        held.names.clone(),
                    )))
                }
            }
            None => {
                self.stats.miss();
                None
            }
        }
    }

    pub fn unavailable(&self, mut decision: Decision, why: &str) -> Decision {
        self.counters
            .unavailable_denies
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = why, "grants unavailable: denied");
        if decision.is_allowed() {
            decision.effect = crate::engine::Effect::Deny(crate::engine::DenyStatus::Forbidden);
        }
        decision.reason = Reason::GrantsUnavailable;
        decision.matched_rule = Some(crate::engine::MatchedRule::GrantsUnavailable(why.into()));
        decision
    }

    /// Reads `lookups` from the reader in one snapshot,
    /// caches the answers unless the feed has already applied a later
    /// change, and returns them.
    pub async fn fetch(
        &self,
        policy: &PolicySet,
        lookups: &[Lookup],
        min_revision: Option<&Revision>,
    ) -> Result<Vec<(Lookup, Arc<HeldRoles>)>, DbError> {
        self.counters.fetches.fetch_add(1, Ordering::Relaxed);
        // Taken before the read: a reset in between (a restore seen by the
        // feed) makes this read too old to cache, whatever its counter.
        let generation = self.applied.borrow().generation;
        // Bounded: a check waits no longer than Envoy would (it fails
        // closed past its own timeout anyway), and an outage costs no
        // pile-up of waiting checks.
        let result = match tokio::time::timeout(FETCH_TIMEOUT, self.reader.read(lookups)).await {
            Ok(result) => result,
            Err(_) => Err(DbError::Unreachable(format!(
                "no answer within {} ms",
                FETCH_TIMEOUT.as_millis()
            ))),
        };
        let ReadAt {
            revision,
            database,
            names,
        } = match result {
            Ok(read) => read,
            Err(e) => {
                self.counters.fetch_failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        if let Some(wanted) = min_revision {
            if !is_database_id(&wanted.database) {
                return Err(DbError::Invalid(
                    "the check's revision is unreadable (a write answers it as <database identity>.<n>)"
                        .into(),
                ));
            }
            if *wanted.database != *database {
                self.counters
                    .foreign_revisions
                    .fetch_add(1, Ordering::Relaxed);
                return Err(DbError::ForeignRevision {
                    wanted: wanted.clone(),
                    found: database,
                });
            }
            if revision < wanted.number {
                return Err(DbError::FutureRevision {
                    wanted: wanted.clone(),
                    found: revision,
                });
            }
        }
        let answers: Vec<(Lookup, Arc<HeldRoles>)> = lookups
            .iter()
            .cloned()
            .zip(names)
            .map(|(lookup, names)| {
                let held = Arc::new(HeldRoles::resolve(policy, Arc::new(lookup.clone()), names));
                (lookup, held)
            })
            .collect();
        {
            let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
            let applied = self.applied.borrow().clone();
            if applied.generation == generation
                && *applied.database == *database
                && applied.revision <= revision
            {
                let expires = Instant::now() + self.config.ttl;
                for (lookup, roles) in &answers {
                    if !unstorable(lookup) {
                        let cached = Cached {
                            held: roles.clone(),
                            expires,
                        };
                        self.cache
                            .insert(SharedLookup(roles.lookup.clone()), cached);
                    }
                }
            }
        }
        Ok(answers)
    }

    /// Forgets `lookups` (a change the feed applies), or everything.
    pub(crate) fn invalidate(&self, lookups: Option<&[Lookup]>, revision: i64) {
        let _gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        match lookups {
            Some(lookups) => {
                for lookup in lookups {
                    self.cache.remove(lookup as &dyn LookupKey);
                }
            }
            None => {
                self.counters
                    .full_invalidations
                    .fetch_add(1, Ordering::Relaxed);
                self.cache.clear();
            }
        }
        self.applied.send_if_modified(|applied| {
            if revision > applied.revision {
                applied.revision = revision;
                true
            } else {
                false
            }
        });
    }

    /// Whether the server the feed connected to, started at `started`, is
    /// another than the one the cache reflects (never on the first).
    pub(crate) fn another_server(&self, started: &Option<String>) -> bool {
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        matches!((&*server, started), (Some(was), Some(now)) if was != now)
    }

    /// Records that the cache reflects the server started at `started`:
    /// only once the feed has caught up with it (reset if it had to), so a
    /// read that fails in between is followed by a reset on the next
    /// connection rather than forgotten.
    pub(crate) fn note_server(&self, started: Option<String>) {
        if started.is_some() {
            *self.server.lock().unwrap_or_else(|e| e.into_inner()) = started;
        }
    }

    /// What the feed found: `database` at `revision`, with another identity
    /// or a counter below the applied one, or on `another_server`. That is
    /// another history (a restore, a failover, a swapped database): every
    /// cached entry may be one it no longer has, so all go, and the cache
    /// starts over at what the database says now.
    pub(crate) fn reset(&self, database: &str, revision: i64, another_server: bool) {
        let _gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let (was_database, was_revision) = {
            let applied = self.applied.borrow();
            (applied.database.clone(), applied.revision)
        };
        self.cache.clear();
        self.counters
            .revision_resets
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .full_invalidations
            .fetch_add(1, Ordering::Relaxed);
        self.applied.send_modify(|applied| {
            applied.generation += 1;
            applied.database = Arc::from(database);
            applied.revision = revision;
        });
        tracing::warn!(
            was_database = %was_database,
            was_revision,
            database,
            revision,
            another_server,
            "the grants database may hold another history (a restore, a failover, another database, a restart): dropped the whole grants cache"
        );
    }

    /// Forgets every cached entry (a new policy version resolves role
    /// names again anyway; this frees the old entries).
    pub fn clear(&self) {
        self.cache.clear();
    }
}

/// A lookup no grant can match: PostgreSQL text cannot hold NUL.
pub(super) fn unstorable(lookup: &Lookup) -> bool {
    lookup.holder.contains('\0') || lookup.resource.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants_db::memory::MemoryGrants;
    use crate::policy::Holder;

    const DB: &str = "aaaa";

    fn policy() -> PolicySet {
        // Keys unread: these tests verify no token.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/todo");
        crate::policy::load_policies_with(&dir, crate::policy::UnreadableKeys::Unverifiable)
            .unwrap()
            .policy
    }

    fn config(grace: Duration, revision_wait: Duration) -> CacheConfig {
        CacheConfig {
            entries: 1000,
            ttl: Duration::from_secs(300),
            grace,
            revision_wait,
        }
    }

    fn over(grants: &Arc<MemoryGrants>, grace: Duration) -> Arc<GrantCache> {
        let cache = Arc::new(GrantCache::new(
            grants.clone(),
            config(grace, Duration::from_millis(200)),
        ));
        let (database, revision) = grants.head();
        cache.begin(&database, revision, None);
        cache
    }

    fn alice_on(id: &str) -> Lookup {
        Lookup::new(Holder::Subject("alice"), ResourceKey::Exact(id))
    }

    fn cached_names(
        cache: &GrantCache,
        policy: &PolicySet,
        lookup: &Lookup,
    ) -> Option<Vec<String>> {
        let asked = Asked::new(lookup.holder(), lookup.key());
        cache
            .cached(policy, &asked, Instant::now())
            .map(|held| held.names.iter().map(|n| n.to_string()).collect())
    }

    #[tokio::test]
    async fn a_miss_reads_once_then_the_cache_answers_negatives_too() {
        let policy = policy();
        let grants = Arc::new(MemoryGrants::new(DB));
        grants.grant(&alice_on("document:1"), "viewer");
        let cache = over(&grants, Duration::from_secs(30));
        let lookups = [alice_on("document:1"), alice_on("document:2")];
        assert_eq!(cached_names(&cache, &policy, &lookups[0]), None);
        let read = cache.fetch(&policy, &lookups, None).await.unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(grants.reads(), 1);
        assert_eq!(
            cached_names(&cache, &policy, &lookups[0]),
            Some(vec!["viewer".to_owned()])
        );
        // Holds nothing: cached as such, not read again.
        assert_eq!(cached_names(&cache, &policy, &lookups[1]), Some(vec![]));
    }

    #[tokio::test]
    async fn the_feed_invalidates_and_advances_the_applied_revision() {
        let policy = policy();
        let grants = Arc::new(MemoryGrants::new(DB));
        grants.grant(&alice_on("document:1"), "viewer");
        let cache = over(&grants, Duration::from_secs(30));
        let lookup = alice_on("document:1");
        cache
            .fetch(&policy, std::slice::from_ref(&lookup), None)
            .await
            .unwrap();
        let revision = grants.revoke(&lookup, "viewer");
        // What the feed does with the change row.
        cache.invalidate(Some(std::slice::from_ref(&lookup)), revision);
        assert_eq!(cached_names(&cache, &policy, &lookup), None);
        assert_eq!(cache.applied_revision(), revision);
        cache
            .fetch(&policy, std::slice::from_ref(&lookup), None)
            .await
            .unwrap();
        assert_eq!(cached_names(&cache, &policy, &lookup), Some(vec![]));
    }

    /// A reader that lets the feed apply a change while a fill's read is
    /// in flight: the read saw the old state.
    struct RacedByFeed {
        grants: Arc<MemoryGrants>,
        cache: std::sync::Mutex<Option<Arc<GrantCache>>>,
    }

    impl GrantReader for RacedByFeed {
        fn read<'a>(&'a self, lookups: &'a [Lookup]) -> ReadFuture<'a> {
            Box::pin(async move {
                let read = self.grants.read(lookups).await?;
                if let Some(cache) = self.cache.lock().unwrap().take() {
                    let revision = self.grants.revoke(&lookups[0], "viewer");
                    cache.invalidate(Some(lookups), revision);
                }
                Ok(read)
            })
        }
    }

    #[tokio::test]
    async fn a_fill_read_before_a_change_never_lands_after_it() {
        let policy = policy();
        let grants = Arc::new(MemoryGrants::new(DB));
        let lookup = alice_on("document:1");
        grants.grant(&lookup, "viewer");
        let reader = Arc::new(RacedByFeed {
            grants: grants.clone(),
            cache: std::sync::Mutex::new(None),
        });
        let cache = Arc::new(GrantCache::new(
            reader.clone(),
            config(Duration::from_secs(30), Duration::from_millis(200)),
        ));
        cache.begin(DB, grants.head().1, None);
        *reader.cache.lock().unwrap() = Some(cache.clone());
        // The read answers "viewer" (its snapshot), but the revoke was
        // applied before the fill could insert: nothing is cached.
        let read = cache
            .fetch(&policy, std::slice::from_ref(&lookup), None)
            .await
            .unwrap();
        assert_eq!(read[0].1.names.len(), 1);
        assert_eq!(cached_names(&cache, &policy, &lookup), None);
    }

    #[tokio::test]
    async fn a_revision_is_waited_for_then_read_from_the_database() {
        let grants = Arc::new(MemoryGrants::new(DB));
        let cache = over(&grants, Duration::from_secs(30));
        let revision = grants.grant(&alice_on("document:1"), "viewer");
        let wanted = Revision {
            database: DB.into(),
            number: revision,
        };
        // Not applied and nobody applies it: the wait ends, the cache may not answer.
        assert!(!cache.may_answer(Some(&wanted)).await);
        // Applied while the check waits: it may.
        let feed = cache.clone();
        let waiting = tokio::spawn(async move { feed.may_answer(Some(&wanted)).await });
        tokio::task::yield_now().await;
        cache.invalidate(Some(&[]), revision);
        assert!(waiting.await.unwrap());
        // A revision of another database is never waited into the cache.
        let foreign = Revision {
            database: "bbbb".into(),
            number: 1,
        };
        assert!(!cache.may_answer(Some(&foreign)).await);
        let policy = policy();
        let refused = cache
            .fetch(&policy, &[alice_on("document:1")], Some(&foreign))
            .await;
        assert!(
            matches!(refused, Err(DbError::ForeignRevision { .. })),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn the_cache_serves_for_the_grace_period_only() {
        let grants = Arc::new(MemoryGrants::new(DB));
        let patient = over(&grants, Duration::from_secs(3600));
        patient.set_down(true);
        assert!(patient.serving());
        assert!(patient.may_answer(None).await);
        // Past the grace period (none here): not trusted.
        let strict = over(&grants, Duration::ZERO);
        strict.set_down(true);
        assert!(!strict.serving());
        assert!(!strict.may_answer(None).await);
        strict.set_down(false);
        assert!(strict.serving());
    }

    #[tokio::test]
    async fn another_history_drops_every_entry_and_fills_from_before_it() {
        let policy = policy();
        let grants = Arc::new(MemoryGrants::new(DB));
        let lookup = alice_on("document:1");
        grants.grant(&lookup, "viewer");
        let cache = over(&grants, Duration::from_secs(30));
        cache
            .fetch(&policy, std::slice::from_ref(&lookup), None)
            .await
            .unwrap();
        // A restore: another identity, the grant gone.
        grants.restore("cccc", 1, vec![]);
        cache.reset("cccc", 1, false);
        assert_eq!(cached_names(&cache, &policy, &lookup), None);
        assert_eq!(&*cache.database_id(), "cccc");
        assert_eq!(cache.counters.revision_resets.load(Ordering::Relaxed), 1);
        cache
            .fetch(&policy, std::slice::from_ref(&lookup), None)
            .await
            .unwrap();
        assert_eq!(cached_names(&cache, &policy, &lookup), Some(vec![]));
    }
}
