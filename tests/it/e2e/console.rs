//! The console in a real headless Chromium, against a real `portcullis
//! serve` behind the Envoy front proxy: sign in, watch a decision made
//! through Envoy arrive in the live view, explain an allow, a deny for want
//! of a grant, a deny by an explicit rule and a request no route takes,
//! fill the explain form with the keyboard alone, page through a search,
//! read the policy. Screenshots of each page are kept under
//! `target/console-screenshots/`. Without Chromium the test says SKIPPED
//! (it fails instead with `PORTCULLIS_REQUIRE_CHROMIUM`, as CI sets it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::service::console::{policies, start, CONSOLE_KEY};
use crate::support::webdriver::{Browser, ENTER, TAB};
use crate::support::{
    find_envoy, render_envoy_config_with, repo_path, send_raw, test_secret, token, EchoUpstream,
    Envoy, EnvoyPorts,
};

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots")
}

#[test]
fn an_operator_watches_explains_and_searches_in_a_browser() {
    let Some(browser) = Browser::start("e2e::console") else {
        return;
    };
    let dir = policies();
    let upstream = EchoUpstream::start();
    let portcullis = start(dir.path());
    let config = render_envoy_config_with(
        &repo_path("envoy/front-proxy.yaml"),
        &EnvoyPorts::ephemeral(portcullis.port(), upstream.port()),
        &[],
    );
    let envoy = Envoy::start(&find_envoy(), &config);
    let base = format!("http://127.0.0.1:{}", portcullis.console_port());
    let shots = screenshots();
    let mut sources = Vec::new();

    // Refused until signed in; signed in with the key, the session is a cookie.
    browser.go(&format!("{base}/policy"));
    assert!(browser.text_of("h1").contains("Sign in"));
    assert!(!browser.source().contains("read-document"));
    browser.screenshot(&shots, "sign-in");
    browser.fill("#credential", CONSOLE_KEY);
    browser.follow("#sign-in");
    assert!(
        browser.url().ends_with("/live"),
        "{}: {}",
        browser.url(),
        browser.source()
    );

    // A decision made through Envoy arrives in the live view.
    let deadline = Instant::now() + Duration::from_secs(10);
    while browser.text_of("#status") != "live" {
        assert!(Instant::now() < deadline, "the live stream did not open");
        std::thread::sleep(Duration::from_millis(50));
    }
    let alice = token("alice");
    let bearer = format!("Bearer {alice}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let row = loop {
        let sent = send_raw(
            envoy.port(),
            "GET",
            b"/documents/1",
            &[("Authorization", &bearer)],
        );
        assert_eq!(sent.status, 200, "{}", sent.text());
        let rows: Vec<String> = browser
            .all("#events tr")
            .iter()
            .map(|row| browser.text(row))
            .collect();
        if let Some(row) = rows.into_iter().find(|r| r.contains("read-document")) {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "no decision arrived in the live view"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(row.contains("allow") && row.contains("alice"), "{row}");
    browser.screenshot(&shots, "live");
    sources.push(browser.source());

    // Explain: each kind of answer, read from the page.
    let explain = |fields: &[(&str, &str)], submit: &str| {
        browser.go(&format!("{base}/explain"));
        for (field, value) in fields {
            browser.fill(field, value);
        }
        browser.follow(submit);
        browser.text_of("#verdict")
    };
    let allow = explain(
        &[("#rq-path", "/documents/1"), ("#rq-token", &alice)],
        "#explain-request",
    );
    assert_eq!(allow, "allow");
    assert_eq!(browser.text_of("#route"), "read-document");
    assert!(!browser.source().contains(&alice), "the token came back");
    sources.push(browser.source());
    let no_grant = explain(
        &[
            ("#rq-method", "DELETE"),
            ("#rq-path", "/documents/2"),
            ("#rq-subject", "alice"),
        ],
        "#explain-request",
    );
    assert_eq!(no_grant, "deny");
    assert_eq!(browser.text_of("#reason"), "no_grant");
    let denied = explain(
        &[
            ("#ra-subject", "mallory"),
            ("#ra-resource", "document:3"),
            ("#ra-action", "read"),
        ],
        "#explain-resource",
    );
    assert_eq!(denied, "deny");
    assert!(browser.text_of("#decided-by").contains("suspend-mallory"));
    let no_route = explain(
        &[("#rq-path", "/documents/abc"), ("#rq-subject", "alice")],
        "#explain-request",
    );
    assert_eq!(no_route, "deny");
    assert!(browser.text_of("#closest-route").contains("read-document"));
    browser.screenshot(&shots, "explain");
    sources.push(browser.source());

    // The request form with the keyboard alone: Tab to each field, type,
    // Enter on the button.
    browser.go(&format!("{base}/explain"));
    let mut tabs = 0;
    while browser.focused_id() != "rq-path" {
        browser.keys(TAB);
        tabs += 1;
        assert!(tabs < 40, "Tab never reached the path field");
    }
    browser.keys("/documents/1");
    browser.keys(TAB); // host
    browser.keys(TAB); // context extensions
    browser.keys(TAB); // subject
    assert_eq!(browser.focused_id(), "rq-subject");
    browser.keys("bob");
    browser.keys(TAB); // groups
    browser.keys(TAB); // token
    browser.keys(TAB);
    assert_eq!(browser.focused_id(), "explain-request");
    browser.follow_keys(ENTER);
    assert_eq!(browser.text_of("#verdict"), "allow");
    assert_eq!(browser.text_of("#subject"), "bob");

    // A search, a page at a time.
    browser.go(&format!(
        "{base}/access?kind=subjects&action=read&resource=document%3A1&limit=1"
    ));
    assert_eq!(browser.text_of("#found"), "alice");
    browser.follow("#next-page");
    assert_eq!(browser.text_of("#found"), "bob");
    browser.screenshot(&shots, "access");
    sources.push(browser.source());

    browser.go(&format!("{base}/policy"));
    assert!(!browser.text_of("#version").is_empty());
    assert!(browser.source().contains("read-document"));
    browser.screenshot(&shots, "policy");
    sources.push(browser.source());

    for source in &sources {
        for secret in [CONSOLE_KEY, alice.as_str(), test_secret()] {
            assert!(!source.contains(secret), "a page holds a secret");
        }
    }
    drop(envoy);
}
