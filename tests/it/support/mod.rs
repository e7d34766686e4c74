//! Harness for the tests that run the real `portcullis` binary, and, for the
//! end-to-end tests, a real Envoy in front of it.
//!
//! It owns the processes and sockets a test needs and nothing about what a
//! test asserts. By concern:
//! - `app`: the whole service in-process (`App`), on a runtime of its own;
//! - `processes`: finding Envoy, starting and stopping Portcullis and Envoy
//!   (each killed by PID on `Drop`), the whole stack;
//! - `http`: the recording echo upstream, a raw HTTP/1.1 client that sends
//!   the request target byte for byte, the gRPC client, a TCP echo server;
//! - `tls`: mesh certificates and a blocking (m)TLS client;
//! - `istio`: an Envoy configured as istiod configures a sidecar under the
//!   shipped Istio overlay (its policy and EnvoyFilters applied, not copied);
//! - `tokens`: the per-process demo secret and tokens signed with it;
//! - `policies`: policy directories on disk and the version `/ready` reports;
//! - `templates`: rendering `envoy/*.yaml` (the shipped templates, not
//!   private copies);
//! - `wait`: polling for what a test awaits, with a deadline.
//!
//! CheckRequest builders, keys and claims are `portcullis_testkit`'s,
//! shared with the benches and the fuzz targets.
//!
//! Every listener binds 127.0.0.1 on an ephemeral port; Envoy's own ports are
//! rendered as 0 and read back from its admin API, so tests never race each
//! other (or anything else on the machine) for a port.

mod app;
pub mod corpus;
mod http;
mod istio;
mod policies;
pub mod probes;
mod processes;
mod templates;
mod tls;
mod tokens;
mod wait;
pub mod webdriver;

pub use app::*;
pub use http::*;
pub use istio::*;
pub use policies::*;
pub use processes::*;
pub use templates::*;
pub use tls::*;
pub use tokens::*;
pub use wait::*;
