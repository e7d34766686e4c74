//! The decision engine: a request and a policy in, a [`Decision`] out.
//!
//! [`decide`] is synchronous and does no I/O; the time is a parameter and
//! token verification goes through an [`Authenticate`] the caller passes
//! (the server passes a cache). Every path that is not a positive match
//! ends in a deny: a bad path or Host, no application, no route, a missing
//! or bad token, an explicit deny, or no grant. A caller without a valid
//! credential learns nothing about routes: anything but a public route is
//! a 401 to it, whether or not the route exists.

use std::cell::{Cell, OnceCell};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::path::{self, PathError};
use crate::policy::condition::{Inputs, Scope};
use crate::policy::{
    bounded, normalize_host, Access, Condition, ConnectionPeers, GrantSource, Holder, PolicySet,
    ResourceKey, SelectInput, Selection,
};
use crate::token::{Principal, TokenError};

/// A request as Portcullis sees it, free of any protocol's types.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestAttrs {
    pub method: String,
    /// The raw `:path`, query included.
    pub path: String,
    /// The `:authority` (or `host`) header.
    pub host: String,
    /// The destination workload's principal (its mTLS identity, a SPIFFE
    /// id under Istio); empty when the connection proved none.
    pub destination: String,
    /// Envoy's per-route `context_extensions`.
    pub context_extensions: BTreeMap<String, String>,
    pub credential: Credential,
    /// The `x-request-id` header, for the decision log; the engine ignores it.
    pub request_id: Option<String>,
    /// Token payloads Envoy's jwt_authn filter verified, by metadata key.
    pub verified_payloads: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    /// The request headers the policy's routes show conditions
    /// ([`PolicySet::condition_headers`]), by lower-case name; a header
    /// sent more than once is left out. Empty for a policy that names none.
    pub headers: BTreeMap<String, String>,
}

/// Attributes the caller of the resource/action form ([`authorize`],
/// [`decide_resource_action`]) passes with its question, as JSON objects: what AuthZEN
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
pub enum Credential {
    #[default]
    Absent,
    /// The token of an `Authorization: Bearer` header.
    Bearer(String),
    /// An Authorization header that cannot be used.
    Invalid(CredentialError),
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
            Reason::ExplicitDeny | Reason::NoGrant | Reason::ConditionNotMet => {
                "the subject may not do this"
            }
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
        }
    }
}

/// The engine's answer, with everything needed to explain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub effect: Effect,
    pub reason: Reason,
    pub application: Option<String>,
    pub route: Option<String>,
    pub subject: Option<String>,
    pub resource: Option<String>,
    pub action: Option<String>,
    /// The grant or deny rule that settled it, in words.
    pub matched_rule: Option<String>,
    /// The application runs in dry-run mode: a deny is recorded as
    /// would-deny and the request goes through.
    pub dry_run: bool,
    /// Until when (seconds since the epoch) the decision holds: the
    /// subject's token validity; `None` when no token was involved.
    pub valid_until: Option<u64>,
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

/// Decides `request` against `policy` at `now` (seconds since the epoch).
pub fn decide(
    policy: &PolicySet,
    request: &RequestAttrs,
    authn: &dyn Authenticate,
    now: u64,
) -> Decision {
    decide_with_grants(policy, &*policy.grants, request, authn, now)
}

/// [`decide`] with the grants asked of `grants` instead of the policy's
/// own: a source the server filled for this one check (grants kept in a
/// database), everything else from `policy`.
pub fn decide_with_grants(
    policy: &PolicySet,
    grants: &dyn GrantSource,
    request: &RequestAttrs,
    authn: &dyn Authenticate,
    now: u64,
) -> Decision {
    let path = match path::normalize(&request.path) {
        Ok(path) => path,
        Err(e) => return Decision::deny(DenyStatus::BadRequest, Reason::BadPath(e)),
    };
    let Ok(host) = normalize_host(&request.host) else {
        return Decision::deny(DenyStatus::BadRequest, Reason::BadHost);
    };
    let selection = policy.selector.select(SelectInput {
        context: &request.context_extensions,
        destination: &request.destination,
        host: &host,
        path: &path,
    });
    let (app_index, selected_by) = match selection {
        Selection::Found(index, by) => (index, by),
        Selection::NotFound | Selection::Ambiguous => {
            let reason = if selection == Selection::NotFound {
                Reason::NoApplication
            } else {
                Reason::AmbiguousApplication
            };
            let every_issuer: Vec<usize> = (0..policy.issuers.len()).collect();
            return refuse_unknown(policy, &every_issuer, request, authn, now, reason);
        }
    };
    let Some(app) = policy.applications.get(app_index) else {
        return Decision::deny(DenyStatus::Forbidden, Reason::InternalError);
    };
    let with_app = |mut d: Decision| {
        d.application = Some(app.name.clone());
        // Dry run lets denies through; never where the client could have
        // picked this application over an enforcing one.
        d.dry_run = app.dry_run && !selected_by.client_chosen();
        d
    };
    let folded;
    let path = if app.case_insensitive {
        folded = path.to_ascii_lowercase();
        &folded
    } else {
        &path
    };
    let Some((route, captures)) = app.routes.find(&request.method, path) else {
        let refused = refuse_unknown(policy, &app.issuers, request, authn, now, Reason::NoRoute);
        return with_app(refused);
    };
    let resource = route.resource.as_ref().map(|r| r.render(&captures));
    let action = route.action.as_ref();
    let with_route = |mut d: Decision| {
        d = with_app(d);
        d.route = Some(route.name.clone());
        d.resource.clone_from(&resource);
        d.action = action.map(|(name, _)| name.clone());
        d
    };

    if route.access == Access::Public {
        return with_route(Decision::allow(Reason::PublicRoute));
    }
    let principal = match authenticate(policy, &app.issuers, request, authn, now) {
        Ok(principal) => principal,
        Err(reason) => return with_route(Decision::deny(DenyStatus::Unauthorized, reason)),
    };
    // What conditions read, gathered only if one is evaluated.
    let attributes = LazyAttributes::new(policy, || Inputs {
        resource: resource.as_deref(),
        captures: route
            .template
            .capture_names()
            .zip(captures.iter().copied())
            .collect(),
        action: action.map(|(name, _)| name.as_str()),
        now,
        headers: Some(&request.headers),
        extensions: Some(&request.context_extensions),
        ..principal_inputs(policy, &principal)
    });
    let mut decision = authorize_in(
        policy,
        grants,
        &principal,
        route.access,
        resource.as_deref(),
        action.map(|(_, index)| *index),
        route.condition.as_ref().map(|c| (route.name.as_str(), c)),
        &attributes,
    );
    decision.subject = Some(principal.subject.clone());
    let mut valid_until = policy.issuers.valid_until(&principal);
    if attributes.read_time.get() {
        // A decision that read the clock holds for this second only.
        valid_until = valid_until.min(now);
    }
    decision.valid_until = Some(valid_until);
    with_route(decision)
}

/// The attributes of one decision for conditions, built on first use: a
/// decision that evaluates no condition never builds them.
struct LazyAttributes<'a, F: Fn() -> Inputs<'a>> {
    policy: &'a PolicySet,
    inputs: F,
    scope: OnceCell<Scope>,
    /// A condition that reads `context.time` was evaluated.
    read_time: Cell<bool>,
}

impl<'a, F: Fn() -> Inputs<'a>> LazyAttributes<'a, F> {
    fn new(policy: &'a PolicySet, inputs: F) -> Self {
        Self {
            policy,
            inputs,
            scope: OnceCell::new(),
            read_time: Cell::new(false),
        }
    }
}

/// Evaluates conditions for [`authorize_in`], whatever the attributes' source.
trait ConditionScope {
    fn holds(&self, condition: &Condition) -> bool;
}

impl<'a, F: Fn() -> Inputs<'a>> ConditionScope for LazyAttributes<'a, F> {
    fn holds(&self, condition: &Condition) -> bool {
        if condition.reads().time {
            self.read_time.set(true);
        }
        let scope = self
            .scope
            .get_or_init(|| Scope::new(&self.policy.conditions, &(self.inputs)()));
        condition.holds(scope)
    }
}

/// The deny for a request that no application or route takes: 403 with
/// `reason` to a caller with a valid credential, and to any other the same
/// 401 an existing route would give, so that routes cannot be probed
/// without a token. The log still says why (`matched_rule`).
fn refuse_unknown(
    policy: &PolicySet,
    issuers: &[usize],
    request: &RequestAttrs,
    authn: &dyn Authenticate,
    now: u64,
    reason: Reason,
) -> Decision {
    match authenticate(policy, issuers, request, authn, now) {
        Ok(principal) => {
            let mut d = Decision::deny(DenyStatus::Forbidden, reason);
            d.subject = Some(principal.subject.clone());
            d.valid_until = Some(policy.issuers.valid_until(&principal));
            d
        }
        Err(unauthenticated) => {
            let mut d = Decision::deny(DenyStatus::Unauthorized, unauthenticated);
            d.matched_rule = Some(reason.to_string());
            d
        }
    }
}

/// Longest method and path an [`Unmatched`] carries, in bytes: enough to
/// recognise the request, bounded so a log line stays small.
pub const UNMATCHED_METHOD_MAX: usize = 32;
pub const UNMATCHED_PATH_MAX: usize = 256;

/// A request no application or route takes, explained: what it was and
/// what came closest. Never part of a [`Decision`]; computed on demand by
/// [`explain_unmatched`] for `portcullis check`, the case runner and the
/// decision log of a deny, so [`decide`] pays nothing for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmatched {
    /// The method, bounded.
    pub method: String,
    /// The normalized path (no query string), bounded.
    pub path: String,
    /// Which application or route came closest and why it did not take it.
    pub explanation: String,
}

/// Explains why no route takes `request`, or `None` when one does (or the
/// path or Host cannot be read: [`decide`]'s reason already says why).
/// Pure, like [`decide`], and never called by it.
pub fn explain_unmatched(policy: &PolicySet, request: &RequestAttrs) -> Option<Unmatched> {
    let path = path::normalize(&request.path).ok()?;
    let host = normalize_host(&request.host).ok()?;
    let method = &request.method;
    let unmatched = |explanation: String| Unmatched {
        method: bounded(method, UNMATCHED_METHOD_MAX),
        path: bounded(path.as_str(), UNMATCHED_PATH_MAX),
        explanation,
    };
    let selection = policy.selector.select(SelectInput {
        context: &request.context_extensions,
        destination: &request.destination,
        host: &host,
        path: &path,
    });
    let app_index = match selection {
        Selection::Found(index, _) => index,
        Selection::NotFound => {
            let context: Vec<String> = request
                .context_extensions
                .iter()
                .map(|(k, v)| format!("{k}={}", bounded(v, 64)))
                .collect();
            return Some(unmatched(format!(
                "no application selects the request (context extensions [{}], destination {:?}, host {:?}, path {})",
                context.join(", "),
                bounded(&request.destination, 128),
                bounded(&host, 128),
                bounded(path.as_str(), UNMATCHED_PATH_MAX)
            )));
        }
        Selection::Ambiguous => {
            return Some(unmatched(
                "several applications select the request equally (same kind of selector, same strength)"
                    .into(),
            ))
        }
    };
    let app = policy.applications.get(app_index)?;
    let folded;
    let path_for_routes = if app.case_insensitive {
        folded = path.to_ascii_lowercase();
        &folded
    } else {
        &path
    };
    if app.routes.find(method, path_for_routes).is_some() {
        return None;
    }
    let explanation = match app.routes.closest(method, path_for_routes) {
        Some(miss) => format!(
            "no route of application {:?} takes {} {}; closest: {}",
            app.name,
            bounded(method, UNMATCHED_METHOD_MAX),
            bounded(path.as_str(), UNMATCHED_PATH_MAX),
            miss.describe(method)
        ),
        None => format!("application {:?} has no routes", app.name),
    };
    Some(unmatched(explanation))
}

/// Decides a connection check by the policy's `connections:` rules: allowed
/// when one matches, denied otherwise (there is no path or token to decide
/// on). The resource is the destination, and the rule says which peers and
/// port were seen.
pub fn decide_connection(policy: &PolicySet, connection: &ConnectionAttrs) -> Decision {
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
    let source = match connection.source_principal.as_str() {
        "" => "a client without a workload identity",
        principal => principal,
    };
    decision.matched_rule = Some(match connection.destination_port {
        Some(port) => format!("connection from {source} to port {port}"),
        None => format!("connection from {source} to an unknown port"),
    });
    decision
}

/// Who the request speaks for. A payload Envoy's jwt_authn filter verified
/// for an issuer that trusts it comes first; otherwise the bearer token is
/// verified here (and refused for issuers that trust only jwt_authn).
fn authenticate(
    policy: &PolicySet,
    allowed: &[usize],
    request: &RequestAttrs,
    authn: &dyn Authenticate,
    now: u64,
) -> Result<Arc<Principal>, Reason> {
    let trusting = allowed
        .iter()
        .filter_map(|&i| policy.issuers.get(i))
        .filter_map(|issuer| {
            let key = issuer.jwt_authn_payload.as_deref()?;
            Some((issuer, request.verified_payloads.get(key)?))
        });
    let mut refused = None;
    for (issuer, payload) in trusting {
        match issuer.principal_from_payload(payload, now) {
            Ok(principal) => return Ok(Arc::new(principal)),
            Err(e) => refused = Some(e),
        }
    }
    if let Some(e) = refused {
        return Err(Reason::InvalidToken(e));
    }
    match &request.credential {
        Credential::Bearer(token) => authn
            .authenticate(policy, allowed, token, now)
            .map_err(Reason::InvalidToken),
        Credential::Absent => Err(Reason::MissingCredentials),
        Credential::Invalid(e) => Err(Reason::BadCredentials(*e)),
    }
}

/// Decides whether `principal` may perform `action` (an index into
/// [`PolicySet::actions`]) on `resource`, given what the route requires,
/// with the caller's `attributes` for conditions, at `now` (seconds since
/// the epoch; `context.time`). Explicit denies are checked first and beat
/// every grant. The resource/action form of `portcullis check`, decision
/// cases and the AuthZEN API call this (through [`decide_resource_action`]).
pub fn authorize(
    policy: &PolicySet,
    principal: &Principal,
    access: Access,
    resource: Option<&str>,
    action: Option<usize>,
    attributes: &Attributes,
    now: u64,
) -> Decision {
    authorize_with_grants(
        policy,
        &*policy.grants,
        principal,
        access,
        resource,
        action,
        attributes,
        now,
    )
}

/// [`authorize`] with the grants asked of `grants` (see [`decide_with_grants`]).
#[allow(clippy::too_many_arguments)]
pub fn authorize_with_grants(
    policy: &PolicySet,
    grants: &dyn GrantSource,
    principal: &Principal,
    access: Access,
    resource: Option<&str>,
    action: Option<usize>,
    attributes: &Attributes,
    now: u64,
) -> Decision {
    let action_name = action
        .and_then(|a| policy.actions.get(a))
        .map(String::as_str);
    let lazy = LazyAttributes::new(policy, || Inputs {
        subject_properties: Some(&attributes.subject),
        resource,
        resource_properties: Some(&attributes.resource),
        action: action_name,
        now,
        action_properties: Some(&attributes.action),
        context_properties: Some(&attributes.context),
        ..principal_inputs(policy, principal)
    });
    authorize_in(
        policy, grants, principal, access, resource, action, None, &lazy,
    )
}

/// What conditions read of the principal: its subject, its groups (the
/// token's and the policy's) and its verified claims.
fn principal_inputs<'a>(policy: &'a PolicySet, principal: &'a Principal) -> Inputs<'a> {
    Inputs {
        subject_id: &principal.subject,
        groups: principal
            .groups
            .iter()
            .chain(policy.policy_groups(&principal.subject))
            .map(String::as_str)
            .collect(),
        claims: Some(&principal.claims),
        ..Inputs::default()
    }
}

#[allow(clippy::too_many_arguments)]
fn authorize_in(
    policy: &PolicySet,
    grants: &dyn GrantSource,
    principal: &Principal,
    access: Access,
    resource: Option<&str>,
    action: Option<usize>,
    route_condition: Option<(&str, &Condition)>,
    conditions: &dyn ConditionScope,
) -> Decision {
    let subject = principal.subject.as_str();
    let policy_groups = policy.policy_groups(subject);
    let groups = || principal.groups.iter().chain(policy_groups);
    let target = resource.unwrap_or("");

    let subject_denies = policy.denies.subjects.get(subject).into_iter().flatten();
    let group_denies = groups()
        .filter_map(|g| policy.denies.groups.get(g.as_str()))
        .flatten();
    let denied = subject_denies
        .chain(group_denies)
        .chain(&policy.denies.everyone)
        .find(|rule| rule.applies(target, action));
    if let Some(rule) = denied {
        let mut d = Decision::deny(DenyStatus::Forbidden, Reason::ExplicitDeny);
        d.matched_rule = Some(match &rule.reason {
            Some(why) => format!("deny {:?}: {why}", rule.name),
            None => format!("deny {:?}", rule.name),
        });
        return d;
    }

    if let Some((route, condition)) = route_condition {
        if !conditions.holds(condition) {
            let mut d = Decision::deny(DenyStatus::Forbidden, Reason::ConditionNotMet);
            d.matched_rule = Some(format!(
                "condition of route {route:?} does not hold: {}",
                bounded(condition.source(), 256)
            ));
            return d;
        }
    }

    match access {
        Access::Public => return Decision::allow(Reason::PublicRoute),
        Access::Authenticated => return Decision::allow(Reason::Authenticated),
        Access::Granted => {}
    }
    let (Some(resource), Some(action)) = (resource, action) else {
        return Decision::deny(DenyStatus::Forbidden, Reason::NoGrant);
    };
    let holders = std::iter::once(Holder::Subject(subject))
        .chain(groups().map(|g| Holder::Group(g)))
        .chain(std::iter::once(Holder::Authenticated));
    // The first grant whose condition did not hold, for the log.
    let mut unmet: Option<String> = None;
    for holder in holders {
        for key in ResourceKey::covering(resource) {
            for &role_id in grants.roles(holder, key) {
                let Some(role) = policy.roles.get(role_id as usize) else {
                    continue;
                };
                if !role.actions.contains(action) {
                    continue;
                }
                if let Some(condition) = &role.condition {
                    if !conditions.holds(condition) {
                        unmet.get_or_insert_with(|| {
                            format!(
                                "grant of role {:?} on {key} to {holder} under a condition that does not hold: {}",
                                role.name,
                                bounded(condition.source(), 256)
                            )
                        });
                        continue;
                    }
                }
                let mut d = Decision::allow(Reason::Granted);
                let condition = if role.condition.is_some() {
                    " (its condition holds)"
                } else {
                    ""
                };
                d.matched_rule = Some(format!(
                    "grant of role {:?} on {key} to {holder}{condition}",
                    role.name
                ));
                return d;
            }
        }
    }
    let mut d = Decision::deny(DenyStatus::Forbidden, Reason::NoGrant);
    d.matched_rule = unmet;
    d
}

/// An action no route or role names: not an error of the request, but
/// nothing can grant it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no route or role names the action {0:?}")]
pub struct UnknownAction(pub String);

/// The resource/action form of a decision, without a request: may
/// `principal` perform `action` on `resource`? What a case's `resource:`
/// and `action:` ask, and what the AuthZEN API asks. Grants and denies are
/// the policy's, whatever application would route such a request, so no
/// application is chosen and no route's `access` applies: a grant must hold
/// the action. `attributes` (subject and resource properties, context) are
/// what conditions read besides the principal's claims; `now` is
/// `context.time`.
pub fn decide_resource_action(
    policy: &PolicySet,
    principal: &Principal,
    resource: &str,
    action: &str,
    attributes: &Attributes,
    now: u64,
) -> Result<Decision, UnknownAction> {
    decide_resource_action_with_grants(
        policy,
        &*policy.grants,
        principal,
        resource,
        action,
        attributes,
        now,
    )
}

/// [`decide_resource_action`] with the grants asked of `grants` (see
/// [`decide_with_grants`]).
pub fn decide_resource_action_with_grants(
    policy: &PolicySet,
    grants: &dyn GrantSource,
    principal: &Principal,
    resource: &str,
    action: &str,
    attributes: &Attributes,
    now: u64,
) -> Result<Decision, UnknownAction> {
    let index = policy
        .actions
        .iter()
        .position(|a| a == action)
        .ok_or_else(|| UnknownAction(action.to_owned()))?;
    let mut d = authorize_with_grants(
        policy,
        grants,
        principal,
        Access::Granted,
        Some(resource),
        Some(index),
        attributes,
        now,
    );
    d.subject = Some(principal.subject.clone());
    d.resource = Some(resource.to_owned());
    d.action = Some(action.to_owned());
    Ok(d)
}
