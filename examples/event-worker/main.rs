//! A worker that checks each event when it does the work, not when the work
//! was queued, and the publisher side that queues signed events.
//!
//! `event-worker publish` asks Portcullis to sign an event
//! (`POST /portcullis/v1/events/sign`, with the acting user's token or a
//! signing caller's API key) and appends it, with its message, to the
//! queue. `event-worker work` reads the queue (a JSON-lines file: one `{"envelope": ..., "message":
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
//! (`error ...`), and the worker exits 1 at the end. The README walks
//! through the whole story.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Queue signed events, and consume them checking each through Portcullis")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Have Portcullis sign an event and append it to the queue
    Publish(Publish),
    /// Consume the queue, checking each event through Portcullis
    Work(Args),
}

#[derive(clap::Args)]
struct Publish {
    /// Portcullis's API base URL (`serve --api-listen`)
    #[arg(long)]
    api: String,
    /// The acting user's token (the service forwards it)
    #[arg(long, required_unless_present = "api_key_file")]
    token: Option<String>,
    /// Or the API key of a caller that may sign for anyone
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    #[arg(long)]
    subject: String,
    #[arg(long)]
    action: String,
    /// `type:id`, e.g. document:1
    #[arg(long)]
    resource: String,
    /// The caller name of the worker that will consume it
    #[arg(long)]
    audience: String,
    /// The message the work needs
    #[arg(long)]
    message: String,
    /// The queue file to append to
    #[arg(long)]
    queue: PathBuf,
}

#[derive(clap::Args)]
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
    let cli = Cli::parse();
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
    let done = match &cli.command {
        Command::Publish(args) => runtime.block_on(publish(args)).map(|()| true),
        Command::Work(args) => runtime.block_on(work(args)),
    };
    match done {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("event-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Signs one event through Portcullis and appends it to the queue.
async fn publish(args: &Publish) -> anyhow::Result<()> {
    let Some((kind, id)) = args.resource.split_once(':') else {
        bail!("--resource must be type:id, e.g. document:1");
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = format!(
        "{}/portcullis/v1/events/sign",
        args.api.trim_end_matches('/')
    );
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(
            json!({
                "subject": { "type": "user", "id": args.subject },
                "action": { "name": args.action },
                "resource": { "type": kind, "id": id },
                "audience": args.audience,
                "message": args.message,
            })
            .to_string(),
        );
    request = match (&args.token, &args.api_key_file) {
        (Some(token), _) => request.header("authorization", format!("Bearer {}", token.trim())),
        (None, Some(file)) => {
            let key = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            request.header("x-api-key", key.trim())
        }
        (None, None) => bail!("give --token or --api-key-file"),
    };
    let response = request.send().await.context("asking Portcullis")?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .context("reading Portcullis's answer")?;
    if !status.is_success() {
        bail!(
            "Portcullis answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    let answer: Value = serde_json::from_slice(&body).context("Portcullis's answer is not JSON")?;
    let Some(envelope) = answer["envelope"].as_str() else {
        bail!(
            "not signed: {} may not {} {} now",
            args.subject,
            args.action,
            args.resource
        );
    };
    let line = json!({ "envelope": envelope, "message": args.message });
    let mut queue = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.queue)
        .with_context(|| format!("opening {}", args.queue.display()))?;
    std::io::Write::write_all(&mut queue, format!("{line}\n").as_bytes())?;
    println!(
        "queued {}: {} {} {} for {}",
        answer["id"].as_str().unwrap_or_default(),
        args.subject,
        args.action,
        args.resource,
        args.audience
    );
    Ok(())
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
