//! `portcullis serve`: turns the flags into a [`ServeConfig`] and hands it
//! to [`app::serve`].

use super::*;

pub(super) fn serve(args: ServeArgs) -> ExitCode {
    // Held until `serve` returns, so lines still queued are written.
    let log_lines = LogLines::stderr();
    log_lines.install_global();
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
    });
    log_lines.close();
    exit.into()
}
