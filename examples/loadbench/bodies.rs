//! Requests of the workload's mix as gRPC request bodies, one file each,
//! for h2load: the load client we did not write. h2load sends one body
//! over and over, so the bench runs one h2load per body, and picks the
//! bodies so that the share of allows matches the mix.
//!
//! A body is what a gRPC client puts in the HTTP/2 DATA frames of a
//! unary call: a flag byte (0, not compressed), the message length as a
//! big-endian u32, then the protobuf `CheckRequest`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use prost::Message;

use crate::client::{load_requests, Prepared};

#[derive(clap::Args)]
pub struct Args {
    /// A directory written by `loadbench workload`.
    #[arg(long)]
    workload: PathBuf,
    /// Directory to write `body-N.bin` and `bodies.tsv` into (created).
    #[arg(long)]
    out: PathBuf,
    /// How many bodies.
    #[arg(long, default_value_t = 8)]
    count: usize,
    /// Share of them the policy allows (rounded to whole bodies).
    #[arg(long, default_value_t = 0.6)]
    allow_share: f64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let requests = load_requests(&args.workload)?;
    let allows = ((args.count as f64) * args.allow_share).round() as usize;
    let pick = |allow: bool, n: usize| -> Vec<&Prepared> {
        requests
            .iter()
            .filter(|r| r.expect_allow == allow)
            .take(n)
            .collect()
    };
    let mut chosen = pick(true, allows);
    chosen.extend(pick(false, args.count - allows));
    anyhow::ensure!(
        chosen.len() == args.count,
        "the mix holds too few allows or denies for {} bodies",
        args.count
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut index = String::from("# body\texpected\n");
    for (n, prepared) in chosen.iter().enumerate() {
        let message = prepared.request.encode_to_vec();
        let length = u32::try_from(message.len()).context("message over 4 GiB")?;
        let mut body = Vec::with_capacity(5 + message.len());
        body.push(0);
        body.extend_from_slice(&length.to_be_bytes());
        body.extend_from_slice(&message);
        let name = format!("body-{n}.bin");
        let path = args.out.join(&name);
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&body))
            .with_context(|| format!("writing {}", path.display()))?;
        let expected = if prepared.expect_allow {
            "allow"
        } else {
            "deny"
        };
        index.push_str(&format!("{name}\t{expected}\n"));
    }
    let path = args.out.join("bodies.tsv");
    std::fs::write(&path, index).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
