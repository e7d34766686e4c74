//! Instruction counts of the hot path, under Valgrind's callgrind (gungraun).
//!
//! On a shared, noisy 2-core machine wall-clock benches wander from run to
//! run; instruction counts do not. Each bench runs once under callgrind and
//! counts only the benchmarked call: the setup (loading policies, building
//! the grant index, warming the token cache) is an argument expression and
//! is not counted.
//!
//! Needs `gungraun-runner` at the version of the `gungraun` dev-dependency
//! (`make bench` installs it when missing) and valgrind. Run alone with
//! `cargo bench --bench hot_path`.

use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::CheckRequest;
use gungraun::{library_benchmark, library_benchmark_group, main};
use portcullis::adapter::ResponseConfig;
use portcullis::engine::{self, Decision, RequestAttrs};
use portcullis::path::{normalize, NormalPath, PathError};
use portcullis::policy::PolicySet;
use portcullis::server::Authorizer;
use portcullis::token_cache::TokenCache;
use prost::Message;

mod common;
use common::{alice_token, bundled, bundled_with_grants, user42, verified_request, NOW};

/// The bundled policy with `count` grants, and a request by user42.
fn decide_setup(count: usize, method: &str, path: &str) -> (PolicySet, RequestAttrs<'static>) {
    (bundled_with_grants(count), verified_request(method, path))
}

#[library_benchmark]
#[bench::plain("/documents/42")]
#[bench::query("/documents/42/comments?page=2")]
#[bench::escaped("/%64ocuments/4%32/comments")]
#[bench::dot_segment("/documents/1/../2")]
fn path_normalize(path: &str) -> Result<NormalPath, PathError> {
    black_box(normalize(black_box(path)))
}

#[library_benchmark]
#[bench::allow_1k(decide_setup(1_000, "GET", "/documents/42"))]
#[bench::deny_1k(decide_setup(1_000, "DELETE", "/documents/43"))]
#[bench::allow_100k(decide_setup(100_000, "GET", "/documents/42"))]
#[bench::deny_100k(decide_setup(100_000, "DELETE", "/documents/43"))]
fn decide(input: (PolicySet, RequestAttrs<'static>)) -> Decision {
    let caller = user42();
    let decision = engine::decide(
        black_box(&input.0),
        &*input.0.grants,
        &engine::Request::Http(black_box(&input.1)),
        &caller,
        0,
    );
    // Dropping a 100k-grant index is not part of a decision.
    std::mem::forget(input);
    black_box(decision)
}

/// An authorizer on the bundled policy whose token cache already holds
/// alice's token, and a CheckRequest from alice.
fn check_setup(method: &str, path: &str) -> (Authorizer, CheckRequest) {
    let tokens = TokenCache::new(1_000);
    let authorizer = Authorizer::new(
        Arc::new(ArcSwap::from_pointee(bundled())),
        tokens,
        ResponseConfig::default(),
        Arc::new(|| NOW),
    );
    let request = common::check_request(method, path, &alice_token());
    // Verify once, so the measured check is a cache hit as in production.
    let _ = portcullis_testkit::ready(authorizer.check_request(&request));
    (authorizer, request)
}

#[library_benchmark]
#[bench::allow(check_setup("GET", "/documents/1"))]
#[bench::deny(check_setup("DELETE", "/documents/2"))]
fn check_request(input: (Authorizer, CheckRequest)) -> Vec<u8> {
    // As served: the answer written into the response buffer tonic has.
    let mut written = Vec::with_capacity(8 << 10);
    let answer = portcullis_testkit::ready(input.0.answer(black_box(&input.1)));
    answer.write_to(&mut written);
    // Dropping the authorizer and its policy is not part of a check.
    std::mem::forget(input);
    black_box(written)
}

// The same check answered as prost's owned CheckResponse and encoded, as
// the server did before `answer.rs`: the saving of writing in place.
#[library_benchmark]
#[bench::allow(check_setup("GET", "/documents/1"))]
#[bench::deny(check_setup("DELETE", "/documents/2"))]
fn check_request_via_prost(input: (Authorizer, CheckRequest)) -> Vec<u8> {
    let mut written = Vec::with_capacity(8 << 10);
    let (_, response) = portcullis_testkit::ready(input.0.check_request(black_box(&input.1)));
    let _ = response.encode(&mut written);
    std::mem::forget(input);
    black_box(written)
}

library_benchmark_group!(
    name = hot_path,
    benchmarks = [
        path_normalize,
        decide,
        check_request,
        check_request_via_prost
    ]
);

main!(library_benchmark_groups = hot_path);
