//! A do-nothing AuthZEN evaluation endpoint on the same HTTP stack as
//! `serve --api-listen` (`portcullis::http_server` with the API's limits,
//! axum, hyper): `POST /access/v1/evaluation` answers `{"decision":true}`
//! without reading the request. The floor the API is measured against.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::routing::post;
use axum::Router;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (127.0.0.1 only; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.listen.ip().is_loopback(),
        "the bench server binds 127.0.0.1 only, not {}",
        args.listen
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        println!("listening on {}", listener.local_addr()?);
        let router = Router::new().route(
            "/access/v1/evaluation",
            post(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    "{\"decision\":true}",
                )
            }),
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        portcullis::http_server::serve(
            listener,
            None,
            router,
            portcullis::api::limits(Duration::from_secs(1)),
            shutdown,
        )
        .await
        .context("serving")
    })
}
