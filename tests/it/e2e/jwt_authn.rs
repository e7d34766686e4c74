//! jwt_authn mode through the real filter: Envoy's jwt_authn verifies the
//! token against a generated JWKS (`envoy/front-proxy-jwt-authn.yaml`) and
//! passes its payload to Portcullis, which decides on it (the payload's
//! checks with hand-built CheckRequests are `core::jwt_authn`).

use crate::core::jwt_authn::jwt_authn_policies;
use crate::support::{bearer, now, Response, Stack};
use portcullis_testkit::Signer;
use serde_json::{json, Value};

/// The mesh IdP of the jwt_authn front proxy: an ES256 key generated per
/// test, its JWKS for the `__JWKS__` placeholder, and a stack running
/// `envoy/front-proxy-jwt-authn.yaml` in front of Portcullis.
struct JwtAuthnStack {
    stack: Stack,
    signer: Signer,
    _policies: tempfile::TempDir,
}

impl JwtAuthnStack {
    fn start() -> JwtAuthnStack {
        let signer = Signer::es256().with_kid("mesh-1");
        let jwks = portcullis_testkit::jwks(&[&signer]);
        let policies = jwt_authn_policies();
        let stack = Stack::start_with(
            policies.path(),
            "envoy/front-proxy-jwt-authn.yaml",
            &[("__JWKS__", &jwks)],
        );
        JwtAuthnStack {
            stack,
            signer,
            _policies: policies,
        }
    }

    /// Signed with the key Envoy's JWKS holds.
    fn sign(&self, claims: &Value) -> String {
        self.signer.sign(claims)
    }

    /// A valid token of the provider's issuer for `sub`.
    fn token(&self, sub: &str) -> String {
        self.sign(&self.claims("https://idp.example.com", sub))
    }

    fn claims(&self, iss: &str, sub: &str) -> Value {
        let now = u64::try_from(now()).unwrap_or_default();
        json!({ "iss": iss, "aud": "documents-api", "sub": sub, "exp": now + 300 })
    }

    fn get(&self, path: &[u8], authorization: Option<&str>) -> Response {
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|a| ("authorization", *a))
            .collect();
        self.stack.send("GET", path, &headers)
    }
}

/// Portcullis's own 401: its JSON deny body, not Envoy's plain-text one.
fn assert_portcullis_401(response: &Response, what: &str, logs: &str) {
    assert_eq!(response.status, 401, "{what}: {}\n{logs}", response.text());
    let body = response.json().unwrap_or_else(|| {
        panic!(
            "{what}: not Portcullis's JSON deny body: {:?}\n{logs}",
            response.text()
        )
    });
    assert_eq!(body["error"], "unauthorized", "{what}: {body}");
}

/// The real thing: Envoy's jwt_authn verifies an ES256 token against a
/// generated JWKS, and Portcullis decides on the payload it forwards.
#[test]
fn through_envoy_jwt_authn_verifies_and_portcullis_decides() {
    let mesh = JwtAuthnStack::start();
    let stack = &mesh.stack;
    let alice = mesh.token("alice");
    let allowed = mesh.get(b"/documents/1", Some(&bearer(&alice)));
    assert_eq!(allowed.status, 200, "{}", stack.logs());
    let seen = stack.upstream.requests();
    assert!(
        seen.iter()
            .any(|r| r.header("x-portcullis-subject") == Some("alice")),
        "{seen:?}"
    );
    assert_eq!(mesh.get(b"/documents/3", Some(&bearer(&alice))).status, 403);
    // No token: jwt_authn lets it pass without metadata; Portcullis says 401.
    let anonymous = mesh.get(b"/documents/1", None);
    assert_portcullis_401(&anonymous, "no token", &stack.logs());
    assert_eq!(mesh.get(b"/healthz", None).status, 200);
    // A token of the trusted issuer with a bad signature fails jwt_authn and
    // goes on without metadata: Portcullis refuses the raw token itself.
    let mut forged = alice.clone();
    let at = forged.len() - 10;
    let swapped = if &forged[at..=at] == "A" { "B" } else { "A" };
    forged.replace_range(at..=at, swapped);
    let refused = mesh.get(b"/documents/1", Some(&bearer(&forged)));
    assert_portcullis_401(&refused, "bad signature", &stack.logs());
}

/// A token jwt_authn cannot verify is Portcullis's to answer, not Envoy's:
/// with `allow_missing` Envoy refused every token of another issuer and
/// every opaque API key with its own 401, mesh-wide, before Portcullis (or
/// an issuer it knows) was asked.
#[test]
fn through_envoy_tokens_jwt_authn_cannot_verify_reach_portcullis() {
    let mesh = JwtAuthnStack::start();
    let stack = &mesh.stack;
    // Another issuer's JWT (signed with a key Envoy knows, so only the
    // issuer is foreign).
    let partner = mesh.sign(&mesh.claims("https://partner-idp.example.com", "carol"));
    let cases = [
        ("a token of another issuer", bearer(&partner)),
        (
            "an opaque API key",
            "Bearer sk_live_0123456789abcdef".to_owned(),
        ),
        ("not a bearer token", "Basic YWxpY2U6c2VjcmV0".to_owned()),
    ];
    for (what, authorization) in &cases {
        let response = mesh.get(b"/documents/1", Some(authorization));
        assert_portcullis_401(&response, what, &stack.logs());
    }
    // None of them reached the application.
    assert!(
        stack.upstream.requests().is_empty(),
        "{:?}",
        stack.upstream.requests()
    );
}

/// Tokens are read from `Authorization: Bearer` only. Envoy's default also
/// reads `?access_token=`, which puts a token into the application's URL and
/// every access log on the way.
#[test]
fn through_envoy_a_token_in_the_query_string_is_not_used() {
    let mesh = JwtAuthnStack::start();
    let stack = &mesh.stack;
    let alice = mesh.token("alice");
    let path = format!("/documents/1?access_token={alice}");
    let response = mesh.get(path.as_bytes(), None);
    assert_portcullis_401(&response, "token in ?access_token=", &stack.logs());

    // The same token in the header is fine; once the application has seen
    // that request it has seen everything sent before it.
    let allowed = mesh.get(b"/documents/1?marker=after", Some(&bearer(&alice)));
    assert_eq!(allowed.status, 200, "{}", stack.logs());
    let seen = stack.upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/documents/1?marker=after", "{seen:?}");
    assert!(
        seen.iter().all(|r| !r.path.contains("access_token")),
        "{seen:?}"
    );
}
