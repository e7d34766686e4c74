//! `portcullis serve` as a process: the runtime, the bound listeners, the
//! addresses announced on stdout, SIGTERM and SIGINT.

use super::*;

/// What `portcullis serve` does: everything checked and loaded before a
/// port is bound, then served on its own runtime until SIGTERM or SIGINT.
/// The bound addresses are printed on stdout for whoever started us.
pub fn serve(config: ServeConfig) -> Exit {
    let app = match App::build(config) {
        Ok(app) => app,
        Err(exit) => return exit,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return Exit::Failure;
        }
    };
    runtime.block_on(async move {
        let signal = match shutdown_signal() {
            Ok(signal) => signal,
            Err(e) => {
                eprintln!("cannot install signal handlers: {e}");
                return Exit::Failure;
            }
        };
        let bind = |address: SocketAddr| async move {
            TcpListener::bind(address)
                .await
                .map_err(|e| eprintln!("cannot listen on {address}: {e}"))
        };
        let Ok(admin) = bind(app.config.admin_listen).await else {
            return Exit::Failure;
        };
        let Ok(grpc) = bind(app.config.listen).await else {
            return Exit::Failure;
        };
        let api = match app.config.api.as_ref().map(|api| api.listen) {
            Some(address) => match bind(address).await {
                Ok(listener) => Some(listener),
                Err(()) => return Exit::Failure,
            },
            None => None,
        };
        let api_line = api
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| format!("api listening on {a}\n"))
            .unwrap_or_default();
        let console = match app.config.console.as_ref().map(|c| c.listen) {
            Some(address) => match bind(address).await {
                Ok(listener) => Some(listener),
                Err(()) => return Exit::Failure,
            },
            None => None,
        };
        let scheme = if app.console_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let console_line = console
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| format!("console listening on {scheme}://{a}/\n"))
            .unwrap_or_default();
        let listeners = Listeners {
            grpc,
            admin,
            api,
            console,
        };
        app.run(listeners, signal, |address, admin| {
            announce(&format!(
                "listening on {address}\nadmin listening on {admin}\n{api_line}{console_line}"
            ));
        })
        .await
    })
}

/// Writes the listening addresses for whoever started us. A reader that
/// has gone away (a closed pipe) must not take the server down with it,
/// as `println!` would by panicking.
fn announce(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// A future that completes on SIGTERM or SIGINT. The handlers are
/// installed by this call, before the listener is announced, so a signal
/// sent as soon as the address is printed still shuts down gracefully.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
