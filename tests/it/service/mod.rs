//! The real service over sockets on 127.0.0.1: in-process `App`, the
//! `portcullis` binary and its CLI, TLS, PostgreSQL; no Envoy.

mod api_abuse;
mod app;
mod authzen;
mod authzen_certification;
mod cli;
pub(crate) mod console;
mod events;
mod grants_db;
mod jwks;
mod operations;
pub(crate) mod reload;
mod replay;
mod server;
mod shadow;
pub(crate) mod tls;
pub(crate) mod walkthrough;
