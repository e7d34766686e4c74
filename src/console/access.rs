//! Who may use the console: a caller the policy names with `may:
//! [console]`, proved by a client certificate (on a TLS listener with a
//! client CA), an API key (`X-API-Key`, for scripts), or a session begun by
//! signing in with an API key or a token; or anyone reaching a loopback
//! listener the operator opened explicitly (`--console-open-loopback`).
//!
//! A session is a random id in an `HttpOnly`, `SameSite=Strict` cookie;
//! the server keeps only its SHA-256, the caller's name and an expiry,
//! never the key or token that began it. Every request looks the caller up
//! again in the policy served now, so a reload that takes `console` away
//! ends its sessions. Every POST must come from the console's own origin
//! (`Origin`, else `Sec-Fetch-Site`), beside the cookie's `SameSite`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, Method};
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::pdp::Pdp;
use crate::policy::callers::Caller;
use crate::policy::PolicySet;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "portcullis_console";

/// Longest life of a session (shorter when the token that began it
/// expires sooner).
pub(crate) const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// Sessions kept at once; past it the oldest is ended.
const MAX_SESSIONS: usize = 256;

/// Who is looking at the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Viewer {
    /// A caller the policy names with `console`.
    Caller(String),
    /// Anyone: a loopback listener opened by the operator.
    Loopback,
}

impl Viewer {
    pub fn name(&self) -> Option<&str> {
        match self {
            Viewer::Caller(name) => Some(name),
            Viewer::Loopback => None,
        }
    }
}

/// Why a request may not see the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No credential, or one nobody is known by: sign in (401).
    SignIn,
    /// A caller the policy names, without `console` (403).
    NotPermitted,
    /// A request whose Host or Origin is not the console's (403).
    Foreign,
}

#[derive(Debug)]
struct Session {
    caller: String,
    expires: Instant,
    started: Instant,
}

/// The signed-in sessions, by the SHA-256 of their id.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    by_digest: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// Begins a session for `caller` until `expires`; the id for the cookie.
    pub fn begin(&self, caller: &str, expires: Instant) -> Option<String> {
        let mut id = [0u8; 32];
        getrandom::getrandom(&mut id).ok()?;
        let text = crate::events::envelope::hex(&id);
        let now = Instant::now();
        let mut sessions = self.by_digest.lock().ok()?;
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.started)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            Sha256::digest(text.as_bytes()).into(),
            Session {
                caller: caller.to_owned(),
                expires,
                started: now,
            },
        );
        Some(text)
    }

    /// The caller of a live session.
    fn caller(&self, id: &str) -> Option<String> {
        let digest: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        let sessions = self.by_digest.lock().ok()?;
        sessions
            .get(&digest)
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.caller.clone())
    }

    pub fn end(&self, id: &str) {
        let digest: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        if let Ok(mut sessions) = self.by_digest.lock() {
            sessions.remove(&digest);
        }
    }
}

/// The session id the request's cookie carries.
pub(crate) fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && value.len() == 64).then_some(value)
        })
}

/// The `Set-Cookie` of a new session (`Secure` on a TLS listener).
pub(crate) fn session_cookie(id: &str, https: bool) -> String {
    let secure = if https { "; Secure" } else { "" };
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_LIFETIME.as_secs()
    )
}

/// The `Set-Cookie` that ends a session.
pub(crate) fn cleared_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The caller named `name` in `policy`, if it may use the console.
fn console_caller<'p>(policy: &'p PolicySet, name: &str) -> Result<&'p Caller, Refusal> {
    match policy.callers.iter().find(|c| c.name == name) {
        Some(caller) if caller.may.console => Ok(caller),
        Some(_) => Err(Refusal::NotPermitted),
        None => Err(Refusal::SignIn),
    }
}

fn permitted(caller: &Caller) -> Result<Viewer, Refusal> {
    if caller.may.console {
        Ok(Viewer::Caller(caller.name.clone()))
    } else {
        Err(Refusal::NotPermitted)
    }
}

/// Who looks, for a request with `headers` (and the client certificate its
/// TLS handshake verified). `open`: the operator opened a loopback listener.
pub(crate) fn identify(
    policy: &PolicySet,
    sessions: &Sessions,
    headers: &HeaderMap,
    certificate: Option<&CertificateDer<'_>>,
    open: bool,
) -> Result<Viewer, Refusal> {
    if let Some(key) = headers.get(crate::api::callers::API_KEY_HEADER) {
        let caller = policy
            .callers
            .by_api_key(key.as_bytes())
            .ok_or(Refusal::SignIn)?;
        return permitted(caller);
    }
    if let Some(certificate) = certificate {
        if let Some(caller) = crate::api::callers::by_certificate(policy, certificate) {
            return permitted(caller);
        }
    }
    if let Some(caller) = session_id(headers).and_then(|id| sessions.caller(id)) {
        return console_caller(policy, &caller).map(|c| Viewer::Caller(c.name.clone()));
    }
    if open {
        return Ok(Viewer::Loopback);
    }
    Err(Refusal::SignIn)
}

/// Signs in with what the form's one field holds: an API key of a caller,
/// or a token (verified like any check's) whose subject a caller names.
/// The caller and until when its session may last; the credential itself
/// is dropped here.
pub(crate) fn sign_in(pdp: &Pdp, presented: &str) -> Result<(String, Instant), Refusal> {
    let presented = presented.trim();
    if presented.is_empty() {
        return Err(Refusal::SignIn);
    }
    let policy = pdp.policy();
    let later = Instant::now() + SESSION_LIFETIME;
    if let Some(caller) = policy.callers.by_api_key(presented.as_bytes()) {
        return permitted(caller).map(|_| (caller.name.clone(), later));
    }
    let now = pdp.now();
    let every_issuer: Vec<usize> = (0..policy.issuers.len()).collect();
    let principal = crate::engine::Authenticate::authenticate(
        pdp.tokens(),
        &policy,
        &every_issuer,
        presented,
        now,
    )
    .map_err(|_| Refusal::SignIn)?;
    let caller = policy
        .callers
        .by_token_subject(&principal.subject)
        .ok_or(Refusal::SignIn)?;
    permitted(caller)?;
    let left = principal.expires_at.saturating_sub(now);
    let until = Instant::now() + Duration::from_secs(left).min(SESSION_LIFETIME);
    Ok((caller.name.clone(), until))
}

/// Whether a request is the console's own: its Host a loopback name when
/// the listener is open to anyone on the machine (a page elsewhere whose
/// name rebinds to 127.0.0.1 is refused), and a POST sent from the
/// console's own pages.
pub(crate) fn same_origin(method: &Method, headers: &HeaderMap, https: bool, open: bool) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if open && !is_loopback_host(host) {
        return false;
    }
    if method == Method::GET || method == Method::HEAD {
        return true;
    }
    match headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .filter(|o| *o != "null")
    {
        Some(origin) => {
            let scheme = if https { "https" } else { "http" };
            !host.is_empty() && origin == format!("{scheme}://{host}")
        }
        // No origin, or an opaque one: the browser's own word on where
        // the request came from, when it gives one.
        None => headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_none_or(|site| site == "same-origin"),
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_only() {
        for good in ["127.0.0.1:9293", "localhost:1", "[::1]:80", "127.0.0.2"] {
            assert!(is_loopback_host(good), "{good}");
        }
        for bad in ["evil.example:9293", "10.0.0.1:1", "", "127.0.0.1.evil:1"] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn sessions_hold_a_caller_by_digest_until_they_end() {
        let sessions = Sessions::default();
        let id = sessions
            .begin("ops", Instant::now() + Duration::from_secs(60))
            .unwrap_or_default();
        assert_eq!(id.len(), 64);
        assert_eq!(sessions.caller(&id).as_deref(), Some("ops"));
        assert_eq!(sessions.caller(&"0".repeat(64)), None);
        sessions.end(&id);
        assert_eq!(sessions.caller(&id), None);
        let gone = sessions.begin("ops", Instant::now()).unwrap_or_default();
        assert_eq!(sessions.caller(&gone), None);
    }

    #[test]
    fn posts_come_from_the_console_itself() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.insert(*k, axum::http::HeaderValue::from_static(v));
            }
            map
        };
        let post = Method::POST;
        let ours = headers(&[
            ("host", "127.0.0.1:9293"),
            ("origin", "http://127.0.0.1:9293"),
        ]);
        assert!(same_origin(&post, &ours, false, true));
        let theirs = headers(&[
            ("host", "127.0.0.1:9293"),
            ("origin", "http://evil.example"),
        ]);
        assert!(!same_origin(&post, &theirs, false, true));
        let cross = headers(&[("host", "127.0.0.1:9293"), ("sec-fetch-site", "cross-site")]);
        assert!(!same_origin(&post, &cross, false, false));
        let rebound = headers(&[("host", "evil.example:9293")]);
        assert!(!same_origin(&Method::GET, &rebound, false, true));
        assert!(same_origin(&Method::GET, &rebound, false, false));
    }
}
