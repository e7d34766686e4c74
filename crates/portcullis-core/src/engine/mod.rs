//! The decision engine: a request and a policy in, a [`Decision`] out.
//!
//! [`decide`] is synchronous and does no I/O; the time is a parameter and
//! token verification goes through an [`Authenticate`] the caller passes
//! (the server passes a cache). Every path that is not a positive match
//! ends in a deny: a bad path or Host, no application, no route, a missing
//! or bad token, an explicit deny, or no grant. A caller without a valid
//! credential learns nothing about routes: anything but a public route is
//! a 401 to it, whether or not the route exists.
//!
//! The request types, [`Decision`] and [`Reason`] are here; deciding is in
//! one file per part: [`http`] (path, Host, application, route, token),
//! [`authorize`] (denies, conditions, grants: what every form ends in),
//! [`explain`] (what came closest, for a deny no route took).

mod authorize;
mod explain;
mod http;
mod resolve;
mod rule;
mod trace;

pub(crate) use authorize::authorize;
use authorize::decide_resource_action;
pub use explain::{
    explain_selection, explain_unmatched, Unmatched, UNMATCHED_METHOD_MAX, UNMATCHED_PATH_MAX,
};
use http::decide_http;
pub use rule::{ConditionRef, GrantHolder, GrantKey, MatchedRule, RuleText};
pub use trace::{trace, Looked, Recording, Tried};

use std::borrow::Cow;
use std::cell::{Cell, OnceCell};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::path::{self, PathError};
use crate::policy::condition::{Inputs, Scope};
use crate::policy::{
    bounded, normalize_host, Access, Condition, ConnectionPeers, GrantSource, PolicySet,
    ResourceKey, SelectInput, Selection,
};
use crate::token::{Principal, TokenError};

/// A request as Portcullis sees it, free of any protocol's types. Its
/// text borrows from what the shell read (`'a`: Envoy's CheckRequest, so a
/// check copies none of it) or owns it (a decision case, the CLI).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestAttrs<'a> {
    pub method: Cow<'a, str>,
    /// The raw `:path`, query included.
    pub path: Cow<'a, str>,
    /// The `:authority` (or `host`) header.
    pub host: Cow<'a, str>,
    /// The destination workload's principal (its mTLS identity, a SPIFFE
    /// id under Istio); empty when the connection proved none.
    pub destination: Cow<'a, str>,
    /// Envoy's per-route `context_extensions`.
    pub context_extensions: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    pub credential: Credential<'a>,
    /// The `x-request-id` header, for the decision log; the engine ignores it.
    pub request_id: Option<Cow<'a, str>>,
    /// Token payloads Envoy's jwt_authn filter verified, by metadata key.
    pub verified_payloads: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    /// The request headers the policy's routes show conditions
    /// ([`PolicySet::condition_headers`]), by lower-case name; a header
    /// sent more than once is left out. Empty for a policy that names none.
    pub headers: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
}

/// Attributes the caller of the resource/action form
/// ([`Request::ResourceAction`]) passes with its question, as JSON objects: what AuthZEN
/// calls `subject.properties`, `resource.properties`, `action.properties`
/// and `context`. Conditions read them as `subject.properties`,
/// `resource.properties`, `action.properties` and `context.properties`;
/// `context.time` is always the `now` of the call, never a value the caller
/// sends. Shared (`Arc`), so a batch's defaults are never copied per item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub subject: Arc<Map<String, Value>>,
    pub resource: Arc<Map<String, Value>>,
    pub action: Arc<Map<String, Value>>,
    pub context: Arc<Map<String, Value>>,
}

impl Attributes {
    /// No attributes: conditions that read any are false.
    pub fn none() -> &'static Attributes {
        static NONE: std::sync::OnceLock<Attributes> = std::sync::OnceLock::new();
        NONE.get_or_init(Attributes::default)
    }
}

/// A check without HTTP attributes: a connection, as Envoy's network
/// ext_authz filter reports it. There is no method, path or token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionAttrs {
    /// The client workload's principal (mTLS), empty when unknown.
    pub source_principal: String,
    /// The destination workload's principal (mTLS), empty when unknown.
    pub destination_principal: String,
    /// The destination port (under Istio, the original destination's).
    pub destination_port: Option<u16>,
    /// `ip:port` of the destination, for the log; empty when unknown.
    pub destination_address: String,
}

impl ConnectionAttrs {
    /// What the policy's connection rules match on.
    pub fn peers(&self) -> ConnectionPeers<'_> {
        ConnectionPeers {
            source_principal: &self.source_principal,
            destination_principal: &self.destination_principal,
            destination_port: self.destination_port,
        }
    }
}

/// What the request offers as proof of identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Credential<'a> {
    #[default]
    Absent,
    /// The token of an `Authorization: Bearer` header.
    Bearer(Cow<'a, str>),
    /// An Authorization header that cannot be used.
    Invalid(CredentialError),
}

impl Credential<'_> {
    /// The credential with its token copied, free of what it borrowed.
    pub fn into_owned(self) -> Credential<'static> {
        match self {
            Credential::Absent => Credential::Absent,
            Credential::Bearer(token) => Credential::Bearer(Cow::Owned(token.into_owned())),
            Credential::Invalid(e) => Credential::Invalid(e),
        }
    }
}

/// Why an Authorization header was refused outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("the request has more than one Authorization header")]
    Multiple,
    #[error("the Authorization header is not a Bearer token")]
    NotBearer,
    #[error("the Authorization header is malformed")]
    Malformed,
}

/// Turns a bearer token into a principal. The server caches; tests and the
/// CLI may verify every time.
pub trait Authenticate {
    fn authenticate(
        &self,
        policy: &PolicySet,
        allowed_issuers: &[usize],
        token: &str,
        now: u64,
    ) -> Result<Arc<Principal>, TokenError>;
}

/// Verifies every token afresh.
pub struct VerifyEveryTime;

impl Authenticate for VerifyEveryTime {
    fn authenticate(
        &self,
        policy: &PolicySet,
        allowed: &[usize],
        token: &str,
        now: u64,
    ) -> Result<Arc<Principal>, TokenError> {
        policy.issuers.verify(allowed, token, now).map(Arc::new)
    }
}

/// A principal verified earlier (by the served policy, or as a decision
/// log recorded it), asked about again under another policy (a shadow or
/// replayed candidate): accepted only by an application that trusts its
/// issuer, as a token of that issuer would be.
pub fn trusted_again(
    policy: &PolicySet,
    allowed_issuers: &[usize],
    principal: &Arc<Principal>,
) -> Result<Arc<Principal>, TokenError> {
    let trusted = allowed_issuers
        .iter()
        .filter_map(|&i| policy.issuers.get(i))
        .any(|issuer| *issuer.name == *principal.issuer);
    if trusted {
        Ok(principal.clone())
    } else {
        Err(TokenError::UnknownIssuer)
    }
}

/// A principal already verified elsewhere: a decision case's `as:` caller,
/// or claims Envoy's jwt_authn filter verified. Every credential maps to it.
pub struct KnownPrincipal(pub Arc<Principal>);

impl Authenticate for KnownPrincipal {
    fn authenticate(
        &self,
        _: &PolicySet,
        _: &[usize],
        _: &str,
        _: u64,
    ) -> Result<Arc<Principal>, TokenError> {
        Ok(self.0.clone())
    }
}

/// Allow, or deny with the HTTP status the deny stands for: an allow has
/// no deny status, and a deny cannot carry 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny(DenyStatus),
}

/// The HTTP status of a deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyStatus {
    BadRequest = 400,
    Unauthorized = 401,
    Forbidden = 403,
}

impl DenyStatus {
    pub fn code(self) -> u16 {
        self as u16
    }
}

/// Why a decision came out as it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The route needs no token.
    PublicRoute,
    /// The route admits any verified subject.
    Authenticated,
    /// A grant holds the action.
    Granted,
    BadPath(PathError),
    BadHost,
    NoApplication,
    AmbiguousApplication,
    NoRoute,
    MissingCredentials,
    BadCredentials(CredentialError),
    InvalidToken(TokenError),
    ExplicitDeny,
    NoGrant,
    /// The route's condition does not hold (or cannot be evaluated).
    ConditionNotMet,
    /// The engine failed; the server turns any fault into this deny.
    InternalError,
    /// A connection check that a `connections:` rule allows.
    ConnectionAllowed,
    /// A connection check that no `connections:` rule allows.
    ConnectionDenied,
    /// Grants kept in a database could not be read (unreachable past its
    /// grace period, or not at the revision the check asked for): denied,
    /// never allowed on error.
    GrantsUnavailable,
    /// The resource/action form named an action no route or role names:
    /// nothing can grant it.
    UnknownAction,
}

impl Reason {
    /// A stable label for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::PublicRoute => "public_route",
            Reason::Authenticated => "authenticated",
            Reason::Granted => "granted",
            Reason::BadPath(_) => "bad_path",
            Reason::BadHost => "bad_host",
            Reason::NoApplication => "no_application",
            Reason::AmbiguousApplication => "ambiguous_application",
            Reason::NoRoute => "no_route",
            Reason::MissingCredentials => "missing_credentials",
            Reason::BadCredentials(_) => "bad_credentials",
            Reason::InvalidToken(e) => e.code(),
            Reason::ExplicitDeny => "explicit_deny",
            Reason::NoGrant => "no_grant",
            Reason::ConditionNotMet => "condition_not_met",
            Reason::InternalError => "internal_error",
            Reason::ConnectionAllowed => "connection_allowed",
            Reason::ConnectionDenied => "connection_denied",
            Reason::GrantsUnavailable => "grants_unavailable",
            Reason::UnknownAction => "unknown_action",
        }
    }

    /// Text safe to show the client: no token, rule or grant details.
    pub fn public_message(&self) -> &'static str {
        match self {
            Reason::PublicRoute
            | Reason::Authenticated
            | Reason::Granted
            | Reason::ConnectionAllowed => "allowed",
            Reason::BadPath(_) => "the request path is not acceptable",
            Reason::BadHost => "the Host header is not acceptable",
            Reason::NoApplication | Reason::AmbiguousApplication | Reason::NoRoute => {
                "no route allows this request"
            }
            Reason::MissingCredentials => "a bearer token is required",
            Reason::BadCredentials(_) => "the Authorization header is not acceptable",
            Reason::InvalidToken(e) => e.public_description(),
            Reason::ExplicitDeny
            | Reason::NoGrant
            | Reason::ConditionNotMet
            | Reason::UnknownAction => "the subject may not do this",
            Reason::InternalError | Reason::GrantsUnavailable => {
                "the request could not be authorized"
            }
            Reason::ConnectionDenied => "the connection is not allowed",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::PublicRoute => f.write_str("the route is public"),
            Reason::Authenticated => f.write_str("the route admits any authenticated subject"),
            Reason::Granted => f.write_str("a grant holds the action"),
            Reason::BadPath(e) => write!(f, "bad path: {e}"),
            Reason::BadHost => f.write_str(
                "the Host header is not a plain host name with an optional numeric port",
            ),
            Reason::NoApplication => f.write_str("no application matches the request"),
            Reason::AmbiguousApplication => {
                f.write_str("several applications match the request equally")
            }
            Reason::NoRoute => f.write_str("no route matches the method and path"),
            Reason::MissingCredentials => f.write_str("no bearer token"),
            Reason::BadCredentials(e) => write!(f, "{e}"),
            Reason::InvalidToken(e) => write!(f, "{e}"),
            Reason::ExplicitDeny => f.write_str("an explicit deny rule matches"),
            Reason::NoGrant => f.write_str("no grant holds the action on the resource"),
            Reason::ConditionNotMet => f.write_str("the route's condition does not hold"),
            Reason::InternalError => f.write_str("internal error while deciding"),
            Reason::ConnectionAllowed => {
                f.write_str("a check without HTTP attributes, allowed by a `connections` rule")
            }
            Reason::ConnectionDenied => {
                f.write_str("a check without HTTP attributes that no `connections` rule allows")
            }
            Reason::GrantsUnavailable => f.write_str("the grants database could not be read"),
            Reason::UnknownAction => f.write_str("no route or role names the action"),
        }
    }
}

/// The engine's answer, with everything needed to explain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub effect: Effect,
    pub reason: Reason,
    pub application: Option<Arc<str>>,
    pub route: Option<Arc<str>>,
    pub subject: Option<Arc<str>>,
    pub resource: Option<String>,
    pub action: Option<Arc<str>>,
    /// The grant, deny rule or condition that settled it, as data;
    /// [`Decision::rule`] puts it in words.
    pub matched_rule: Option<MatchedRule>,
    /// The application runs in dry-run mode: a deny is recorded as
    /// would-deny and the request goes through.
    pub dry_run: bool,
    /// Until when (seconds since the epoch) the decision holds: the
    /// subject's token validity; `None` when no token was involved.
    pub valid_until: Option<u64>,
    /// The verified principal an HTTP decision was made for (its token's
    /// groups and the claims conditions read, never the token): what the
    /// decision log records so `portcullis replay` and shadow policies can
    /// decide the request again without tokens or keys. Shared, not copied.
    pub principal: Option<Arc<Principal>>,
}

impl Decision {
    fn new(effect: Effect, reason: Reason) -> Self {
        Self {
            effect,
            reason,
            application: None,
            route: None,
            subject: None,
            resource: None,
            action: None,
            matched_rule: None,
            dry_run: false,
            valid_until: None,
            principal: None,
        }
    }

    pub fn deny(status: DenyStatus, reason: Reason) -> Self {
        Self::new(Effect::Deny(status), reason)
    }

    fn allow(reason: Reason) -> Self {
        Self::new(Effect::Allow, reason)
    }

    pub fn is_allowed(&self) -> bool {
        self.effect == Effect::Allow
    }

    /// The HTTP status the decision stands for: 200 for an allow.
    pub fn status_code(&self) -> u16 {
        match self.effect {
            Effect::Allow => 200,
            Effect::Deny(status) => status.code(),
        }
    }

    /// True when the request goes through: allowed, or denied in dry run.
    pub fn lets_through(&self) -> bool {
        self.is_allowed() || self.dry_run
    }

    /// `allow`, `deny`, or `would_deny` for a deny in dry run.
    pub fn outcome(&self) -> &'static str {
        match (self.effect, self.dry_run) {
            (Effect::Allow, _) => "allow",
            (Effect::Deny(_), false) => "deny",
            (Effect::Deny(_), true) => "would_deny",
        }
    }
}

/// What is asked: the three forms every entry point converts its input to.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// An HTTP request as Envoy's check carries it.
    Http(&'a RequestAttrs<'a>),
    /// A TCP connection: a check without HTTP attributes.
    Connection(&'a ConnectionAttrs),
    /// May a verified principal do an action on a resource? What the
    /// AuthZEN API, signed events and decision cases ask.
    ResourceAction(ResourceAction<'a>),
}

/// The resource/action form of a question: no application is chosen and no
/// route's `access` applies, so a grant must hold the action. Grants and
/// denies are the policy's, whatever application would route such a
/// request. `attributes` (subject and resource properties, context) are
/// what conditions read besides the principal's claims.
#[derive(Debug, Clone, Copy)]
pub struct ResourceAction<'a> {
    pub principal: &'a Principal,
    pub resource: &'a str,
    pub action: &'a str,
    pub attributes: &'a Attributes,
}

/// The one entry of the engine: decides `request` against `policy` at
/// `now` (seconds since the epoch), with grants asked of `grants` (the
/// policy's own, `&*policy.grants`, or a source the shell filled for this
/// one decision from a database) and tokens verified by `authn`.
pub fn decide(
    policy: &PolicySet,
    grants: &dyn GrantSource,
    request: &Request<'_>,
    authn: &dyn Authenticate,
    now: u64,
) -> Decision {
    match request {
        Request::Http(attrs) => decide_http(policy, grants, attrs, authn, now),
        Request::Connection(connection) => decide_connection(policy, connection),
        Request::ResourceAction(asked) => decide_resource_action(policy, grants, asked, now),
    }
}

/// Decides a connection check by the policy's `connections:` rules: allowed
/// when one matches, denied otherwise (there is no path or token to decide
/// on). The resource is the destination, and the rule says which peers and
/// port were seen.
fn decide_connection(policy: &PolicySet, connection: &ConnectionAttrs) -> Decision {
    let peers = connection.peers();
    let mut decision = match policy.connections.allowing(&peers) {
        Some(rule) => {
            let mut allow = Decision::allow(Reason::ConnectionAllowed);
            allow.route = Some(rule.name.clone());
            allow
        }
        None => Decision::deny(DenyStatus::Forbidden, Reason::ConnectionDenied),
    };
    let destination = if connection.destination_principal.is_empty() {
        &connection.destination_address
    } else {
        &connection.destination_principal
    };
    if !destination.is_empty() {
        decision.resource = Some(destination.clone());
    }
    decision.matched_rule = Some(MatchedRule::Connection {
        source: connection.source_principal.clone(),
        port: connection.destination_port,
    });
    decision
}
