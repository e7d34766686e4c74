//! Portcullis per pod without Istio: the shipped `envoy/per-pod.yaml` (what
//! `k8s/overlays/per-pod` mounts into the application's Envoy) in front of
//! a real `portcullis serve` on 127.0.0.1, as the container beside it runs.
//!
//! The config is used as shipped but for its port numbers: the listener and
//! admin ports become ephemeral (and the listener binds 127.0.0.1 rather than
//! the pod's every address), Portcullis's and the application's ports become
//! the ones the test's processes got. Addresses, cluster types and every
//! filter stay as they are: the ext_authz cluster must already be 127.0.0.1.

use portcullis::cases::Deployment;

use crate::support::probes::{Expect, Probes, Target};
use crate::support::{
    bearer, bundled_policies, corpus, find_envoy, repo_path, send_raw, tail, token, EchoUpstream,
    Envoy, Portcullis, Response,
};

const PER_POD: &str = "envoy/per-pod.yaml";
const SIDECAR: &str = "envoy/sidecar.yaml";

fn parse(path: &str) -> serde_yaml::Value {
    let text = std::fs::read_to_string(repo_path(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn cluster_mut<'a>(config: &'a mut serde_yaml::Value, name: &str) -> &'a mut serde_yaml::Value {
    config["static_resources"]["clusters"]
        .as_sequence_mut()
        .expect("no clusters")
        .iter_mut()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

fn socket_address(cluster: &mut serde_yaml::Value) -> &mut serde_yaml::Value {
    &mut cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"]
}

/// The per-pod config is the plain sidecar's but for the `portcullis`
/// cluster: a change to envoy/sidecar.yaml's hardening that is not carried
/// over fails here.
#[test]
fn per_pod_differs_from_the_sidecar_only_in_the_portcullis_cluster() {
    let sidecar = parse(SIDECAR);
    let mut per_pod = parse(PER_POD);
    let theirs = sidecar["static_resources"]["clusters"]
        .as_sequence()
        .expect("clusters")
        .iter()
        .find(|c| c["name"].as_str() == Some("portcullis"))
        .expect("the sidecar's portcullis cluster")
        .clone();
    let ours = cluster_mut(&mut per_pod, "portcullis");
    assert_eq!(ours["type"].as_str(), Some("STATIC"));
    assert_eq!(
        socket_address(ours)["address"].as_str(),
        Some("127.0.0.1"),
        "the per-pod ext_authz cluster must be the pod's loopback"
    );
    *ours = theirs;
    assert!(
        per_pod == sidecar,
        "{PER_POD} differs from {SIDECAR} beyond the portcullis cluster"
    );
}

/// The pod: its Envoy (the shipped per-pod config), Portcullis on
/// 127.0.0.1, the application.
struct Pod {
    // Declared in shutdown order: the proxy first.
    envoy: Envoy,
    portcullis: Portcullis,
    upstream: EchoUpstream,
}

impl Pod {
    fn start() -> Pod {
        let envoy_bin = find_envoy();
        let upstream = EchoUpstream::start();
        let portcullis = Portcullis::start(&bundled_policies());
        let mut config = parse(PER_POD);
        config["admin"]["address"]["socket_address"]["port_value"] = 0.into();
        let listener = &mut config["static_resources"]["listeners"][0]["address"]["socket_address"];
        listener["address"] = "127.0.0.1".into();
        listener["port_value"] = 0.into();
        for (name, port) in [("portcullis", portcullis.port()), ("app", upstream.port())] {
            let address = socket_address(cluster_mut(&mut config, name));
            assert_eq!(
                address["address"].as_str(),
                Some("127.0.0.1"),
                "{PER_POD}: cluster {name} is not on the pod's loopback"
            );
            address["port_value"] = port.into();
        }
        let rendered = serde_yaml::to_string(&config).expect("yaml");
        let envoy = Envoy::start(&envoy_bin, &rendered);
        Pod {
            envoy,
            portcullis,
            upstream,
        }
    }
}

impl Target for Pod {
    fn send(&self, method: &str, path: &[u8], headers: &[(&str, &str)]) -> Response {
        send_raw(self.envoy.listener_port("inbound"), method, path, headers)
    }

    fn upstream(&self) -> &EchoUpstream {
        &self.upstream
    }

    fn logs(&self) -> String {
        format!(
            "--- envoy (tail) ---\n{}\n--- portcullis (tail) ---\n{}",
            tail(&self.envoy.log(), 30),
            tail(&self.portcullis.log(), 30)
        )
    }
}

/// The decision case corpus through the per-pod Envoy: every request case
/// the front proxy can express comes back as the engine decided it (the
/// per-pod Envoy has the front proxy's hardening and names the application
/// in context_extensions the same way), plus the bundled policy's basic three.
#[test]
fn the_case_corpus_through_the_per_pod_envoy() {
    let pod = Pod::start();
    let mut p = Probes::new(&pod);
    p.bundled_basics();
    corpus::send_through(
        &mut p,
        Deployment::FrontProxy,
        |request| {
            let documents = request.context_extensions.is_empty()
                || request.context_extensions.get("app").map(|a| &**a) == Some("documents")
                    && request.context_extensions.len() == 1;
            documents && request.destination.is_empty()
        },
        50,
    );
    p.finish();
}

/// Portcullis gone from the pod: the pod's Envoy fails closed (503), and
/// nothing reaches the application; the health route still answers.
#[test]
fn the_per_pod_envoy_fails_closed_without_its_portcullis() {
    let mut pod = Pod::start();
    let alice = bearer(&token("alice"));
    let allowed = pod.send("GET", b"/documents/1", &[("authorization", &alice)]);
    assert_eq!(allowed.status, 200, "{}", pod.logs());
    let seen = pod.upstream.requests().len();
    pod.portcullis.kill();
    let mut p = Probes::new(&pod);
    p.check(
        "alice reads 1, Portcullis gone",
        "GET",
        b"/documents/1",
        Some(&alice),
        &[],
        Expect::Status(503),
    );
    p.check(
        "health, Portcullis gone",
        "GET",
        b"/healthz",
        None,
        &[],
        Expect::Allow(None),
    );
    p.finish();
    assert_eq!(
        pod.upstream
            .requests()
            .iter()
            .filter(|r| r.path_only() == "/documents/1")
            .count(),
        seen,
        "a request reached the application without a decision"
    );
}
