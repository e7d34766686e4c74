//! An HTTP request decided: path and Host checked, the application
//! selected (by selectors the client cannot write before those it can),
//! the route matched, the token verified, then [`authorize`] with what the
//! route requires. A caller without a valid credential learns nothing
//! about routes ([`refuse_unknown`]).

use super::authorize::{authorize_in, principal_inputs, LazyAttributes};
use super::resolve::{resolve, Resolved};
use super::*;
use crate::policy::{Application, Route, SelectedBy};

pub(super) fn decide_http(
    policy: &PolicySet,
    grants: &dyn GrantSource,
    request: &RequestAttrs,
    authn: &dyn Authenticate,
    now: u64,
) -> Decision {
    resolve(policy, request, |resolved| match resolved {
        Resolved::BadPath(e) => Decision::deny(DenyStatus::BadRequest, Reason::BadPath(e)),
        Resolved::BadHost => Decision::deny(DenyStatus::BadRequest, Reason::BadHost),
        Resolved::Internal => Decision::deny(DenyStatus::Forbidden, Reason::InternalError),
        Resolved::NoApplication { reason, .. } => {
            let every_issuer: Vec<usize> = (0..policy.issuers.len()).collect();
            refuse_unknown(policy, &every_issuer, request, authn, now, reason)
        }
        Resolved::NoRoute {
            app, selected_by, ..
        } => with_app(
            app,
            selected_by,
            refuse_unknown(policy, &app.issuers, request, authn, now, Reason::NoRoute),
        ),
        Resolved::Route {
            app,
            selected_by,
            route,
            captures,
        } => {
            let matched = Matched {
                app,
                selected_by,
                route,
                captures: &captures,
            };
            decide_route(policy, grants, request, authn, now, matched)
        }
    })
}

/// The application that took a request, named in its decision. Dry run
/// lets denies through; never where the client could have picked this
/// application over an enforcing one.
fn with_app(app: &Application, selected_by: SelectedBy, mut d: Decision) -> Decision {
    d.application = Some(app.name.clone());
    d.dry_run = app.dry_run && !selected_by.client_chosen();
    d
}

/// A route that took a request, with what it captured.
struct Matched<'a> {
    app: &'a Application,
    selected_by: SelectedBy,
    route: &'a Route,
    captures: &'a [&'a str],
}

/// The decision of a request a route took: public, or authenticated and
/// then authorized as the route requires.
fn decide_route(
    policy: &PolicySet,
    grants: &dyn GrantSource,
    request: &RequestAttrs,
    authn: &dyn Authenticate,
    now: u64,
    matched: Matched<'_>,
) -> Decision {
    let Matched {
        app,
        selected_by,
        route,
        captures,
    } = matched;
    let resource = route.resource.as_ref().map(|r| r.render(captures));
    let action = route.action.as_ref();
    let with_route = |mut d: Decision, resource: Option<String>| {
        d = with_app(app, selected_by, d);
        d.route = Some(route.name.clone());
        d.resource = resource;
        d.action = action.map(|(name, _)| name.clone());
        d
    };

    if route.access == Access::Public {
        return with_route(Decision::allow(Reason::PublicRoute), resource);
    }
    let principal = match authenticate(policy, &app.issuers, request, authn, now) {
        Ok(principal) => principal,
        Err(reason) => {
            return with_route(Decision::deny(DenyStatus::Unauthorized, reason), resource)
        }
    };
    // What conditions read, gathered only if one is evaluated.
    let attributes = LazyAttributes::new(policy, || Inputs {
        resource: resource.as_deref(),
        captures: route
            .template
            .capture_names()
            .zip(captures.iter().copied())
            .collect(),
        action: action.map(|(name, _)| &**name),
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
        route.condition.as_ref().map(|c| (&route.name, c)),
        &attributes,
    );
    decision.subject = Some(principal.subject.clone());
    let mut valid_until = policy.issuers.valid_until(&principal);
    if attributes.read_time.get() {
        // A decision that read the clock holds for this second only.
        valid_until = valid_until.min(now);
    }
    decision.valid_until = Some(valid_until);
    drop(attributes);
    decision.principal = Some(principal);
    with_route(decision, resource)
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
            d.principal = Some(principal);
            d
        }
        Err(unauthenticated) => {
            let mut d = Decision::deny(DenyStatus::Unauthorized, unauthenticated);
            d.matched_rule = Some(MatchedRule::Unrouted(reason));
            d
        }
    }
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
