//! The `portcullis` binary: parses the command line and hands it to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    portcullis::cli::run(portcullis::cli::Cli::parse())
}
