//! `portcullis serve`: turns the flags into a [`ServeConfig`] and hands it
//! to [`app::serve`].

use super::*;

/// The TLS files of one listener's flags (`prefix` names them in messages).
fn tls_files(
    prefix: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<TlsFiles>, String> {
    match (cert, key, client_ca) {
        (Some(cert), Some(key), client_ca) => Ok(Some(TlsFiles {
            cert,
            key,
            client_ca,
        })),
        (None, None, None) => Ok(None),
        (None, None, Some(_)) => Err(format!(
            "--{prefix}tls-client-ca needs --{prefix}tls-cert and --{prefix}tls-key"
        )),
        _ => Err(format!(
            "--{prefix}tls-cert and --{prefix}tls-key go together: give both or neither"
        )),
    }
}

pub(super) fn serve(args: ServeArgs) -> ExitCode {
    // Held until `serve` returns, so lines still queued are written.
    let log_lines = LogLines::stderr();
    log_lines.install_global();
    let tls = match tls_files("", args.tls_cert, args.tls_key, args.tls_client_ca) {
        Ok(tls) => tls,
        Err(message) => {
            eprintln!("{message}");
            return Exit::Usage.into();
        }
    };
    let api_tls = match tls_files(
        "api-",
        args.api_tls_cert,
        args.api_tls_key,
        args.api_tls_client_ca,
    ) {
        Ok(tls) => tls,
        Err(message) => {
            eprintln!("{message}");
            return Exit::Usage.into();
        }
    };
    let api_only = api_tls.is_some() || args.api_url.is_some() || args.event_replay_log.is_some();
    let api = match (args.api_listen, api_only) {
        (Some(listen), _) => Some(ApiConfig {
            listen,
            tls: api_tls,
            public_url: args.api_url,
            replay_log: args.event_replay_log,
            replay_capacity: args.event_replay_capacity,
        }),
        (None, false) => None,
        (None, true) => {
            eprintln!("--api-tls-*, --api-url and --event-replay-log need --api-listen");
            return Exit::Usage.into();
        }
    };
    let console_tls = match tls_files(
        "console-",
        args.console_tls_cert,
        args.console_tls_key,
        args.console_tls_client_ca,
    ) {
        Ok(tls) => tls,
        Err(message) => {
            eprintln!("{message}");
            return Exit::Usage.into();
        }
    };
    let console = match args.console_listen {
        Some(listen) => Some(ConsoleConfig {
            listen,
            tls: console_tls,
            open_loopback: args.console_open_loopback,
        }),
        None if console_tls.is_some() || args.console_open_loopback => {
            eprintln!("--console-tls-* and --console-open-loopback need --console-listen");
            return Exit::Usage.into();
        }
        None => None,
    };
    let grants_db = args.grants_db.config();
    let exit = app::serve(ServeConfig {
        policies: args.policies,
        listen: args.listen,
        admin_listen: args.admin_listen,
        subject_header: args.subject_header,
        token_cache_bytes: args.token_cache_bytes,
        token_cache_ttl: Duration::from_secs(args.token_cache_ttl_seconds),
        decision_cache_bytes: args.decision_cache_bytes,
        decision_cache_ttl: Duration::from_secs(args.decision_cache_ttl_seconds),
        log_allow_rate: args.log_allow_rate,
        log_lines: Some(log_lines.clone()),
        drain: Duration::from_secs(args.drain_seconds),
        watch: WatchConfig {
            watch_files: args.watch,
            debounce: Duration::from_millis(args.reload_debounce_ms),
        },
        tls,
        api,
        grants_db,
        shadow_policies: args.shadow_policies,
        console,
    });
    log_lines.close();
    exit.into()
}
