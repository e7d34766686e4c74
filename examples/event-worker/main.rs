//! A worker that checks each event when it does the work, not when the work
//! was queued.
//!
//! It reads a queue (a JSON-lines file: one `{"envelope": ..., "message":
//! ...}` per line, as a publisher wrote them after Portcullis signed each
//! event), hands every envelope and message to Portcullis's
//! `POST /portcullis/v1/events/verify` with its own API key, and acts only
//! on `{"decision": true}`, taking the subject, action and resource from
//! Portcullis's answer (verified), never from the message. It prints one
//! line per event:
//!
//! ```text
//! done line 1: 3f2a...: alice share document:7 (message: {"with":"bob"})
//! refused line 2: replayed
//! refused line 3: 9c41...: denied
//! ```
//!
//! Portcullis unreachable or answering an error: the event is not done
//! (`error ...`), and the worker exits 1 at the end. Run it as
//! `cargo run --example event-worker -- --api http://127.0.0.1:9292
//! --api-key-file worker.key --queue queue.jsonl`; the README walks through
//! the whole story.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Consume a queue of signed events, checking each through Portcullis")]
struct Args {
    /// Portcullis's API base URL (`serve --api-listen`)
    #[arg(long)]
    api: String,
    /// File holding this worker's API key (the caller the events are addressed to)
    #[arg(long)]
    api_key_file: PathBuf,
    /// The queue: a JSON-lines file of {"envelope": ..., "message": ...}
    #[arg(long)]
    queue: PathBuf,
}

/// What became of one event.
enum Outcome {
    Done(String),
    Refused(String),
    Error(String),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("event-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work(&args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("event-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Works through the queue; `false` if some event met an error.
async fn work(args: &Args) -> anyhow::Result<bool> {
    let key = std::fs::read_to_string(&args.api_key_file)
        .with_context(|| format!("reading {}", args.api_key_file.display()))?;
    let queue = std::fs::read_to_string(&args.queue)
        .with_context(|| format!("reading {}", args.queue.display()))?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = format!(
        "{}/portcullis/v1/events/verify",
        args.api.trim_end_matches('/')
    );
    let mut clean = true;
    for (n, line) in queue.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let outcome = match consume(&client, &url, key.trim(), line).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Error(format!("line {}: {e:#}", n + 1)),
        };
        match outcome {
            Outcome::Done(what) => println!("done line {}: {what}", n + 1),
            Outcome::Refused(why) => println!("refused line {}: {why}", n + 1),
            Outcome::Error(why) => {
                clean = false;
                println!("error {why}");
            }
        }
    }
    Ok(clean)
}

async fn consume(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    line: &str,
) -> anyhow::Result<Outcome> {
    let event: Value = serde_json::from_str(line).context("not a JSON line")?;
    let (Some(envelope), Some(message)) = (event["envelope"].as_str(), event["message"].as_str())
    else {
        bail!("a queue line needs envelope and message strings");
    };
    let response = client
        .post(url)
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .body(json!({ "envelope": envelope, "message": message }).to_string())
        .send()
        .await
        .context("asking Portcullis")?;
    let status = response.status();
    let answer: Value = if status.is_success() {
        let body = response
            .bytes()
            .await
            .context("reading Portcullis's answer")?;
        serde_json::from_slice(&body).context("Portcullis's answer is not JSON")?
    } else {
        let text = response.text().await.unwrap_or_default();
        bail!("Portcullis answered {status}: {}", text.trim());
    };
    let id = answer["event"]["id"].as_str().unwrap_or("-").to_owned();
    if let Some(code) = answer["refused"]["code"].as_str() {
        return Ok(Outcome::Refused(code.to_owned()));
    }
    if answer["decision"] != json!(true) {
        return Ok(Outcome::Refused(format!("{id}: denied")));
    }
    // The work: here, a line that says what was done, from the verified
    // fields of the answer.
    let verified = &answer["event"];
    Ok(Outcome::Done(format!(
        "{id}: {} {} {} (message: {message})",
        verified["subject"]["id"].as_str().unwrap_or_default(),
        verified["action"]["name"].as_str().unwrap_or_default(),
        verified["resource"].as_str().unwrap_or_default(),
    )))
}
