//! Portcullis: external authorization for Envoy and Istio.
//!
//! The pure core is [`engine::decide`] over a [`policy::PolicySet`]; the
//! [`adapter`] converts Envoy's ext_authz types, [`server`] serves them over
//! gRPC, and [`cli`] is the command line. See `ARCHITECTURE.md`.

pub mod adapter;
pub mod admin;
pub mod api;
pub mod app;
pub mod cases;
pub mod cli;
pub mod decision_cache;
pub mod decision_log;
pub mod diagnostic;
pub mod engine;
pub mod events;
pub mod grants_db;
pub mod http_server;
pub mod jwks;
pub mod lint;
pub mod logging;
pub mod metrics;
pub mod path;
pub mod policy;
pub mod reload;
pub mod remote_keys;
pub mod search;
pub mod server;
pub mod tls;
pub mod token;
pub mod token_cache;
mod yaml;
