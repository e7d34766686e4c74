//! The gRPC load client.
//!
//! Closed loop (the default): `--concurrency` tasks over `--connections`
//! HTTP/2 connections each send a check, wait for the answer, and send the
//! next, for `--duration` seconds: the throughput the server sustains.
//! Open loop (`--rate R`): checks are sent at R per second whatever the
//! answers do (up to `--max-in-flight`), so a stalled server shows up as
//! checks piling up rather than as fewer checks sent. Each latency runs
//! from the moment the check is sent; how late sends were against their
//! schedule (tokio's timer has millisecond granularity, and a server that
//! stalls holds the in-flight permits) is reported apart, as `lag_us`.
//!
//! Requests are built once from the workload (as Envoy sends them with
//! `encode_raw_headers: true`: every header in `header_map`) and cycled
//! through. The first `--warmup` seconds are not recorded. The result is
//! one JSON line on stdout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hdrhistogram::Histogram;
use portcullis_testkit::Check;
use tonic::transport::{Channel, Endpoint};

#[derive(clap::Args)]
pub struct Args {
    /// The ext_authz server (127.0.0.1 only).
    #[arg(long)]
    target: SocketAddr,
    /// A directory written by `loadbench workload`.
    #[arg(long)]
    workload: PathBuf,
    /// Checks in flight at once (closed loop).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the checks are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds to measure, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds sent but not recorded first.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// A hard cap on checks sent, warm-up included.
    #[arg(long, default_value_t = 20_000_000)]
    max_requests: u64,
    /// Open loop: checks per second instead of a fixed concurrency.
    #[arg(long)]
    rate: Option<f64>,
    /// Most checks in flight in open loop; later ones wait (and their
    /// latency, counted from when they were due, shows it).
    #[arg(long, default_value_t = 2_048)]
    max_in_flight: usize,
    /// Tokio worker threads of the client.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// A name for the JSON line.
    #[arg(long, default_value = "")]
    label: String,
    /// Count answers that differ from the workload's expected decision
    /// (for Portcullis; a do-nothing server allows everything).
    #[arg(long)]
    check_expected: bool,
}

pub(crate) struct Prepared {
    pub(crate) request: CheckRequest,
    pub(crate) expect_allow: bool,
}

pub(crate) fn load_requests(dir: &std::path::Path) -> anyhow::Result<Vec<Prepared>> {
    let tokens_path = dir.join("tokens.txt");
    let tokens: Vec<String> = std::fs::read_to_string(&tokens_path)
        .with_context(|| format!("reading {}", tokens_path.display()))?
        .lines()
        .map(str::to_owned)
        .collect();
    let requests_path = dir.join("requests.tsv");
    let text = std::fs::read_to_string(&requests_path)
        .with_context(|| format!("reading {}", requests_path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [method, path, token, expected] = fields[..] else {
            anyhow::bail!("{}:{}: expected 4 fields", requests_path.display(), n + 1);
        };
        // Raw headers in `header_map`, as our Envoy configs send them
        // (`encode_raw_headers: true`).
        let mut check = Check::http(method, path)
            .host("documents.example.com")
            .app("documents")
            .raw_header(":authority", "documents.example.com")
            .raw_header(":path", path)
            .raw_header(":method", method)
            .raw_header(":scheme", "http")
            .raw_header("user-agent", "loadbench")
            .raw_header("x-forwarded-proto", "http")
            .raw_header("x-request-id", &format!("loadbench-{n}"));
        if token != "-" {
            let index: usize = token
                .parse()
                .with_context(|| format!("{}:{}: token index", requests_path.display(), n + 1))?;
            let token = tokens
                .get(index)
                .with_context(|| format!("no token {index} in {}", tokens_path.display()))?;
            check = check.raw_header("authorization", &format!("Bearer {token}"));
        }
        let request = check
            .with_http(|http| {
                http.id = n.to_string();
                http.scheme = "http".to_owned();
                http.protocol = "HTTP/1.1".to_owned();
            })
            .build();
        out.push(Prepared {
            request,
            expect_allow: expected == "allow",
        });
    }
    anyhow::ensure!(
        !out.is_empty(),
        "{} holds no request",
        requests_path.display()
    );
    Ok(out)
}

/// What one task (or the open-loop collector) saw while recording.
struct Stats {
    latency_us: Histogram<u64>,
    /// Open loop: how long after its due time each check was sent.
    lag_us: Histogram<u64>,
    errors: u64,
    allowed: u64,
    denied: u64,
    mismatches: u64,
    first_error: Option<String>,
}

impl Stats {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            lag_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            errors: 0,
            allowed: 0,
            denied: 0,
            mismatches: 0,
            first_error: None,
        })
    }

    fn record(
        &mut self,
        elapsed: Duration,
        outcome: &Result<
            tonic::Response<envoy_types::ext_authz::v3::pb::CheckResponse>,
            tonic::Status,
        >,
        expect_allow: bool,
        check_expected: bool,
    ) {
        let micros = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.latency_us.saturating_record(micros);
        match outcome {
            Ok(response) => {
                let allowed = response
                    .get_ref()
                    .status
                    .as_ref()
                    .is_some_and(|s| s.code == 0);
                if allowed {
                    self.allowed += 1;
                } else {
                    self.denied += 1;
                }
                if check_expected && allowed != expect_allow {
                    self.mismatches += 1;
                }
            }
            Err(status) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(status.to_string());
                }
            }
        }
    }

    fn merge(&mut self, other: &Stats) -> anyhow::Result<()> {
        self.latency_us.add(&other.latency_us)?;
        self.lag_us.add(&other.lag_us)?;
        self.errors += other.errors;
        self.allowed += other.allowed;
        self.denied += other.denied;
        self.mismatches += other.mismatches;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        Ok(())
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.target.ip().is_loopback(),
        "the load client talks to 127.0.0.1 only"
    );
    anyhow::ensure!(
        args.duration > 0.0 && args.duration <= 3_600.0,
        "--duration must be in (0, 3600]"
    );
    anyhow::ensure!(
        args.concurrency > 0 && args.connections > 0,
        "--concurrency and --connections must be positive"
    );
    let requests = Arc::new(load_requests(&args.workload)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(drive(args, requests))
}

async fn connect(
    target: SocketAddr,
    connections: usize,
) -> anyhow::Result<Vec<AuthorizationClient<Channel>>> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = Endpoint::from_shared(format!("http://{target}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .with_context(|| format!("connecting to {target}"))?;
        clients.push(AuthorizationClient::new(channel));
    }
    Ok(clients)
}

async fn drive(args: &Args, requests: Arc<Vec<Prepared>>) -> anyhow::Result<()> {
    let clients = connect(args.target, args.connections).await?;
    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(args.warmup.max(0.0));
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let next = Arc::new(AtomicU64::new(0));

    let total = match args.rate {
        None => closed_loop(args, &clients, &requests, &next, measure_from, end).await?,
        Some(rate) => open_loop(args, rate, &clients, &requests, &next, measure_from, end).await?,
    };
    let measured = Instant::now()
        .saturating_duration_since(measure_from)
        .as_secs_f64()
        .max(1e-9);
    let completed = total.allowed + total.denied;
    let h = &total.latency_us;
    let report = serde_json::json!({
        "label": args.label,
        "target": args.target.to_string(),
        "mode": if args.rate.is_some() { "open" } else { "closed" },
        "rate": args.rate,
        "concurrency": args.concurrency,
        "connections": args.connections,
        "client_threads": args.threads,
        "duration_s": measured,
        "sent": next.load(Ordering::Relaxed),
        "requests": completed + total.errors,
        "errors": total.errors,
        "first_error": total.first_error,
        "allowed": total.allowed,
        "denied": total.denied,
        "allow_share": if completed == 0 { 0.0 } else { total.allowed as f64 / completed as f64 },
        "mismatches": if args.check_expected { Some(total.mismatches) } else { None },
        "rps": completed as f64 / measured,
        "latency_us": {
            "p50": h.value_at_quantile(0.50),
            "p90": h.value_at_quantile(0.90),
            "p99": h.value_at_quantile(0.99),
            "p999": h.value_at_quantile(0.999),
            "max": h.max(),
            "mean": h.mean(),
        },
    "lag_us": args.rate.map(|_| serde_json::json!({
            "p50": total.lag_us.value_at_quantile(0.50),
            "p99": total.lag_us.value_at_quantile(0.99),
            "max": total.lag_us.max(),
        })),
    });
    println!("{report}");
    Ok(())
}

async fn closed_loop(
    args: &Args,
    clients: &[AuthorizationClient<Channel>],
    requests: &Arc<Vec<Prepared>>,
    next: &Arc<AtomicU64>,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<Stats> {
    let mut tasks = Vec::with_capacity(args.concurrency);
    for task in 0..args.concurrency {
        let mut client = clients[task % clients.len()].clone();
        let requests = Arc::clone(requests);
        let next = Arc::clone(next);
        let (max, check_expected) = (args.max_requests, args.check_expected);
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::new()?;
            loop {
                let sent_at = Instant::now();
                if sent_at >= end {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max {
                    break;
                }
                let prepared = &requests[(i % requests.len() as u64) as usize];
                let outcome = client.check(prepared.request.clone()).await;
                if sent_at >= measure_from {
                    stats.record(
                        sent_at.elapsed(),
                        &outcome,
                        prepared.expect_allow,
                        check_expected,
                    );
                }
            }
            anyhow::Ok(stats)
        }));
    }
    let mut total = Stats::new()?;
    for task in tasks {
        total.merge(&task.await??)?;
    }
    Ok(total)
}

async fn open_loop(
    args: &Args,
    rate: f64,
    clients: &[AuthorizationClient<Channel>],
    requests: &Arc<Vec<Prepared>>,
    next: &Arc<AtomicU64>,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<Stats> {
    anyhow::ensure!(
        rate > 0.0 && rate <= 1_000_000.0,
        "--rate must be in (0, 1000000]"
    );
    let total = Arc::new(Mutex::new(Stats::new()?));
    let permits = Arc::new(tokio::sync::Semaphore::new(args.max_in_flight.max(1)));
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let i = next.load(Ordering::Relaxed);
        let due = start + interval.mul_f64(i as f64);
        if due >= end || i >= args.max_requests {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        next.fetch_add(1, Ordering::Relaxed);
        let permit = Arc::clone(&permits).acquire_owned().await?;
        let mut client = clients[(i % clients.len() as u64) as usize].clone();
        let requests = Arc::clone(requests);
        let total = Arc::clone(&total);
        let check_expected = args.check_expected;
        tasks.spawn(async move {
            let prepared = &requests[(i % requests.len() as u64) as usize];
            let sent_at = Instant::now();
            let outcome = client.check(prepared.request.clone()).await;
            let elapsed = sent_at.elapsed();
            drop(permit);
            if due >= measure_from {
                if let Ok(mut stats) = total.lock() {
                    stats.record(elapsed, &outcome, prepared.expect_allow, check_expected);
                    let lag = sent_at.saturating_duration_since(due).as_micros();
                    let lag = u64::try_from(lag).unwrap_or(u64::MAX).max(1);
                    stats.lag_us.saturating_record(lag);
                }
            }
        });
        // Reap finished tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut out = Stats::new()?;
    let collected = total
        .lock()
        .map_err(|_| anyhow::anyhow!("stats lock poisoned"))?;
    out.merge(&collected)?;
    Ok(out)
}
