//! One whole check as the server runs it: CheckRequest → adapter → engine →
//! CheckResponse, with metrics, and with the decision log on or sampled off.
//! The log is written as JSON to a sink, so the bench measures formatting,
//! not a disk. The token is cached after the first check, as in production.
//! The `adapter` group measures the two conversions alone: CheckRequest →
//! RequestAttrs, and Decision → CheckResponse for an allow and a deny.

use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portcullis::adapter::{self, ResponseConfig};
use portcullis::decision_log::DecisionLog;
use portcullis::logging::LogLines;
use portcullis::metrics::Metrics;
use portcullis::server::Authorizer;
use portcullis::token_cache::TokenCache;

mod common;
use common::{alice_token, bundled, check_request as request, NOW};

fn authorizer(allow_log_rate: f64) -> Authorizer {
    let policy = bundled();
    let tokens = TokenCache::new(1000);
    let metrics = Arc::new(Metrics::new(vec![("token", tokens.stats())]));
    Authorizer::new(
        Arc::new(ArcSwap::from_pointee(policy)),
        tokens,
        ResponseConfig::default(),
        Arc::new(|| NOW),
    )
    .with_metrics(metrics)
    .with_decision_log(DecisionLog::new(
        allow_log_rate,
        LogLines::to(std::io::sink()),
    ))
}

fn check(c: &mut Criterion) {
    let _ = tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::sink)
        .try_init();
    let token = alice_token();
    let allow = request("GET", "/documents/1", &token);
    let deny = request("DELETE", "/documents/2", &token);

    let mut group = c.benchmark_group("check");
    for (name, rate) in [("logged", 1.0), ("unlogged", 0.0)] {
        let authorizer = authorizer(rate);
        assert!(portcullis_testkit::ready(authorizer.check_request(&allow))
            .0
            .is_allowed());
        group.bench_function(format!("allow/{name}"), |b| {
            b.iter(|| portcullis_testkit::ready(authorizer.check_request(black_box(&allow))))
        });
    }
    let authorizer = authorizer(1.0);
    group.bench_function("deny/logged", |b| {
        b.iter(|| portcullis_testkit::ready(authorizer.check_request(black_box(&deny))))
    });
    group.finish();
}

fn adapter(c: &mut Criterion) {
    let token = alice_token();
    let read = request("GET", "/documents/1", &token);
    let authorizer = authorizer(0.0);
    let (allow, _) = portcullis_testkit::ready(authorizer.check_request(&read));
    let (deny, _) = portcullis_testkit::ready(authorizer.check_request(&request(
        "DELETE",
        "/documents/2",
        &token,
    )));
    assert!(allow.is_allowed() && !deny.is_allowed());
    let config = ResponseConfig::default();

    let mut group = c.benchmark_group("adapter");
    group.bench_function("request_attrs", |b| {
        b.iter(|| adapter::request_attrs(black_box(&read)))
    });
    group.bench_function("check_response/allow", |b| {
        b.iter(|| adapter::check_response(black_box(&allow), &config))
    });
    group.bench_function("check_response/deny", |b| {
        b.iter(|| adapter::check_response(black_box(&deny), &config))
    });
    group.finish();
}

criterion_group!(benches, check, adapter);
criterion_main!(benches);
