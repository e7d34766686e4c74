//! `portcullis db migrate` and the grants-database flags `serve` shares:
//! where grants live when they are not in the policy files.

use super::*;
use crate::grants_db::{self, DatabaseConfig};

/// Reaching the grants database (every `db` and `grants` command).
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL (postgresql://user@host/db?sslmode=require) or key=value string
    #[arg(
        long = "database-url",
        env = "PORTCULLIS_GRANTS_DATABASE_URL",
        hide_env_values = true
    )]
    pub url: String,
    /// PEM CA bundle the database's certificate must chain to (default: the Mozilla roots)
    #[arg(long = "database-ca", env = "PORTCULLIS_GRANTS_DATABASE_CA")]
    pub ca: Option<PathBuf>,
}

impl DatabaseArgs {
    pub fn config(&self) -> DatabaseConfig {
        let mut config = DatabaseConfig::new(self.url.clone());
        config.ca_file.clone_from(&self.ca);
        config
    }
}

/// `serve`'s grants-database flags: without a URL, grants come from the
/// policy files.
#[derive(Debug, Args)]
pub struct ServeDatabaseArgs {
    /// Keep grants in PostgreSQL (URL or key=value string; the password is never printed); routes, roles, denies stay in the policy files
    #[arg(long, env = "PORTCULLIS_GRANTS_DATABASE_URL", hide_env_values = true)]
    pub grants_database_url: Option<String>,
    /// Where grant writes and consumed event ids go when --grants-database-url is a read replica: the primary (default: --grants-database-url)
    #[arg(
        long,
        env = "PORTCULLIS_GRANTS_DATABASE_WRITE_URL",
        hide_env_values = true,
        requires = "grants_database_url"
    )]
    pub grants_database_write_url: Option<String>,
    /// PEM CA bundle the database's certificate must chain to (default: the Mozilla roots)
    #[arg(long, env = "PORTCULLIS_GRANTS_DATABASE_CA")]
    pub grants_database_ca: Option<PathBuf>,
    /// Connections in the grants database pool (the change feed has one more of its own)
    #[arg(
        long,
        env = "PORTCULLIS_GRANTS_DATABASE_POOL_SIZE",
        default_value_t = 8
    )]
    pub grants_database_pool_size: usize,
    /// Grant lookups cached per replica
    #[arg(
        long,
        env = "PORTCULLIS_GRANTS_CACHE_ENTRIES",
        default_value_t = 1_000_000
    )]
    pub grants_cache_entries: u64,
    /// Longest life of a cached grant lookup, in seconds, whatever the change feed says
    #[arg(
        long,
        env = "PORTCULLIS_GRANTS_CACHE_TTL_SECONDS",
        default_value_t = 300
    )]
    pub grants_cache_ttl_seconds: u64,
    /// Seconds cached grants keep serving once the database is unreachable; then checks needing it deny
    #[arg(long, env = "PORTCULLIS_GRANTS_GRACE_SECONDS", default_value_t = 30)]
    pub grants_grace_seconds: u64,
    /// Milliseconds a check carrying a revision waits for the change feed before reading the database
    #[arg(
        long,
        env = "PORTCULLIS_GRANTS_REVISION_WAIT_MS",
        default_value_t = 100
    )]
    pub grants_revision_wait_ms: u64,
}

impl ServeDatabaseArgs {
    pub fn config(&self) -> Option<DatabaseConfig> {
        let url = self.grants_database_url.clone()?;
        let mut config = DatabaseConfig::new(url);
        config.write_url.clone_from(&self.grants_database_write_url);
        config.ca_file.clone_from(&self.grants_database_ca);
        config.pool_size = self.grants_database_pool_size;
        config.cache_entries = self.grants_cache_entries;
        config.cache_ttl = Duration::from_secs(self.grants_cache_ttl_seconds.max(1));
        config.grace = Duration::from_secs(self.grants_grace_seconds);
        config.revision_wait = Duration::from_millis(self.grants_revision_wait_ms);
        Some(config)
    }
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply the schema migrations this binary carries (idempotent; safe to run from several Jobs)
    Migrate(DatabaseArgs),
    /// Delete change-log rows older than --keep-seconds (replicas further behind drop their whole cache), and the ids of consumed events expired over an hour ago
    Prune {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Keep the changes of the last this many seconds
        #[arg(long, default_value_t = 86_400)]
        keep_seconds: u64,
    },
    /// Give the database a new identity after a point-in-time restore or a failover: replicas drop their caches, revisions handed out before are refused
    NewIdentity(DatabaseArgs),
}

/// A runtime for one command's database work.
pub fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("cannot start the runtime: {e}");
            Exit::Failure.into()
        })
}

/// One connection (not a pool) for a command.
pub async fn connect(
    config: &DatabaseConfig,
) -> Result<tokio_postgres::Client, grants_db::DbError> {
    let pg = grants_db::pg_config(config)?;
    let tls = grants_db::tls(config)?;
    let (client, connection) = pg.connect(tls).await.map_err(grants_db::DbError::from_pg)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection ended");
        }
    });
    Ok(client)
}

pub(super) fn db(command: DbCommand) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match command {
        DbCommand::Migrate(args) => runtime.block_on(async {
            let outcome = async {
                let mut client = connect(&args.config()).await?;
                grants_db::migrate::migrate(&mut client).await
            }
            .await;
            match outcome {
                Ok(applied) if applied.is_empty() => {
                    println!(
                        "the schema is up to date (version {})",
                        grants_db::migrate::latest()
                    );
                    Exit::Ok.into()
                }
                Ok(applied) => {
                    for version in applied {
                        println!("applied migration {version}");
                    }
                    Exit::Ok.into()
                }
                Err(e) => {
                    eprintln!("{e}");
                    Exit::Failure.into()
                }
            }
        }),
        DbCommand::Prune {
            database,
            keep_seconds,
        } => runtime.block_on(async {
            let outcome = async {
                let mut client = connect(&database.config()).await?;
                let through = grants_db::write::prune(&mut client, keep_seconds).await?;
                let events = grants_db::consumed::prune(&client).await?;
                Ok::<_, grants_db::DbError>((through, events))
            }
            .await;
            match outcome {
                Ok((through, events)) => {
                    if through == 0 {
                        println!("no change is older than {keep_seconds} seconds");
                    } else {
                        println!("pruned the change log through revision {through}");
                    }
                    println!(
                        "pruned {events} consumed event ids expired over {} seconds ago",
                        grants_db::consumed::PRUNE_MARGIN_SECONDS
                    );
                    Exit::Ok.into()
                }
                Err(e) => {
                    eprintln!("{e}");
                    Exit::Failure.into()
                }
            }
        }),
        DbCommand::NewIdentity(args) => runtime.block_on(async {
            let outcome = async {
                let mut client = connect(&args.config()).await?;
                grants_db::migrate::check(&client).await?;
                grants_db::write::new_identity(&mut client).await
            }
            .await;
            match outcome {
                Ok(identity) => {
                    println!("the grants database's identity is now {identity}");
                    Exit::Ok.into()
                }
                Err(e) => {
                    eprintln!("{e}");
                    Exit::Failure.into()
                }
            }
        }),
    }
}
