//! Portcullis: external authorization for Envoy and Istio.
//!
//! The decision core is the `portcullis-core` crate ([`engine::decide`] over
//! a [`policy::PolicySet`]), re-exported here under the same names; this
//! crate is the shell around it: the [`adapter`] converts Envoy's ext_authz
//! types, [`server`] serves them over gRPC, [`api`] serves AuthZEN, [`cli`]
//! is the command line, [`loader`] reads policy directories. See
//! `ARCHITECTURE.md`.

pub use portcullis_core::{diagnostic, engine, lint, path, search, token};

/// The compiled policy (the core's), and the loader that reads it from a
/// directory (the shell's).
pub mod policy {
    pub use crate::loader::{load_policies, load_policies_with};
    pub use portcullis_core::policy::*;
}

pub mod adapter;
pub mod admin;
pub mod answer;
pub mod api;
pub mod app;
pub mod cases;
pub mod cli;
pub mod console;
pub mod decision_cache;
pub mod decision_log;
pub mod events;
pub mod grants_db;
pub mod http_server;
pub mod jwks;
pub mod loader;
pub mod logging;
pub mod metrics;
pub mod pdp;
pub mod reload;
pub mod replay;
pub mod server;
pub mod shadow;
pub mod tls;
pub mod token_cache;
