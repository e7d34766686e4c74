//! The library called directly: no socket, no process.

mod adapter;
mod architecture;
mod conditions;
mod engine_cases;
mod hardening;
mod properties;
mod search;
mod tokens;
