//! `portcullis replay --decisions LOG --policies CANDIDATE`: the decision
//! log decided again against a candidate policy directory (the one
//! loader), and what would change ([`crate::replay`]).
//!
//! Exit codes: 0 nothing changes, 1 some decision changes (or the
//! candidate cannot decide it), 3 some line cannot be replayed (malformed,
//! or logged before the replay fields), 66 the log cannot be read, 78 the
//! candidate does not load.

use std::io::{BufReader, Read};

use super::*;
use crate::replay::{exit_for, replay_lines};

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The decision log: JSON lines as `serve` writes them to stderr (other lines are counted and passed over); `-` reads stdin
    #[arg(long)]
    pub decisions: PathBuf,
    /// The candidate policy directory, decided with its own file grants
    #[arg(long)]
    pub policies: PathBuf,
    /// `text` for people, `json` for tools
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub(super) fn replay(args: ReplayArgs) -> ExitCode {
    let candidate = match load_policies(&args.policies) {
        Ok(policy) => policy,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            return Exit::Config.into();
        }
    };
    let input: Box<dyn Read + Send> = if args.decisions.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        match std::fs::File::open(&args.decisions) {
            Ok(file) => Box::new(file),
            Err(e) => {
                eprintln!("{}: {e}", args.decisions.display());
                return Exit::NoInput.into();
            }
        }
    };
    let report = match replay_lines(&candidate, BufReader::with_capacity(1 << 20, input)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("{}: {e}", args.decisions.display());
            return Exit::NoInput.into();
        }
    };
    match args.format {
        Format::Text => print!("{report}"),
        Format::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("cannot write the report: {e}");
                return Exit::Failure.into();
            }
        },
    }
    exit_for(&report).into()
}
