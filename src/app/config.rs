//! Every setting of `serve`, checked once, and the exit codes a command
//! ends with.

use super::*;

/// How a command ends, as a script sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done; for `check`, allowed.
    Ok = 0,
    /// A runtime error, or failed checks.
    Failure = 1,
    /// `check` decided deny.
    Deny = 2,
    /// `replay`: some line of the log could not be replayed.
    Incomplete = 3,
    /// Settings that contradict each other (sysexits.h EX_USAGE).
    Usage = 64,
    /// An input file that cannot be read (sysexits.h EX_NOINPUT).
    NoInput = 66,
    /// Policies or TLS files that do not load (sysexits.h EX_CONFIG).
    Config = 78,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// Every setting of `serve`. Built by the command line; [`Self::check`]
/// refuses contradictions before anything is loaded.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub policies: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The header that carries the verified subject upstream.
    pub subject_header: String,
    pub token_cache_bytes: u64,
    pub token_cache_ttl: Duration,
    /// 0 turns the decision cache off.
    pub decision_cache_bytes: u64,
    pub decision_cache_ttl: Duration,
    /// Fraction of allows written to the decision log.
    pub log_allow_rate: f64,
    /// The queue log lines go through; `None` makes one to stderr.
    pub log_lines: Option<LogLines>,
    /// How long checks in flight may take after shutdown begins.
    pub drain: Duration,
    pub watch: WatchConfig,
    pub tls: Option<TlsFiles>,
    /// The AuthZEN API listener; `None` serves no API.
    pub api: Option<ApiConfig>,
    /// Grants from PostgreSQL instead of the policy files; `None`: files.
    pub grants_db: Option<DatabaseConfig>,
    /// A candidate policy directory every check is decided against too,
    /// off the request path, never changing the answer (`--shadow-policies`).
    pub shadow_policies: Option<PathBuf>,
    /// The console listener; `None` (the default) serves no console.
    pub console: Option<ConsoleConfig>,
}

/// Settings of the AuthZEN API listener (`--api-listen` and friends).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// TLS (and mTLS, with a client CA) on the API listener.
    pub tls: Option<TlsFiles>,
    /// The `policy_decision_point` the metadata names; derived from each
    /// request's Host when absent.
    pub public_url: Option<String>,
    /// Where consumed event ids are logged, so that a replay is refused
    /// after a restart too; in memory only when `None`.
    pub replay_log: Option<PathBuf>,
    /// Most unexpired event ids remembered.
    pub replay_capacity: usize,
}

/// Why `serve`'s settings cannot work together: each names the flags and
/// the values at fault (exit 64).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--subject-header {0:?} is not a valid header name")]
    SubjectHeader(String),
    #[error("--admin-listen and --listen must differ (both are {0})")]
    SameListeners(SocketAddr),
    #[error("--api-listen must differ from --listen and --admin-listen ({0} is taken)")]
    ApiListenTaken(SocketAddr),
    #[error("--api-url {url:?} is not a URL: {reason}")]
    ApiUrl { url: String, reason: String },
    #[error("--api-url {0:?} must be an http(s) URL without query or fragment")]
    ApiUrlShape(String),
    #[error("{flag}: {error}")]
    GrantsDatabase {
        flag: &'static str,
        error: grants_db::DbError,
    },
    #[error(
        "--event-replay-log keeps consumed events in one replica's file: with \
         --grants-database-url they are kept in the database, once across replicas; \
         drop --event-replay-log"
    )]
    ReplayLogWithDatabase,
    #[error(transparent)]
    Console(#[from] console::ConsoleConfigError),
    #[error("--console-listen must differ from the other listeners ({0} is taken)")]
    ConsoleListenTaken(SocketAddr),
}

impl ServeConfig {
    /// Refuses settings that contradict each other; the subject header
    /// comes back lower-cased.
    pub fn check(mut self) -> Result<Self, ConfigError> {
        let header = self.subject_header.to_ascii_lowercase();
        let header_ok = !header.is_empty()
            && header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !header_ok {
            return Err(ConfigError::SubjectHeader(self.subject_header));
        }
        self.subject_header = header;
        if self.admin_listen == self.listen && self.listen.port() != 0 {
            return Err(ConfigError::SameListeners(self.listen));
        }
        if let Some(api) = &self.api {
            if api.listen.port() != 0
                && (api.listen == self.listen || api.listen == self.admin_listen)
            {
                return Err(ConfigError::ApiListenTaken(api.listen));
            }
            if let Some(url) = &api.public_url {
                let parsed = reqwest::Url::parse(url).map_err(|e| ConfigError::ApiUrl {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
                let plain = matches!(parsed.scheme(), "https" | "http")
                    && parsed.host().is_some()
                    && parsed.query().is_none()
                    && parsed.fragment().is_none();
                if !plain {
                    return Err(ConfigError::ApiUrlShape(url.clone()));
                }
            }
        }
        if let Some(console) = &self.console {
            console.check()?;
            let others = [
                Some(self.listen),
                Some(self.admin_listen),
                self.api.as_ref().map(|a| a.listen),
            ];
            if console.listen.port() != 0 && others.contains(&Some(console.listen)) {
                return Err(ConfigError::ConsoleListenTaken(console.listen));
            }
        }
        if let Some(db) = &self.grants_db {
            grants_db::pg_config(db).map_err(|error| ConfigError::GrantsDatabase {
                flag: "--grants-database-url",
                error,
            })?;
            if let Some(url) = &db.write_url {
                let mut primary = db.clone();
                primary.url.clone_from(url);
                grants_db::pg_config(&primary).map_err(|error| ConfigError::GrantsDatabase {
                    flag: "--grants-database-write-url",
                    error,
                })?;
            }
            if self
                .api
                .as_ref()
                .is_some_and(|api| api.replay_log.is_some())
            {
                return Err(ConfigError::ReplayLogWithDatabase);
            }
        }
        Ok(self)
    }
}
