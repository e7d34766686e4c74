//! The library called directly: no socket, no process.

mod adapter;
mod architecture;
mod conditions;
mod engine_cases;
mod hardening;
pub(crate) mod jwt_authn;
mod properties;
mod search;
mod tokens;
mod trace;
