//! The integration tests: one test binary, so `support` and the library's
//! test build are compiled and linked once, with a module per layer. A new
//! test goes in the layer of the heaviest thing it needs, never in a new
//! `tests/*.rs` (`core::architecture` checks):
//!
//! - `core`: the library called directly (engine, loader, adapter, tokens,
//!   search, properties, the architecture's rules): no socket, no process.
//! - `service`: the real service over sockets on 127.0.0.1 (in-process
//!   `App`, the `portcullis` binary, the CLI, TLS, PostgreSQL), no Envoy.
//! - `e2e`: through a real Envoy (`ENVOY_BIN`, else `envoy` on `PATH`;
//!   `scripts/ensure-envoy.sh` installs one). A missing Envoy fails them.
//! - `support`: the harness every layer shares (processes, HTTP and gRPC
//!   clients, certificates, tokens, policy directories, waiting).
//!
//! A subject whose tests span layers has a file in each, by the same name;
//! the higher one uses the lower one's helpers (`e2e::tls` the certificates
//! of `service::tls`).
//!
//! Tests that need PostgreSQL are `#[ignore]`d with the reason: `make test`
//! runs them (`--ignored`) when it finds PostgreSQL, and fails without it
//! when `PORTCULLIS_REQUIRE_POSTGRES` is set, as CI sets it.
//!
//! `cargo test --test it core::` runs one layer; any test by name as before.

// A test that cannot proceed panics; that is what a failing test is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod core;
mod e2e;
mod service;
mod support;
