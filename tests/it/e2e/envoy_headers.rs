//! Header names with underscores never pass the front proxy
//! (`envoy/front-proxy.yaml`, `headers_with_underscores_action:
//! REJECT_REQUEST`): Envoy itself answers 400, before ext_authz and before
//! the application. The reason is the subject header: many frameworks fold
//! `_` into `-`, so a client's `x_portcullis_subject: mallory` would read as
//! the `x-portcullis-subject` Portcullis sets. Tested through the real Envoy
//! and the shipped template.

use crate::support::{bearer, send_raw, token, Stack};

/// Envoy's counter of requests refused for an underscore in a header name
/// (HTTP/1 codec: the raw client speaks HTTP/1.1), read from its admin API.
fn rejected_with_underscores(stack: &Stack) -> u64 {
    let stats = send_raw(
        stack.envoy.admin_port(),
        "GET",
        b"/stats?filter=requests_rejected_with_underscores_in_headers",
        &[],
    );
    assert_eq!(stats.status, 200, "{}", stats.text());
    stats
        .text()
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(name, _)| name.starts_with("http1."))
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum()
}

#[test]
fn subject_look_alikes_are_refused_by_envoy_and_never_reach_the_application() {
    let stack = Stack::start();
    let alice = bearer(&token("alice"));
    let look_alikes = [
        "x_portcullis_subject",
        "x-portcullis_subject",
        "x_portcullis-subject",
    ];
    for name in look_alikes {
        // alice may read document 1: without the look-alike this is a 200.
        let refused = stack.send(
            "GET",
            b"/documents/1",
            &[("authorization", &alice), (name, "mallory")],
        );
        assert_eq!(refused.status, 400, "{name}: {}", stack.logs());
        // Envoy's refusal, not a Portcullis deny (which has a JSON body).
        assert!(refused.json().is_none(), "{name}: {}", refused.text());
    }
    assert_eq!(
        rejected_with_underscores(&stack),
        look_alikes.len() as u64,
        "{}",
        stack.logs()
    );

    // The same request without the look-alike goes through; once the
    // application has seen it, it has seen everything sent before it.
    let allowed = stack.send(
        "GET",
        b"/documents/1",
        &[("authorization", &alice), ("x-request-marker", "after")],
    );
    assert_eq!(allowed.status, 200, "{}", stack.logs());
    let seen = stack.upstream.requests();
    assert!(
        seen.iter()
            .any(|r| r.header("x-request-marker") == Some("after")),
        "{seen:?}"
    );
    assert_eq!(seen.len(), 1, "only the allowed request arrives: {seen:?}");
    assert!(
        seen.iter()
            .all(|r| r.headers.iter().all(|(_, v)| v != "mallory")),
        "{seen:?}"
    );
    assert_eq!(seen[0].header("x-portcullis-subject"), Some("alice"));
}

#[test]
fn an_underscore_in_any_header_name_is_refused_even_on_a_public_route() {
    let stack = Stack::start();
    let refused = stack.send("GET", b"/healthz", &[("x_forwarded_user", "mallory")]);
    assert_eq!(refused.status, 400, "{}", stack.logs());
    assert_eq!(rejected_with_underscores(&stack), 1, "{}", stack.logs());
    assert_eq!(stack.send("GET", b"/healthz", &[]).status, 200);
    let seen = stack.upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].header("x_forwarded_user").is_none(), "{seen:?}");
}
