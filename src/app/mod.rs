//! The service, wired: validated settings in, a running server out.
//!
//! [`ServeConfig`] holds every setting of `serve`, checked once
//! ([`ServeConfig::check`]: contradictions are [`Exit::Usage`]). [`App::build`]
//! loads what must load before any port is bound (policies, TLS files:
//! [`Exit::Config`] when they do not) and builds the caches and metrics;
//! [`App::run`] then serves ext_authz and the admin port on listeners it is
//! given, until `shutdown` completes, and drains. Tests run the whole
//! service in-process on `127.0.0.1:0` with the same `run`; [`serve`] is what
//! the binary does (its own runtime, bound listeners, SIGTERM/SIGINT).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::adapter::ResponseConfig;
use crate::admin::{self, AdminLimits, AdminState, Readiness};
use crate::api::{self, ApiState};
use crate::console::{self, ConsoleConfig, ConsoleState};
use crate::decision_cache::DecisionCache;
use crate::decision_log::DecisionLog;
use crate::events::{Replay, ReplayGuard};
use crate::grants_db::{self, DatabaseConfig, GrantStore, StoreCollector};
use crate::jwks::JwksFetcher;
use crate::logging::LogLines;
use crate::metrics::Metrics;
use crate::pdp::Pdp;
use crate::policy::{load_policies, PolicySet};
use crate::reload::{self, ReloadStatus, Reloader, WatchConfig};
use crate::server::{self, Authorizer};
use crate::shadow::{Shadow, SHADOW_QUEUE};
use crate::tls::{self, Alpn, ServerTls, TlsFiles};
use crate::token_cache::TokenCache;

mod config;
mod process;

pub use config::{ApiConfig, ConfigError, Exit, ServeConfig};
pub use process::serve;

/// The listeners the service answers on, bound by the caller.
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: TcpListener,
    /// The AuthZEN API's, when the configuration asks for one.
    pub api: Option<TcpListener>,
    /// The console's, when the configuration asks for one.
    pub console: Option<TcpListener>,
}

/// Everything loaded and built before a port is bound.
pub struct App {
    config: ServeConfig,
    policy: PolicySet,
    tls: Option<Arc<ServerTls>>,
    api_tls: Option<Arc<ServerTls>>,
    console_tls: Option<Arc<ServerTls>>,
    tokens: TokenCache,
    decisions: Option<DecisionCache>,
    metrics: Arc<Metrics>,
    log_lines: LogLines,
    grants_db: Option<Arc<GrantStore>>,
    /// The shadow policy as loaded, and the shadow that will decide with it.
    shadow: Option<(PolicySet, Arc<Shadow>)>,
}

impl App {
    /// Loads the policies and TLS files and builds the caches and metrics.
    /// Every error is printed to stderr and logged; the exit code says which
    /// kind it was.
    pub fn build(config: ServeConfig) -> Result<Self, Exit> {
        let config = config.check().map_err(|message| {
            eprintln!("{message}");
            Exit::Usage
        })?;
        let load_tls = |files: Option<TlsFiles>, alpn: Alpn| match files
            .map(|f| ServerTls::load_for(f, alpn))
            .transpose()
        {
            Ok(tls) => Ok(tls.map(Arc::new)),
            Err(e) => {
                tracing::error!(error = %e, "tls error");
                eprintln!("{e}");
                Err(Exit::Config)
            }
        };
        let tls = load_tls(config.tls.clone(), Alpn::H2)?;
        let api_tls = load_tls(
            config.api.as_ref().and_then(|api| api.tls.clone()),
            Alpn::Http11,
        )?;
        let console_tls = load_tls(
            config.console.as_ref().and_then(|c| c.tls.clone()),
            Alpn::Http11,
        )?;
        let tokens = TokenCache::with_max_bytes(config.token_cache_bytes, config.token_cache_ttl);
        let decisions = (config.decision_cache_bytes > 0).then(|| {
            DecisionCache::with_max_bytes(config.decision_cache_bytes, config.decision_cache_ttl)
        });
        let grants_db = match config.grants_db.clone().map(GrantStore::new).transpose() {
            Ok(store) => store,
            Err(e) => {
                tracing::error!(error = %e, "grants database");
                eprintln!("{e}");
                return Err(Exit::Config);
            }
        };
        // Decisions cached by request know nothing of grant revisions.
        let decisions = decisions.filter(|_| grants_db.is_none());
        let mut caches = vec![("token", tokens.stats())];
        caches.extend(decisions.iter().map(|d| ("decision", d.stats())));
        caches.extend(grants_db.iter().map(|s| ("grants", s.cache_stats())));
        let log_lines = config.log_lines.clone().unwrap_or_else(LogLines::stderr);
        let mut metrics = Metrics::with_log(caches, log_lines.clone());
        if let Some(store) = &grants_db {
            metrics = metrics.with_collector(Box::new(StoreCollector(store.clone())));
        }
        let shadow = config.shadow_policies.as_ref().map(|_| Shadow::new());
        if let Some(shadow) = &shadow {
            metrics = metrics.with_collector(shadow.collector());
        }
        let metrics = Arc::new(metrics);
        let policy = match load_policies(&config.policies) {
            Ok(policy) => policy,
            Err(errors) => {
                metrics.record_policy_load(Err(()));
                for e in &errors.0 {
                    tracing::error!(error = %e, "policy error");
                    eprintln!("{e}");
                }
                return Err(Exit::Config);
            }
        };
        metrics.record_policy_load(Ok((&policy.version, policy.grants.len())));
        let shadow = match (&config.shadow_policies, shadow) {
            (Some(dir), Some(shadow)) => match load_policies(dir) {
                Ok(candidate) => {
                    tracing::info!(shadow_version = %candidate.version, dir = %dir.display(), "shadow policy loaded");
                    Some((candidate, shadow))
                }
                Err(errors) => {
                    for e in &errors.0 {
                        tracing::error!(error = %e, "shadow policy error");
                        eprintln!("--shadow-policies: {e}");
                    }
                    return Err(Exit::Config);
                }
            },
            _ => None,
        };
        if grants_db.is_some() && !policy.grants.is_empty() {
            tracing::warn!(
                grants = policy.grants.len(),
                "grants come from the database: the grants in the policy files are ignored"
            );
        }
        // The parse trees of a large policy are freed by now; hand them back.
        reload::release_freed_memory();
        Ok(Self {
            config,
            policy,
            tls,
            api_tls,
            console_tls,
            tokens,
            decisions,
            metrics,
            log_lines,
            grants_db,
            shadow,
        })
    }

    /// The shadow policy's counts and latest disagreements
    /// ([`Shadow::summary`], what the console shows); `None` without
    /// `--shadow-policies`. Shared: it is the one `run` serves with.
    pub fn shadow(&self) -> Option<Arc<Shadow>> {
        self.shadow.as_ref().map(|(_, shadow)| shadow.clone())
    }

    /// Serves until `shutdown` completes, then stops being ready, drains the
    /// checks in flight (at most the configured drain time) and stops the
    /// admin server. `on_listening` is told the bound addresses (gRPC, admin)
    /// once the service is ready.
    pub async fn run(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()>,
        on_listening: impl FnOnce(SocketAddr, SocketAddr),
    ) -> Exit {
        let App {
            config,
            mut policy,
            tls,
            api_tls,
            console_tls,
            tokens,
            decisions,
            metrics,
            log_lines,
            grants_db,
            shadow,
        } = self;
        // Grants from the database: schema checked and the change feed
        // followed before the service says it is ready.
        let grants_feed = match &grants_db {
            Some(store) => match store.start().await {
                Ok(()) => Some(grants_db::feed::follow(store.clone())),
                Err(e) => {
                    tracing::error!(error = %e, "grants database");
                    eprintln!("{e}");
                    return match e {
                        // No retry cures a schema mismatch or a
                        // certificate that does not verify.
                        grants_db::DbError::Schema { .. } | grants_db::DbError::Tls(_) => {
                            Exit::Config
                        }
                        _ => Exit::Failure,
                    };
                }
            },
            None => None,
        };
        // A change of an issuer's fetched keys forgets every verification;
        // a new policy version leaves the old entries unreachable: drop them.
        let clear_caches = {
            let (tokens, decisions) = (tokens.clone(), decisions.clone());
            let grants = grants_db.clone();
            move || {
                tokens.clear();
                if let Some(cache) = &decisions {
                    cache.clear();
                }
                // Cached roles are resolved against a policy version.
                if let Some(store) = &grants {
                    store.clear();
                }
            }
        };
        let on_publish = Box::new(clear_caches.clone());
        let fetcher = match JwksFetcher::new(Box::new(clear_caches), Some(metrics.clone())) {
            Ok(fetcher) => fetcher,
            Err(e) => {
                eprintln!("cannot build the JWKS client: {e}");
                return Exit::Failure;
            }
        };
        fetcher.adopt(&mut policy);
        let policy = Arc::new(ArcSwap::from_pointee(policy));
        let adopter = fetcher.clone();
        let reload_status = Arc::new(ReloadStatus::new());
        let reloader = Reloader::new(&config.policies, policy.clone(), Some(metrics.clone()))
            .with_prepare(Box::new(move |policy| adopter.adopt(policy)))
            .with_published(on_publish)
            .with_status(reload_status.clone());
        let reloads = match reload::watch(Arc::new(reloader), config.watch) {
            Ok(reloads) => reloads,
            Err(e) => {
                eprintln!("cannot watch {}: {e}", config.policies.display());
                return Exit::Failure;
            }
        };
        // The shadow policy: its own handle, loaded and reloaded as the
        // served one is (no metrics of the served policy's).
        let mut shadow_reloads = None;
        let shadow = match shadow {
            Some((mut candidate, shadow)) => {
                fetcher.adopt(&mut candidate);
                let handle = Arc::new(ArcSwap::from_pointee(candidate));
                let adopter = fetcher.clone();
                let dir = config.shadow_policies.clone().unwrap_or_default();
                let reloader = Reloader::new(&dir, handle.clone(), None)
                    .with_prepare(Box::new(move |policy| adopter.adopt(policy)))
                    .with_label("shadow");
                match reload::watch(Arc::new(reloader), config.watch) {
                    Ok(reloads) => shadow_reloads = Some(reloads),
                    Err(e) => {
                        eprintln!("cannot watch {}: {e}", dir.display());
                        return Exit::Failure;
                    }
                }
                if let Err(e) = shadow.start(handle, SHADOW_QUEUE) {
                    eprintln!("cannot start the shadow policy's thread: {e}");
                    return Exit::Failure;
                }
                Some(shadow)
            }
            None => None,
        };
        let mut tls_reloads = Vec::new();
        for served in [&tls, &api_tls, &console_tls].into_iter().flatten() {
            match tls::watch(served.clone(), config.watch) {
                Ok(reloads) => tls_reloads.push(reloads),
                Err(e) => {
                    eprintln!("cannot watch the TLS files: {e}");
                    return Exit::Failure;
                }
            }
        }
        let admin_address = listeners.admin.local_addr().unwrap_or(config.admin_listen);
        let address = listeners.grpc.local_addr().unwrap_or(config.listen);

        let readiness = Arc::new(Readiness::default());
        let admin_state = AdminState {
            readiness: readiness.clone(),
            metrics: metrics.clone(),
            policy: policy.clone(),
        };
        let Some(replay) = replay(config.api.as_ref(), grants_db.as_ref()) else {
            return Exit::Failure;
        };
        let bulkhead = match api::bulkhead::Bulkhead::new(api::bulkhead::api_decision_threads()) {
            Ok(bulkhead) => Arc::new(bulkhead),
            Err(e) => {
                eprintln!("cannot start the API's decision threads: {e}");
                return Exit::Failure;
            }
        };
        // The one decision service: Envoy's checks, the AuthZEN API and
        // signed events all ask it.
        let pdp = Pdp::new(policy.clone(), tokens, server::system_clock())
            .with_metrics(metrics)
            .with_decision_log(Arc::new(DecisionLog::new(config.log_allow_rate, log_lines)))
            .with_key_fetcher(fetcher.clone());
        let pdp = match decisions {
            Some(cache) => pdp.with_decision_cache(cache),
            None => pdp,
        };
        let pdp = match &grants_db {
            Some(store) => {
                let serving = store.clone();
                readiness.also_require(move || serving.serving());
                pdp.with_grants_db(store.clone())
            }
            None => pdp,
        };
        let console_state = config.console.as_ref().map(|console| {
            ConsoleState::new(
                pdp.clone(),
                bulkhead.clone(),
                reload_status.clone(),
                console_tls.is_some(),
                console.open_loopback,
            )
            .with_shadow(shadow.clone())
        });
        let api_state = ApiState {
            pdp: pdp.clone(),
            public_url: config.api.as_ref().and_then(|api| api.public_url.clone()),
            https: api_tls.is_some(),
            replay: Arc::new(replay),
            bulkhead,
        };
        let authorizer = Authorizer::from_pdp(pdp, ResponseConfig::new(&config.subject_header))
            .with_readiness(readiness.clone());
        let authorizer = match shadow {
            Some(shadow) => authorizer.with_shadow(shadow),
            None => authorizer,
        };

        // Draining stops the checks and the API together (the API's shutdown
        // grace is the drain time); the admin server stops last.
        let draining = CancellationToken::new();
        let stopping_admin = CancellationToken::new();
        let servers = TaskTracker::new();
        let admin = servers.spawn(admin::run(
            listeners.admin,
            admin_state,
            stopping_admin.clone().cancelled_owned(),
        ));
        let mut checks = match &tls {
            Some(tls) => servers.spawn(server::run_with_incoming(
                tls::incoming(listeners.grpc, tls.clone()),
                authorizer,
                draining.clone().cancelled_owned(),
            )),
            None => servers.spawn(server::run(
                listeners.grpc,
                authorizer,
                draining.clone().cancelled_owned(),
            )),
        };
        let api_address = listeners.api.as_ref().and_then(|l| l.local_addr().ok());
        let api = listeners.api.map(|listener| {
            servers.spawn(api::run(
                listener,
                api_tls.clone(),
                api_state,
                api::limits(config.drain),
                draining.clone().cancelled_owned(),
            ))
        });
        let console_address = listeners.console.as_ref().and_then(|l| l.local_addr().ok());
        let console = match (listeners.console, console_state) {
            (Some(listener), Some(state)) => Some(servers.spawn(console::run(
                listener,
                console_tls.clone(),
                state,
                console::limits(Duration::from_secs(1)),
                draining.clone().cancelled_owned(),
            ))),
            _ => None,
        };
        servers.close();
        // Watchers and the change feed run until the service stops; in-process
        // runs outlive this call, so they are aborted, never left reloading.
        let mut background = JoinSet::new();
        background.spawn(reloads);
        if let Some(shadow_reloads) = shadow_reloads {
            background.spawn(shadow_reloads);
        }
        for tls_reloads in tls_reloads {
            background.spawn(tls_reloads);
        }
        if let Some(feed) = grants_feed {
            background.spawn(feed);
        }
        readiness.set(true);
        let version = policy.load().version.clone();
        let (transport, api_transport, console_transport) = (
            transport(&tls),
            transport(&api_tls),
            transport(&console_tls),
        );
        tracing::info!(address = %address, admin_address = %admin_address, transport, policy_version = %version, "serving");
        if let Some(api_address) = api_address {
            tracing::info!(api_address = %api_address, transport = api_transport, "serving the AuthZEN API");
        }
        if let Some(console_address) = console_address {
            tracing::info!(console_address = %console_address, transport = console_transport, "serving the console");
        }
        on_listening(address, admin_address);

        let mut exit = Exit::Ok;
        tokio::select! {
            () = shutdown => {
                tracing::info!("shutting down: finishing checks in flight");
                // Stop being chosen first, then stop taking checks.
                readiness.set(false);
                draining.cancel();
                match tokio::time::timeout(config.drain, &mut checks).await {
                    Ok(Ok(Ok(()))) => tracing::info!("checks drained"),
                    Ok(outcome) => {
                        tracing::error!(?outcome, "the check server failed while draining");
                        exit = Exit::Failure;
                    }
                    Err(_) => tracing::warn!(seconds = config.drain.as_secs(), "drain timed out; exiting with checks in flight"),
                }
            }
            outcome = &mut checks => {
                readiness.set(false);
                tracing::error!(?outcome, "the check server stopped");
                eprintln!("the check server stopped: {outcome:?}");
                exit = Exit::Failure;
            }
        }
        draining.cancel();
        if let Some(api) = api {
            if tokio::time::timeout(config.drain + Duration::from_secs(1), api)
                .await
                .is_err()
            {
                tracing::warn!("the API server did not stop in time; exiting anyway");
            }
        }
        if let Some(console) = console {
            if tokio::time::timeout(Duration::from_secs(3), console)
                .await
                .is_err()
            {
                tracing::warn!("the console did not stop in time; exiting anyway");
            }
        }
        stopping_admin.cancel();
        // The admin server bounds its own shutdown; this bounds it again,
        // so nothing a client of the admin port does can hold the exit.
        let admin_limit = AdminLimits::default().shutdown_grace + Duration::from_secs(1);
        if tokio::time::timeout(admin_limit, admin).await.is_err() {
            tracing::warn!("the admin server did not stop in time; exiting anyway");
        }
        background.abort_all();
        servers.wait().await;
        tracing::info!("stopped");
        exit
    }
}

/// Where consumed event ids are kept: in the grants database when the API
/// is served with one (once across replicas), else in this replica's
/// memory (and its log). `None` when the log cannot be used (said on
/// stderr).
fn replay(api: Option<&ApiConfig>, grants_db: Option<&Arc<GrantStore>>) -> Option<Replay> {
    match (api, grants_db) {
        (Some(api), Some(store)) => Some(Replay::Database {
            store: store.clone(),
            capacity: api.replay_capacity,
        }),
        (api, _) => replay_guard(api).map(|guard| Replay::Memory(Box::new(guard))),
    }
}

/// The replay guard in memory: kept in the replay log when one is
/// configured (read back first); `None` (after saying why) when the log
/// cannot be used. Without the API, an empty guard nothing consumes from.
fn replay_guard(api: Option<&ApiConfig>) -> Option<ReplayGuard> {
    match api {
        Some(ApiConfig {
            replay_log: Some(path),
            replay_capacity,
            ..
        }) => match ReplayGuard::with_log(path, *replay_capacity, crate::pdp::unix_now()) {
            Ok(guard) => {
                log_replay_load(path, guard.load_report());
                Some(guard)
            }
            Err(e) => {
                eprintln!("cannot use the event replay log {}: {e}", path.display());
                None
            }
        },
        Some(api) => Some(ReplayGuard::new(api.replay_capacity)),
        None => Some(ReplayGuard::new(0)),
    }
}

/// How a listener's connections are protected, for the log.
fn transport(tls: &Option<Arc<ServerTls>>) -> &'static str {
    match tls {
        Some(tls) if tls.requires_client_certificates() => "mtls",
        Some(_) => "tls",
        None => "plaintext",
    }
}

/// Says what reading the event replay log back found: a torn last line
/// (a crash mid-write, its id never answered) is routine; any other bad
/// line is not (the file was damaged or written by someone else) and its
/// id, if it held one, cannot be refused as a replay any more.
fn log_replay_load(path: &std::path::Path, report: &crate::events::replay::LoadReport) {
    if report.bad_lines > 0 {
        tracing::error!(
            path = %path.display(),
            bad_lines = report.bad_lines,
            first_bad_line = report.first_bad_line,
            kept = report.kept,
            "the event replay log has damaged lines: skipped (an id they held is forgotten)"
        );
    }
    if report.torn_tail || report.recovered > 0 {
        tracing::warn!(
            path = %path.display(),
            torn_tail = report.torn_tail,
            recovered = report.recovered,
            "the event replay log ended in a torn write: cut"
        );
    }
    tracing::info!(path = %path.display(), kept = report.kept, expired = report.expired, "event replay log read");
}
