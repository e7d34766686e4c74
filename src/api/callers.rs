//! Who is asking: the caller of the AuthZEN API, and the user whose token
//! it presents.
//!
//! A caller proves who it is with one of three credentials, each matched
//! against the policy's `callers:`: an API key in `X-API-Key` (or as
//! `Authorization: Bearer <key>`, as many PEPs send it), a client
//! certificate (mTLS on the API listener) carrying exactly a DNS name or a
//! SPIFFE id a caller names, or a bearer token from one of the policy's
//! issuers whose subject a caller names. A bearer token is also the user token: a caller that may
//! not ask about any subject may still ask about the subject of the token it
//! presents, with that token's groups.

use std::sync::Arc;

use axum::http::HeaderMap;
use rustls_pki_types::CertificateDer;

use crate::adapter;
use crate::engine::{Authenticate, Credential};
use crate::policy::callers::{Caller, Permissions};
use crate::policy::PolicySet;
use crate::token::Principal;

/// The header an API key travels in.
pub(crate) const API_KEY_HEADER: &str = "x-api-key";

/// Who asks.
#[derive(Debug, Clone, Default)]
pub(crate) struct Asker {
    /// The caller the policy names, if the request proved one.
    pub caller: Option<Caller>,
    /// The verified user token, if one was presented.
    pub user: Option<Arc<Principal>>,
}

impl Asker {
    pub fn may(&self) -> Permissions {
        self.caller.as_ref().map(|c| c.may).unwrap_or_default()
    }
}

/// Why a request is not authenticated: 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unauthenticated {
    #[error("no credential: send an API key (X-API-Key or Authorization: Bearer), a bearer token, or a client certificate the policy names")]
    Missing,
    #[error("the API key is not known")]
    UnknownApiKey,
    #[error("more than one X-API-Key header")]
    SeveralApiKeys,
    #[error("the Authorization header is not acceptable: {0}")]
    BadAuthorization(String),
    #[error("the bearer token is not valid: {0}")]
    InvalidToken(&'static str),
}

impl Unauthenticated {
    /// The `WWW-Authenticate` challenge (RFC 6750 for the bearer scheme).
    pub fn challenge(&self) -> &'static str {
        match self {
            Unauthenticated::InvalidToken(_) | Unauthenticated::BadAuthorization(_) => {
                "Bearer realm=\"portcullis\", error=\"invalid_token\""
            }
            _ => "Bearer realm=\"portcullis\"",
        }
    }
}

/// Finds out who asks. Every issuer of the policy may vouch for a user
/// token: on this path there is no application to narrow them, and each
/// issuer's subjects are distinct (`subject_prefix`).
pub(crate) fn identify(
    policy: &PolicySet,
    headers: &HeaderMap,
    client_certificate: Option<&CertificateDer<'_>>,
    authn: &dyn Authenticate,
    now: u64,
) -> Result<Asker, Unauthenticated> {
    let mut asker = Asker::default();
    let mut keys = headers.get_all(API_KEY_HEADER).iter();
    if let Some(key) = keys.next() {
        if keys.next().is_some() {
            return Err(Unauthenticated::SeveralApiKeys);
        }
        let caller = policy
            .callers
            .by_api_key(key.as_bytes())
            .ok_or(Unauthenticated::UnknownApiKey)?;
        asker.caller = Some(caller.clone());
    }
    let authorization = headers.get_all(axum::http::header::AUTHORIZATION);
    if authorization.iter().next().is_some() {
        let values = authorization
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()));
        match adapter::credential(values) {
            Credential::Bearer(token)
                if asker.caller.is_none()
                    && policy.callers.by_api_key(token.as_bytes()).is_some() =>
            {
                // An API key sent as a bearer credential: a caller, no user.
                asker.caller = policy.callers.by_api_key(token.as_bytes()).cloned();
            }
            Credential::Bearer(token) => {
                let every_issuer: Vec<usize> = (0..policy.issuers.len()).collect();
                let principal = authn
                    .authenticate(policy, &every_issuer, &token, now)
                    .map_err(|e| Unauthenticated::InvalidToken(e.public_description()))?;
                if asker.caller.is_none() {
                    asker.caller = policy.callers.by_token_subject(&principal.subject).cloned();
                }
                asker.user = Some(principal);
            }
            Credential::Invalid(e) => return Err(Unauthenticated::BadAuthorization(e.to_string())),
            Credential::Absent => {}
        }
    }
    if asker.caller.is_none() {
        if let Some(certificate) = client_certificate {
            asker.caller = by_certificate(policy, certificate).cloned();
        }
    }
    if asker.caller.is_none() && asker.user.is_none() {
        return Err(Unauthenticated::Missing);
    }
    Ok(asker)
}

/// The caller the (already verified) client certificate names: exactly one
/// of its DNS names (a wildcard it presents names nobody) or SPIFFE ids.
pub(crate) fn by_certificate<'p>(
    policy: &'p PolicySet,
    certificate: &CertificateDer<'_>,
) -> Option<&'p Caller> {
    let parsed = webpki::EndEntityCert::try_from(certificate).ok()?;
    let dns_names: Vec<&str> = parsed.valid_dns_names().collect();
    let uris: Vec<&str> = parsed.valid_uri_names().collect();
    policy
        .callers
        .by_certificate(dns_names.iter().copied(), uris.iter().copied())
}
