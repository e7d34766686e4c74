//! A revoked grant stops working through Envoy on the first request after
//! the real binary reloads its directory, with every cache on (the reloads
//! themselves are `service::reload`).

use std::time::{Duration, Instant};

use crate::service::reload::{read, without_bob, write};
use crate::support::{bearer, copy_policies, ready_version, token, wait_for_new_version, Stack};

#[test]
fn a_revoked_grant_is_denied_through_envoy_right_after_the_reload() {
    let dir = copy_policies(|_, text| text);
    let stack = Stack::start_with_policies(dir.path());
    let admin = stack.portcullis.admin_port();
    let bob = bearer(&token("bob"));
    let get = || {
        stack
            .send("GET", b"/documents/1", &[("authorization", &bob)])
            .status
    };
    // Twice: the second answer comes from the decision cache.
    assert_eq!(get(), 200);
    assert_eq!(get(), 200);
    let old = ready_version(admin).expect("not ready");

    let written = Instant::now();
    write(
        dir.path(),
        "grants.yaml",
        &without_bob(&read(dir.path(), "grants.yaml")),
    );
    let (_, reload) = wait_for_new_version(admin, &old, Duration::from_secs(2))
        .unwrap_or_else(|| panic!("no reload within 2 s of the write:\n{}", stack.logs()));
    // The very first check after the reload is denied: no cache serves the old grant.
    assert_eq!(get(), 403, "{}", stack.logs());
    let revoked = written.elapsed();
    eprintln!(
        "revocation: reload published {reload:?} after the write; denied {revoked:?} after it"
    );
    assert!(revoked < Duration::from_secs(2));
    // alice is untouched.
    let alice = bearer(&token("alice"));
    assert_eq!(
        stack
            .send("GET", b"/documents/1", &[("authorization", &alice)])
            .status,
        200
    );
}
