//! Grants kept in PostgreSQL: the async shell that feeds the pure engine.
//!
//! The engine asks a [`GrantSource`] for the roles of one holder under one
//! resource key. With grants in a database, each check gets a
//! [`GrantSnapshot`] that answers from a per-replica cache (quick_cache, bounded,
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

pub mod cache;
pub mod consumed;
pub mod feed;
pub mod memory;
pub mod migrate;
pub mod postgres;
pub mod search;
pub mod write;

pub use cache::{CacheConfig, Counters, GrantCache, GrantReader, ReadAt};
use postgres::server_started;
pub use postgres::{libpq_sslmode, pg_config, pool, tls, CertCheck, Postgres};

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::watch;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::engine::{Decision, Reason};
use crate::metrics::CacheStats;
pub use crate::policy::grant_snapshot::HolderKind;
use crate::policy::grant_snapshot::{Asked, HeldRoles, Lookup, LookupKey, SharedLookup};
use crate::policy::{PolicySet, ResourceKey};

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

/// Longest a check waits for the database to read its missing lookups.
const FETCH_TIMEOUT: Duration = Duration::from_secs(1);

/// How Portcullis reaches the grants database (`--grants-database-url` and
/// friends). The URL may hold a password: never printed.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// `postgresql://…` URL or `key=value` connection string; `sslmode`
    /// disable, prefer, require, verify-ca or verify-full (see
    /// [`libpq_sslmode`]: `require` verifies the certificate too).
    pub url: String,
    /// Where writes go (grants written through the API, consumed event
    /// ids) when `url` is a read replica, which refuses them: the
    /// primary. `None`: `url` takes writes too. Same CA bundle; a pool of
    /// its own, of `pool_size`.
    pub write_url: Option<String>,
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
            .field("write_url", &self.write_url.as_ref().map(|_| "(hidden)"))
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
            write_url: None,
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
    #[error("grants database error: {}", server_message(.0))]
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

/// What the server said (severity, message, detail, hint), which
/// tokio-postgres's own `Display` leaves out ("db error").
fn server_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), ToString::to_string)
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
    /// A connection-level failure reads as "unreachable" (a TLS handshake
    /// that failed, a certificate that does not verify: as TLS), a
    /// query's as itself.
    pub fn from_pg(e: tokio_postgres::Error) -> Self {
        if e.as_db_error().is_some() {
            return DbError::Query(e);
        }
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            // rustls's error comes wrapped in an io::Error, whose own
            // `source` skips the error it wraps.
            let inner = cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|inner| inner as &(dyn std::error::Error + 'static));
            for candidate in [Some(cause), inner].into_iter().flatten() {
                if let Some(tls) = candidate.downcast_ref::<rustls::Error>() {
                    return DbError::Tls(format!("{e}: {tls}"));
                }
            }
            source = cause.source();
        }
        DbError::Unreachable(e.to_string())
    }
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

/// Why a grant cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("{0} is empty")]
    Empty(&'static str),
    #[error("{what} is longer than {max} bytes")]
    TooLong { what: &'static str, max: usize },
    #[error("{0} contains a control character")]
    ControlCharacter(&'static str),
    #[error("subject \"*\" is not a pattern; to grant every authenticated subject use authenticated: true")]
    StarSubject,
    #[error("a grant names one subject, one group, or authenticated: true")]
    Holder,
    #[error("{0}")]
    Resource(&'static str),
    #[error("unknown role {0:?} (a role of the policy without a condition)")]
    UnknownRole(String),
}

fn check_text(what: &'static str, text: &str, max: usize) -> Result<(), GrantError> {
    if text.is_empty() {
        return Err(GrantError::Empty(what));
    }
    if text.len() > max {
        return Err(GrantError::TooLong { what, max });
    }
    if text.chars().any(|c| c.is_control()) {
        return Err(GrantError::ControlCharacter(what));
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
    ) -> Result<Self, GrantError> {
        let (kind, holder) = match (subject, group, authenticated) {
            (Some(s), None, false) => {
                check_text("subject", s, MAX_HOLDER_BYTES)?;
                if s == "*" {
                    return Err(GrantError::StarSubject);
                }
                (HolderKind::Subject, s)
            }
            (None, Some(g), false) => {
                check_text("group", g, MAX_HOLDER_BYTES)?;
                (HolderKind::Group, g)
            }
            (None, None, true) => (HolderKind::Authenticated, ""),
            _ => return Err(GrantError::Holder),
        };
        check_text("role", role, MAX_ROLE_BYTES)?;
        check_text("resource", resource, MAX_RESOURCE_BYTES)?;
        let (pattern, resource) =
            match ResourceKey::parse(resource).map_err(GrantError::Resource)? {
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

/// The grants database as one replica sees it: the PostgreSQL reader and
/// the cache over it (whose methods it offers, through `Deref`).
pub struct GrantStore {
    config: DatabaseConfig,
    postgres: Arc<Postgres>,
    /// The primary, when reads go to a replica (`write_url`).
    writer: Option<Postgres>,
    cache: GrantCache,
}

impl std::ops::Deref for GrantStore {
    type Target = GrantCache;

    fn deref(&self) -> &GrantCache {
        &self.cache
    }
}

impl std::fmt::Debug for GrantStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantStore")
            .field("config", &self.config)
            .field("cache", &self.cache)
            .finish()
    }
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
        let postgres = Arc::new(Postgres::new(pool(&config)?));
        let cache = GrantCache::new(
            postgres.clone(),
            CacheConfig {
                entries: config.cache_entries,
                ttl: config.cache_ttl,
                grace: config.grace,
                revision_wait: config.revision_wait,
            },
        );
        let writer = match &config.write_url {
            Some(url) => {
                let mut primary = config.clone();
                primary.url.clone_from(url);
                Some(Postgres::new(pool(&primary)?))
            }
            None => None,
        };
        Ok(Arc::new(GrantStore {
            config,
            postgres,
            writer,
            cache,
        }))
    }

    /// Checks the schema and reads the revision the cache starts at, and
    /// which server it is (the feed's first connection compares).
    pub async fn start(&self) -> Result<(), DbError> {
        self.postgres.bind_runtime();
        if let Some(writer) = &self.writer {
            writer.bind_runtime();
        }
        let client = self.client().await?;
        migrate::check(&client).await?;
        let started = server_started(&client).await?;
        let row = client
            .query_one("SELECT revision, database_id FROM portcullis_revision", &[])
            .await
            .map_err(DbError::from_pg)?;
        let (revision, database): (i64, String) = (row.get(0), row.get(1));
        // The cache is empty: it reflects this revision as it is.
        self.cache.begin(&database, revision, started);
        Ok(())
    }

    pub fn config(&self) -> &DatabaseConfig {
        &self.config
    }

    pub fn pool(&self) -> &Pool {
        self.postgres.pool()
    }

    /// A pooled connection (see [`Postgres::client`]).
    pub async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        self.postgres.client().await
    }

    /// A pooled connection for a write: to `write_url` (the primary) when
    /// reads go to a replica, else the same pool as reads.
    pub async fn write_client(&self) -> Result<deadpool_postgres::Object, DbError> {
        self.writer
            .as_ref()
            .unwrap_or(&self.postgres)
            .client()
            .await
    }

    /// The roles of each lookup (in order) and the revision they were read
    /// at, from the database, past the cache.
    pub async fn read(&self, lookups: &[Lookup]) -> Result<(i64, Vec<Box<[Box<str>]>>), DbError> {
        let (revision, _, names) = self.postgres.read_at(lookups).await?;
        Ok((revision, names))
    }
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
