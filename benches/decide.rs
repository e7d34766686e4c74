//! `decide()` against grant sources of growing size: the time must stay flat.
//!
//! The bundled documents policy is loaded, then its grants are replaced by
//! an index of N grants spread over 10k subjects and N/10 documents, built
//! in code so the bench measures deciding, not YAML parsing. Tokens are out
//! of the picture: the caller is a verified principal. `allow_condition`
//! is an allow by a grant under a CEL condition (benches/common), beside
//! `allow`, which evaluates none. `resource_action_owner_condition` is the
//! owner-only condition (`resource.properties.owner == subject.id`, the
//! owner given as a resource property, as AuthZEN callers give it) beside
//! `resource_action`, the same question of an unconditioned grant.

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use portcullis::engine;

mod common;
use common::{bundled_with_grants, user42, verified_request};

fn decide(c: &mut Criterion) {
    let caller = user42();
    let mut group = c.benchmark_group("decide");
    for count in [1_000usize, 100_000, 1_000_000] {
        let policy = bundled_with_grants(count);
        // user42 holds document:42 in every size (i = 42 is a grant).
        let allow = verified_request("GET", "/documents/42");
        let deny = verified_request("DELETE", "/documents/43");
        // Allowed only by a grant whose condition holds.
        let conditional = verified_request("GET", "/documents/999999");
        assert!(engine::decide(
            &policy,
            &*policy.grants,
            &engine::Request::Http(&allow),
            &caller,
            0
        )
        .is_allowed());
        assert!(!engine::decide(
            &policy,
            &*policy.grants,
            &engine::Request::Http(&deny),
            &caller,
            0
        )
        .is_allowed());
        let decided = engine::decide(
            &policy,
            &*policy.grants,
            &engine::Request::Http(&conditional),
            &caller,
            0,
        );
        assert!(decided.is_allowed(), "{decided:?}");
        group.bench_with_input(
            BenchmarkId::new("allow_condition", count),
            &conditional,
            |b, r| {
                b.iter(|| {
                    engine::decide(
                        black_box(&policy),
                        &*policy.grants,
                        &engine::Request::Http(black_box(r)),
                        &caller,
                        0,
                    )
                })
            },
        );
        // The resource/action form: the owner-only condition beside an
        // unconditioned grant.
        let principal = caller.0.clone();
        let mut owner = serde_json::Map::new();
        owner.insert("owner".into(), "user42".into());
        let owned = engine::Attributes {
            resource: Arc::new(owner),
            ..engine::Attributes::default()
        };
        let ask = |resource: &'static str| {
            let (policy, principal, owned, caller) = (&policy, &principal, &owned, &caller);
            move || {
                engine::decide(
                    black_box(policy),
                    &*policy.grants,
                    &engine::Request::ResourceAction(engine::ResourceAction {
                        principal,
                        resource: black_box(resource),
                        action: "read",
                        attributes: owned,
                    }),
                    caller,
                    0,
                )
            }
        };
        assert!(ask("document:999998")().is_allowed());
        assert!(ask("document:42")().is_allowed());
        group.bench_function(
            BenchmarkId::new("resource_action_owner_condition", count),
            |b| b.iter(ask("document:999998")),
        );
        group.bench_function(BenchmarkId::new("resource_action", count), |b| {
            b.iter(ask("document:42"))
        });
        group.bench_with_input(BenchmarkId::new("allow", count), &allow, |b, r| {
            b.iter(|| {
                engine::decide(
                    black_box(&policy),
                    &*policy.grants,
                    &engine::Request::Http(black_box(r)),
                    &caller,
                    0,
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("deny", count), &deny, |b, r| {
            b.iter(|| {
                engine::decide(
                    black_box(&policy),
                    &*policy.grants,
                    &engine::Request::Http(black_box(r)),
                    &caller,
                    0,
                )
            })
        });
    }
    group.finish();
}

fn normalize(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize");
    for path in [
        "/documents/42",
        "/documents/42/comments?page=2",
        "/%64ocuments/4%32/comments",
    ] {
        group.bench_with_input(BenchmarkId::from_parameter(path), path, |b, p| {
            b.iter(|| portcullis::path::normalize(black_box(p)))
        });
    }
    group.finish();
}

criterion_group!(benches, decide, normalize);
criterion_main!(benches);
