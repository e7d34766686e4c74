//! The command line: `serve`, `validate`, `check`, `test` and `token`.
//!
//! Each subcommand parses its arguments and hands them to the library:
//! `serve` to [`crate::app`], the others to the one loader and the engine;
//! nothing here decides anything. Exit codes ([`Exit`]) are for scripts:
//! `check` exits 0 on allow, 2 on deny, 1 on error; `validate` and `test`
//! 0 or 1; `serve` exits 78 (EX_CONFIG) when the policies or the TLS files
//! do not load and 64 (EX_USAGE) for settings that contradict each other.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use jsonwebtoken::{EncodingKey, Header};

use crate::adapter::{self, DEFAULT_SUBJECT_HEADER};
use crate::app::{self, Exit, ServeConfig};
use crate::decision_cache::{DEFAULT_DECISION_CACHE_BYTES, DEFAULT_DECISION_CACHE_TTL};
use crate::engine::{self, Decision, RequestAttrs, VerifyEveryTime};
use crate::jwks::JwksFetcher;
use crate::policy::{load_policies, PolicySet};
use crate::reload::WatchConfig;
use crate::server::DEFAULT_TOKEN_CACHE_BYTES;
use crate::tls::TlsFiles;
use crate::token::KeySet;
use crate::token_cache::DEFAULT_TOKEN_CACHE_TTL;

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
    Serve(ServeArgs),
    /// Load a policy directory and report every error as file:line: message
    Validate {
        /// The policy directory
        dir: PathBuf,
    },
    /// Decide one request and explain why (exit 0 allow, 2 deny, 1 error)
    Check(CheckArgs),
    /// Mint a token for an HMAC issuer of the policy (development only)
    Token(TokenArgs),
    /// Run decision case files (request or subject/resource/action -> expected decision)
    Test {
        /// Case files, or directories whose *.yaml, *.yml and *.json files are case files
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
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
    /// Fraction of allow decisions written to the decision log (denies are always written)
    #[arg(long, env = "PORTCULLIS_LOG_ALLOW_RATE", default_value_t = 1.0, value_parser = parse_rate)]
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
        Command::Serve(args) => serve(args),
        Command::Validate { dir } => validate(&dir),
        Command::Check(args) => check(args),
        Command::Token(args) => token(args),
        Command::Test { paths } => test(&paths),
    }
}

fn test(paths: &[PathBuf]) -> ExitCode {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| {
                            p.is_file()
                                && p.extension()
                                    .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                        })
                        .collect();
                    found.sort();
                    files.extend(found);
                }
                Err(e) => {
                    eprintln!("{}: cannot read directory: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        } else {
            files.push(path.clone());
        }
    }
    let (mut passed, mut failed, mut broken) = (0usize, 0usize, 0usize);
    let mut runner = crate::cases::CaseRunner::new();
    for file in &files {
        let outcome = runner.run_file(file);
        // Each policy directory's warnings once, when it is first loaded.
        for warning in runner.take_warnings() {
            eprintln!("{warning}");
        }
        match outcome {
            Ok(outcomes) => {
                for outcome in outcomes {
                    match outcome.failure {
                        None => passed += 1,
                        Some(failure) => {
                            failed += 1;
                            println!(
                                "{}:{}: {}: {failure}",
                                file.display(),
                                outcome.line,
                                outcome.name
                            );
                        }
                    }
                }
            }
            Err(errors) => {
                broken += 1;
                for e in errors {
                    println!("{e}");
                }
            }
        }
    }
    // A summary never reads as a pass when nothing ran.
    if passed + failed == 0 {
        let why = if files.is_empty() {
            "no case files (*.yaml, *.yml, *.json) found".to_owned()
        } else if broken > 0 {
            format!("{broken} of {} case files could not be run", files.len())
        } else {
            format!("the {} case files hold no cases", files.len())
        };
        println!("FAILED: no case ran: {why}");
        return ExitCode::FAILURE;
    }
    let not_run = match broken {
        0 => String::new(),
        1 => ", 1 case file not run".to_owned(),
        n => format!(", {n} case files not run"),
    };
    println!("{passed} passed, {failed} failed{not_run}");
    if broken > 0 || failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn load_or_report(dir: &Path) -> Option<PolicySet> {
    match load_policies(dir) {
        Ok(policy) => Some(policy),
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            None
        }
    }
}

fn validate(dir: &Path) -> ExitCode {
    let Some(policy) = load_or_report(dir) else {
        return ExitCode::FAILURE;
    };
    println!(
        "ok: {} applications, {} routes, {} roles, {} grants, {} issuers (version {})",
        policy.applications.len(),
        policy.route_count(),
        policy.roles.len(),
        policy.grants.len(),
        policy.issuers.len(),
        policy.version
    );
    // Roles define actions no route names (asked about by resource and
    // action); listed, so a misspelled one is seen, not silently new.
    let routed: std::collections::HashSet<usize> = policy
        .applications
        .iter()
        .flat_map(|a| a.routes.iter())
        .filter_map(|r| r.action.as_ref().map(|(_, index)| *index))
        .collect();
    let role_only: Vec<&str> = (0..policy.actions.len())
        .filter(|i| !routed.contains(i))
        .filter_map(|i| policy.actions.get(i).map(String::as_str))
        .collect();
    if !role_only.is_empty() {
        println!(
            "note: actions no route names (only resource/action checks ask about them): {}",
            role_only.join(", ")
        );
    }
    // The process exits next: freeing a million grants one by one would
    // only add a tenth of a second to every validation in CI.
    std::mem::forget(policy);
    ExitCode::SUCCESS
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn check(args: CheckArgs) -> ExitCode {
    let Some(policy) = load_or_report(&args.policies) else {
        return ExitCode::FAILURE;
    };
    if let Err(message) = fetch_remote_keys(&policy) {
        eprintln!("{message}");
        return ExitCode::FAILURE;
    }
    let credential = match &args.token {
        Some(token) => adapter::credential(&[format!("Bearer {token}")]),
        None => engine::Credential::Absent,
    };
    let request = RequestAttrs {
        method: args.method,
        path: args.path,
        host: args.host,
        destination: args.destination,
        context_extensions: args
            .context_extensions
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        credential,
        request_id: None,
        verified_payloads: BTreeMap::new(),
    };
    let decision = engine::decide(&policy, &request, &VerifyEveryTime, now());
    print!("{}", explain(&decision));
    // Which route came closest, and why it did not take the request:
    // worked out here, on demand, never by the engine while deciding.
    if decision.route.is_none() && !decision.is_allowed() {
        if let Some(unmatched) = engine::explain_unmatched(&policy, &request) {
            println!("  {:<12} {}", "why", unmatched.explanation);
        }
    }
    if decision.is_allowed() {
        ExitCode::SUCCESS
    } else {
        Exit::Deny.into()
    }
}

/// Fetches, once, the keys of issuers that publish them at a URL.
fn fetch_remote_keys(policy: &PolicySet) -> Result<(), String> {
    if policy.issuers.remote_key_sets().next().is_none() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let fetcher = JwksFetcher::new(Box::new(|| {}), None)
        .map_err(|e| format!("cannot build the JWKS client: {e}"))?;
    runtime
        .block_on(fetcher.fetch_all_once(policy))
        .map_err(|(url, e)| format!("cannot fetch {url}: {e}"))
}

/// A decision in words, one field a line.
pub fn explain(decision: &Decision) -> String {
    let verdict = if decision.is_allowed() {
        "allow"
    } else {
        "deny"
    };
    let mut out = format!(
        "{verdict} ({}): {}\n",
        decision.status_code(),
        decision.reason
    );
    let fields = [
        ("application", &decision.application),
        ("route", &decision.route),
        ("subject", &decision.subject),
        ("resource", &decision.resource),
        ("action", &decision.action),
        ("rule", &decision.matched_rule),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            out.push_str(&format!("  {name:<12} {value}\n"));
        }
    }
    out
}

fn token(args: TokenArgs) -> ExitCode {
    let Some(policy) = load_or_report(&args.policies) else {
        return ExitCode::FAILURE;
    };
    let issuer = policy
        .issuers
        .position(&args.issuer)
        .and_then(|i| policy.issuers.get(i));
    let Some(issuer) = issuer else {
        eprintln!("no issuer named {:?} in the policy", args.issuer);
        return ExitCode::FAILURE;
    };
    let (KeySet::Single(key), Some(&alg)) = (&issuer.keys, issuer.algorithms.first()) else {
        eprintln!("issuer {:?} has no single key", args.issuer);
        return ExitCode::FAILURE;
    };
    let Ok(secret) = key.try_get_as_bytes() else {
        eprintln!(
            "issuer {:?} is not an HMAC issuer: only its IdP can mint tokens",
            args.issuer
        );
        return ExitCode::FAILURE;
    };
    let issued = now();
    let mut claims = serde_json::json!({
        "iss": issuer.issuer,
        "aud": issuer.audiences.first(),
        issuer.subject_claim.clone(): args.subject,
        "iat": issued,
        "exp": issued + args.ttl,
    });
    if let (Some(claim), false) = (&issuer.groups_claim, args.groups.is_empty()) {
        claims[claim] = serde_json::json!(args.groups);
    }
    match jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret),
    ) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot sign the token: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logging();
    let tls = match (args.tls_cert, args.tls_key, args.tls_client_ca) {
        (Some(cert), Some(key), client_ca) => Some(TlsFiles {
            cert,
            key,
            client_ca,
        }),
        (None, None, None) => None,
        (None, None, Some(_)) => {
            eprintln!("--tls-client-ca needs --tls-cert and --tls-key");
            return Exit::Usage.into();
        }
        _ => {
            eprintln!("--tls-cert and --tls-key go together: give both or neither");
            return Exit::Usage.into();
        }
    };
    app::serve(ServeConfig {
        policies: args.policies,
        listen: args.listen,
        admin_listen: args.admin_listen,
        subject_header: args.subject_header,
        token_cache_bytes: args.token_cache_bytes,
        token_cache_ttl: Duration::from_secs(args.token_cache_ttl_seconds),
        decision_cache_bytes: args.decision_cache_bytes,
        decision_cache_ttl: Duration::from_secs(args.decision_cache_ttl_seconds),
        log_allow_rate: args.log_allow_rate,
        drain: Duration::from_secs(args.drain_seconds),
        watch: WatchConfig {
            watch_files: args.watch,
            debounce: Duration::from_millis(args.reload_debounce_ms),
        },
        tls,
    })
    .into()
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
