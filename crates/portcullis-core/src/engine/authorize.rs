//! What every form of decision ends in: may this principal do this action
//! on this resource? Explicit denies first (they beat every grant), then
//! the route's condition, then what the route requires (public,
//! authenticated, or a grant whose role holds the action and whose
//! condition holds). Conditions' attributes are gathered lazily.

use super::*;
use crate::policy::Holder;

/// The attributes of one decision for conditions, built on first use: a
/// decision that evaluates no condition never builds them.
pub(super) struct LazyAttributes<'a, F: Fn() -> Inputs<'a>> {
    policy: &'a PolicySet,
    inputs: F,
    scope: OnceCell<Scope<'a>>,
    /// A condition that reads `context.time` was evaluated.
    pub(super) read_time: Cell<bool>,
}

impl<'a, F: Fn() -> Inputs<'a>> LazyAttributes<'a, F> {
    pub(super) fn new(policy: &'a PolicySet, inputs: F) -> Self {
        Self {
            policy,
            inputs,
            scope: OnceCell::new(),
            read_time: Cell::new(false),
        }
    }
}

/// Evaluates conditions for [`authorize_in`], whatever the attributes' source.
pub(super) trait ConditionScope {
    fn holds(&self, condition: &Condition) -> bool;
}

impl<'a, F: Fn() -> Inputs<'a>> ConditionScope for LazyAttributes<'a, F> {
    fn holds(&self, condition: &Condition) -> bool {
        if condition.reads().time {
            self.read_time.set(true);
        }
        let scope = self
            .scope
            .get_or_init(|| Scope::new(&self.policy.conditions, (self.inputs)()));
        condition.holds(scope)
    }
}

/// Decides whether `principal` may perform `action` (an index into
/// [`PolicySet::actions`]) on `resource`, given what the route requires,
/// with the caller's `attributes` for conditions, at `now` (seconds since
/// the epoch; `context.time`). Explicit denies are checked first and beat
/// every grant. The resource/action form and search call this (through [`decide`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn authorize(
    policy: &PolicySet,
    grants: &dyn GrantSource,
    principal: &Principal,
    access: Access,
    resource: Option<&str>,
    action: Option<usize>,
    attributes: &Attributes,
    now: u64,
) -> Decision {
    let action_name = action.and_then(|a| policy.actions.get(a)).map(|a| &**a);
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
pub(super) fn principal_inputs<'a>(policy: &'a PolicySet, principal: &'a Principal) -> Inputs<'a> {
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
pub(super) fn authorize_in(
    policy: &PolicySet,
    grants: &dyn GrantSource,
    principal: &Principal,
    access: Access,
    resource: Option<&str>,
    action: Option<usize>,
    route_condition: Option<(&Arc<str>, &Arc<Condition>)>,
    conditions: &dyn ConditionScope,
) -> Decision {
    let subject = &*principal.subject;
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
        d.matched_rule = Some(MatchedRule::Deny {
            name: rule.name.clone(),
            reason: rule.reason.clone(),
        });
        return d;
    }

    if let Some((route, condition)) = route_condition {
        if !conditions.holds(condition) {
            let mut d = Decision::deny(DenyStatus::Forbidden, Reason::ConditionNotMet);
            d.matched_rule = Some(MatchedRule::RouteCondition {
                route: route.clone(),
                condition: ConditionRef(condition.clone()),
            });
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
    // The first grant whose condition did not hold, for the log.
    let mut unmet: Option<MatchedRule> = None;
    for holder in Holder::all_of(principal, policy_groups) {
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
                        unmet.get_or_insert_with(|| MatchedRule::UnmetGrant {
                            role: role.name.clone(),
                            key: grant_key(key),
                            holder: grant_holder(holder),
                            condition: ConditionRef(condition.clone()),
                        });
                        continue;
                    }
                }
                let mut d = Decision::allow(Reason::Granted);
                d.matched_rule = Some(MatchedRule::Grant {
                    role: role.name.clone(),
                    key: grant_key(key),
                    holder: grant_holder(holder),
                    condition: role.condition.clone().map(ConditionRef),
                });
                return d;
            }
        }
    }
    let mut d = Decision::deny(DenyStatus::Forbidden, Reason::NoGrant);
    d.matched_rule = unmet;
    d
}

/// Where a grant found under `key` sits, relative to the resource it
/// covers ([`ResourceKey::covering`]).
fn grant_key(key: ResourceKey<'_>) -> GrantKey {
    match key {
        ResourceKey::Exact(_) => GrantKey::Resource,
        ResourceKey::Prefix(prefix) => GrantKey::Prefix(prefix.len()),
    }
}

/// Who holds a grant, relative to the decision's subject.
fn grant_holder(holder: Holder<'_>) -> GrantHolder {
    match holder {
        Holder::Subject(_) => GrantHolder::Subject,
        Holder::Group(group) => GrantHolder::Group(Arc::from(group)),
        Holder::Authenticated => GrantHolder::Authenticated,
    }
}

/// The resource/action form ([`Request::ResourceAction`]). An action no
/// route or role names is a deny ([`Reason::UnknownAction`]): not an error
/// of the request, but nothing can grant it.
pub(super) fn decide_resource_action(
    policy: &PolicySet,
    grants: &dyn GrantSource,
    asked: &ResourceAction<'_>,
    now: u64,
) -> Decision {
    let known = policy.actions.iter().position(|a| **a == *asked.action);
    let mut d = match known {
        Some(index) => authorize(
            policy,
            grants,
            asked.principal,
            Access::Granted,
            Some(asked.resource),
            Some(index),
            asked.attributes,
            now,
        ),
        None => Decision::deny(DenyStatus::Forbidden, Reason::UnknownAction),
    };
    d.subject = Some(asked.principal.subject.clone());
    d.resource = Some(asked.resource.to_owned());
    d.action = Some(match known.and_then(|index| policy.actions.get(index)) {
        Some(name) => name.clone(),
        None => Arc::from(asked.action),
    });
    d
}
