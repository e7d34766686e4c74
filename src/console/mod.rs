//! The console: a small web UI served by Portcullis itself on its own
//! listener (`--console-listen`, off by default) for the questions
//! operators ask first: what is being decided now (live decisions from the
//! decision log), why was this denied (explain a request or a
//! subject/resource/action), who can access what (searches), and what
//! policy is served (version, reload errors, applications, roles, issuers,
//! callers).
//!
//! Pages are rendered on the server ([`html`]: every interpolated string
//! escaped) and work without JavaScript, but for the live stream (one
//! small script, served as a file). Decisions shown are the decision
//! service's ([`Pdp`]): explanations and searches run on the API's pool
//! ([`Bulkhead`]), so the console never slows Envoy's checks; the live view
//! reads the decision log's tap and filters in its own task.
//!
//! Access ([`access`]): a caller the policy names with `may: [console]`
//! (client certificate, API key, or a session begun by signing in), or
//! anyone on the machine when the operator opens a loopback listener
//! (`--console-open-loopback`). [`ConsoleConfig::check`] refuses a
//! listener that would show the policy unencrypted off the machine, or to
//! anyone off it. Every answer forbids framing, inline script, caching and
//! other sites' referrers; every POST must come from the console's own origin.

pub mod access;
mod explain;
pub mod html;
pub mod live;
mod policy_view;
mod search;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::api::bulkhead::Bulkhead;
use crate::http_server::{self, ConnectionLimits, Peer};
use crate::pdp::Pdp;
use crate::reload::ReloadStatus;
use crate::tls::{ServerTls, TlsFiles};
use access::{Refusal, Sessions};
use html::{page, Esc, Tab};
use live::ReasonCounts;

/// Largest form body accepted.
pub const MAX_BODY_BYTES: usize = 32 * 1024;

/// Settings of the console listener (`--console-listen` and friends).
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub listen: SocketAddr,
    /// TLS (and mTLS, with a client CA) on the console listener.
    pub tls: Option<TlsFiles>,
    /// Anyone who reaches the (loopback) listener may use the console,
    /// without signing in.
    pub open_loopback: bool,
}

/// Why the console's settings would leak what it shows (exit 64).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsoleConfigError {
    #[error(
        "--console-listen {0} is not a loopback address: the console shows the policy and its \
         decisions, so off the machine it needs TLS (--console-tls-cert and --console-tls-key)"
    )]
    PlaintextOffLoopback(SocketAddr),
    #[error(
        "--console-open-loopback lets anyone who reaches the console use it without signing in: \
         it needs a loopback --console-listen, not {0}"
    )]
    OpenOffLoopback(SocketAddr),
}

impl ConsoleConfig {
    /// Refuses settings that would show the policy and decisions to the
    /// network: plaintext off the loopback interface, or an open console
    /// anywhere but loopback.
    pub fn check(&self) -> Result<(), ConsoleConfigError> {
        let loopback = self.listen.ip().is_loopback();
        if self.open_loopback && !loopback {
            return Err(ConsoleConfigError::OpenOffLoopback(self.listen));
        }
        if self.tls.is_none() && !loopback {
            return Err(ConsoleConfigError::PlaintextOffLoopback(self.listen));
        }
        Ok(())
    }
}

/// Bounds of the console listener: few people, a few live streams each.
pub fn limits(shutdown_grace: Duration) -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout: Duration::from_secs(10),
        max_connections: 64,
        // A live view reconnects by itself when its connection ends.
        connection_lifetime: Duration::from_secs(600),
        shutdown_grace,
        keep_alive: true,
    }
}

/// What the console's handlers read.
#[derive(Clone)]
pub struct ConsoleState {
    pub pdp: Pdp,
    /// The API's decision pool: explanations and searches run there.
    pub bulkhead: Arc<Bulkhead>,
    pub reloads: Arc<ReloadStatus>,
    pub https: bool,
    pub open_loopback: bool,
    sessions: Arc<Sessions>,
    counts: Arc<ReasonCounts>,
    streams: Arc<Semaphore>,
    /// The shadow policy (`--shadow-policies`), whose disagreements the
    /// live page shows.
    shadow: Option<Arc<crate::shadow::Shadow>>,
}

impl ConsoleState {
    pub fn new(
        pdp: Pdp,
        bulkhead: Arc<Bulkhead>,
        reloads: Arc<ReloadStatus>,
        https: bool,
        open_loopback: bool,
    ) -> Self {
        Self {
            pdp,
            bulkhead,
            reloads,
            https,
            open_loopback,
            sessions: Arc::default(),
            counts: Arc::default(),
            streams: Arc::new(Semaphore::new(live::MAX_STREAMS)),
            shadow: None,
        }
    }

    /// Shows `shadow`'s disagreements on the live page.
    pub fn with_shadow(mut self, shadow: Option<Arc<crate::shadow::Shadow>>) -> Self {
        self.shadow = shadow;
        self
    }
}

/// The console's routes, for serving or for testing without a socket.
pub fn router(state: ConsoleState) -> Router {
    let signed_in = Router::new()
        .route("/", get(|| async { Redirect::to("/live") }))
        .route("/live", get(live::live_page))
        .route("/live/events", get(live::events))
        .route("/explain", get(explain::form).post(explain::answer))
        .route("/access", get(search::access))
        .route("/policy", get(policy_view::policy_page))
        .route("/logout", axum::routing::post(logout))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_viewer,
        ));
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/static/console.css", get(css))
        .route("/static/live.js", get(script))
        .merge(signed_in)
        .with_state(state.clone())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state, guard))
}

/// Serves the console on `listener` (TLS when `tls` is given) until
/// `shutdown`; the per-reason counts are fed for as long.
pub async fn run(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    state: ConsoleState,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let counting = state
        .pdp
        .metrics()
        .map(|metrics| tokio::spawn(live::count_reasons(metrics.clone(), state.counts.clone())));
    let served = http_server::serve(listener, tls, router(state), limits, shutdown).await;
    if let Some(counting) = counting {
        counting.abort();
    }
    served
}

/// On every answer: the same-origin rule for the request, and headers that
/// keep the pages out of frames, caches and other sites' referrers and forbid any
/// script but the console's own file.
async fn guard(State(state): State<ConsoleState>, request: Request, next: Next) -> Response {
    let mut response = if access::same_origin(
        request.method(),
        request.headers(),
        state.https,
        state.open_loopback,
    ) {
        next.run(request).await
    } else {
        refused(Refusal::Foreign)
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not `no-referrer`: with it a browser sends `Origin: null` on the
        // console's own form posts, and the origin check needs the origin.
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Lets through a viewer [`access::identify`] accepts, handing it on as
/// an extension; refuses anyone else.
async fn require_viewer(
    State(state): State<ConsoleState>,
    mut request: Request,
    next: Next,
) -> Response {
    let policy = state.pdp.policy();
    let certificate = request
        .extensions()
        .get::<Peer>()
        .and_then(|peer| peer.client_certificate.clone());
    match access::identify(
        &policy,
        &state.sessions,
        request.headers(),
        certificate.as_ref(),
        state.open_loopback,
    ) {
        Ok(viewer) => {
            request.extensions_mut().insert(viewer);
            next.run(request).await
        }
        Err(refusal) => refused(refusal),
    }
}

fn refused(refusal: Refusal) -> Response {
    match refusal {
        Refusal::SignIn => (
            StatusCode::UNAUTHORIZED,
            Html(page("Sign in", Tab::None, None, &login_form(None))),
        )
            .into_response(),
        Refusal::NotPermitted => (
            StatusCode::FORBIDDEN,
            Html(page(
                "Not permitted",
                Tab::None,
                None,
                "<p id=\"error\" class=\"error\">This caller may not use the console: the policy must name it with <code>may: [console]</code>.</p><p><a href=\"/login\">Sign in as another caller</a></p>",
            )),
        )
            .into_response(),
        Refusal::Foreign => (
            StatusCode::FORBIDDEN,
            Html(page(
                "Refused",
                Tab::None,
                None,
                "<p id=\"error\" class=\"error\">This request did not come from the console's own pages (its Host or Origin is another).</p>",
            )),
        )
            .into_response(),
    }
}

fn login_form(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p id=\"error\" class=\"error\">{}</p>", Esc(e)))
        .unwrap_or_default();
    format!(
        "{error}<p>The console shows the served policy and its decisions: sign in as a caller the policy names with <code>may: [console]</code>.</p>\
<form class=\"query\" method=\"post\" action=\"/login\">{}<button type=\"submit\" id=\"sign-in\">Sign in</button></form>\
<p class=\"note\">The key or token is checked and dropped: the session cookie holds a random id, never the credential.</p>",
        html::input("credential", "API key or token", "", "password")
    )
}

async fn login_page() -> Response {
    Html(page("Sign in", Tab::None, None, &login_form(None))).into_response()
}

async fn login(
    State(state): State<ConsoleState>,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> Response {
    let presented = form.get("credential").map_or("", String::as_str);
    let refusal = match access::sign_in(&state.pdp, presented) {
        Ok((caller, until)) => match state.sessions.begin(&caller, until) {
            Some(id) => {
                let mut response = Redirect::to("/live").into_response();
                if let Ok(cookie) = HeaderValue::from_str(&access::session_cookie(&id, state.https))
                {
                    response.headers_mut().insert(header::SET_COOKIE, cookie);
                }
                return response;
            }
            None => "cannot begin a session now; try again",
        },
        Err(Refusal::NotPermitted) => {
            "this caller may not use the console: the policy must name it with may: [console]"
        }
        Err(_) => "not signed in: the key or token is not one of a caller the policy names",
    };
    (
        StatusCode::UNAUTHORIZED,
        Html(page("Sign in", Tab::None, None, &login_form(Some(refusal)))),
    )
        .into_response()
}

async fn logout(State(state): State<ConsoleState>, request: Request) -> Response {
    if let Some(id) = access::session_id(request.headers()) {
        state.sessions.end(id);
    }
    let mut response = Redirect::to("/login").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&access::cleared_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        html::CONSOLE_CSS,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        html::LIVE_JS,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_refuses_to_leak_off_the_machine() {
        let config = |listen: &str, tls: bool, open: bool| ConsoleConfig {
            listen: listen.parse().unwrap_or_else(|e| panic!("{e}")),
            tls: tls.then(|| TlsFiles {
                cert: "c".into(),
                key: "k".into(),
                client_ca: None,
            }),
            open_loopback: open,
        };
        assert!(config("127.0.0.1:9293", false, false).check().is_ok());
        assert!(config("127.0.0.1:9293", false, true).check().is_ok());
        assert!(config("[::1]:9293", false, true).check().is_ok());
        assert!(config("0.0.0.0:9293", true, false).check().is_ok());
        assert_eq!(
            config("0.0.0.0:9293", false, false).check(),
            Err(ConsoleConfigError::PlaintextOffLoopback(
                "0.0.0.0:9293".parse().unwrap_or_else(|e| panic!("{e}"))
            ))
        );
        assert!(matches!(
            config("0.0.0.0:9293", true, true).check(),
            Err(ConsoleConfigError::OpenOffLoopback(_))
        ));
    }
}
