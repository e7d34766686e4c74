//! The AuthZEN API: evaluation throughput against a do-nothing handler on
//! the same HTTP stack (the shared accept loop, axum, hyper, over loopback
//! with a keep-alive client), a batch of 100 evaluations, signing an event
//! and verifying one (open, consume once, decide now) beside them, and
//! search pages of 100 over 200k grants (pure, no HTTP). The `events`
//! group is the same three without HTTP: a plain decision, signing, and
//! verify+check.
//!
//! `cargo bench --bench authzen`; numbers, not asserts.

mod common;

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::routing::post;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::api::{self, ApiState};
use portcullis::decision_log::DecisionLog;
use portcullis::events::replay::{ReplayGuard, DEFAULT_REPLAY_CAPACITY};
use portcullis::events::{self, envelope, Publish, Replay};
use portcullis::http_server;
use portcullis::logging::LogLines;
use portcullis::pdp::Pdp;
use portcullis::policy::callers::{api_key_digest, Caller, CallerCredential, Callers, Permissions};
use portcullis::policy::events::{EventKeys, SigningKey, VerifyingKey};
use portcullis::policy::{GrantIndex, Holder, PolicySet, ResourceKey};
use portcullis::search;
use portcullis::server::DEFAULT_TOKEN_CACHE_BYTES;
use portcullis::token::Principal;
use portcullis::token_cache::TokenCache;
use serde_json::json;
use tokio::net::TcpListener;

const KEY: &str = "bench-api-key-0123456789abcdef";

/// The bundled policy with a caller that may ask about anyone and sign
/// for anyone, and an EdDSA event key.
fn policy_with_caller() -> PolicySet {
    let mut policy = common::bundled();
    let signer = portcullis_testkit::Signer::eddsa();
    let signing = SigningKey::ed25519_pem("bench", signer.private_pem().as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    let public =
        VerifyingKey::ed25519_pem(signer.public_pem().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    policy.events = Some(EventKeys {
        signing: Some(signing),
        verifying: [("bench".to_owned(), public)].into_iter().collect(),
        default_lifetime: 3600,
        max_lifetime: 86_400,
    });
    policy.callers = Callers::new(vec![Caller {
        name: "bench".into(),
        credential: CallerCredential::ApiKey(api_key_digest(KEY.as_bytes())),
        may: Permissions {
            any_subject: true,
            search: true,
            explain: false,
            sign: true,
            ..Permissions::default()
        },
    }]);
    policy
}

/// Serves `router` on 127.0.0.1 with the API's limits; returns its address.
fn serve(runtime: &tokio::runtime::Runtime, router: Router) -> SocketAddr {
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let address = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("address: {e}"));
        tokio::spawn(http_server::serve(
            listener,
            None,
            router,
            api::limits(Duration::from_secs(1)),
            std::future::pending(),
        ));
        address
    })
}

fn http(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let policy = Arc::new(ArcSwap::from_pointee(policy_with_caller()));
    // Allows unlogged, as --log-allow-rate 0 would; no subscriber anyway.
    let pdp = Pdp::new(
        policy.clone(),
        TokenCache::new(DEFAULT_TOKEN_CACHE_BYTES),
        Arc::new(|| common::NOW),
    )
    .with_decision_log(Arc::new(DecisionLog::new(
        0.0,
        LogLines::to(std::io::sink()),
    )));
    let state = ApiState {
        pdp,
        public_url: None,
        https: false,
        replay: Arc::new(Replay::Memory(Box::new(ReplayGuard::new(
            DEFAULT_REPLAY_CAPACITY,
        )))),
        bulkhead: Arc::new(
            api::bulkhead::Bulkhead::new(api::bulkhead::api_decision_threads())
                .unwrap_or_else(|e| panic!("decision threads: {e}")),
        ),
    };
    let api_address = serve(&runtime, api::router(state));
    // The same stack, a handler that answers without looking.
    let noop = Router::new().route(
        "/access/v1/evaluation",
        post(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                "{\"decision\":true}",
            )
        }),
    );
    let noop_address = serve(&runtime, noop);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4)
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));
    let one = json!({
        "subject": { "type": "user", "id": "alice" },
        "action": { "name": "read" },
        "resource": { "type": "document", "id": "1" },
    })
    .to_string();
    let items: Vec<_> = (0..100)
        .map(|i| json!({ "resource": { "type": "document", "id": i.to_string() } }))
        .collect();
    let batch = json!({
        "subject": { "type": "user", "id": "alice" },
        "action": { "name": "read" },
        "evaluations": items,
    })
    .to_string();
    let ask = |address: SocketAddr, path: &str, body: &str| {
        let request = client
            .post(format!("http://{address}{path}"))
            .header("content-type", "application/json")
            .header("x-api-key", KEY)
            .body(body.to_owned());
        runtime.block_on(async {
            let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap_or_else(|e| panic!("{e}"))
        })
    };
    assert!(ask(api_address, "/access/v1/evaluation", &one).starts_with(b"{\"decision\":true"));
    let mut group = c.benchmark_group("authzen_http");
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("noop_handler", |b| {
        b.iter(|| black_box(ask(noop_address, "/access/v1/evaluation", &one)))
    });
    group.bench_function("evaluation", |b| {
        b.iter(|| black_box(ask(api_address, "/access/v1/evaluation", &one)))
    });
    group.bench_function("evaluations_batch_100", |b| {
        b.iter(|| black_box(ask(api_address, "/access/v1/evaluations", &batch)))
    });
    let sign = json!({
        "subject": { "type": "user", "id": "alice" },
        "action": { "name": "share" },
        "resource": { "type": "document", "id": "1" },
        "audience": "bench",
        "message": MESSAGE,
    })
    .to_string();
    assert!(
        ask(api_address, "/portcullis/v1/events/sign", &sign).starts_with(b"{\"decision\":true")
    );
    group.bench_function("event_sign", |b| {
        b.iter(|| black_box(ask(api_address, "/portcullis/v1/events/sign", &sign)))
    });
    // Each verification consumes its envelope: a fresh one per iteration,
    // signed outside the measurement.
    let policy = policy.load_full();
    let fresh = || {
        let envelope = signed(&policy);
        json!({ "envelope": envelope, "message": MESSAGE }).to_string()
    };
    let verified = ask(api_address, "/portcullis/v1/events/verify", &fresh());
    assert!(verified.starts_with(b"{\"decision\":true"), "{verified:?}");
    group.bench_function("event_verify_and_check", |b| {
        b.iter_batched(
            fresh,
            |body| black_box(ask(api_address, "/portcullis/v1/events/verify", &body)),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

const MESSAGE: &str = r#"{"with":"bob"}"#;

fn alice() -> Principal {
    Principal {
        issuer: Arc::from("bench"),
        subject: "alice".into(),
        groups: Vec::new(),
        expires_at: u64::MAX,
        claims: Default::default(),
    }
}

/// alice's share of document 1, for the caller `bench`, signed at `NOW`.
fn signed(policy: &PolicySet) -> String {
    let publish = Publish {
        subject: "alice",
        idp: "bench",
        groups: &[],
        action: "share",
        resource: "document:1",
        audience: "bench",
        message_sha256: envelope::message_digest(MESSAGE.as_bytes()),
        lifetime: None,
    };
    match events::publish(policy, &alice(), &publish, common::NOW) {
        Ok(Ok(signed)) => signed.envelope,
        other => panic!("not signed: {other:?}"),
    }
}

/// Signing and verify+check without HTTP, beside the plain decision both
/// make once.
fn event_envelopes(c: &mut Criterion) {
    let policy = policy_with_caller();
    let alice = alice();
    let digest = envelope::message_digest(MESSAGE.as_bytes());
    let guard = ReplayGuard::new(DEFAULT_REPLAY_CAPACITY);
    let attributes = portcullis::engine::Attributes::default();
    let mut group = c.benchmark_group("events");
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("decide_resource_action", |b| {
        b.iter(|| {
            let request =
                portcullis::engine::Request::ResourceAction(portcullis::engine::ResourceAction {
                    principal: &alice,
                    resource: "document:1",
                    action: "share",
                    attributes: &attributes,
                });
            black_box(portcullis::engine::decide(
                &policy,
                &*policy.grants,
                &request,
                &portcullis::engine::VerifyEveryTime,
                common::NOW,
            ))
        })
    });
    group.bench_function("sign_eddsa", |b| b.iter(|| black_box(signed(&policy))));
    group.bench_function("verify_and_check_eddsa", |b| {
        b.iter_batched(
            || signed(&policy),
            |envelope| {
                let consumed =
                    events::consume(&policy, &guard, &envelope, &digest, "bench", common::NOW);
                black_box(consumed.map(|c| c.decision.is_allowed()))
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// The bundled policy plus 200k grants: 100k documents each readable by the
/// group `staff` (alice is a member), and 100k spread over 10k subjects.
fn policy_200k() -> PolicySet {
    let mut policy = common::bundled();
    let role = |name: &str| {
        policy
            .roles
            .iter()
            .position(|r| &*r.name == name)
            .unwrap_or_else(|| panic!("no role {name}")) as u32
    };
    let (viewer, editor) = (role("viewer"), role("editor"));
    let mut index = GrantIndex::builder();
    for i in 0..100_000 {
        let resource = format!("document:{i}");
        index.insert(
            Holder::Group("staff"),
            ResourceKey::Exact(&resource),
            viewer,
        );
        let subject = format!("user{}", i % 10_000);
        let spread = format!("document:{}", i % 20_000);
        index.insert(
            Holder::Subject(&subject),
            ResourceKey::Exact(&spread),
            editor,
        );
    }
    policy.grants = Box::new(index.build());
    policy
}

fn searches(c: &mut Criterion) {
    let policy = policy_200k();
    let alice = Principal {
        issuer: Arc::from("bench"),
        subject: "alice".into(),
        groups: Vec::new(),
        expires_at: u64::MAX,
        claims: Default::default(),
    };
    let first = search::resources(
        &policy,
        &*policy.grants,
        &alice,
        "read",
        "document",
        None,
        100,
        search::Circumstances::none(),
    );
    assert_eq!(first.items.len(), 100);
    let mut group = c.benchmark_group("authzen_search_200k_grants");
    group.measurement_time(Duration::from_secs(4));
    group.sample_size(20);
    group.bench_function("resources_first_page_of_100", |b| {
        b.iter(|| {
            black_box(search::resources(
                &policy,
                &*policy.grants,
                &alice,
                "read",
                "document",
                None,
                100,
                search::Circumstances::none(),
            ))
        })
    });
    group.bench_function("resources_middle_page_of_100", |b| {
        b.iter(|| {
            black_box(search::resources(
                &policy,
                &*policy.grants,
                &alice,
                "read",
                "document",
                Some("50000"),
                100,
                search::Circumstances::none(),
            ))
        })
    });
    group.bench_function("subjects_who_may_write_document_42", |b| {
        b.iter(|| {
            black_box(search::subjects(
                &policy,
                &*policy.grants,
                "document:42",
                "write",
                None,
                100,
                search::Circumstances::none(),
            ))
        })
    });
    group.bench_function("actions_of_alice_on_document_42", |b| {
        b.iter(|| {
            black_box(search::actions(
                &policy,
                &*policy.grants,
                &alice,
                "document:42",
                None,
                100,
                search::Circumstances::none(),
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, event_envelopes, searches, http);
criterion_main!(benches);
