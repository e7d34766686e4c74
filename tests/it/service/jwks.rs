//! Keys fetched from a JWKS URL: a test IdP on 127.0.0.1 serves the key
//! set, and the real binary verifies tokens against it. Rotation, an IdP
//! that is down, a flood of random key ids, readiness and gRPC health, a
//! redirect, and a verification with removed keys that races the clearing
//! of the caches.

use crate::support;

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::support::{check_request, grpc_client, grpc_status, send_raw, Portcullis};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use portcullis::adapter::{self, ResponseConfig};
use portcullis::decision_cache::DecisionCache;
use portcullis::engine::{self, DenyStatus, Effect, Reason, VerifyEveryTime};
use portcullis::policy::load_policies;
use portcullis::server::Authorizer;
use portcullis::token::{jwk_keys, TokenError};
use portcullis::token_cache::TokenCache;
use portcullis_testkit::{unix_now, Claims, Signer};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const ISSUER: &str = "https://idp.test";

/// Two P-256 signing keys, made once per test binary.
fn signers() -> &'static [Signer; 2] {
    static KEYS: OnceLock<[Signer; 2]> = OnceLock::new();
    KEYS.get_or_init(|| [Signer::es256(), Signer::es256()])
}

/// Key `signer` under `kid`.
fn keyed(signer: usize, kid: &str) -> Signer {
    signers()[signer].clone().with_kid(kid)
}

fn jwk(signer: usize, kid: &str) -> Jwk {
    keyed(signer, kid).jwk()
}

fn jwks(keys: &[(usize, &str)]) -> String {
    let set = JwkSet {
        keys: keys.iter().map(|(signer, kid)| jwk(*signer, kid)).collect(),
    };
    serde_json::to_string(&set).unwrap()
}

/// A token of the test IdP for `sub`, valid for 10 minutes by the wall
/// clock (the binary under test reads it).
fn token(signer: usize, kid: &str, sub: &str) -> String {
    let claims = Claims {
        iat_offset: None,
        ..Claims::new(ISSUER, "api", sub, unix_now()).ttl(600)
    };
    claims.sign(&keyed(signer, kid))
}

/// A JWKS endpoint whose document, status and `Location` the test controls.
struct Idp {
    port: u16,
    document: Arc<Mutex<(u16, String)>>,
    location: Arc<Mutex<Option<String>>>,
    fetches: Arc<AtomicUsize>,
}

impl Idp {
    async fn start(document: String) -> Idp {
        let (listener, port) = support::bind_loopback().await;
        let document = Arc::new(Mutex::new((200u16, document)));
        let location: Arc<Mutex<Option<String>>> = Arc::default();
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (document.clone(), fetches.clone());
        let redirect = location.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (served, counted) = (served.clone(), counted.clone());
                let redirect = redirect.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_: Request<Incoming>| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = served
                            .lock()
                            .map(|d| d.clone())
                            .unwrap_or((500, String::new()));
                        let location = redirect.lock().map(|l| l.clone()).unwrap_or(None);
                        async move {
                            let mut response = Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .header("cache-control", "max-age=1");
                            if let Some(location) = location {
                                response = response.header("location", location);
                            }
                            let response = response.body(Full::new(Bytes::from(body))).unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Idp {
            port,
            document,
            location,
            fetches,
        }
    }

    /// Answers every fetch with `status` and `Location: to`.
    fn redirect(&self, status: u16, to: String) {
        self.serve(status, String::new());
        if let Ok(mut location) = self.location.lock() {
            *location = Some(to);
        }
    }

    fn serve(&self, status: u16, body: String) {
        if let Ok(mut document) = self.document.lock() {
            *document = (status, body);
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// A policy with one issuer reading `url`, and one route any verified subject may use.
fn policy(url: &str, refresh: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "issuers:\n  - name: idp\n    issuer: {ISSUER}\n    audiences: [api]\n    algorithms: [ES256]\n    key:\n      jwks_url: {url}\n      refresh: {refresh}\napplications:\n  - name: api\n    select: {{ path_prefixes: [/api] }}\n    routes:\n      - {{ name: whoami, methods: [GET], path: /api/whoami, access: authenticated }}\n"
    );
    std::fs::write(dir.path().join("policy.yaml"), text).unwrap();
    dir
}

async fn status_of(port: u16, token: &str) -> i32 {
    let mut client = grpc_client(port).await;
    let bearer = format!("Bearer {token}");
    grpc_status(
        &mut client,
        check_request("GET", "/api/whoami", Some(&bearer), "jwks"),
    )
    .await
}

/// Polls until `/ready` answers `want` (bounded).
async fn wait_ready(admin: u16, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status =
            tokio::task::spawn_blocking(move || send_raw(admin, "GET", b"/ready", &[]).status)
                .await
                .unwrap_or(0);
        if status == want {
            return;
        }
        assert!(Instant::now() < deadline, "/ready never answered {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls a check until it answers `want` (bounded); returns the time it took.
async fn wait_status(port: u16, token: &str, want: i32) -> Duration {
    let started = Instant::now();
    loop {
        if status_of(port, token).await == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never answered {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_new_kid_accepted_and_removed_key_refused() {
    let idp = Idp::start(jwks(&[(0, "k1")])).await;
    let url = format!("http://127.0.0.1:{}/jwks", idp.port);
    let dir = policy(
        &url,
        "{ min_seconds: 1, max_seconds: 1, unknown_kid_seconds: 1 }",
    );
    let portcullis = Portcullis::start(dir.path());
    wait_ready(portcullis.admin_port(), 200).await;
    assert_eq!(
        status_of(portcullis.port(), &token(0, "k1", "alice")).await,
        200
    );

    // The IdP adds k2 and signs with it: accepted once the set has it.
    idp.serve(200, jwks(&[(0, "k1"), (1, "k2")]));
    let took = wait_status(portcullis.port(), &token(1, "k2", "alice"), 200).await;
    eprintln!("new kid accepted {took:?} after the IdP published it");
    // A token naming k2 but signed with k1's key is still refused.
    assert_eq!(
        status_of(portcullis.port(), &token(0, "k2", "alice")).await,
        401
    );

    // The IdP drops k1: tokens signed with it stop working, cached or not.
    idp.serve(200, jwks(&[(1, "k2")]));
    wait_status(portcullis.port(), &token(0, "k1", "alice"), 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_token_signed_with_a_rotated_key_is_accepted() {
    let idp = Idp::start(jwks(&[(0, "k1")])).await;
    let url = format!("http://127.0.0.1:{}/jwks", idp.port);
    // No periodic refresh during the test: only an unknown kid can fetch.
    let dir = policy(
        &url,
        "{ min_seconds: 3600, max_seconds: 3600, unknown_kid_seconds: 1 }",
    );
    let portcullis = Portcullis::start(dir.path());
    wait_ready(portcullis.admin_port(), 200).await;
    assert_eq!(idp.fetches(), 1);
    // Past the unknown-kid interval since the fetch at start.
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    idp.serve(200, jwks(&[(0, "k1"), (1, "k2")]));
    // The check waits for the refetch its unknown kid asked for, then
    // verifies again: the very first request is answered 200, not 401.
    assert_eq!(
        status_of(portcullis.port(), &token(1, "k2", "alice")).await,
        200
    );
    assert_eq!(idp.fetches(), 2);

    // Right after that fetch the interval limits refetches again: a kid
    // the IdP does not have is refused without a fetch.
    assert_eq!(
        status_of(portcullis.port(), &token(1, "k3", "alice")).await,
        401
    );
    assert_eq!(idp.fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_that_is_down_leaves_the_last_good_keys() {
    let idp = Idp::start(jwks(&[(0, "k1")])).await;
    let url = format!("http://127.0.0.1:{}/jwks", idp.port);
    let dir = policy(&url, "{ min_seconds: 1, max_seconds: 1 }");
    let portcullis = Portcullis::start(dir.path());
    let admin = portcullis.admin_port();
    wait_ready(admin, 200).await;
    idp.serve(503, "down".into());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics =
            tokio::task::spawn_blocking(move || send_raw(admin, "GET", b"/metrics", &[]).text())
                .await
                .unwrap_or_default();
        if metrics.contains("portcullis_jwks_fetches_total{result=\"failure\"} 2") {
            break;
        }
        assert!(Instant::now() < deadline, "no failed fetches:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status_of(portcullis.port(), &token(0, "k1", "bob")).await,
        200
    );
    wait_ready(admin, 200).await;
    support::wait_for_log(|| portcullis.log(), "keeping the last good keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_kids_is_not_a_flood_of_fetches() {
    let idp = Idp::start(jwks(&[(0, "k1")])).await;
    let url = format!("http://127.0.0.1:{}/jwks", idp.port);
    // No periodic refresh during the test: every fetch after the first is
    // one an unknown kid asked for, at most one per second.
    let dir = policy(
        &url,
        "{ min_seconds: 3600, max_seconds: 3600, unknown_kid_seconds: 1 }",
    );
    let started = Instant::now();
    let portcullis = Portcullis::start(dir.path());
    wait_ready(portcullis.admin_port(), 200).await;
    assert_eq!(idp.fetches(), 1);
    let mut client = grpc_client(portcullis.port()).await;
    let flood = |i: usize| format!("Bearer {}", token(0, &format!("random-{i}"), "mallory"));
    for i in 0..300 {
        let status = grpc_status(
            &mut client,
            check_request("GET", "/api/whoami", Some(&flood(i)), "flood"),
        )
        .await;
        assert_eq!(status, 401);
    }
    // The flood's refetch is deferred, not dropped: wait for it (bounded),
    // still asking with unknown kids so a request is always pending.
    let mut i = 300;
    while idp.fetches() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "an unknown kid never caused a refetch"
        );
        i += 1;
        let status = grpc_status(
            &mut client,
            check_request("GET", "/api/whoami", Some(&flood(i)), "flood"),
        )
        .await;
        assert_eq!(status, 401);
    }
    // At most one fetch per unknown-kid interval since the process started
    // (the first fetch came after `started`): the count is bounded by the
    // time the test took, which only grows on a slow machine, so this
    // cannot fail by accident, and `i` requests could not pass it.
    let intervals = started.elapsed().as_secs() + 1;
    let fetches = idp.fetches();
    assert!(
        fetches as u64 <= 1 + intervals,
        "{i} unknown kids caused {fetches} fetches in {intervals} s"
    );
    assert_eq!(
        status_of(portcullis.port(), &token(0, "k1", "alice")).await,
        200
    );
}

/// gRPC health of the ext_authz service, as Envoy's health checker asks.
async fn health_of(port: u16) -> i32 {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_first_key_set_is_loaded() {
    let idp = Idp::start(String::new()).await;
    idp.serve(500, "not yet".into());
    let url = format!("http://127.0.0.1:{}/jwks", idp.port);
    let dir = policy(&url, "{ min_seconds: 1, max_seconds: 1 }");
    let portcullis = Portcullis::start(dir.path());
    wait_ready(portcullis.admin_port(), 503).await;
    // gRPC health says what /ready says.
    assert_eq!(
        health_of(portcullis.port()).await,
        ServingStatus::NotServing as i32
    );
    assert_eq!(
        status_of(portcullis.port(), &token(0, "k1", "alice")).await,
        401
    );
    idp.serve(200, jwks(&[(0, "k1")]));
    wait_ready(portcullis.admin_port(), 200).await;
    assert_eq!(
        health_of(portcullis.port()).await,
        ServingStatus::Serving as i32
    );
    assert_eq!(
        status_of(portcullis.port(), &token(0, "k1", "alice")).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_behind_a_redirect_are_not_used() {
    // The keys are served, but only behind a redirect (here to another
    // port; to another host or down to http it would be the same).
    let target = Idp::start(jwks(&[(0, "k1")])).await;
    let redirector = Idp::start(String::new()).await;
    redirector.redirect(302, format!("http://127.0.0.1:{}/jwks", target.port));
    let url = format!("http://127.0.0.1:{}/jwks", redirector.port);
    let dir = policy(&url, "{ min_seconds: 1, max_seconds: 1 }");
    let portcullis = Portcullis::start(dir.path());
    let admin = portcullis.admin_port();
    // A redirect is a failed fetch, counted like any other.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics =
            tokio::task::spawn_blocking(move || send_raw(admin, "GET", b"/metrics", &[]).text())
                .await
                .unwrap_or_default();
        if metrics.contains("portcullis_jwks_fetches_total{result=\"failure\"} 2") {
            assert!(
                !metrics.contains("portcullis_jwks_fetches_total{result=\"success\"}"),
                "{metrics}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no failed fetches:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(redirector.fetches() >= 2);
    assert_eq!(target.fetches(), 0, "the redirect was followed");
    let ready = tokio::task::spawn_blocking(move || send_raw(admin, "GET", b"/ready", &[]).status)
        .await
        .unwrap_or(0);
    assert_eq!(ready, 503);
    assert_eq!(
        status_of(portcullis.port(), &token(0, "k1", "alice")).await,
        401
    );
    support::wait_for_log(|| portcullis.log(), "keeping the last good keys");
    let log = support::wait_for_log(|| portcullis.log(), "redirects are refused");
    assert!(
        log.contains("redirects are refused") && log.contains("keeping the last good keys"),
        "{}",
        support::tail(&log, 20)
    );
}

#[test]
fn a_verification_with_removed_keys_filed_after_the_clear_is_never_served() {
    let dir = policy("https://idp.example.com/jwks", "{}");
    let policy = load_policies(dir.path()).unwrap();
    let remote = policy
        .issuers
        .remote_key_sets()
        .next()
        .expect("no remote key set")
        .clone();
    // What the fetcher does with a document it fetched.
    let publish = |keys: &[(usize, &str)]| {
        let document = jwks(keys);
        let set: JwkSet = serde_json::from_str(&document).unwrap();
        remote.publish(
            jwk_keys(&set, remote.family),
            Sha256::digest(document.as_bytes()).into(),
        )
    };
    assert!(publish(&[(0, "k1")]));
    let version = policy.version.clone();
    let handle = Arc::new(arc_swap::ArcSwap::from_pointee(policy));
    let tokens = TokenCache::new(100);
    let decisions = DecisionCache::new(100, Duration::from_secs(60));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let authorizer = Authorizer::new(
        handle.clone(),
        tokens.clone(),
        ResponseConfig::default(),
        Arc::new(move || now),
    )
    .with_decision_cache(decisions.clone());
    let bearer = format!("Bearer {}", token(0, "k1", "alice"));
    let request = check_request("GET", "/api/whoami", Some(&bearer), "race");
    let attrs = adapter::request_attrs(&request).unwrap();
    let engine::Credential::Bearer(raw) = &attrs.credential else {
        panic!("no bearer token in {attrs:?}");
    };

    // A check begins: it computes where its results go, and the keys it
    // reads still hold k1.
    let policy = handle.load_full();
    let token_key = TokenCache::key(&policy.issuers, &version, raw);
    let epoch = TokenCache::key_epoch(&policy.issuers);
    let decision_key = DecisionCache::key(&version, epoch, &attrs);
    let principal = policy.issuers.verify(&[0], raw, now).unwrap();
    let decision = engine::decide(
        &policy,
        &*policy.grants,
        &engine::Request::Http(&attrs),
        &VerifyEveryTime,
        now,
    );
    assert!(decision.is_allowed(), "{decision:?}");

    // Meanwhile the IdP drops k1: the fetcher publishes the new set and
    // clears both caches.
    assert!(publish(&[(1, "k2")]));
    tokens.clear();
    decisions.clear();

    // Then the check files what it found with the old keys.
    tokens.remember(token_key, Arc::new(principal));
    decisions.insert(decision_key, &Arc::new(decision));

    // No later check is answered from either entry.
    assert_eq!(
        tokens
            .verify(&policy.issuers, &version, &[0], raw, now)
            .map(|p| p.subject.clone()),
        Err(TokenError::UnknownKey)
    );
    let (decision, _) = portcullis_testkit::ready(authorizer.check_request(&request));
    assert_eq!(
        decision.effect,
        Effect::Deny(DenyStatus::Unauthorized),
        "{decision:?}"
    );
    assert_eq!(
        decision.reason,
        Reason::InvalidToken(TokenError::UnknownKey)
    );
}

#[test]
fn jwks_urls_are_checked_when_loading() {
    let load = |url: &str, algorithms: &str| {
        let dir = policy(url, "{}");
        let path = dir.path().join("policy.yaml");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, text.replace("[ES256]", algorithms)).unwrap();
        load_policies(Path::new(dir.path()))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert_eq!(load("https://idp.example.com/jwks", "[ES256]"), Ok(()));
    assert_eq!(load("http://127.0.0.1:9/jwks", "[ES256]"), Ok(()));
    assert_eq!(load("http://localhost:9/jwks", "[ES256]"), Ok(()));
    let refused = [
        ("http://idp.example.com/jwks", "[ES256]", "must use https"),
        ("http://10.0.0.1/jwks", "[ES256]", "must use https"),
        (
            "ftp://idp.example.com/jwks",
            "[ES256]",
            "must be an https URL",
        ),
        ("not a url", "[ES256]", "is not a URL"),
        (
            "https://idp.example.com/jwks",
            "[HS256]",
            "pin RS, PS, ES or EdDSA",
        ),
    ];
    for (url, algorithms, message) in refused {
        let result = load(url, algorithms);
        assert!(
            result.as_ref().is_err_and(|e| e.contains(message)),
            "{url} {algorithms}: {result:?}"
        );
    }
}
