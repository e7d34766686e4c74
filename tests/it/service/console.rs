//! The console over plain HTTP against a real `portcullis serve`: who may
//! look (no credential, a caller without `console`, a caller with it, a
//! session begun by signing in), requests from another origin, the
//! explanations the forms give, and that no token or key ever appears in a
//! page or in the live stream. The browser's view is `e2e::console`'s.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{copy_policies, send, token, Portcullis, Response};

/// A caller the policy names with `may: [console]`.
pub(crate) const CONSOLE_KEY: &str = "console-key-0123456789abcdef";
/// A caller the policy names without it.
pub(crate) const OTHER_KEY: &str = "other-key-0123456789abcdef";

/// The bundled policies plus the two callers, their keys in files.
pub(crate) fn policies() -> tempfile::TempDir {
    let dir = copy_policies(|_, text| text);
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{name}: {e}"));
    };
    write("console.key", CONSOLE_KEY);
    write("other.key", OTHER_KEY);
    write(
        "console-callers.yaml",
        "callers:
  - name: operator
    api_key: { secret_file: console.key }
    may: [console]
  - name: reporting
    api_key: { secret_file: other.key }
    may: [any_subject, search, explain]
",
    );
    dir
}

/// `portcullis serve` with the console and the API on 127.0.0.1, every
/// allow logged.
pub(crate) fn start(policies: &Path) -> Portcullis {
    Portcullis::start_with_env(
        policies,
        &[
            ("PORTCULLIS_API_LISTEN", "127.0.0.1:0"),
            ("PORTCULLIS_CONSOLE_LISTEN", "127.0.0.1:0"),
            ("PORTCULLIS_LOG_ALLOW_RATE", "1"),
        ],
    )
}

/// Every response the test saw, for the no-secret check at its end.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn keep(&mut self, response: Response) -> Response {
        let headers: Vec<String> = response
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        self.0
            .push(format!("{}\n{}", headers.join("\n"), response.text()));
        response
    }

    fn assert_never(&self, secrets: &[&str]) {
        for (i, text) in self.0.iter().enumerate() {
            for secret in secrets {
                assert!(
                    !text.contains(secret),
                    "response {i} holds a secret:\n{text}"
                );
            }
        }
    }
}

fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut all = vec![("Host", "127.0.0.1")];
    all.extend_from_slice(headers);
    send(port, "GET", path, &all, b"")
}

/// A form POST from the console's own origin (or `origin`).
fn post(port: u16, path: &str, headers: &[(&str, &str)], form: &[(&str, &str)]) -> Response {
    let host = format!("127.0.0.1:{port}");
    let origin = format!("http://{host}");
    let mut all = vec![
        ("Host", host.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("origin"))
    {
        all.push(("Origin", origin.as_str()));
    }
    all.extend_from_slice(headers);
    let body: Vec<String> = form
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    send(port, "POST", path, &all, body.join("&").as_bytes())
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The text of the element with id `id`, its tags dropped (the console's
/// pages never nest an element in one of the same name).
pub(crate) fn by_id(html: &str, id: &str) -> Option<String> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let tag_start = html[..at].rfind('<')? + 1;
    let name: String = html[tag_start..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    let open = html[at..].find('>')? + at + 1;
    let close = html[open..].find(&format!("</{name}>"))? + open;
    let mut out = String::new();
    let mut in_tag = false;
    for c in html[open..close].chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    Some(out.trim().to_owned())
}

#[test]
fn the_console_shows_nothing_to_a_caller_without_the_console_right() {
    let dir = policies();
    let server = start(dir.path());
    let port = server.console_port();
    let mut seen = Seen::default();
    let version = crate::support::ready_version(server.admin_port()).expect("ready");
    for path in [
        "/live",
        "/policy",
        "/explain",
        "/access?kind=subjects&action=read&resource=document:1",
        "/live/events",
    ] {
        let anonymous = seen.keep(get(port, path, &[]));
        assert_eq!(anonymous.status, 401, "{path}: {}", anonymous.text());
        let other = seen.keep(get(port, path, &[("X-API-Key", OTHER_KEY)]));
        assert_eq!(other.status, 403, "{path}: {}", other.text());
        let unknown = seen.keep(get(port, path, &[("X-API-Key", "not-a-key-0123456789")]));
        assert_eq!(unknown.status, 401, "{path}");
        for refused in [&anonymous, &other, &unknown] {
            let text = refused.text();
            assert!(!text.contains(&version), "{path} shows the policy version");
            assert!(!text.contains("read-document"), "{path} shows a route");
        }
    }
    let policy = seen.keep(get(port, "/policy", &[("X-API-Key", CONSOLE_KEY)]));
    assert_eq!(policy.status, 200);
    let text = policy.text();
    assert_eq!(by_id(&text, "version").as_deref(), Some(version.as_str()));
    assert!(text.contains("read-document"));
    assert!(text.contains("operator") && text.contains("an API key"));
    // The deny rules as written: whom, what, which actions, why.
    let denies = by_id(&text, "denies").unwrap_or_default();
    assert!(
        denies.contains("suspend-mallory")
            && denies.contains("subject &quot;mallory&quot;")
            && denies.contains("every action")
            && denies.contains("account suspended"),
        "{denies}"
    );
    assert_eq!(
        policy
            .header("content-security-policy")
            .map(|c| c.contains("script-src 'self'")),
        Some(true)
    );
    assert_eq!(policy.header("x-frame-options"), Some("DENY"));

    // Signing in: a cookie holding a random id, never the key.
    let wrong = seen.keep(post(port, "/login", &[], &[("credential", OTHER_KEY)]));
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    let foreign = seen.keep(post(
        port,
        "/login",
        &[("Origin", "http://evil.example")],
        &[("credential", CONSOLE_KEY)],
    ));
    assert_eq!(foreign.status, 403);
    assert!(foreign.header("set-cookie").is_none());
    let signed = seen.keep(post(port, "/login", &[], &[("credential", CONSOLE_KEY)]));
    assert_eq!(signed.status, 303, "{}", signed.text());
    let cookie = signed
        .header("set-cookie")
        .expect("a session cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap_or_default().to_owned();
    let page = seen.keep(get(port, "/live", &[("Cookie", &pair)]));
    assert_eq!(page.status, 200);
    assert!(page.text().contains("signed in as operator"));
    // A token of a subject no caller names signs nobody in.
    let alice = token("alice");
    let user = seen.keep(post(port, "/login", &[], &[("credential", &alice)]));
    assert_eq!(user.status, 401);
    // Signing out ends the session on the server.
    let out = seen.keep(post(port, "/logout", &[("Cookie", &pair)], &[]));
    assert_eq!(out.status, 303);
    assert_eq!(
        seen.keep(get(port, "/live", &[("Cookie", &pair)])).status,
        401
    );

    seen.assert_never(&[
        CONSOLE_KEY,
        OTHER_KEY,
        &alice,
        crate::support::test_secret(),
    ]);
}

#[test]
fn explanations_say_what_decided_and_the_live_stream_shows_decisions() {
    let dir = policies();
    let server = start(dir.path());
    let port = server.console_port();
    let key = [("X-API-Key", CONSOLE_KEY)];
    let mut seen = Seen::default();

    // Watch the live stream while a decision is made through the API.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET /live/events?subject=alice HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {CONSOLE_KEY}\r\n\r\n"
    )
    .expect("write");
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    reader.read_line(&mut head).expect("status line");
    assert!(head.contains(" 200 "), "{head}");

    let alice = token("alice");
    let bob = token("bob");
    let evaluate = |who: &str, subject: &str, action: &str| {
        send(
            server.api_port(),
            "POST",
            "/access/v1/evaluation",
            &[
                ("Authorization", &format!("Bearer {who}")),
                ("Content-Type", "application/json"),
            ],
            format!(
                r#"{{"subject":{{"type":"user","id":"{subject}"}},"action":{{"name":"{action}"}},"resource":{{"type":"document","id":"2"}}}}"#
            )
            .as_bytes(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    // The subscription races the first decision: decide until one arrives.
    'waiting: while Instant::now() < deadline {
        assert_eq!(evaluate(&bob, "bob", "read").status, 200);
        assert_eq!(evaluate(&alice, "alice", "delete").status, 200);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line.starts_with("data:") {
                lines.push(line.clone());
                break 'waiting;
            }
            line.clear();
        }
    }
    let line = lines.first().expect("a decision in the live stream");
    assert!(line.contains("\"subject\":\"alice\""), "{line}");
    assert!(
        !line.contains("\"subject\":\"bob\""),
        "the filter let bob through: {line}"
    );
    assert!(!line.contains(&alice));

    let mut explained = |form: &[(&str, &str)]| {
        let page = seen.keep(post(port, "/explain", &key, form));
        assert_eq!(page.status, 200, "{}", page.text());
        page.text()
    };
    // An allow, with a pasted token that is never written back.
    let allow = explained(&[
        ("kind", "request"),
        ("method", "GET"),
        ("path", "/documents/1"),
        ("token", &alice),
    ]);
    assert_eq!(
        by_id(&allow, "verdict").as_deref(),
        Some("allow"),
        "{allow}"
    );
    assert_eq!(by_id(&allow, "route").as_deref(), Some("read-document"));
    assert_eq!(by_id(&allow, "application").as_deref(), Some("documents"));
    assert!(by_id(&allow, "selected-by").is_some_and(|s| s.contains("path prefix")));
    assert!(
        by_id(&allow, "decided-by").is_some_and(|s| s.contains("owner")),
        "{allow}"
    );
    // Every rule tried, in order, ending with the one that decided.
    let tried = by_id(&allow, "tried").unwrap_or_default();
    assert!(
        tried.contains("subject alice on document:1: role")
            && tried.contains("owner")
            && tried.trim_end().ends_with("— decided"),
        "{allow}"
    );
    // A deny for want of a grant, as a subject and groups without a token.
    let no_grant = explained(&[
        ("kind", "request"),
        ("method", "DELETE"),
        ("path", "/documents/2"),
        ("subject", "alice"),
        ("groups", "staff"),
        ("context", "app=documents"),
    ]);
    assert_eq!(by_id(&no_grant, "verdict").as_deref(), Some("deny"));
    assert_eq!(by_id(&no_grant, "reason").as_deref(), Some("no_grant"));
    assert!(by_id(&no_grant, "selected-by").is_some_and(|s| s.contains("context extensions")));
    let tried = by_id(&no_grant, "tried").unwrap_or_default();
    assert!(
        tried.contains("editor") && tried.contains("does not hold the action"),
        "{no_grant}"
    );
    assert!(
        tried.contains("group staff on document:2: no role"),
        "{no_grant}"
    );
    assert!(!tried.contains("decided"), "{no_grant}");
    // A deny by an explicit rule.
    let denied = explained(&[
        ("kind", "resource"),
        ("subject", "mallory"),
        ("resource", "document:3"),
        ("action", "read"),
    ]);
    assert_eq!(by_id(&denied, "verdict").as_deref(), Some("deny"));
    assert!(
        by_id(&denied, "decided-by").is_some_and(|s| s.contains("suspend-mallory")),
        "{denied}"
    );
    assert!(
        by_id(&denied, "tried").is_some_and(|s| s.contains("suspend-mallory")
            && s.contains("covers this resource and action — decided")),
        "{denied}"
    );
    // No route: the closest one and why it did not match.
    let no_route = explained(&[
        ("kind", "request"),
        ("method", "GET"),
        ("path", "/documents/abc"),
        ("subject", "alice"),
    ]);
    assert_eq!(by_id(&no_route, "verdict").as_deref(), Some("deny"));
    assert!(
        by_id(&no_route, "closest-route").is_some_and(|s| s.contains("read-document")),
        "{no_route}"
    );

    let search = seen.keep(get(
        port,
        "/access?kind=subjects&action=read&resource=document%3A1&limit=1",
        &key,
    ));
    let text = search.text();
    assert_eq!(by_id(&text, "found").as_deref(), Some("alice"), "{text}");
    assert!(text.contains("id=\"next-page\""));

    seen.assert_never(&[CONSOLE_KEY, &alice, &bob, crate::support::test_secret()]);
    for line in &lines {
        assert!(!line.contains(CONSOLE_KEY) && !line.contains(&alice) && !line.contains(&bob));
    }
}

#[test]
fn a_console_that_would_leak_is_refused_before_any_port_is_bound() {
    let dir = policies();
    for (args, says) in [
        (
            &["--console-listen", "0.0.0.0:0"][..],
            "not a loopback address",
        ),
        (
            &["--console-listen", "0.0.0.0:0", "--console-open-loopback"][..],
            "needs a loopback --console-listen",
        ),
        (&["--console-open-loopback"][..], "need --console-listen"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .arg("--policies")
            .arg(dir.path())
            .args(args)
            .env("PORTCULLIS_DEMO_SECRET", crate::support::test_secret())
            .output()
            .expect("run portcullis serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn the_live_page_shows_the_shadow_policys_disagreements() {
    let served = policies();
    // The candidate revokes bob's grant on document 1.
    let candidate = copy_policies(|file, text| match file {
        "grants.yaml" => text.replace(
            "  - subject: bob\n    role: viewer\n    resource: document:1\n",
            "",
        ),
        _ => text,
    });
    let portcullis = Portcullis::start_with_env(
        served.path(),
        &[
            ("PORTCULLIS_CONSOLE_LISTEN", "127.0.0.1:0"),
            (
                "PORTCULLIS_SHADOW_POLICIES",
                candidate.path().to_str().unwrap_or_default(),
            ),
        ],
    );
    let console = portcullis.console_port();
    let key = [("X-API-Key", CONSOLE_KEY)];
    let live = || get(console, "/live", &key).text();
    assert!(
        by_id(&live(), "shadow-counts").is_some_and(|t| t.contains("No disagreement")),
        "{}",
        live()
    );
    let bearer = format!("Bearer {}", token("bob"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let mut client = crate::support::grpc_client(portcullis.port()).await;
        for i in 0..3 {
            let request = crate::support::check_request(
                "GET",
                "/documents/1",
                Some(&bearer),
                &format!("shadowed-{i}"),
            );
            // Served as the served policy says, whatever the shadow says.
            assert_eq!(crate::support::grpc_status(&mut client, request).await, 200);
        }
    });
    crate::support::eventually(Duration::from_secs(10), "three disagreements shown", || {
        by_id(&live(), "shadow-counts")
            .is_some_and(|t| t.contains("documents") && t.contains("allow") && t.contains('3'))
    });
    let page = live();
    let recent = by_id(&page, "shadow-recent").unwrap_or_default();
    assert!(
        recent.contains("shadowed-2") && recent.contains("no_grant"),
        "{page}"
    );
}
