//! The whole service in-process: `App::build` and `App::run` on listeners
//! bound to 127.0.0.1:0, as `portcullis serve` runs them, with a shutdown
//! the test controls. No child process, no environment variable: the
//! issuer's secret is a file in the test's policy directory.

use crate::support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::{copy_policies, grpc_status, send_raw, token};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use portcullis::app::{App, Exit, Listeners, ServeConfig};
use portcullis::reload::WatchConfig;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn config(policies: PathBuf) -> ServeConfig {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    ServeConfig {
        policies,
        listen: any,
        admin_listen: any,
        subject_header: "X-Portcullis-Subject".into(),
        token_cache_bytes: 1 << 20,
        token_cache_ttl: Duration::from_secs(60),
        decision_cache_bytes: 1 << 20,
        decision_cache_ttl: Duration::from_secs(60),
        log_allow_rate: 1.0,
        log_lines: None,
        drain: Duration::from_secs(5),
        watch: WatchConfig {
            watch_files: false,
            debounce: Duration::from_millis(50),
        },
        tls: None,
        api: None,
        grants_db: None,
        shadow_policies: None,
        console: None,
    }
}

/// The bundled policies, the demo secret in a file (as every copy has it).
fn policies() -> tempfile::TempDir {
    copy_policies(|_, text| text)
}

async fn health(address: SocketAddr) -> i32 {
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
        .unwrap()
}

#[tokio::test]
async fn the_service_runs_in_process_and_drains_on_shutdown() {
    let dir = policies();
    let app = App::build(config(dir.path().to_path_buf())).unwrap();
    let bind = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let listeners = Listeners {
        grpc: bind().await,
        admin: bind().await,
        api: None,
        console: None,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let (listening, addresses) = oneshot::channel::<(SocketAddr, SocketAddr)>();
    let running = tokio::spawn(app.run(
        listeners,
        async {
            let _ = stopped.await;
        },
        move |grpc, admin| {
            let _ = listening.send((grpc, admin));
        },
    ));
    let (grpc, admin) = addresses.await.unwrap();

    assert_eq!(health(grpc).await, ServingStatus::Serving as i32);
    let ready = tokio::task::spawn_blocking(move || send_raw(admin.port(), "GET", b"/ready", &[]))
        .await
        .unwrap();
    assert_eq!(ready.status, 200);
    let channel = Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AuthorizationClient::new(channel);
    let alice = format!("Bearer {}", token("alice"));
    let allow = support::check_request("GET", "/documents/1", Some(&alice), "app-1");
    assert_eq!(grpc_status(&mut client, allow).await, 200);
    let deny = support::check_request("DELETE", "/documents/2", Some(&alice), "app-2");
    assert_eq!(grpc_status(&mut client, deny).await, 403);

    let _ = stop.send(());
    let exit = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the service did not stop within its drain bound")
        .unwrap();
    assert_eq!(exit, Exit::Ok);
}

#[test]
fn contradicting_settings_are_a_usage_error_and_bad_policies_a_config_error() {
    let dir = policies();
    let mut same_port = config(dir.path().to_path_buf());
    same_port.listen = "127.0.0.1:9999".parse().unwrap();
    same_port.admin_listen = same_port.listen;
    assert_eq!(App::build(same_port).err(), Some(Exit::Usage));

    let mut bad_header = config(dir.path().to_path_buf());
    bad_header.subject_header = "x subject".into();
    assert_eq!(App::build(bad_header).err(), Some(Exit::Usage));

    std::fs::write(dir.path().join("broken.yaml"), "roles: [not, a, map]\n").unwrap();
    assert_eq!(
        App::build(config(dir.path().to_path_buf())).err(),
        Some(Exit::Config)
    );
}
