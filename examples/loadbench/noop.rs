//! A do-nothing ext_authz server: the same tonic server, health service
//! and listener handling as `portcullis::server::run`, with a `Check` that
//! answers OK without looking at the request.

use std::net::SocketAddr;

use anyhow::Context;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (127.0.0.1 only; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Tokio worker threads; 0 means one per core, as Portcullis uses.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Set TCP_NODELAY on accepted connections, as `portcullis::server::run`
    /// does (tonic applies its own setting only to listeners it binds).
    /// `--nodelay false` shows what Nagle's algorithm costs behind Envoy.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    nodelay: bool,
}

#[derive(Clone, Copy)]
struct Noop;

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(
        &self,
        _request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            status: Some(rpc::Status {
                code: 0,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            ..Default::default()
        }))
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.listen.ip().is_loopback(),
        "the bench server binds 127.0.0.1 only, not {}",
        args.listen
    );
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        runtime.worker_threads(args.threads);
    }
    let runtime = runtime.enable_all().build().context("tokio runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        // The same first line as `portcullis serve`, so scripts read both alike.
        println!("listening on {}", listener.local_addr()?);
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<AuthorizationServer<Noop>>().await;
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("SIGTERM handler")?;
        let nodelay = args.nodelay;
        let incoming = TcpListenerStream::new(listener).map(move |stream| {
            if let Ok(stream) = &stream {
                if nodelay {
                    let _ = stream.set_nodelay(true);
                }
            }
            stream
        });
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(AuthorizationServer::new(Noop))
            .serve_with_incoming_shutdown(incoming, async {
                tokio::select! {
                    () = shutdown => {}
                    _ = term.recv() => {}
                }
            })
            .await
            .context("serving")
    })
}
