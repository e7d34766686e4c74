//! The command line: `serve`, `validate`, `check`, `test`, `token` and
//! `event`.
//!
//! This module parses and dispatches; each subcommand has a file of its own
//! that hands its arguments to the library (`serve` to [`crate::app`], the
//! others to the one loader and the engine): nothing here decides anything. Exit codes ([`Exit`]) are for scripts:
//! `check` exits 0 on allow, 2 on deny, 1 on error; `validate` and `test`
//! 0 or 1; `serve` exits 78 (EX_CONFIG) when the policies or the TLS files
//! do not load and 64 (EX_USAGE) for settings that contradict each other.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use jsonwebtoken::{EncodingKey, Header};

use crate::adapter::{self, DEFAULT_SUBJECT_HEADER};
use crate::app::{self, ApiConfig, Exit, ServeConfig};
use crate::console::ConsoleConfig;
use crate::decision_cache::{DEFAULT_DECISION_CACHE_BYTES, DEFAULT_DECISION_CACHE_TTL};
use crate::decision_log::DEFAULT_ALLOW_RATE;
use crate::engine::{self, Decision, RequestAttrs};
use crate::events::replay::DEFAULT_REPLAY_CAPACITY;
use crate::jwks::JwksFetcher;
use crate::logging::LogLines;
use crate::policy::{load_policies, load_policies_with, Loaded, PolicySet, UnreadableKeys};
use crate::reload::WatchConfig;
use crate::server::DEFAULT_TOKEN_CACHE_BYTES;
use crate::tls::TlsFiles;
use crate::token::KeySet;
use crate::token_cache::DEFAULT_TOKEN_CACHE_TTL;

mod check;
mod db;
mod event;
mod grants;
mod replay;
mod serve;
mod test;
mod token;
mod validate;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "External authorization for Envoy and Istio"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve ext_authz v3 gRPC (and grpc.health.v1) on the bundled or given policies
    Serve(Box<ServeArgs>),
    /// Load a policy directory and report every error as file:line: message
    Validate {
        /// The policy directory
        dir: PathBuf,
        /// Fail (exit 1) on any lint warning, not only on errors: for CI
        #[arg(long)]
        strict: bool,
    },
    /// Decide one request and explain why (exit 0 allow, 2 deny, 1 error)
    Check(CheckArgs),
    /// Mint a token for an HMAC issuer of the policy (development only)
    Token(TokenArgs),
    /// Sign events for asynchronous work, and verify them against the policy as it is now
    Event(event::EventArgs),
    /// Run decision case files (request or subject/resource/action -> expected decision)
    Test {
        /// Case files, or directories whose *.yaml, *.yml and *.json files are case files
        #[arg(required_unless_present = "explore")]
        paths: Vec<PathBuf>,
        /// Instead of case files: try, on this policy directory, the alternate
        /// spellings an attacker would (leading zeros, suffixes, case) of
        /// every route and deny rule, and report each answered differently
        /// from its canonical spelling (exit 1 if any)
        #[arg(long, value_name = "POLICY_DIR", conflicts_with_all = ["paths", "grants_database_url"])]
        explore: Option<PathBuf>,
        /// Decide with the grants in this PostgreSQL database (through the cache, as `serve` does), not the policy files'
        #[arg(long)]
        grants_database_url: Option<String>,
    },
    /// Decide a decision log again against a candidate policy directory and report what would change (exit 0 no change, 1 changes, 3 lines that cannot be replayed)
    Replay(replay::ReplayArgs),
    /// The grants database's schema (`db migrate`)
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Grants kept in the grants database: add, remove, list, import, export
    #[command(subcommand)]
    Grants(grants::GrantsCommand),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The policy directory
    #[arg(long, env = "PORTCULLIS_POLICIES")]
    pub policies: PathBuf,
    /// Address for the gRPC listener
    #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "127.0.0.1:9191")]
    pub listen: SocketAddr,
    /// Request header that carries the verified subject upstream
    #[arg(long, env = "PORTCULLIS_SUBJECT_HEADER", default_value = DEFAULT_SUBJECT_HEADER)]
    pub subject_header: String,
    /// Memory for verified tokens (each kept until its exp), in bytes, or with Ki, Mi, Gi
    #[arg(long, env = "PORTCULLIS_TOKEN_CACHE_BYTES", default_value_t = DEFAULT_TOKEN_CACHE_BYTES, value_parser = parse_bytes)]
    pub token_cache_bytes: u64,
    /// Longest time a verified token is remembered, in seconds (never past its exp)
    #[arg(long, env = "PORTCULLIS_TOKEN_CACHE_TTL_SECONDS", default_value_t = DEFAULT_TOKEN_CACHE_TTL.as_secs())]
    pub token_cache_ttl_seconds: u64,
    /// Memory for decisions about verified callers, in bytes, or with Ki, Mi, Gi; 0 turns the decision cache off
    #[arg(long, env = "PORTCULLIS_DECISION_CACHE_BYTES", default_value_t = DEFAULT_DECISION_CACHE_BYTES, value_parser = parse_bytes)]
    pub decision_cache_bytes: u64,
    /// Longest time a decision is remembered, in seconds
    #[arg(long, env = "PORTCULLIS_DECISION_CACHE_TTL_SECONDS", default_value_t = DEFAULT_DECISION_CACHE_TTL.as_secs())]
    pub decision_cache_ttl_seconds: u64,
    /// Address for the admin HTTP listener (/live, /ready, /metrics)
    #[arg(
        long,
        env = "PORTCULLIS_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub admin_listen: SocketAddr,
    /// Fraction of allow decisions written to the decision log, 0.0 to 1.0 (denies are always written)
    #[arg(long, env = "PORTCULLIS_LOG_ALLOW_RATE", default_value_t = DEFAULT_ALLOW_RATE, value_parser = parse_rate)]
    pub log_allow_rate: f64,
    /// Seconds to finish checks in flight after SIGTERM before exiting anyway
    #[arg(long, env = "PORTCULLIS_DRAIN_SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,
    /// Reload when files in the policy directory change (SIGHUP always reloads)
    #[arg(long, env = "PORTCULLIS_WATCH", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch: bool,
    /// Milliseconds of quiet after a file change before reloading
    #[arg(long, env = "PORTCULLIS_RELOAD_DEBOUNCE_MS", default_value_t = 200)]
    pub reload_debounce_ms: u64,
    /// PEM certificate chain for the gRPC listener (with --tls-key: serve TLS, ALPN h2)
    #[arg(long, env = "PORTCULLIS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the --tls-cert certificate
    #[arg(long, env = "PORTCULLIS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates issued by it (mTLS)
    #[arg(long, env = "PORTCULLIS_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Address for the AuthZEN API (HTTP/1.1 JSON); no API when absent
    #[arg(long, env = "PORTCULLIS_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// PEM certificate chain for the API listener (with --api-tls-key: serve HTTPS)
    #[arg(long, env = "PORTCULLIS_API_TLS_CERT")]
    pub api_tls_cert: Option<PathBuf>,
    /// PEM private key of the --api-tls-cert certificate
    #[arg(long, env = "PORTCULLIS_API_TLS_KEY")]
    pub api_tls_key: Option<PathBuf>,
    /// PEM CA bundle: require API clients to present certificates issued by it (mTLS)
    #[arg(long, env = "PORTCULLIS_API_TLS_CLIENT_CA")]
    pub api_tls_client_ca: Option<PathBuf>,
    /// The API's public base URL, as the metadata's policy_decision_point (without it, no metadata: 404)
    #[arg(long, env = "PORTCULLIS_API_URL")]
    pub api_url: Option<String>,
    /// File the ids of consumed events are appended to, so a replay is refused after a restart too (default: memory only)
    #[arg(long, env = "PORTCULLIS_EVENT_REPLAY_LOG")]
    pub event_replay_log: Option<PathBuf>,
    /// Most unexpired event ids remembered; past it, new events are refused, never old ids forgotten
    #[arg(long, env = "PORTCULLIS_EVENT_REPLAY_CAPACITY", default_value_t = DEFAULT_REPLAY_CAPACITY)]
    pub event_replay_capacity: usize,
    /// Address for the console (a web UI: live decisions, explain, searches, the policy); no console when absent. Off the loopback interface it needs --console-tls-cert
    #[arg(long, env = "PORTCULLIS_CONSOLE_LISTEN")]
    pub console_listen: Option<SocketAddr>,
    /// PEM certificate chain for the console listener (with --console-tls-key: serve HTTPS)
    #[arg(long, env = "PORTCULLIS_CONSOLE_TLS_CERT")]
    pub console_tls_cert: Option<PathBuf>,
    /// PEM private key of the --console-tls-cert certificate
    #[arg(long, env = "PORTCULLIS_CONSOLE_TLS_KEY")]
    pub console_tls_key: Option<PathBuf>,
    /// PEM CA bundle: console clients present certificates issued by it, and one naming a caller with `may: [console]` needs no sign-in
    #[arg(long, env = "PORTCULLIS_CONSOLE_TLS_CLIENT_CA")]
    pub console_tls_client_ca: Option<PathBuf>,
    /// Let anyone who reaches the console use it without signing in; only with a loopback --console-listen (a development machine)
    #[arg(long, env = "PORTCULLIS_CONSOLE_OPEN_LOOPBACK", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub console_open_loopback: bool,
    #[command(flatten)]
    pub grants_db: db::ServeDatabaseArgs,
    /// A candidate policy directory: every check is decided against it too, off the request path, never changing the answer; disagreements are counted (portcullis_shadow_disagreements_total) and logged (target shadow)
    #[arg(long, env = "PORTCULLIS_SHADOW_POLICIES")]
    pub shadow_policies: Option<PathBuf>,
}

/// A size in bytes: digits, optionally followed by `Ki`, `Mi` or `Gi`
/// (powers of 1024, as Kubernetes writes them; a trailing `B` is allowed).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let number = trimmed.trim_end_matches('B');
    let (digits, unit) = match number.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => number.split_at(at),
        None => (number, ""),
    };
    let shift = match unit {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        _ => return Err(format!("expected bytes such as 16Mi, got {text:?}")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("expected bytes such as 16Mi, got {text:?}"))
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("expected a number from 0.0 to 1.0, got {text:?}")),
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The policy directory
    #[arg(long)]
    pub policies: PathBuf,
    #[arg(long)]
    pub method: String,
    /// The request path, query included
    #[arg(long)]
    pub path: String,
    #[arg(long, default_value = "")]
    pub host: String,
    /// The destination workload's principal (a SPIFFE id), as Envoy reports
    /// it from the mesh's mTLS
    #[arg(long, default_value = "")]
    pub destination: String,
    /// A bearer token (without the "Bearer " prefix)
    #[arg(long)]
    pub token: Option<String>,
    /// A context extension as Envoy would send it, key=value (repeatable)
    #[arg(long = "context-extension", value_parser = parse_pair)]
    pub context_extensions: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The policy directory
    #[arg(long)]
    pub policies: PathBuf,
    /// Issuer name in the policy
    #[arg(long)]
    pub issuer: String,
    #[arg(long)]
    pub subject: String,
    /// Group for the issuer's groups claim (repeatable)
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Lifetime in seconds
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {text:?}"))
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve::serve(*args),
        Command::Validate { dir, strict } => validate::validate(&dir, strict),
        Command::Check(args) => check::check(args),
        Command::Token(args) => token::token(args),
        Command::Event(args) => event::event(args),
        Command::Test {
            explore: Some(dir), ..
        } => test::explore(&dir),
        Command::Test {
            paths,
            grants_database_url,
            explore: None,
        } => test::test(&paths, grants_database_url),
        Command::Replay(args) => replay::replay(args),
        Command::Db(command) => db::db(command),
        Command::Grants(command) => grants::grants(command),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_in_bytes_or_binary_units() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("65536"), Ok(65_536));
        assert_eq!(parse_bytes("512Ki"), Ok(512 << 10));
        assert_eq!(parse_bytes("16Mi"), Ok(16 << 20));
        assert_eq!(parse_bytes("16MiB"), Ok(16 << 20));
        assert_eq!(parse_bytes("1Gi"), Ok(1 << 30));
        for bad in [
            "",
            "Mi",
            "16M",
            "16 Mi",
            "-1",
            "1.5Mi",
            "99999999999999999999Gi",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }
}
