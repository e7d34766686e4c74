//! Live policies: the real binary reloads its directory on file changes and
//! SIGHUP, keeps the last good policy when a new one does not load, and a
//! revoked grant stops working on the first check after the reload, with
//! every cache on (through Envoy too: `e2e::reload`).

use crate::support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{
    bearer, check_request, copy_policies, grpc_client, grpc_status, ready_version, token,
    wait_for_new_version, Portcullis,
};
use crate::support::{inode, inotify_watched_inodes, metric};

const BOB_GRANT: &str = "  - subject: bob\n    role: viewer\n    resource: document:1\n";

pub(crate) fn without_bob(text: &str) -> String {
    assert!(text.contains(BOB_GRANT), "grants.yaml changed shape");
    text.replace(BOB_GRANT, "")
}

pub(crate) fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

pub(crate) fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap();
}

/// A counter on `/metrics`; 0 before its first increment.
fn counter(admin: u16, series: &str) -> f64 {
    metric(admin, series).unwrap_or(0.0)
}

#[tokio::test]
async fn a_broken_or_half_written_file_keeps_the_last_good_policy() {
    let dir = copy_policies(|_, text| text);
    let portcullis = Portcullis::start(dir.path());
    let admin = portcullis.admin_port();
    let mut grpc = grpc_client(portcullis.port()).await;
    let bob = bearer(&token("bob"));
    let check = || check_request("GET", "/documents/1", Some(&bob), "reload");
    assert_eq!(grpc_status(&mut grpc, check()).await, 200);
    let good = ready_version(admin).expect("not ready");

    // Broken YAML over a good file: still served, the error logged with its line.
    let grants = read(dir.path(), "grants.yaml");
    let failures = counter(admin, "portcullis_policy_loads_total{result=\"failure\"}");
    write(
        dir.path(),
        "grants.yaml",
        &grants.replace("grants:\n", "grants:\n  - [unclosed\n"),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter(admin, "portcullis_policy_loads_total{result=\"failure\"}") <= failures {
        assert!(Instant::now() < deadline, "the broken file was not noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ready_version(admin).as_deref(), Some(good.as_str()));
    assert_eq!(grpc_status(&mut grpc, check()).await, 200);
    let log = support::wait_for_log(|| portcullis.log(), "still serving the last good policy");
    assert!(log.contains("grants.yaml:"), "{log}");

    // Half a file (cut inside a grant) is just as broken.
    let revoked = without_bob(&grants);
    let failures = counter(admin, "portcullis_policy_loads_total{result=\"failure\"}");
    write(dir.path(), "grants.yaml", &revoked[..revoked.len() / 2]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter(admin, "portcullis_policy_loads_total{result=\"failure\"}") <= failures {
        assert!(
            Instant::now() < deadline,
            "the half-written file was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ready_version(admin).as_deref(), Some(good.as_str()));
    assert_eq!(grpc_status(&mut grpc, check()).await, 200);

    // The rest of the file arrives: the fix is picked up.
    write(dir.path(), "grants.yaml", &revoked);
    let found = tokio::task::spawn_blocking(move || {
        wait_for_new_version(admin, &good, Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert!(found.is_some(), "the fixed file was not loaded");
    assert_eq!(grpc_status(&mut grpc, check()).await, 403);
}

/// Kubernetes mounts a ConfigMap as links into `..data`, itself a link to
/// a timestamped folder that an update replaces with one atomic rename.
#[tokio::test]
async fn a_configmap_style_symlink_swap_is_picked_up() {
    let root = tempfile::tempdir().unwrap();
    let first = root.path().join("..2026_11_26_01");
    let source = copy_policies(|_, text| text);
    std::fs::create_dir(&first).unwrap();
    let names: Vec<String> = std::fs::read_dir(source.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    for name in &names {
        std::fs::copy(source.path().join(name), first.join(name)).unwrap();
        std::os::unix::fs::symlink(Path::new("..data").join(name), root.path().join(name)).unwrap();
    }
    std::os::unix::fs::symlink("..2026_11_26_01", root.path().join("..data")).unwrap();

    let portcullis = Portcullis::start(root.path());
    let admin = portcullis.admin_port();
    let mut grpc = grpc_client(portcullis.port()).await;
    let bob = bearer(&token("bob"));
    assert_eq!(
        grpc_status(
            &mut grpc,
            check_request("GET", "/documents/1", Some(&bob), "cm")
        )
        .await,
        200
    );
    let old = ready_version(admin).expect("not ready");

    let second = root.path().join("..2026_11_26_02");
    std::fs::create_dir(&second).unwrap();
    for name in &names {
        let text = read(&first, name);
        let text = if name == "grants.yaml" {
            without_bob(&text)
        } else {
            text
        };
        write(&second, name, &text);
    }
    std::os::unix::fs::symlink("..2026_11_26_02", root.path().join("..data_tmp")).unwrap();
    std::fs::rename(root.path().join("..data_tmp"), root.path().join("..data")).unwrap();

    let found = tokio::task::spawn_blocking(move || {
        wait_for_new_version(admin, &old, Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert!(
        found.is_some(),
        "the swap was not picked up:\n{}",
        portcullis.log()
    );
    assert_eq!(
        grpc_status(
            &mut grpc,
            check_request("GET", "/documents/1", Some(&bob), "cm")
        )
        .await,
        403
    );
}

/// Successful policy loads `/metrics` reports (the first and each reload
/// that published a new version).
const LOADS: &str = "portcullis_policy_loads_total{result=\"success\"}";

fn loads(admin: u16) -> f64 {
    metric(admin, LOADS).unwrap_or_else(|| panic!("/metrics has no {LOADS}"))
}

/// "policy reloaded" lines of a log, with their trigger.
fn reloads(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("policy reloaded"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn sighup_reloads_when_watching_is_off() {
    let dir = copy_policies(|_, text| text);
    let watched = inode(dir.path());
    // The probe sees a watch where there is one, so its silence below
    // means something.
    {
        let watching = Portcullis::start(dir.path());
        assert!(
            inotify_watched_inodes(watching.pid()).contains(&watched),
            "a watching process shows no inotify watch on its directory"
        );
    }
    let portcullis = Portcullis::start_with_env(dir.path(), &[("PORTCULLIS_WATCH", "false")]);
    let admin = portcullis.admin_port();
    // Not watching, proven at once: the watchers are set up before the
    // process announces its ports, and it holds no inotify watch at all.
    // So no file event can reload it; only the signal below can.
    assert_eq!(
        inotify_watched_inodes(portcullis.pid()),
        Vec::<u64>::new(),
        "watching is off, yet the process watches files"
    );
    let mut grpc = grpc_client(portcullis.port()).await;
    let bob = bearer(&token("bob"));
    let old = ready_version(admin).expect("not ready");
    assert_eq!(loads(admin), 1.0, "the first load");
    write(
        dir.path(),
        "grants.yaml",
        &without_bob(&read(dir.path(), "grants.yaml")),
    );

    let hup = Command::new("kill")
        .args(["-HUP", &portcullis.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let found = tokio::task::spawn_blocking(move || {
        wait_for_new_version(admin, &old, Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert!(
        found.is_some(),
        "SIGHUP did not reload:\n{}",
        portcullis.log()
    );
    // Exactly one reload, and the signal made it.
    assert_eq!(loads(admin), 2.0, "{}", portcullis.log());
    let log = support::wait_for_log(|| portcullis.log(), "policy reloaded");
    let reloaded = reloads(&log);
    assert_eq!(reloaded.len(), 1, "{log}");
    assert!(reloaded[0].contains("SIGHUP"), "{}", reloaded[0]);
    assert_eq!(
        grpc_status(
            &mut grpc,
            check_request("GET", "/documents/1", Some(&bob), "hup")
        )
        .await,
        403
    );
}
