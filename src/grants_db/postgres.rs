//! The PostgreSQL reader under the grants cache: the pool, the one
//! statement that reads a decision's lookups with the revision row, and
//! the connection settings (URL, TLS by rustls with ring) the feed, the
//! searches and the writes share.

use super::cache::{unstorable, GrantReader, ReadAt, ReadFuture};
use super::*;

/// The grants database as the cache reads it.
pub struct Postgres {
    pool: Pool,
    /// The runtime the store was started on, where every connection is
    /// made ([`Postgres::client`]).
    runtime: std::sync::OnceLock<tokio::runtime::Handle>,
}

impl Postgres {
    pub fn new(pool: Pool) -> Self {
        Postgres {
            pool,
            runtime: std::sync::OnceLock::new(),
        }
    }

    /// Makes every later connection on the current runtime (the one the
    /// store is started on), when there is one.
    pub fn bind_runtime(&self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let _ = self.runtime.set(runtime);
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A pooled connection, made on the runtime the store was started on:
    /// a connection's task must live where it is always driven, never on
    /// an API pool thread's runtime, which runs only while it has a job.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        let Some(runtime) = self.runtime.get() else {
            return Ok(self.pool.get().await?);
        };
        let pool = self.pool.clone();
        match runtime.spawn(async move { pool.get().await }).await {
            Ok(got) => Ok(got?),
            Err(e) => Err(DbError::Unreachable(format!(
                "the connection task failed: {e}"
            ))),
        }
    }

    /// The roles of each lookup (in order), and the revision and database
    /// identity they were read at.
    pub async fn read_at(
        &self,
        lookups: &[Lookup],
    ) -> Result<(i64, String, Vec<Box<[Box<str>]>>), DbError> {
        let stored: Vec<&Lookup> = lookups.iter().filter(|l| !unstorable(l)).collect();
        let client = self.client().await?;
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
}

impl GrantReader for Postgres {
    fn read<'a>(&'a self, lookups: &'a [Lookup]) -> ReadFuture<'a> {
        Box::pin(async move {
            let (revision, database, names) = self.read_at(lookups).await?;
            Ok(ReadAt {
                revision,
                database,
                names,
            })
        })
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

/// When the server `client` is connected to started: another start time
/// than before means a restart, a restore or a failover. `None` from a
/// database without the function (not PostgreSQL itself).
pub(super) async fn server_started(
    client: &tokio_postgres::Client,
) -> Result<Option<String>, DbError> {
    match client
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .await
    {
        Ok(row) => Ok(row.try_get(0).ok()),
        Err(e) if e.as_db_error().is_some() => Ok(None),
        Err(e) => Err(DbError::from_pg(e)),
    }
}
