//! Grants kept in PostgreSQL: the async shell that feeds the pure engine.
//!
//! The engine asks a [`GrantSource`] for the roles of one holder under one
//! resource key. With grants in a database, each check gets a
//! [`GrantSnapshot`] that answers from a per-replica cache (moka, bounded,
//! negative entries too, a time-to-live); a decision that denied with
//! lookups the cache could not answer is decided once more after those
//! lookups are read from the database in one statement (a grant can only
//! allow, so an allow stands as it is).
//!
//! Revisions: every write bumps one counter row first in its transaction,
//! which serializes writers, so revisions follow commit order; the same
//! transaction appends its changes to a change log and notifies
//! (`LISTEN/NOTIFY` is only the wake-up). Each replica follows the change
//! log ([`feed`]) from the last revision it applied, invalidating cache
//! entries, and resumes from there after a dropped connection. A check may
//! ask for a minimum revision: it waits briefly for the feed, else reads
//! the database, never older state.
//!
//! A revision counts only within one history of one database, so the
//! database has an identity (a random id written by migration 2) and a
//! revision handed to a client is [`Revision`], `<identity>.<n>`. A
//! restore or a failover can take the counter back: the feed reads the
//! identity with the counter on every poll, and a changed identity or a
//! counter below the one applied drops the whole cache ([`GrantStore`]'s
//! reset); a check carrying another identity's revision is denied.
//!
//! When the database is unreachable, cached entries serve for a grace
//! period, then checks that need the database deny ([`Reason::GrantsUnavailable`]);
//! writes fail with an error; the feed reconnects by itself.

pub mod feed;
pub mod migrate;
pub mod search;
pub mod write;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use moka::sync::Cache;
use tokio::sync::watch;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::engine::{Decision, Reason};
use crate::metrics::CacheStats;
pub use crate::policy::grant_snapshot::HolderKind;
use crate::policy::grant_snapshot::{
    Asked, GrantSnapshot, HeldRoles, Lookup, LookupKey, Resolve, SharedLookup,
};
use crate::policy::{GrantSource, PolicySet, ResourceKey};

/// The channel writers notify and replicas listen on.
pub const CHANNEL: &str = "portcullis_grants";

/// The request header (Envoy passes it through) and the AuthZEN context
/// field that carry a check's minimum revision.
pub const REVISION_HEADER: &str = "x-portcullis-revision";
pub const REVISION_CONTEXT_FIELD: &str = "portcullis_revision";

/// Longest holder name (subject or group) accepted, in bytes.
pub const MAX_HOLDER_BYTES: usize = 256;
/// Longest resource name accepted, in bytes.
pub const MAX_RESOURCE_BYTES: usize = 1024;
/// Longest role name accepted, in bytes.
pub const MAX_ROLE_BYTES: usize = 128;

/// Lookups one snapshot holds before a decision is retried with more room:
/// a subject, a few groups and every authenticated subject, times the
/// resource and its patterns, fit.
const SNAPSHOT_ROOM: usize = 24;
/// Longest a check waits for the database to read its missing lookups.
const FETCH_TIMEOUT: Duration = Duration::from_secs(1);

/// The most lookups a decision may make (a subject in very many groups).
const SNAPSHOT_ROOM_MAX: usize = 16 * 1024;

/// How Portcullis reaches the grants database (`--grants-database-url` and
/// friends). The URL may hold a password: never printed.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// `postgresql://…` URL or `key=value` connection string; `sslmode`
    /// (disable, prefer, require) as libpq reads it.
    pub url: String,
    /// PEM CA bundle the server's certificate must chain to; the Mozilla
    /// roots (webpki-roots) when absent.
    pub ca_file: Option<PathBuf>,
    pub pool_size: usize,
    /// Lookups kept in the per-replica cache.
    pub cache_entries: u64,
    /// Longest life of a cache entry, whatever the change feed says.
    pub cache_ttl: Duration,
    /// How long cached entries keep serving once the database is
    /// unreachable; after that, checks that need the database deny.
    pub grace: Duration,
    /// How long a check asking for a revision waits for the change feed
    /// before reading the database itself.
    pub revision_wait: Duration,
    /// How often the change feed reads the change log without a
    /// notification (a lost NOTIFY costs at most this much staleness).
    pub poll: Duration,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &"(hidden)")
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .field("cache_entries", &self.cache_entries)
            .field("cache_ttl", &self.cache_ttl)
            .field("grace", &self.grace)
            .field("revision_wait", &self.revision_wait)
            .finish_non_exhaustive()
    }
}

impl DatabaseConfig {
    /// The defaults, for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseConfig {
            url: url.into(),
            ca_file: None,
            pool_size: 8,
            cache_entries: 1_000_000,
            cache_ttl: Duration::from_secs(300),
            grace: Duration::from_secs(30),
            revision_wait: Duration::from_millis(100),
            poll: Duration::from_secs(1),
        }
    }
}

/// Why the grants database could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("grants database URL: {0}")]
    Url(String),
    #[error("grants database TLS: {0}")]
    Tls(String),
    #[error("grants database unreachable: {0}")]
    Unreachable(String),
    #[error("grants database error: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("grants database schema is at version {found}, this Portcullis needs {needed}: run `portcullis db migrate`")]
    Schema { found: i32, needed: i32 },
    #[error("revision {wanted} is not reached (the database is at {found})")]
    FutureRevision { wanted: Revision, found: i64 },
    #[error("revision {wanted} is from another grants database (this one is {found}): a restore or a failover happened since it was written, which may have lost that write; write it again")]
    ForeignRevision { wanted: Revision, found: String },
    #[error("{0}")]
    Invalid(String),
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => DbError::from_pg(e),
            other => DbError::Unreachable(other.to_string()),
        }
    }
}

impl DbError {
    /// A connection-level failure reads as "unreachable", a query's as itself.
    pub fn from_pg(e: tokio_postgres::Error) -> Self {
        if e.as_db_error().is_none() {
            DbError::Unreachable(e.to_string())
        } else {
            DbError::Query(e)
        }
    }
}

/// The connection settings of `config`, with a connect timeout.
pub fn pg_config(config: &DatabaseConfig) -> Result<tokio_postgres::Config, DbError> {
    let mut pg: tokio_postgres::Config = config
        .url
        .parse()
        .map_err(|e: tokio_postgres::Error| DbError::Url(e.to_string()))?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(3));
    }
    pg.keepalives_idle(Duration::from_secs(30));
    if pg.get_application_name().is_none() {
        pg.application_name("portcullis");
    }
    Ok(pg)
}

/// TLS for the database connection: rustls with the ring provider, never
/// aws-lc-rs. Used when the URL's `sslmode` asks for it.
pub fn tls(ca_file: Option<&Path>) -> Result<MakeRustlsConnect, DbError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            use rustls_pki_types::pem::PemObject;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| DbError::Tls(format!("{}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| DbError::Tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| DbError::Tls(format!("{}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// A pool of connections for reads and writes (the change feed has a
/// connection of its own).
pub fn pool(config: &DatabaseConfig) -> Result<Pool, DbError> {
    let pg = pg_config(config)?;
    let manager = Manager::from_config(
        pg,
        tls(config.ca_file.as_deref())?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(3)))
        .create_timeout(Some(Duration::from_secs(3)))
        .recycle_timeout(Some(Duration::from_secs(3)))
        .build()
        .map_err(|e| DbError::Unreachable(e.to_string()))
}

/// One grant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Grant {
    pub kind: HolderKind,
    /// Empty for every authenticated subject.
    pub holder: String,
    pub pattern: bool,
    /// The resource, or a pattern's prefix.
    pub resource: String,
    pub role: String,
}

fn check_text(what: &str, text: &str, max: usize) -> Result<(), String> {
    if text.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if text.len() > max {
        return Err(format!("{what} is longer than {max} bytes"));
    }
    if text.chars().any(|c| c.is_control()) {
        return Err(format!("{what} contains a control character"));
    }
    Ok(())
}

impl Grant {
    /// A grant as the policy files write one: `subject`, `group`, or every
    /// authenticated subject; a role name; a resource or pattern. Checked
    /// as the loader checks them, and bounded.
    pub fn new(
        subject: Option<&str>,
        group: Option<&str>,
        authenticated: bool,
        role: &str,
        resource: &str,
    ) -> Result<Self, String> {
        let (kind, holder) = match (subject, group, authenticated) {
            (Some(s), None, false) => {
                check_text("subject", s, MAX_HOLDER_BYTES)?;
                if s == "*" {
                    return Err("subject \"*\" is not a pattern; to grant every authenticated subject use authenticated: true".into());
                }
                (HolderKind::Subject, s)
            }
            (None, Some(g), false) => {
                check_text("group", g, MAX_HOLDER_BYTES)?;
                (HolderKind::Group, g)
            }
            (None, None, true) => (HolderKind::Authenticated, ""),
            _ => return Err("a grant names one subject, one group, or authenticated: true".into()),
        };
        check_text("role", role, MAX_ROLE_BYTES)?;
        check_text("resource", resource, MAX_RESOURCE_BYTES)?;
        let (pattern, resource) = match ResourceKey::parse(resource)? {
            ResourceKey::Exact(r) => (false, r),
            ResourceKey::Prefix(p) => (true, p),
        };
        Ok(Grant {
            kind,
            holder: holder.to_owned(),
            pattern,
            resource: resource.to_owned(),
            role: role.to_owned(),
        })
    }

    /// The resource as written: `document:*` for a pattern.
    pub fn resource_text(&self) -> String {
        if self.pattern {
            format!("{}*", self.resource)
        } else {
            self.resource.clone()
        }
    }
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

/// A revision as clients carry it: the identity of the database that
/// handed it out and the counter, written `<identity>.<n>`. A bare number
/// is not a revision: it cannot say which history it counts in, and after
/// a restore the same number names another write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub database: Box<str>,
    pub number: i64,
}

/// Longest database identity accepted, in bytes (migration 2 writes 16).
pub const MAX_DATABASE_ID_BYTES: usize = 64;

/// Whether `id` may be a database identity: what migration 2's CHECK
/// constraint allows.
pub fn is_database_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DATABASE_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

impl std::fmt::Display for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.database, self.number)
    }
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

/// The grants database as one replica sees it: pool, cache, and the
/// revision its cache reflects.
pub struct GrantStore {
    config: DatabaseConfig,
    pool: Pool,
    cache: Cache<SharedLookup, Arc<HeldRoles>>,
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

impl std::fmt::Debug for GrantStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantStore")
            .field("config", &self.config)
            .field("applied", &*self.applied.borrow())
            .finish_non_exhaustive()
    }
}

/// How fresh a check's grants must be, as the shell found it.
enum Freshness {
    /// The cache may answer.
    Cache,
    /// Only the database may (a revision the feed has not reached, or the
    /// grace period is over).
    Database,
}

impl GrantStore {
    /// Connects, checks the schema is migrated, reads the current revision
    /// (the cache starts empty, at that revision) and follows the change
    /// feed until the returned task is aborted.
    pub async fn open(
        config: DatabaseConfig,
    ) -> Result<(Arc<Self>, tokio::task::JoinHandle<()>), DbError> {
        let store = Self::new(config)?;
        store.start().await?;
        let feed = tokio::spawn(feed::follow(store.clone()));
        Ok((store, feed))
    }

    /// The store, not yet connected (no I/O): [`Self::start`] connects.
    pub fn new(config: DatabaseConfig) -> Result<Arc<Self>, DbError> {
        let pool = pool(&config)?;
        let cache = Cache::builder()
            .max_capacity(config.cache_entries)
            .time_to_live(config.cache_ttl)
            .build();
        let stats = CacheStats::measuring(&cache, None);
        Ok(Arc::new(GrantStore {
            config,
            pool,
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
        }))
    }

    /// Checks the schema and reads the revision the cache starts at, and
    /// which server it is (the feed's first connection compares).
    pub async fn start(&self) -> Result<(), DbError> {
        let client = self.pool.get().await?;
        migrate::check(&client).await?;
        let started = server_started(&client).await?;
        let row = client
            .query_one("SELECT revision, database_id FROM portcullis_revision", &[])
            .await
            .map_err(DbError::from_pg)?;
        let (revision, database): (i64, String) = (row.get(0), row.get(1));
        // The cache is empty: it reflects this revision as it is.
        let _gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        self.cache.invalidate_all();
        self.applied.send_modify(|applied| {
            applied.generation += 1;
            applied.database = Arc::from(database);
            applied.revision = revision;
        });
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = started;
        Ok(())
    }

    pub fn config(&self) -> &DatabaseConfig {
        &self.config
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Hits, misses and size of the lookup cache, for the metrics.
    pub fn cache_stats(&self) -> Arc<CacheStats> {
        self.stats.clone()
    }

    /// Lookups in the cache (after pending maintenance).
    pub fn cached_entries(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
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

    fn set_down(&self, down: bool) {
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

    /// The cached roles of `lookup`, resolved against `policy`.
    fn cached(&self, policy: &PolicySet, asked: &Asked<'_>) -> Option<Arc<HeldRoles>> {
        if asked.holder.contains('\0') || asked.resource.contains('\0') {
            // Never stored (PostgreSQL text holds no NUL): holds nothing.
            return Some(Arc::new(HeldRoles::none(
                policy,
                Arc::new(asked.to_owned()),
            )));
        }
        match self.cache.get(asked as &dyn LookupKey) {
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

    /// Decides with grants from this store: `decide` is the engine call,
    /// given the grants to ask. `min_revision`: the check must see every
    /// write that returned a revision up to it.
    pub async fn decide<F>(
        &self,
        policy: &PolicySet,
        min_revision: Option<&Revision>,
        decide: F,
    ) -> Decision
    where
        F: Fn(&dyn GrantSource) -> Decision,
    {
        let mut freshness = match min_revision {
            // While the feed is disconnected, "applied" may count in a
            // history the database no longer has (a restore or failover
            // is what disconnects it): only the database can vouch.
            Some(_) if self.down_for().is_some() => Freshness::Database,
            Some(wanted) if !self.caught_up(wanted).await => Freshness::Database,
            _ => Freshness::Cache,
        };
        if !self.serving() {
            freshness = Freshness::Database;
        }
        let resolve = |asked: &Asked<'_>| self.cached(policy, asked);
        let resolve: Resolve<'_> = &resolve;
        let from_cache = matches!(freshness, Freshness::Cache).then_some(resolve);
        let mut room = SNAPSHOT_ROOM;
        let first = loop {
            let first = GrantSnapshot::new(room, from_cache);
            let decision = decide(&first);
            if !first.overflowed() {
                break (first, decision);
            }
            if room >= SNAPSHOT_ROOM_MAX {
                return self.unavailable(decision, "a decision asked for too many grant lookups");
            }
            room *= 16;
        };
        let (first, decision) = first;
        if decision.is_allowed() {
            return decision;
        }
        let missed = first.missed();
        if missed.is_empty() {
            return decision;
        }
        let fetched = match self.fetch(policy, &missed, min_revision).await {
            Ok(fetched) => fetched,
            Err(e) => return self.unavailable(decision, &e.to_string()),
        };
        let second = GrantSnapshot::new(room, None);
        for roles in first.answered() {
            second.give(roles.clone());
        }
        for (_, roles) in fetched {
            second.give(roles);
        }
        let decision = decide(&second);
        if second.overflowed() || !second.missed().is_empty() {
            // The second pass asked what the first did not: never guess.
            return self.unavailable(
                decision,
                "the decision asked for grants it had not asked for before",
            );
        }
        decision
    }

    fn unavailable(&self, mut decision: Decision, why: &str) -> Decision {
        self.counters
            .unavailable_denies
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = why, "grants unavailable: denied");
        if decision.is_allowed() {
            decision.effect = crate::engine::Effect::Deny(crate::engine::DenyStatus::Forbidden);
        }
        decision.reason = Reason::GrantsUnavailable;
        decision.matched_rule = Some(why.to_owned());
        decision
    }

    /// Reads `lookups` from the database in one statement (one snapshot),
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
        let result = match tokio::time::timeout(FETCH_TIMEOUT, self.read_at(lookups)).await {
            Ok(result) => result,
            Err(_) => Err(DbError::Unreachable(format!(
                "no answer within {} ms",
                FETCH_TIMEOUT.as_millis()
            ))),
        };
        let (revision, database, names) = match result {
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
                for (lookup, roles) in &answers {
                    if !unstorable(lookup) {
                        self.cache
                            .insert(SharedLookup(roles.lookup.clone()), roles.clone());
                    }
                }
            }
        }
        Ok(answers)
    }

    /// The roles of each lookup (in order) and the revision they were read at.
    pub async fn read(&self, lookups: &[Lookup]) -> Result<(i64, Vec<Box<[Box<str>]>>), DbError> {
        let (revision, _, names) = self.read_at(lookups).await?;
        Ok((revision, names))
    }

    /// The roles of each lookup (in order), and the revision and database
    /// identity they were read at.
    pub async fn read_at(
        &self,
        lookups: &[Lookup],
    ) -> Result<(i64, String, Vec<Box<[Box<str>]>>), DbError> {
        let stored: Vec<&Lookup> = lookups.iter().filter(|l| !unstorable(l)).collect();
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "SELECT r.revision, r.database_id, l.i, g.role \
                 FROM unnest($1::int2[], $2::text[], $3::bool[], $4::text[]) \
                      WITH ORDINALITY AS l(kind, holder, pattern, resource, i) \
                 CROSS JOIN portcullis_revision r \
                 LEFT JOIN portcullis_grants g \
                   ON g.holder_kind = l.kind AND g.holder = l.holder COLLATE \"C\" \
                  AND g.pattern = l.pattern AND g.resource = l.resource COLLATE \"C\"",
            )
            .await
            .map_err(DbError::from_pg)?;
        let kinds: Vec<i16> = stored.iter().map(|l| l.kind.code()).collect();
        let holders: Vec<&str> = stored.iter().map(|l| &*l.holder).collect();
        let patterns: Vec<bool> = stored.iter().map(|l| l.pattern).collect();
        let resources: Vec<&str> = stored.iter().map(|l| &*l.resource).collect();
        let rows = client
            .query(&statement, &[&kinds, &holders, &patterns, &resources])
            .await
            .map_err(DbError::from_pg)?;
        let mut revision = None;
        let mut found: Vec<Vec<Box<str>>> = vec![Vec::new(); stored.len()];
        for row in rows {
            let read: i64 = row.try_get(0).map_err(DbError::from_pg)?;
            let database: String = row.try_get(1).map_err(DbError::from_pg)?;
            revision = Some((read, database));
            let index: i64 = row.try_get(2).map_err(DbError::from_pg)?;
            let role: Option<&str> = row.try_get(3).map_err(DbError::from_pg)?;
            let slot = usize::try_from(index - 1)
                .ok()
                .and_then(|i| found.get_mut(i));
            if let (Some(slot), Some(role)) = (slot, role) {
                slot.push(role.into());
            }
        }
        let (revision, database) = match revision {
            Some(r) => r,
            None => {
                let row = client
                    .query_one("SELECT revision, database_id FROM portcullis_revision", &[])
                    .await
                    .map_err(DbError::from_pg)?;
                (row.get(0), row.get(1))
            }
        };
        let mut found = found.into_iter();
        let names = lookups
            .iter()
            .map(|l| {
                if unstorable(l) {
                    Box::default()
                } else {
                    found.next().unwrap_or_default().into_boxed_slice()
                }
            })
            .collect();
        Ok((revision, database, names))
    }

    /// Forgets `lookups` (a change the feed applies), or everything.
    fn invalidate(&self, lookups: Option<&[Lookup]>, revision: i64) {
        let _gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        match lookups {
            Some(lookups) => {
                for lookup in lookups {
                    self.cache.invalidate(lookup as &dyn LookupKey);
                }
            }
            None => {
                self.counters
                    .full_invalidations
                    .fetch_add(1, Ordering::Relaxed);
                self.cache.invalidate_all();
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
    fn another_server(&self, started: &Option<String>) -> bool {
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        matches!((&*server, started), (Some(was), Some(now)) if was != now)
    }

    /// Records that the cache reflects the server started at `started`:
    /// only once the feed has caught up with it (reset if it had to), so a
    /// read that fails in between is followed by a reset on the next
    /// connection rather than forgotten.
    fn note_server(&self, started: Option<String>) {
        if started.is_some() {
            *self.server.lock().unwrap_or_else(|e| e.into_inner()) = started;
        }
    }

    /// What the feed found: `database` at `revision`, with another identity
    /// or a counter below the applied one, or on `another_server`. That is
    /// another history (a restore, a failover, a swapped database): every
    /// cached entry may be one it no longer has, so all go, and the cache
    /// starts over at what the database says now.
    fn reset(&self, database: &str, revision: i64, another_server: bool) {
        let _gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let (was_database, was_revision) = {
            let applied = self.applied.borrow();
            (applied.database.clone(), applied.revision)
        };
        self.cache.invalidate_all();
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
        self.cache.invalidate_all();
    }
}

/// When the server `client` is connected to started: another start time
/// than before means a restart, a restore or a failover. `None` from a
/// database without the function (not PostgreSQL itself).
async fn server_started(client: &tokio_postgres::Client) -> Result<Option<String>, DbError> {
    match client
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .await
    {
        Ok(row) => Ok(row.try_get(0).ok()),
        Err(e) if e.as_db_error().is_some() => Ok(None),
        Err(e) => Err(DbError::from_pg(e)),
    }
}

/// A lookup no grant can match: PostgreSQL text cannot hold NUL.
fn unstorable(lookup: &Lookup) -> bool {
    lookup.holder.contains('\0') || lookup.resource.contains('\0')
}

/// Reads a revision as a check carries it: `<identity>.<digits>`, as a
/// write answered it. A bare number is refused (see [`Revision`]).
pub fn parse_revision(text: &str) -> Option<Revision> {
    let (database, number) = text.trim().split_once('.')?;
    if !is_database_id(database)
        || number.is_empty()
        || number.len() > 19
        || !number.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some(Revision {
        database: database.into(),
        number: number.parse().ok()?,
    })
}

/// The metrics of the grants database (registered by the app).
#[derive(Debug)]
pub struct StoreCollector(pub Arc<GrantStore>);

impl prometheus_client::collector::Collector for StoreCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let store = &self.0;
        let gauges: [(&str, &str, i64); 4] = [
            (
                "portcullis_grants_db_up",
                "1 while the change feed is connected to the grants database",
                i64::from(store.down_for().is_none()),
            ),
            (
                "portcullis_grants_db_serving",
                "1 while checks are answered (connected, or within the grace period)",
                i64::from(store.serving()),
            ),
            (
                "portcullis_grants_db_applied_revision",
                "The grants revision this replica's cache reflects",
                store.applied_revision(),
            ),
            (
                "portcullis_grants_db_down_seconds",
                "Seconds since the change feed lost the grants database (0 when up)",
                store
                    .down_for()
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            ),
        ];
        for (name, help, value) in gauges {
            let metric = ConstGauge::new(value);
            let e = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
            metric.encode(e)?;
        }
        let c = &store.counters;
        let counters = [
            (
                "portcullis_grants_db_fetches",
                "Reads of grants the cache could not answer",
                &c.fetches,
            ),
            (
                "portcullis_grants_db_fetch_failures",
                "Reads of grants that failed",
                &c.fetch_failures,
            ),
            (
                "portcullis_grants_db_notifications",
                "Change notifications received",
                &c.notifications,
            ),
            (
                "portcullis_grants_db_changes_applied",
                "Change log rows applied to the cache",
                &c.changes_applied,
            ),
            (
                "portcullis_grants_db_feed_reconnects",
                "Connections of the change feed after the first",
                &c.feed_reconnects,
            ),
            (
                "portcullis_grants_db_full_invalidations",
                "Times the whole cache was dropped (change log too long or pruned, or another history)",
                &c.full_invalidations,
            ),
            (
                "portcullis_grants_db_revision_resets",
                "Times the database showed another identity or a revision below the applied one (a restore, a failover): the cache was dropped and the applied revision reset",
                &c.revision_resets,
            ),
            (
                "portcullis_grants_db_foreign_revisions",
                "Checks denied because their revision came from another database identity",
                &c.foreign_revisions,
            ),
            (
                "portcullis_grants_db_unavailable_denies",
                "Checks denied because grants could not be read",
                &c.unavailable_denies,
            ),
        ];
        for (name, help, counter) in counters {
            let metric = ConstCounter::new(counter.load(Ordering::Relaxed));
            let e = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
            metric.encode(e)?;
        }
        Ok(())
    }
}
