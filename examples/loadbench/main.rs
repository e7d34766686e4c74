//! The load bench's own programs, driven by `scripts/bench/load.py`,
//! `scripts/bench/shipped.py` and `scripts/bench/soak.py` (`make bench`,
//! `make soak`):
//!
//! - `workload`: writes a scaled-up documents policy directory (users,
//!   documents, grants, groups, a few denies), tokens minted with the demo
//!   issuer's HS256 secret, and a request mix with a chosen share of allows;
//! - `noop`: a do-nothing ext_authz server on the same tonic stack as
//!   Portcullis, which answers OK at once: the floor Portcullis is
//!   measured against; `noop-api`, the same for the AuthZEN evaluation
//!   endpoint on the API's HTTP stack;
//! - `load`: a gRPC load client (closed loop at a fixed concurrency, or
//!   open loop at a fixed rate) that records every latency in an HDR
//!   histogram and prints one JSON line: req/s, p50/p90/p99/p99.9, errors,
//!   and the share of allows;
//! - `bodies`: requests of the mix as gRPC request bodies, for h2load
//!   (`scripts/bench/shipped.py`), a client we did not write.
//!
//! Everything binds or connects to 127.0.0.1, and every loop is bounded by
//! a duration and a request count.

mod bodies;
mod client;
mod noop;
mod noop_api;
mod workload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Portcullis load bench: workload generator, do-nothing server, load client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes a policy directory, tokens and a request mix.
    Workload(workload::Args),
    /// Serves ext_authz answering OK to every check.
    Noop(noop::Args),
    /// Serves the AuthZEN evaluation endpoint answering true to every
    /// request, unread.
    NoopApi(noop_api::Args),
    /// Sends CheckRequests and reports throughput and latency as JSON.
    Load(client::Args),
    /// Writes requests of the mix as gRPC message bodies, for a load
    /// client that is not ours (h2load).
    Bodies(bodies::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Workload(args) => workload::run(&args),
        Command::Noop(args) => noop::run(&args),
        Command::NoopApi(args) => noop_api::run(&args),
        Command::Load(args) => client::run(&args),
        Command::Bodies(args) => bodies::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
