//! Heap allocations per operation on the hot paths, counted exactly.
//!
//! A counting global allocator wraps the system allocator; each operation
//! runs once to warm caches (the token cache above all), then `ROUNDS`
//! times while the counters run, and the table gives allocations and bytes
//! per operation. Counts, unlike times, are the same on every run of the
//! same binary, so a change that adds an allocation shows up as a whole
//! number. The server is wired as `serve` wires it by default: metrics, the
//! decision log at its default allow rate (written to a sink), no decision
//! cache.
//!
//! Run alone with `cargo bench --bench allocations`; results also in
//! `target/bench/allocations.json`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::http::Request;
use portcullis::adapter::{self, ResponseConfig};
use portcullis::answer::Answer;
use portcullis::api::{self, bulkhead::Bulkhead, ApiState};
use portcullis::decision_log::{DecisionLog, DEFAULT_ALLOW_RATE};
use portcullis::engine;
use portcullis::events::replay::ReplayGuard;
use portcullis::events::Replay;
use portcullis::logging::LogLines;
use portcullis::metrics::Metrics;
use portcullis::pdp::Pdp;
use portcullis::server::Authorizer;
use portcullis::token_cache::TokenCache;
use tower::ServiceExt;

mod common;
use common::{
    alice_token, bundled, bundled_with_grants, check_request, user42, verified_request, NOW,
};

/// Counts this thread's allocations; other threads (none run here) would
/// not disturb the count.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

fn count(size: usize) {
    // `try_with`: the thread's locals may be gone while it exits.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    let _ = BYTES.try_with(|n| n.set(n.get() + size as u64));
}

// SAFETY: every call is passed to `System` unchanged; counting only reads
// the layout.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ROUNDS: u64 = 1_000;

/// Allocations and bytes per call of `op`, after one warm-up call.
fn measure<T>(mut op: impl FnMut() -> T) -> (f64, f64) {
    drop(std::hint::black_box(op()));
    let before = (ALLOCATIONS.with(Cell::get), BYTES.with(Cell::get));
    for _ in 0..ROUNDS {
        drop(std::hint::black_box(op()));
    }
    let after = (ALLOCATIONS.with(Cell::get), BYTES.with(Cell::get));
    (
        (after.0 - before.0) as f64 / ROUNDS as f64,
        (after.1 - before.1) as f64 / ROUNDS as f64,
    )
}

/// The ext_authz service as `serve` builds it with no flags.
fn shipped_authorizer() -> Authorizer {
    let tokens = TokenCache::new(1_000);
    let metrics = Arc::new(Metrics::new(vec![("token", tokens.stats())]));
    Authorizer::new(
        Arc::new(ArcSwap::from_pointee(bundled())),
        tokens,
        ResponseConfig::default(),
        Arc::new(|| NOW),
    )
    .with_metrics(metrics)
    .with_decision_log(DecisionLog::new(
        DEFAULT_ALLOW_RATE,
        LogLines::to(std::io::sink()),
    ))
}

/// The AuthZEN API's routes as `serve --api-listen` builds them with no
/// other flag, asked in process (no socket: what a request costs the
/// handlers, not the HTTP parser).
fn shipped_api() -> axum::Router {
    let tokens = TokenCache::new(1_000);
    let metrics = Arc::new(Metrics::new(vec![("token", tokens.stats())]));
    let pdp = Pdp::new(
        Arc::new(ArcSwap::from_pointee(bundled())),
        tokens,
        Arc::new(|| NOW),
    )
    .with_metrics(metrics)
    .with_decision_log(Arc::new(DecisionLog::new(
        DEFAULT_ALLOW_RATE,
        LogLines::to(std::io::sink()),
    )));
    api::router(ApiState {
        pdp,
        public_url: None,
        https: false,
        replay: Arc::new(Replay::Memory(Box::new(ReplayGuard::new(16)))),
        bulkhead: Arc::new(Bulkhead::new(1).unwrap_or_else(|e| panic!("pool: {e}"))),
    })
}

/// An evaluation as a service sends it: its user's token, a JSON body.
fn evaluation(token: &str, action: &str, document: &str) -> Request<Body> {
    let body = format!(
        r#"{{"subject":{{"type":"user","id":"alice"}},"action":{{"name":"{action}"}},"resource":{{"type":"document","id":"{document}"}}}}"#
    );
    Request::post("/access/v1/evaluation")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(body))
        .unwrap_or_else(|e| panic!("request: {e}"))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs each
    // bench once as a test, which this one needs no special case for.
    let token = alice_token();
    let allow = check_request("GET", "/documents/1", &token);
    let deny = check_request("DELETE", "/documents/2", &token);
    let authorizer = shipped_authorizer();
    let policy = bundled();
    let large = bundled_with_grants(100_000);
    let caller = user42();
    let read_allow = verified_request("GET", "/documents/42");
    let read_deny = verified_request("DELETE", "/documents/43");
    let allowed = portcullis_testkit::ready(authorizer.check_request(&allow)).0;
    let denied = portcullis_testkit::ready(authorizer.check_request(&deny)).0;
    assert!(allowed.is_allowed() && !denied.is_allowed());
    let config = Arc::new(ResponseConfig::default());
    // As tonic does, the answer is written into a buffer that is already
    // there.
    let mut buffer = Vec::with_capacity(8 << 10);
    let mut served = |request| {
        let answer = portcullis_testkit::ready(authorizer.answer(request));
        buffer.clear();
        answer.write_to(&mut buffer);
    };
    let mut written = Vec::with_capacity(8 << 10);
    let mut write = |decision: &Arc<engine::Decision>| {
        written.clear();
        Answer {
            decision: decision.clone(),
            config: config.clone(),
        }
        .write_to(&mut written);
    };

    // One thread: the handlers run where the counters count.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let api = shipped_api();
    // The same request answered without a look: what building, routing and
    // dropping it costs whatever the handler.
    let noop_api = axum::Router::new().route(
        "/access/v1/evaluation",
        axum::routing::post(|| async { r#"{"decision":true}"# }),
    );
    let ask = |router: &axum::Router, action: &str, document: &str| {
        let response = runtime
            .block_on(router.clone().oneshot(evaluation(&token, action, document)))
            .unwrap_or_else(|e| match e {});
        assert_eq!(response.status(), 200);
        response
    };
    let answered = |router: &axum::Router, action: &str, document: &str| {
        let response = ask(router, action, document);
        let body = runtime
            .block_on(axum::body::to_bytes(response.into_body(), 1 << 10))
            .unwrap_or_else(|e| panic!("body: {e}"));
        String::from_utf8_lossy(&body).into_owned()
    };
    assert_eq!(answered(&api, "read", "1"), r#"{"decision":true}"#);
    assert_eq!(answered(&api, "delete", "2"), r#"{"decision":false}"#);

    let rows: Vec<(&str, (f64, f64))> = vec![
        (
            "AuthZEN evaluation allow (router, whole)",
            measure(|| ask(&api, "read", "1")),
        ),
        (
            "AuthZEN evaluation deny (router, whole)",
            measure(|| ask(&api, "delete", "2")),
        ),
        (
            "  the same to a do-nothing handler",
            measure(|| ask(&noop_api, "read", "1")),
        ),
        ("check allow (ext_authz, whole)", measure(|| served(&allow))),
        ("check deny (ext_authz, whole)", measure(|| served(&deny))),
        (
            "  read CheckRequest (allow)",
            measure(|| adapter::read(&allow, &policy.condition_headers, false)),
        ),
        ("  answer allow", measure(|| write(&allowed))),
        ("  answer deny", measure(|| write(&denied))),
        (
            "  answer allow, prost's (tests' form)",
            measure(|| adapter::check_response(&allowed, &config)),
        ),
        (
            "decide allow (engine, 100k grants)",
            measure(|| {
                engine::decide(
                    &large,
                    &*large.grants,
                    &engine::Request::Http(&read_allow),
                    &caller,
                    0,
                )
            }),
        ),
        (
            "decide deny (engine, 100k grants)",
            measure(|| {
                engine::decide(
                    &large,
                    &*large.grants,
                    &engine::Request::Http(&read_deny),
                    &caller,
                    0,
                )
            }),
        ),
    ];

    println!("{:<40} {:>12} {:>12}", "operation", "allocations", "bytes");
    let mut json = serde_json::Map::new();
    for (name, (allocations, bytes)) in &rows {
        println!("{name:<40} {allocations:>12.1} {bytes:>12.0}");
        json.insert(
            name.trim().to_string(),
            serde_json::json!({"allocations": allocations, "bytes": bytes}),
        );
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(
            dir.join("allocations.json"),
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        );
    }
    // Dropping a 100k-grant policy is not worth waiting for.
    std::mem::forget(large);
}
