//! The whole service in-process: `App::build` and `App::run`, as
//! `portcullis serve` runs them, on a runtime of its own, every listener
//! (gRPC, admin, the AuthZEN API) on 127.0.0.1:0; stopped, and drained, on
//! drop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use portcullis::app::{ApiConfig, App, Exit, Listeners, ServeConfig};
use portcullis::reload::WatchConfig;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// `serve`'s settings for a test on `policies`: the AuthZEN API on, 1 MiB
/// caches for 60 s, no allow logged, no file watching, no TLS, no grants
/// database. A test changes what it is about.
pub fn serve_config(policies: &Path) -> ServeConfig {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    ServeConfig {
        policies: policies.to_path_buf(),
        listen: any,
        admin_listen: any,
        subject_header: "x-portcullis-subject".into(),
        token_cache_bytes: 1 << 20,
        token_cache_ttl: Duration::from_secs(60),
        decision_cache_bytes: 1 << 20,
        decision_cache_ttl: Duration::from_secs(60),
        log_allow_rate: 0.0,
        log_lines: None,
        drain: Duration::from_secs(2),
        watch: WatchConfig {
            watch_files: false,
            debounce: Duration::from_millis(50),
        },
        tls: None,
        api: Some(ApiConfig {
            listen: any,
            tls: None,
            public_url: None,
            replay_log: None,
            replay_capacity: 1000,
        }),
        grants_db: None,
        shadow_policies: None,
        console: None,
    }
}

/// A running in-process service (see the module).
pub struct InProcess {
    pub api: SocketAddr,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// The service's runtime, for a test's own async calls to it.
    pub runtime: tokio::runtime::Runtime,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Exit>>,
}

impl InProcess {
    /// Builds the service from `config` (whose `api` must be set) and waits
    /// until it listens.
    pub fn start(config: ServeConfig) -> InProcess {
        let app = App::build(config).expect("build");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let bind = || {
            runtime
                .block_on(TcpListener::bind("127.0.0.1:0"))
                .expect("bind")
        };
        let listeners = Listeners {
            grpc: bind(),
            admin: bind(),
            api: Some(bind()),
            console: None,
        };
        let api = listeners
            .api
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .expect("no API address");
        let (stop, stopped) = oneshot::channel::<()>();
        let (listening, ready) = mpsc::channel::<(SocketAddr, SocketAddr)>();
        let done = runtime.spawn(app.run(
            listeners,
            async {
                let _ = stopped.await;
            },
            move |grpc, admin| {
                let _ = listening.send((grpc, admin));
            },
        ));
        let (grpc, admin) = ready
            .recv_timeout(Duration::from_secs(30))
            .expect("the service did not start");
        InProcess {
            api,
            grpc,
            admin,
            runtime,
            stop: Some(stop),
            done: Some(done),
        }
    }

    /// The AuthZEN API's port.
    pub fn api_port(&self) -> u16 {
        self.api.port()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let exit = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(30), done).await });
            if !std::thread::panicking() {
                assert!(
                    matches!(exit, Ok(Ok(Exit::Ok))),
                    "the service did not stop cleanly: {exit:?}"
                );
            }
        }
    }
}
