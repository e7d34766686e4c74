//! Test builders for Portcullis, written once and used by the tests, the
//! benches, the load bench and the fuzz targets.
//!
//! - [`check`]: `CheckRequest`s as Envoy sends them (headers as a map or as
//!   the raw `header_map`, context extensions, peers, and the connection
//!   check of Envoy's network filter, which has no HTTP attributes).
//! - [`token`]: keys of every family the verifier accepts (HMAC, RSA, P-256,
//!   Ed25519), generated at run time, a claims builder with an explicit
//!   clock, and signing.
//! - [`postgres`]: a private PostgreSQL server (initdb, pg_ctl) for the
//!   grants-database tests (which fail without it) and bench (which skips).
//! - [`policies`]: copies of the bundled policy directory whose demo issuer
//!   reads its secret from a file, so nothing has to set a process-wide
//!   environment variable to load it.
//!
//! Every helper panics with a message on failure: it is test code, and a
//! builder that cannot build has nothing better to do.

pub mod check;
pub mod policies;
pub mod postgres;
pub mod token;

pub use check::{connection_check, raw_header, Check};
pub use policies::{bundled_dir, bundled_with_secret, copy_bundled, DEMO_SECRET_FILE};
pub use token::{
    alg_none_token, b64url, bearer, jwks, unix_now, Claims, Signer, DEMO_AUDIENCE, DEMO_ISSUER,
};

/// The output of `future`, which must be ready at its first poll: a check
/// decided from memory (the policy files' grants, no key refetch) never
/// waits, so tests and benches measure it without a runtime.
///
/// # Panics
/// When the future is not ready: the decision waited for something.
pub fn ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the future waited: it was expected to be ready"),
    }
}
