//! The decision core of Portcullis: everything a decision is made of, and
//! nothing that reads the world.
//!
//! [`engine`] decides a request against a compiled [`policy::PolicySet`];
//! [`search`] finds what it would allow; [`policy::load::compile`] turns
//! policy texts and the key bytes they point at into a `PolicySet`;
//! [`token`] verifies JWTs against a key set; [`envelope`] signs and opens
//! event envelopes; [`lint`] finds ways a policy can be sidestepped. Time
//! comes in as a parameter, files and the environment through the
//! [`policy::load::Host`] the shell passes. This crate's `Cargo.toml` has
//! no runtime, protocol, database or cache crate, and its `clippy.toml`
//! refuses std's clocks, files, environment, sockets and threads.

pub mod diagnostic;
pub mod engine;
pub mod envelope;
pub mod lint;
pub mod path;
pub mod policy;
pub mod search;
pub mod token;
pub mod yaml;
