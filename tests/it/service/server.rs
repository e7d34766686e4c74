//! Server tests: the real gRPC server on a 127.0.0.1 socket, called by a
//! real tonic client, as Envoy would call it.

use crate::support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::support::grpc_status;
use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use portcullis::adapter::ResponseConfig;
use portcullis::policy::load_policies;
use portcullis::server::{self, Authorizer};
use portcullis::token_cache::TokenCache;
use portcullis_testkit::{Claims, Signer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const SECRET: &str = "server-test-secret-0123456789abcdef-xyz";
const START: u64 = 1_800_000_000;

struct Running {
    address: std::net::SocketAddr,
    clock: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn start() -> Running {
    let dir = portcullis_testkit::bundled_with_secret(SECRET);
    let policy = load_policies(dir.path()).unwrap();
    let clock = Arc::new(AtomicU64::new(START));
    let now = clock.clone();
    let authorizer = Authorizer::new(
        Arc::new(ArcSwap::from_pointee(policy)),
        TokenCache::new(100),
        ResponseConfig::default(),
        Arc::new(move || now.load(Ordering::SeqCst)),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(server::run(listener, authorizer, async {
        let _ = stopped.await;
    }));
    Running {
        address,
        clock,
        stop: Some(stop),
        done,
    }
}

async fn channel(address: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A demo-issuer token for `sub` that expires at `exp`.
fn token(sub: &str, exp: u64) -> String {
    let claims = Claims {
        iat_offset: None,
        exp_offset: None,
        ..Claims::demo(sub, START)
    }
    .claim("exp", serde_json::json!(exp));
    claims.sign(&Signer::hs256(SECRET.as_bytes()))
}

/// A check as Envoy sends it, with `token` as a bearer token.
fn check_request(method: &str, path: &str, token: Option<&str>) -> CheckRequest {
    let authorization = token.map(|t| format!("Bearer {t}"));
    support::check_request(method, path, authorization.as_deref(), "server-test")
}

#[tokio::test]
async fn checks_over_a_real_socket() {
    let running = start().await;
    let mut client = AuthorizationClient::new(channel(running.address).await);
    let alice = token("alice", START + 60);
    assert_eq!(
        grpc_status(
            &mut client,
            check_request("GET", "/documents/1", Some(&alice))
        )
        .await,
        200
    );
    assert_eq!(
        grpc_status(
            &mut client,
            check_request("DELETE", "/documents/2", Some(&alice))
        )
        .await,
        403
    );
    assert_eq!(
        grpc_status(&mut client, check_request("GET", "/documents/1", None)).await,
        401
    );
    assert_eq!(
        grpc_status(&mut client, check_request("GET", "/healthz", None)).await,
        200
    );
    assert_eq!(
        grpc_status(
            &mut client,
            check_request("GET", "/documents/1/%2e%2e/2", Some(&alice))
        )
        .await,
        400
    );
    // An empty CheckRequest is denied, not an error.
    assert_eq!(grpc_status(&mut client, CheckRequest::default()).await, 403);
}

#[tokio::test]
async fn a_cached_token_stops_working_when_it_expires() {
    let running = start().await;
    let mut client = AuthorizationClient::new(channel(running.address).await);
    let alice = token("alice", START + 60);
    assert_eq!(
        grpc_status(
            &mut client,
            check_request("GET", "/documents/1", Some(&alice))
        )
        .await,
        200
    );
    // Within the 30 s leeway the token still works; after it, it does not,
    // although it sits in the verified-token cache.
    running.clock.store(START + 60 + 30, Ordering::SeqCst);
    assert_eq!(
        grpc_status(
            &mut client,
            check_request("GET", "/documents/1", Some(&alice))
        )
        .await,
        200
    );
    running.clock.store(START + 60 + 31, Ordering::SeqCst);
    assert_eq!(
        grpc_status(
            &mut client,
            check_request("GET", "/documents/1", Some(&alice))
        )
        .await,
        401
    );
}

#[tokio::test]
async fn health_reports_serving() {
    let running = start().await;
    let mut health = HealthClient::new(channel(running.address).await);
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{service:?}: {e}"))
            .into_inner();
        assert_eq!(
            response.status,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await;
    assert!(unknown.is_err());
}

#[tokio::test]
async fn shutdown_stops_the_server_and_refuses_new_connections() {
    let mut running = start().await;
    let mut client = AuthorizationClient::new(channel(running.address).await);
    let alice = token("alice", START + 60);
    assert_eq!(
        grpc_status(
            &mut client,
            check_request("GET", "/documents/1", Some(&alice))
        )
        .await,
        200
    );
    drop(client);
    if let Some(stop) = running.stop.take() {
        let _ = stop.send(());
    }
    let result = tokio::time::timeout(std::time::Duration::from_secs(10), running.done)
        .await
        .expect("the server did not stop")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    let refused = Channel::from_shared(format!("http://{}", running.address))
        .unwrap()
        .connect()
        .await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn health_turns_not_serving_when_shutdown_begins() {
    let mut running = start().await;
    let mut health = HealthClient::new(channel(running.address).await);
    let request = || HealthCheckRequest {
        service: "envoy.service.auth.v3.Authorization".into(),
    };
    let mut watch = health.watch(request()).await.unwrap().into_inner();
    let bounded = std::time::Duration::from_secs(10);
    let first = tokio::time::timeout(bounded, watch.message())
        .await
        .expect("no first health message")
        .unwrap()
        .map(|m| m.status);
    assert_eq!(first, Some(ServingStatus::Serving as i32));

    if let Some(stop) = running.stop.take() {
        let _ = stop.send(());
    }
    // The watcher hears NOT_SERVING, then its stream ends, so it does not
    // hold the drain open.
    let next = tokio::time::timeout(bounded, watch.message())
        .await
        .expect("health never turned NOT_SERVING")
        .unwrap()
        .map(|m| m.status);
    assert_eq!(next, Some(ServingStatus::NotServing as i32));
    let end = tokio::time::timeout(bounded, watch.message())
        .await
        .expect("the watch stream did not end");
    assert!(matches!(end, Ok(None)), "{end:?}");
    let result = tokio::time::timeout(bounded, running.done)
        .await
        .expect("the server did not stop")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}
