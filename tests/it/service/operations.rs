//! Operating Portcullis: metrics scraped over HTTP, decision logs parsed,
//! readiness and gRPC health, SIGTERM with checks in flight or with admin
//! clients that never finish a request, and caches under a flood, all
//! against the real `portcullis` binary (or the real admin server) on
//! 127.0.0.1.

use crate::support;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{
    bundled_policies, check_request, grpc_client as client, grpc_status as status, send_raw, token,
    Portcullis,
};
use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::HttpResponse;
use portcullis::admin::{self, AdminState, Readiness};
use portcullis::metrics::Metrics;
use portcullis::policy::load_policies;
use serde_json::Value;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// `name{labels} value` lines of a Prometheus scrape, keyed by `name{labels}`.
fn scrape(admin_port: u16) -> HashMap<String, f64> {
    let response = send_raw(admin_port, "GET", b"/metrics", &[]);
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .unwrap_or_default()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        response.headers
    );
    response
        .text()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_checks_caches_and_the_policy() {
    // The decision cache is off by default; its metrics are tested on.
    let portcullis = Portcullis::start_with_env(
        &bundled_policies(),
        &[("PORTCULLIS_DECISION_CACHE_BYTES", "16Mi")],
    );
    let admin = portcullis.admin_port();
    let live = send_raw(admin, "GET", b"/live", &[]);
    assert_eq!(live.status, 200);
    let ready = send_raw(admin, "GET", b"/ready", &[]);
    assert_eq!(ready.status, 200);
    assert!(ready.text().contains("policy version"), "{}", ready.text());

    let before = scrape(admin);
    let mut grpc = client(portcullis.port()).await;
    let alice = format!("Bearer {}", token("alice"));
    assert_eq!(
        status(
            &mut grpc,
            check_request("GET", "/documents/1", Some(&alice), "m1")
        )
        .await,
        200
    );
    assert_eq!(
        status(
            &mut grpc,
            check_request("GET", "/documents/1", Some(&alice), "m2")
        )
        .await,
        200
    );
    assert_eq!(
        status(
            &mut grpc,
            check_request("DELETE", "/documents/2", Some(&alice), "m3")
        )
        .await,
        403
    );
    assert_eq!(
        status(&mut grpc, check_request("GET", "/documents/1", None, "m4")).await,
        401
    );
    assert_eq!(
        status(&mut grpc, check_request("GET", "/nowhere", None, "m5")).await,
        // No route without a credential is the 401 of any protected route.
        401
    );
    let after = scrape(admin);

    let checks = |decision: &str, reason: &str, app: &str| {
        format!("portcullis_checks_total{{entry=\"ext_authz\",application=\"{app}\",decision=\"{decision}\",reason=\"{reason}\"}}")
    };
    assert_eq!(
        delta(&before, &after, &checks("allow", "granted", "documents")),
        2.0,
        "{after:#?}"
    );
    assert_eq!(
        delta(&before, &after, &checks("deny", "no_grant", "documents")),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            &checks("deny", "missing_credentials", "documents")
        ),
        1.0
    );
    assert_eq!(
        delta(&before, &after, &checks("deny", "missing_credentials", "")),
        1.0
    );
    assert_eq!(
        delta(&before, &after, "portcullis_check_duration_seconds_count"),
        5.0
    );
    // The second identical alice check is a decision-cache hit; the delete
    // misses the decision cache but finds alice's token verified. Checks
    // without a token never ask the decision cache.
    let cache = |cache: &str, result: &str| {
        let key =
            format!("portcullis_cache_requests_total{{cache=\"{cache}\",result=\"{result}\"}}");
        delta(&before, &after, &key)
    };
    assert_eq!(cache("decision", "hit"), 1.0);
    assert_eq!(cache("decision", "miss"), 2.0);
    assert_eq!(cache("token", "miss"), 1.0);
    assert_eq!(cache("token", "hit"), 1.0);
    assert_eq!(
        after.get("portcullis_policy_loads_total{result=\"success\"}"),
        Some(&1.0)
    );
    assert_eq!(after.get("portcullis_policy_grants"), Some(&7.0));
    let version = ready
        .text()
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        after.get(&format!("portcullis_policy_info{{version=\"{version}\"}}")),
        Some(&1.0)
    );
    // No subject, path or resource ever becomes a label.
    let text = send_raw(admin, "GET", b"/metrics", &[]).text();
    for leak in ["alice", "/documents", "document:1"] {
        assert!(!text.contains(leak), "metrics contain {leak:?}");
    }
}

/// The `decision` lines of a JSON log, parsed.
fn decision_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "decision")
        .collect()
}

/// The decision lines of `portcullis`'s log once `enough` says so (or
/// after 5 s): lines reach stderr through a queue, so they are waited for.
async fn decision_lines_once(
    portcullis: &Portcullis,
    enough: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = decision_lines(&portcullis.log());
        if enough(&lines) || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn decision_logs_are_json_lines_without_tokens() {
    let portcullis =
        Portcullis::start_with_env(&bundled_policies(), &[("PORTCULLIS_LOG_ALLOW_RATE", "1")]);
    let mut grpc = client(portcullis.port()).await;
    let bob = token("bob");
    let header = format!("Bearer {bob}");
    assert_eq!(
        status(
            &mut grpc,
            check_request("GET", "/documents/1", Some(&header), "req-allow")
        )
        .await,
        200
    );
    assert_eq!(
        status(
            &mut grpc,
            check_request("GET", "/documents/2", Some(&header), "req-deny")
        )
        .await,
        403
    );
    // Change one signature character well before the end (the last one
    // carries padding bits, and changing it may make the base64 invalid).
    let at = bob.len() - 10;
    let swapped = if &bob[at..=at] == "A" { "B" } else { "A" };
    let bad = format!("Bearer {}{swapped}{}", &bob[..at], &bob[at + 1..]);
    assert_eq!(
        status(
            &mut grpc,
            check_request("GET", "/documents/1", Some(&bad), "req-bad")
        )
        .await,
        401
    );

    let lines = decision_lines_once(&portcullis, |lines| lines.len() >= 3).await;
    let by_id = |id: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["request_id"] == id)
            .unwrap_or_else(|| panic!("no decision line for {id}: {lines:#?}"))
            .clone()
    };
    let allow = by_id("req-allow");
    let fields = &allow["fields"];
    assert_eq!(allow["level"], "INFO");
    assert_eq!(fields["decision"], "allow");
    assert_eq!(fields["application"], "documents");
    assert_eq!(fields["route"], "read-document");
    assert_eq!(fields["subject"], "bob");
    assert_eq!(fields["resource"], "document:1");
    assert_eq!(fields["action"], "read");
    assert_eq!(fields["reason"], "granted");
    assert_eq!(fields["status"], 200);
    assert!(
        fields["rule"]
            .as_str()
            .unwrap_or_default()
            .contains("viewer"),
        "{fields}"
    );
    assert!(
        fields["policy_version"]
            .as_str()
            .is_some_and(|v| v.len() == 16),
        "{fields}"
    );
    assert!(fields["latency_us"].is_u64(), "{fields}");
    let deny = by_id("req-deny");
    assert_eq!(deny["fields"]["decision"], "deny");
    assert_eq!(deny["fields"]["reason"], "no_grant");
    assert_eq!(by_id("req-bad")["fields"]["reason"], "token_bad_signature");

    let log = portcullis.log();
    for secret in [
        bob.as_str(),
        &bad[7..],
        support::test_secret(),
        "Bearer",
        "eyJ",
    ] {
        assert!(!log.contains(secret), "the log contains {secret:?}");
    }
}

#[tokio::test]
async fn by_default_every_deny_and_one_allow_in_a_hundred_are_logged() {
    let portcullis = Portcullis::start(&bundled_policies());
    let mut grpc = client(portcullis.port()).await;
    let bob = format!("Bearer {}", token("bob"));
    for i in 0..250 {
        let (path, expected) = if i % 50 == 49 {
            ("/documents/2", 403)
        } else {
            ("/documents/1", 200)
        };
        let id = format!("check-{i}");
        let got = status(&mut grpc, check_request("GET", path, Some(&bob), &id)).await;
        assert_eq!(got, expected, "{id}");
    }
    // One queue, one writer: once the last line is out, so is every
    // line before it.
    let lines = decision_lines_once(&portcullis, |lines| {
        lines
            .iter()
            .any(|l| l["fields"]["request_id"] == "check-249")
    })
    .await;
    let logged = |decision: &str| {
        lines
            .iter()
            .filter(|l| l["fields"]["decision"] == decision)
            .count()
    };
    assert_eq!(logged("deny"), 5, "{lines:#?}");
    // 245 allows: the 1st, 101st and 201st are logged.
    assert_eq!(logged("allow"), 3, "{lines:#?}");
}

#[tokio::test]
async fn allows_are_sampled_and_denies_always_logged() {
    let portcullis =
        Portcullis::start_with_env(&bundled_policies(), &[("PORTCULLIS_LOG_ALLOW_RATE", "0")]);
    let mut grpc = client(portcullis.port()).await;
    let bob = format!("Bearer {}", token("bob"));
    for i in 0..5 {
        let id = format!("allow-{i}");
        assert_eq!(
            status(
                &mut grpc,
                check_request("GET", "/documents/1", Some(&bob), &id)
            )
            .await,
            200
        );
    }
    assert_eq!(
        status(
            &mut grpc,
            check_request("GET", "/documents/2", Some(&bob), "deny-0")
        )
        .await,
        403
    );
    let lines = decision_lines_once(&portcullis, |lines| !lines.is_empty()).await;
    let ids: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["fields"]["request_id"].as_str())
        .collect();
    assert_eq!(ids, ["deny-0"]);
}

#[tokio::test]
async fn ready_is_false_until_the_policy_is_served() {
    let dir = support::copy_policies(|_, text| text);
    let policy = load_policies(dir.path()).unwrap();
    let readiness = Arc::new(Readiness::default());
    let state = AdminState {
        readiness: readiness.clone(),
        metrics: Arc::new(Metrics::new(Vec::new())),
        policy: Arc::new(ArcSwap::from_pointee(policy)),
    };
    let (listener, port) = support::bind_loopback().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(admin::run(listener, state, async {
        let _ = stopped.await;
    }));
    let get =
        |path: &'static [u8]| tokio::task::spawn_blocking(move || send_raw(port, "GET", path, &[]));
    assert_eq!(get(b"/ready").await.map(|r| r.status).unwrap_or(0), 503);
    assert_eq!(get(b"/live").await.map(|r| r.status).unwrap_or(0), 200);
    readiness.set(true);
    assert_eq!(get(b"/ready").await.map(|r| r.status).unwrap_or(0), 200);
    readiness.set(false);
    assert_eq!(get(b"/ready").await.map(|r| r.status).unwrap_or(0), 503);
    assert_eq!(get(b"/nothing").await.map(|r| r.status).unwrap_or(0), 404);
    let _ = stop.send(());
    let stopped = tokio::time::timeout(Duration::from_secs(5), server).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_checks_in_flight_and_exits_zero() {
    let mut portcullis = Portcullis::start(&bundled_policies());
    let port = portcullis.port();
    let bob = format!("Bearer {}", token("bob"));
    // Four clients, each on its own connection, checking until refused (at
    // most 20,000 checks or 20 s each). `answering` counts the clients that
    // have had an answer: the signal waits for all four, so every client is
    // mid-stream when it comes, however slow the machine.
    let answering = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..4 {
        let bob = bob.clone();
        let answering = answering.clone();
        let mut grpc = client(port).await;
        clients.push(tokio::spawn(async move {
            let started = Instant::now();
            let (mut answered, mut refused) = (0u32, 0u32);
            for i in 0..20_000 {
                if started.elapsed() > Duration::from_secs(20) {
                    break;
                }
                let id = format!("drain-{c}-{i}");
                match grpc
                    .check(check_request("GET", "/documents/1", Some(&bob), &id))
                    .await
                {
                    Ok(response) => {
                        let ok = matches!(
                            response.into_inner().http_response,
                            Some(HttpResponse::OkResponse(_))
                        );
                        assert!(ok, "a check answered during shutdown must be a real answer");
                        answered += 1;
                        if answered == 1 {
                            answering.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Err(_) => {
                        refused += 1;
                        break;
                    }
                }
            }
            (answered, refused)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while answering.load(Ordering::SeqCst) < 4 {
        assert!(
            Instant::now() < deadline,
            "only {} of 4 clients were answered",
            answering.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let kill = Command::new("kill")
        .args(["-TERM", &portcullis.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let code = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(code) = portcullis.try_wait() {
                return Some(code);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert_eq!(
        code,
        Some(Some(0)),
        "portcullis must exit 0 within the drain bound"
    );
    let mut answered = 0;
    for client in clients {
        let (a, refused) = client.await.unwrap();
        assert_eq!(
            refused, 1,
            "every client is refused once the server is gone"
        );
        answered += a;
    }
    assert!(
        answered >= 4,
        "the clients were answered before the shutdown ({answered})"
    );
}

/// Sends SIGTERM to `portcullis`.
fn terminate(portcullis: &Portcullis) {
    let kill = Command::new("kill")
        .args(["-TERM", &portcullis.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

/// The exit code once `portcullis` exits within `bound`; `None` if it
/// still runs then.
async fn exit_within(mut portcullis: Portcullis, bound: Duration) -> Option<Option<i32>> {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(code) = portcullis.try_wait() {
                return Some(code);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_admin_requests_do_not_hold_the_exit() {
    let portcullis =
        Portcullis::start_with_env(&bundled_policies(), &[("PORTCULLIS_DRAIN_SECONDS", "1")]);
    let admin = portcullis.admin_port();
    // Three clients send half a request, then nothing, and stay: half a
    // request line, a head without its end, and a body shorter than its
    // Content-Length.
    let halves: [&[u8]; 3] = [
        b"GET /rea",
        b"GET /ready HTTP/1.1\r\nHost: portcullis\r\n",
        b"POST /ready HTTP/1.1\r\nHost: portcullis\r\nContent-Length: 100\r\n\r\n0123456789",
    ];
    let mut held = Vec::new();
    for half in halves {
        let mut stream = TcpStream::connect(("127.0.0.1", admin)).unwrap();
        stream.write_all(half).unwrap();
        held.push(stream);
    }
    // A whole request after them is answered: the server has taken the
    // three (connections are accepted in order).
    let ready = tokio::task::spawn_blocking(move || send_raw(admin, "GET", b"/ready", &[]).status)
        .await
        .unwrap_or(0);
    assert_eq!(ready, 200);

    terminate(&portcullis);
    // The drain is 1 s; the admin port adds at most a short grace. Without
    // bounds, the three connections held the process until they closed.
    let code = exit_within(portcullis, Duration::from_secs(8)).await;
    assert_eq!(code, Some(Some(0)), "portcullis must exit 0 despite them");
    drop(held);
}

#[test]
fn the_admin_port_cuts_a_request_head_that_never_ends() {
    let portcullis = Portcullis::start(&bundled_policies());
    let mut stream = TcpStream::connect(("127.0.0.1", portcullis.admin_port())).unwrap();
    stream
        .write_all(b"GET /ready HTTP/1.1\r\nHost: portcullis\r\n")
        .unwrap();
    // The head must arrive within 5 s; the server then closes the
    // connection. The bound here is far above that, and without a
    // header-read timeout the connection stays open past it.
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answer = Vec::new();
    let read = std::io::Read::read_to_end(&mut stream, &mut answer);
    let closed = match &read {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(
        closed,
        "the connection is still open: {read:?} {:?}",
        String::from_utf8_lossy(&answer)
    );
    // Nothing was served for the incomplete request.
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_is_not_serving_from_sigterm() {
    let portcullis = Portcullis::start(&bundled_policies());
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", portcullis.port()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut watch).await, Some(ServingStatus::Serving as i32));
    terminate(&portcullis);
    assert_eq!(
        next(&mut watch).await,
        Some(ServingStatus::NotServing as i32)
    );
    assert_eq!(next(&mut watch).await, None, "the watch stream ends");
    let code = exit_within(portcullis, Duration::from_secs(15)).await;
    assert_eq!(code, Some(Some(0)));
}

/// The next status of a health watch stream (bounded), `None` at its end.
async fn next(watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>) -> Option<i32> {
    tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("no health message")
        .unwrap()
        .map(|m| m.status)
}

/// Sends `count` checks built by `request` from 4 clients at once.
async fn flood(
    port: u16,
    count: usize,
    request: impl Fn(usize) -> envoy_types::ext_authz::v3::pb::CheckRequest + Send + Sync + 'static,
) {
    let request = Arc::new(request);
    let mut clients = Vec::new();
    for c in 0..4 {
        let request = request.clone();
        let mut grpc = client(port).await;
        clients.push(tokio::spawn(async move {
            for i in (c..count).step_by(4) {
                let answer = grpc.check(request(i)).await;
                assert!(answer.is_ok(), "{answer:?}");
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_stay_within_their_bytes_under_a_flood() {
    const BOUND: f64 = 65_536.0;
    let portcullis = Portcullis::start_with_env(
        &bundled_policies(),
        &[
            ("PORTCULLIS_DECISION_CACHE_BYTES", "64Ki"),
            ("PORTCULLIS_TOKEN_CACHE_BYTES", "64Ki"),
            ("PORTCULLIS_LOG_ALLOW_RATE", "0"),
            ("PORTCULLIS_LOG", "warn"),
        ],
    );
    let admin = portcullis.admin_port();
    let port = portcullis.port();
    let before = scrape(admin);
    let capacity = |cache: &str| format!("portcullis_cache_capacity_bytes{{cache=\"{cache}\"}}");
    let bytes = |cache: &str| format!("portcullis_cache_bytes{{cache=\"{cache}\"}}");
    let entries = |cache: &str| format!("portcullis_cache_entries{{cache=\"{cache}\"}}");
    let misses = "portcullis_cache_requests_total{cache=\"decision\",result=\"miss\"}";
    for cache in ["decision", "token"] {
        assert_eq!(before.get(&capacity(cache)), Some(&BOUND), "{before:#?}");
    }

    // Unique paths without a token, each carrying a long query: denied,
    // and neither looked up nor kept.
    let padding = "p".repeat(3000);
    flood(port, 4000, move |i| {
        let path = format!("/documents/{}?pad={padding}", 1_000_000 + i);
        check_request("GET", &path, None, "anonymous")
    })
    .await;
    let after_anonymous = scrape(admin);
    assert_eq!(after_anonymous.get(&entries("decision")), Some(&0.0));
    assert_eq!(after_anonymous.get(&bytes("decision")), Some(&0.0));
    assert_eq!(delta(&before, &after_anonymous, misses), 0.0);

    // Unique paths, each with its own valid token: both caches fill, and
    // stay within their bound.
    let tokens: Vec<String> = (0..3000).map(|i| token(&format!("user-{i}"))).collect();
    let tokens = Arc::new(tokens);
    flood(port, 3000, move |i| {
        let bearer = format!("Bearer {}", tokens[i]);
        let path = format!("/documents/{}", 1_000_000 + i);
        check_request("GET", &path, Some(&bearer), "verified")
    })
    .await;
    let after = scrape(admin);
    assert_eq!(delta(&after_anonymous, &after, misses), 3000.0);
    for cache in ["decision", "token"] {
        let held = after.get(&bytes(cache)).copied().unwrap_or(f64::NAN);
        let count = after.get(&entries(cache)).copied().unwrap_or(0.0);
        assert!(held <= BOUND, "{cache}: {held} bytes over {BOUND}");
        assert!(
            count > 0.0 && held > 0.0,
            "{cache} cache unused: {after:#?}"
        );
        // 3000 entries would not fit: some were evicted or refused.
        assert!(count < 3000.0, "{cache}: {count} entries");
    }
}

/// A deny that no route took says in the log what the request was and
/// which route came closest: the method, the normalized path (bounded, no
/// query string) and why, for a caller with a token (403 `no_route`) and
/// for one without (the 401 that hides routes from it).
#[tokio::test]
async fn a_no_route_deny_logs_the_method_path_and_closest_route() {
    let portcullis = Portcullis::start(&bundled_policies());
    let mut grpc = client(portcullis.port()).await;
    let header = format!("Bearer {}", token("bob"));
    let odd = "/documents/beth@the-smiths.com?access_token=query-secret-value";
    assert_eq!(
        status(
            &mut grpc,
            check_request("GET", odd, Some(&header), "req-odd")
        )
        .await,
        403
    );
    assert_eq!(
        status(&mut grpc, check_request("GET", odd, None, "req-anon")).await,
        401
    );
    let long = format!("/documents/{}", "x".repeat(1000));
    assert_eq!(
        status(
            &mut grpc,
            check_request("GET", &long, Some(&header), "req-long")
        )
        .await,
        403
    );
    let lines = decision_lines_once(&portcullis, |lines| lines.len() >= 3).await;
    let by_id = |id: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["request_id"] == id)
            .unwrap_or_else(|| panic!("no decision line for {id}: {lines:#?}"))["fields"]
            .clone()
    };
    for (id, reason) in [("req-odd", "no_route"), ("req-anon", "missing_credentials")] {
        let fields = by_id(id);
        assert_eq!(fields["reason"], reason, "{fields}");
        assert_eq!(fields["method"], "GET", "{fields}");
        assert_eq!(fields["path"], "/documents/beth@the-smiths.com", "{fields}");
        let why = fields["why"].as_str().unwrap_or_default();
        assert!(
            why.contains("route \"read-document\" (/documents/{id:uint})")
                && why.contains("holds characters a capture does not accept (`@`)"),
            "{fields}"
        );
    }
    let long = by_id("req-long");
    let path = long["path"].as_str().unwrap_or_default();
    assert!(path.len() <= 256 + "…".len(), "{long}");
    assert!(
        long["why"].as_str().unwrap_or_default().len() < 1024,
        "{long}"
    );
    assert!(!portcullis.log().contains("query-secret-value"));
}
