//! `portcullis event sign|verify`: signed events from the command line, on
//! a policy directory (the operator's own keys: no caller to authenticate).
//!
//! `sign` prints the envelope if the subject may do the action on the
//! resource now (exit 0), or the deny (exit 2). `verify` opens the envelope
//! for an audience, refuses a replay when given a replay log, decides the
//! event against the policy as it is now and prints the outcome as one JSON
//! line (exit 0 allow, 2 deny or refused, 1 error).

use std::io::Read;

use super::check::now;
use super::validate::load_or_report;
use super::*;
use crate::events::envelope::{message_digest, parse_hex};
use crate::events::replay::ReplayGuard;
use crate::events::{self, Publish};
use crate::token::Principal;

#[derive(Debug, Args)]
pub struct EventArgs {
    #[command(subcommand)]
    pub command: EventCommand,
}

#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Sign an event for a subject, if the policy allows the action now (prints the envelope)
    Sign(SignArgs),
    /// Verify an envelope and decide it against the policy now (exit 0 allow, 2 deny or refused, 1 error)
    Verify(VerifyArgs),
}

/// The message an envelope covers: a file (`-` for standard input) or its
/// SHA-256.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct MessageArgs {
    /// The message, read from this file (`-`: standard input)
    #[arg(long)]
    pub message_file: Option<PathBuf>,
    /// The message's SHA-256, 64 hex digits
    #[arg(long)]
    pub message_sha256: Option<String>,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The policy directory
    #[arg(long)]
    pub policies: PathBuf,
    /// The acting subject
    #[arg(long)]
    pub subject: String,
    /// A group the subject's token asserts (repeatable)
    #[arg(long = "group")]
    pub groups: Vec<String>,
    #[arg(long)]
    pub action: String,
    /// The resource, as the policy names it (`document:7`)
    #[arg(long)]
    pub resource: String,
    /// Who will consume the event (the caller name of the worker)
    #[arg(long)]
    pub audience: String,
    /// Lifetime in seconds (default: the policy's events.default_lifetime_seconds)
    #[arg(long)]
    pub expires_in: Option<u64>,
    #[command(flatten)]
    pub message: MessageArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The policy directory
    #[arg(long)]
    pub policies: PathBuf,
    /// The audience this consumer is (an envelope for another is refused)
    #[arg(long)]
    pub audience: String,
    /// The envelope (a compact JWS)
    #[arg(long)]
    pub envelope: String,
    /// File of consumed event ids: with it, an envelope verified before is refused as a replay
    #[arg(long)]
    pub replay_log: Option<PathBuf>,
    #[command(flatten)]
    pub message: MessageArgs,
}

pub(super) fn event(args: EventArgs) -> ExitCode {
    match args.command {
        EventCommand::Sign(args) => sign(args),
        EventCommand::Verify(args) => verify(args),
    }
}

fn digest(args: &MessageArgs) -> Result<[u8; 32], String> {
    match (&args.message_file, &args.message_sha256) {
        (Some(path), None) => {
            let mut bytes = Vec::new();
            let read = if path.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut bytes)
            } else {
                std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes))
            };
            read.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Ok(message_digest(&bytes))
        }
        (None, Some(hex)) => {
            parse_hex(hex).ok_or_else(|| "--message-sha256 must be 64 hex digits".to_owned())
        }
        _ => Err("give one of --message-file, --message-sha256".to_owned()),
    }
}

fn sign(args: SignArgs) -> ExitCode {
    let Some(policy) = load_or_report(&args.policies) else {
        return Exit::Failure.into();
    };
    let digest = match digest(&args.message) {
        Ok(digest) => digest,
        Err(message) => {
            eprintln!("{message}");
            return Exit::Failure.into();
        }
    };
    let principal = Principal {
        groups: args.groups.clone(),
        ..Principal::named("cli", args.subject.clone())
    };
    let publish = Publish {
        subject: &args.subject,
        idp: "cli",
        groups: &args.groups,
        action: &args.action,
        resource: &args.resource,
        audience: &args.audience,
        message_sha256: digest,
        lifetime: args.expires_in,
    };
    match events::publish(&policy, &principal, &publish, now()) {
        Ok(Ok(signed)) => {
            println!("{}", signed.envelope);
            Exit::Ok.into()
        }
        Ok(Err(deny)) => {
            eprint!("not signed:\n{}", check::explain(&deny));
            Exit::Deny.into()
        }
        Err(e) => {
            eprintln!("{e}");
            Exit::Failure.into()
        }
    }
}

fn verify(args: VerifyArgs) -> ExitCode {
    let Some(policy) = load_or_report(&args.policies) else {
        return Exit::Failure.into();
    };
    let digest = match digest(&args.message) {
        Ok(digest) => digest,
        Err(message) => {
            eprintln!("{message}");
            return Exit::Failure.into();
        }
    };
    let now = now();
    let replay = match &args.replay_log {
        Some(path) => match ReplayGuard::with_log(path, DEFAULT_REPLAY_CAPACITY, now) {
            Ok(guard) => {
                let report = guard.load_report();
                if report.bad_lines > 0 {
                    eprintln!(
                        "warning: {}: {} damaged line(s) skipped, the first at line {}",
                        path.display(),
                        report.bad_lines,
                        report.first_bad_line.unwrap_or(0)
                    );
                }
                guard
            }
            Err(e) => {
                eprintln!("cannot use the replay log {}: {e}", path.display());
                return Exit::Failure.into();
            }
        },
        None => {
            eprintln!("note: without --replay-log this run cannot refuse a replayed envelope");
            ReplayGuard::new(1)
        }
    };
    let outcome = events::consume(
        &policy,
        &replay,
        args.envelope.trim(),
        &digest,
        &args.audience,
        now,
    );
    let (line, allowed) = match outcome {
        Ok(consumed) => {
            let claims = &consumed.claims;
            let allowed = consumed.decision.is_allowed();
            let mut why = consumed.decision.reason.to_string();
            if let Some(rule) = consumed.decision.rule() {
                why = format!("{why}: {rule}");
            }
            let line = serde_json::json!({
                "decision": allowed,
                "reason": why,
                "event": {
                    "id": claims.jti,
                    "subject": claims.sub,
                    "action": claims.action,
                    "resource": claims.resource,
                    "issued_at": claims.iat,
                    "expires_at": claims.exp,
                },
            });
            (line, allowed)
        }
        Err(refusal) => (
            serde_json::json!({
                "decision": false,
                "refused": { "code": refusal.code(), "message": refusal.to_string() },
            }),
            false,
        ),
    };
    println!("{line}");
    if allowed {
        Exit::Ok.into()
    } else {
        Exit::Deny.into()
    }
}
