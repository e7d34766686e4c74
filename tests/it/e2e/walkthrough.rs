//! The walk-through's requests (`docs/walkthrough.md`, step 8) get the
//! answers it promises, through `envoy/front-proxy.yaml` rendered with
//! `APP=todo` and a real Envoy (the page's files and commands are
//! `service::walkthrough`).

use crate::service::walkthrough::{page, SECRET, SECRET_ENV};
use crate::support::{
    self, find_envoy, render_envoy_config_with, repo_path, send_raw, EchoUpstream, Envoy,
    EnvoyPorts, Portcullis,
};

/// Step 8: the requests the page sends, through the front proxy rendered
/// with `APP=todo`, get the answers the page promises.
#[test]
fn requests_through_envoy_get_what_the_page_promises() {
    let envoy_bin = find_envoy();
    let page = page();
    for request in [
        "make run POLICIES=examples/todo APP=todo",
        "/healthz                     # 200",
        "/todos/1                     # 401",
        "/todos/1   # 200, x-portcullis-subject: ana",
        "/todos/2   # 403",
        "/users/ana@todo.example  # 403",
    ] {
        assert!(
            page.contains(request),
            "the page no longer shows {request:?}"
        );
    }

    let upstream = EchoUpstream::start();
    let portcullis =
        Portcullis::start_with_env(&repo_path("examples/todo"), &[(SECRET_ENV, SECRET)]);
    let config = render_envoy_config_with(
        &repo_path("envoy/front-proxy.yaml"),
        &EnvoyPorts::ephemeral(portcullis.port(), upstream.port()),
        &[("__APP__", "todo")],
    );
    assert!(
        config.contains("context_extensions: { app: todo }") && !config.contains("app: documents"),
        "the rendered front proxy does not name the todo application"
    );
    let envoy = Envoy::start(&envoy_bin, &config);
    let token = support::sign(
        &serde_json::json!({
            "iss": "https://login.todo.example",
            "aud": "todo-api",
            "sub": "ana",
            "iat": support::now(),
            "exp": support::now() + 300,
        }),
        jsonwebtoken::Algorithm::HS256,
        SECRET.as_bytes(),
    );
    let bearer = format!("Bearer {token}");
    let logs = || {
        format!(
            "--- envoy ---\n{}\n--- portcullis ---\n{}",
            support::tail(&envoy.log(), 30),
            support::tail(&portcullis.log(), 30)
        )
    };
    let send = |path: &str, authorization: Option<&str>, probe: &str| {
        let mut headers = vec![("x-walkthrough-probe", probe)];
        if let Some(value) = authorization {
            headers.push(("authorization", value));
        }
        send_raw(envoy.port(), "GET", path.as_bytes(), &headers)
    };
    let reached = |probe: &str| upstream.requests_with_header("x-walkthrough-probe", probe);

    let health = send("/healthz", None, "health");
    assert_eq!(health.status, 200, "{}", logs());
    assert_eq!(reached("health").len(), 1, "{}", logs());

    let anonymous = send("/todos/1", None, "anonymous");
    assert_eq!(anonymous.status, 401, "{}", logs());
    assert!(reached("anonymous").is_empty());

    let allowed = send("/todos/1", Some(&bearer), "allowed");
    assert_eq!(allowed.status, 200, "{}", logs());
    let got = reached("allowed");
    assert_eq!(got.len(), 1, "{}", logs());
    assert_eq!(got[0].header("x-portcullis-subject"), Some("ana"));

    for (path, probe) in [
        ("/todos/2", "no-grant"),
        ("/users/ana@todo.example", "no-route"),
    ] {
        let denied = send(path, Some(&bearer), probe);
        assert_eq!(denied.status, 403, "{path}\n{}", logs());
        assert!(reached(probe).is_empty(), "{path} reached the service");
        let body = denied.json().unwrap_or_default();
        assert_eq!(body["error"], "forbidden", "{path}: {}", denied.text());
    }
}
