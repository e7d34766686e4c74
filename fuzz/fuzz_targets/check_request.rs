//! The CheckRequest adapter and a whole check, on arbitrary protobuf bytes
//! decoded as a CheckRequest, against the bundled policy.
//!
//! Invariants: the adapter and the engine never panic (the engine is
//! called directly too, since the server turns a panic into a deny); the
//! server's answer agrees with the engine verifying the token afresh, and
//! with itself when asked again (a decision-cache hit); the
//! response says what the decision says; and nothing is allowed unless
//! the route is public or the request carries a token this process minted
//! (the fuzzer holds no key, so any other allow is a forgery or a hole).
#![no_main]

use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use libfuzzer_sys::fuzz_target;
use portcullis::adapter::request_attrs;
use portcullis::engine::{decide, Credential, Reason, Request, VerifyEveryTime};
use portcullis_fuzz::{authorizer, bundled, demo_tokens, NOW};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = CheckRequest::decode(data) else {
        return;
    };
    let (decision, response) = portcullis_testkit::ready(authorizer().check_request(&request));
    let (again, _) = portcullis_testkit::ready(authorizer().check_request(&request));
    assert_eq!(
        (again.effect, &again.reason, &again.subject),
        (decision.effect, &decision.reason, &decision.subject),
        "asked twice, the server answered twice differently"
    );

    let lets_through = decision.lets_through();
    let ok_status = response.status.as_ref().is_some_and(|s| s.code == 0);
    let ok_response = matches!(response.http_response, Some(HttpResponse::OkResponse(_)));
    assert_eq!(
        lets_through, ok_status,
        "{decision:?} but status {:?}",
        response.status
    );
    assert_eq!(
        lets_through, ok_response,
        "{decision:?} but {:?}",
        response.http_response
    );

    let Ok(attrs) = request_attrs(&request) else {
        assert!(
            !lets_through,
            "an unreadable CheckRequest went through: {decision:?}"
        );
        return;
    };
    assert_ne!(
        decision.reason,
        Reason::InternalError,
        "the engine failed on {attrs:?}"
    );
    let policy = bundled();
    let fresh = decide(
        &policy,
        &*policy.grants,
        &Request::Http(&attrs),
        &VerifyEveryTime,
        NOW,
    );
    assert_eq!(
        (fresh.effect, &fresh.reason),
        (decision.effect, &decision.reason),
        "the cached path and a fresh verification disagree on {attrs:?}"
    );
    if decision.is_allowed() && decision.reason != Reason::PublicRoute {
        let Credential::Bearer(token) = &attrs.credential else {
            panic!("allowed without a bearer token: {attrs:?} → {decision:?}");
        };
        assert!(
            demo_tokens().contains(token),
            "a token this process never minted was accepted: {attrs:?} → {decision:?}"
        );
    }
    if decision.reason == Reason::PublicRoute {
        assert_eq!(decision.route.as_deref(), Some("health"), "{attrs:?}");
    }
});
