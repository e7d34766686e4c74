//! What replay and shadow policies cost (`make bench-replay`, part of
//! `make bench`).
//!
//! 1. Replay: a decision log of `REPLAY_BENCH_LINES` lines (1M by default)
//!    written from real lines (the check path's own decision log, every
//!    allow logged, over the bundled policy with 100k grants: allows and
//!    denies of 10k subjects), each with its own request id, replayed from
//!    a file against a candidate of the same shape with `replay_lines` (one
//!    thread per core, as `portcullis replay` runs). Wall time and lines/s.
//! 2. Shadow overhead: the same checks through the ext_authz handler
//!    (`Authorizer::serve`, what the gRPC service calls) without and with a shadow
//!    policy, alternating rounds in one run: wall time per check on the
//!    calling thread, and the process's CPU time per check (the shadow
//!    worker's included, counted once its queue is empty), with the checks
//!    the worker dropped.
//!
//! Prints a summary and writes target/bench/replay.json; the core count is
//! in both.

use std::io::{BufReader, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::CheckRequest;
use portcullis::adapter::ResponseConfig;
use portcullis::decision_log::DecisionLog;
use portcullis::logging::LogLines;
use portcullis::replay::replay_lines;
use portcullis::server::Authorizer;
use portcullis::shadow::{Shadow, SHADOW_QUEUE};
use portcullis::token_cache::TokenCache;
use portcullis_testkit::{Claims, Signer};

mod common;
use common::{bundled_with_grants, check_request, NOW, SECRET};

const GRANTS: usize = 100_000;
/// Distinct requests the log's lines are copies of.
const TEMPLATES: usize = 2_000;
/// Checks per shadow round.
const SHADOW_CHECKS: usize = 50_000;
const SHADOW_ROUNDS: usize = 3;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn token(subject: &str) -> String {
    let claims = Claims {
        iat_offset: None,
        ..Claims::demo(subject, NOW).ttl(3600)
    };
    claims.sign(&Signer::hs256(SECRET.as_bytes()))
}

/// Reads of documents by user0..user9999: about half are granted.
fn requests(count: usize) -> Vec<CheckRequest> {
    let documents = GRANTS / 10;
    (0..count)
        .map(|i| {
            let subject = format!("user{}", i % 10_000);
            // user N holds documents N, N+10000, ...; every other request
            // asks for one it does not hold.
            let document = if i % 2 == 0 {
                i % 10_000
            } else {
                (i + 1) % documents
            };
            check_request("GET", &format!("/documents/{document}"), &token(&subject))
        })
        .collect()
}

fn authorizer(log: Option<LogLines>) -> Authorizer {
    let authorizer = Authorizer::new(
        Arc::new(ArcSwap::from_pointee(bundled_with_grants(GRANTS))),
        TokenCache::new(100_000),
        ResponseConfig::default(),
        Arc::new(|| NOW),
    );
    match log {
        Some(lines) => authorizer.with_decision_log(DecisionLog::new(1.0, lines)),
        None => authorizer,
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we pass and reads nothing.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lines: usize = std::env::var("REPLAY_BENCH_LINES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(runtime) => runtime,
        Err(e) => panic!("no runtime: {e}"),
    };
    let requests = requests(TEMPLATES);

    // The log's lines, from the check path itself.
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
    let sink = Captured::default();
    let log = LogLines::to(sink.clone());
    let logging = authorizer(Some(log.clone()));
    for request in &requests {
        runtime.block_on(logging.check_request(request));
    }
    log.close();
    let captured =
        String::from_utf8_lossy(&sink.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    let templates: Vec<&str> = captured.lines().collect();
    assert_eq!(templates.len(), TEMPLATES, "every decision logged");
    let file = match tempfile::NamedTempFile::new() {
        Ok(file) => file,
        Err(e) => panic!("{e}"),
    };
    {
        let mut out = std::io::BufWriter::new(file.as_file());
        for i in 0..lines {
            let line = templates[i % templates.len()].replacen(
                "\"bench-request\"",
                &format!("\"bench-{i}\""),
                1,
            );
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
    let bytes = file.as_file().metadata().map_or(0, |m| m.len());

    let candidate = bundled_with_grants(GRANTS);
    let started = Instant::now();
    let cpu = cpu_seconds();
    let report = match std::fs::File::open(file.path()) {
        Ok(input) => replay_lines(&candidate, BufReader::with_capacity(1 << 20, input)),
        Err(e) => panic!("{e}"),
    };
    let replay_cpu = cpu_seconds() - cpu;
    let replay_wall = started.elapsed();
    let report = match report {
        Ok(report) => report,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(report.replayed as usize, lines, "{report}");
    let lines_per_second = lines as f64 / replay_wall.as_secs_f64();
    println!(
        "replay: {lines} lines ({:.0} MiB) in {:.2} s wall, {:.2} s CPU: {:.0} lines/s on {cores} cores ({} unchanged)",
        bytes as f64 / (1 << 20) as f64,
        replay_wall.as_secs_f64(),
        replay_cpu,
        lines_per_second,
        report.unchanged
    );

    // Shadow overhead: the same checks, without and with a shadow.
    let plain = authorizer(None);
    let shadow = Shadow::new();
    let candidate = Arc::new(ArcSwap::from_pointee(bundled_with_grants(GRANTS)));
    if let Err(e) = shadow.start(candidate, SHADOW_QUEUE) {
        panic!("{e}");
    }
    let shadowed = authorizer(None).with_shadow(shadow.clone());
    // Warm the token caches.
    for request in &requests {
        runtime.block_on(plain.check_request(request));
        runtime.block_on(shadowed.check_request(request));
    }
    let mut rounds = Vec::new();
    for round in 0..SHADOW_ROUNDS {
        for (name, authorizer) in [("without", &plain), ("with", &shadowed)] {
            let before = (shadow.decided(), shadow.summary().dropped);
            let cpu = cpu_seconds();
            let started = Instant::now();
            for i in 0..SHADOW_CHECKS {
                let request = requests[i % requests.len()].clone();
                let _ = runtime.block_on(authorizer.serve(request));
            }
            let wall = started.elapsed();
            if name == "with" {
                // The worker's CPU counts: wait until its queue is empty.
                let deadline = Instant::now() + Duration::from_secs(30);
                while {
                    let summary = shadow.summary();
                    (summary.decided - before.0) + (summary.dropped - before.1)
                        < SHADOW_CHECKS as u64
                } && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let cpu = cpu_seconds() - cpu;
            let summary = shadow.summary();
            let dropped = summary.dropped - before.1;
            let shadowed = summary.decided - before.0;
            let per_check = |seconds: f64| seconds * 1e6 / SHADOW_CHECKS as f64;
            println!(
                "shadow {name:7} round {round}: {:.2} us/check wall (calling thread), {:.2} us/check CPU (process){}",
                per_check(wall.as_secs_f64()),
                per_check(cpu),
                if name == "with" {
                    format!(", {shadowed} shadowed, {dropped} dropped")
                } else {
                    String::new()
                }
            );
            rounds.push(serde_json::json!({
                "shadow": name == "with",
                "round": round,
                "wall_us_per_check": per_check(wall.as_secs_f64()),
                "cpu_us_per_check": per_check(cpu),
                "shadowed": if name == "with" { shadowed } else { 0 },
                "dropped": if name == "with" { dropped } else { 0 },
            }));
        }
    }

    // What one shadow decision costs the process: the CPU the rounds with
    // a shadow took beyond those without, over the checks it decided.
    let total = |shadow: bool, key: &str| -> f64 {
        rounds
            .iter()
            .filter(|r| r["shadow"] == shadow)
            .map(|r| r[key].as_f64().unwrap_or(0.0))
            .sum()
    };
    let extra_cpu_us =
        (total(true, "cpu_us_per_check") - total(false, "cpu_us_per_check")) * SHADOW_CHECKS as f64;
    let shadowed = total(true, "shadowed").max(1.0);
    let per_shadow_decision = extra_cpu_us / shadowed;
    println!(
        "shadow: {per_shadow_decision:.2} us CPU per shadowed check, on {cores} cores; the checks' own wall time per check {:.2} us without and {:.2} us with",
        total(false, "wall_us_per_check") / SHADOW_ROUNDS as f64,
        total(true, "wall_us_per_check") / SHADOW_ROUNDS as f64,
    );
    let out = serde_json::json!({
        "cores": cores,
        "replay": {
            "lines": lines,
            "bytes": bytes,
            "wall_seconds": replay_wall.as_secs_f64(),
            "cpu_seconds": replay_cpu,
            "lines_per_second": lines_per_second,
        },
        "shadow": {
            "checks_per_round": SHADOW_CHECKS,
            "cpu_us_per_shadowed_check": per_shadow_decision,
            "rounds": rounds,
        },
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("replay.json"), out.to_string());
}
