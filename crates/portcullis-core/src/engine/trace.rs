//! What a decision tried, in the order the engine tried it: the explicit
//! denies that could stop the principal, the route's condition, and each
//! grant lookup with the roles it found, whether each role holds the
//! action, each condition's value, and the one that decided. For the
//! console's explain, computed on demand from a decision and the lookups
//! its grants answered ([`Recording`]), never while deciding: [`decide`]
//! pays nothing for it.
//!
//! The engine asks grants in a fixed order and stops at the first role
//! that holds the action and whose condition holds (see `authorize.rs`),
//! so the lookups a [`Recording`] saw, read in order, say which conditions
//! were evaluated and what each gave: a conditional role that holds the
//! action before the deciding one did not hold; the deciding one held;
//! none after it was tried.

use std::sync::Mutex;

use super::*;
use crate::policy::{Holder, RoleId};

/// One grant lookup the engine made and the roles it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Looked {
    /// Who: `subject alice`, `group staff`, `every authenticated subject`.
    pub holder: String,
    /// On what: a resource, or a pattern (`document:*`).
    pub key: String,
    pub roles: Vec<RoleId>,
}

/// A [`GrantSource`] that answers as `inner` does and records each lookup,
/// in order.
pub struct Recording<'g> {
    inner: &'g dyn GrantSource,
    looked: Mutex<Vec<Looked>>,
}

impl<'g> Recording<'g> {
    pub fn new(inner: &'g dyn GrantSource) -> Self {
        Recording {
            inner,
            looked: Mutex::new(Vec::new()),
        }
    }

    /// The lookups made, in order.
    pub fn looked(&self) -> Vec<Looked> {
        self.looked.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl GrantSource for Recording<'_> {
    fn roles(&self, holder: Holder<'_>, key: ResourceKey<'_>) -> &[RoleId] {
        let roles = self.inner.roles(holder, key);
        if let Ok(mut looked) = self.looked.lock() {
            looked.push(Looked {
                holder: match holder {
                    Holder::Subject(s) => format!("subject {s}"),
                    Holder::Group(g) => format!("group {g}"),
                    Holder::Authenticated => "every authenticated subject".to_owned(),
                },
                key: match key {
                    ResourceKey::Exact(r) => r.to_owned(),
                    ResourceKey::Prefix(p) => format!("{p}*"),
                },
                roles: roles.to_vec(),
            });
        }
        roles
    }

    fn len(&self) -> usize {
        self.inner.len()
    }
}

/// One thing the engine tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tried {
    /// An explicit deny of the principal (its subject, one of its groups,
    /// or everyone): whether it covers this resource and action. The
    /// first that does decides.
    Deny {
        name: Arc<str>,
        applies: bool,
        decided: bool,
    },
    /// The route's condition and its value.
    RouteCondition { condition: String, holds: bool },
    /// A grant lookup that found no role.
    NothingHeld { holder: String, key: String },
    /// A role found by a lookup: whether it holds the action, its
    /// condition and that condition's value (`None`: not evaluated).
    Role {
        holder: String,
        key: String,
        role: Arc<str>,
        holds_action: bool,
        condition: Option<(String, Option<bool>)>,
        decided: bool,
    },
}

/// Longest condition source shown.
const CONDITION_SHOWN: usize = 200;

/// What `decision` tried, given the lookups its grants answered and the
/// principal it was made for (an HTTP decision carries its own).
pub fn trace(
    policy: &PolicySet,
    decision: &Decision,
    principal: Option<&Principal>,
    looked: &[Looked],
) -> Vec<Tried> {
    let mut tried = Vec::new();
    // Only a decision that reached authorization consulted denies,
    // conditions or grants (a public route, no route, or a refused token
    // did not).
    if !matches!(
        decision.reason,
        Reason::Granted
            | Reason::NoGrant
            | Reason::ExplicitDeny
            | Reason::ConditionNotMet
            | Reason::Authenticated
            | Reason::GrantsUnavailable
    ) {
        return tried;
    }
    let principal = principal.or(decision.principal.as_deref());
    let action = decision
        .action
        .as_deref()
        .and_then(|a| policy.actions.iter().position(|known| **known == *a));
    let target = decision.resource.as_deref().unwrap_or("");
    if let Some(principal) = principal {
        let subject = &*principal.subject;
        let policy_groups = policy.policy_groups(subject);
        let groups = principal.groups.iter().chain(policy_groups);
        let denies = policy
            .denies
            .subjects
            .get(subject)
            .into_iter()
            .flatten()
            .chain(
                groups
                    .filter_map(|g| policy.denies.groups.get(g.as_str()))
                    .flatten(),
            )
            .chain(&policy.denies.everyone);
        let mut decided = false;
        for rule in denies {
            let applies = rule.applies(target, action);
            let first = applies && !decided && decision.reason == Reason::ExplicitDeny;
            decided |= first;
            tried.push(Tried::Deny {
                name: rule.name.clone(),
                applies,
                decided: first,
            });
        }
    }
    if decision.reason == Reason::ExplicitDeny {
        return tried;
    }
    let route = policy
        .applications
        .iter()
        .find(|app| Some(&*app.name) == decision.application.as_deref())
        .and_then(|app| {
            app.routes
                .iter()
                .find(|r| Some(&*r.name) == decision.route.as_deref())
        });
    if let Some(condition) = route.and_then(|r| r.condition.as_ref()) {
        let holds = decision.reason != Reason::ConditionNotMet;
        tried.push(Tried::RouteCondition {
            condition: bounded(condition.source()),
            holds,
        });
        if !holds {
            return tried;
        }
    }
    // The role that decided an allow, by name (the engine stopped there).
    let decider = match &decision.matched_rule {
        Some(MatchedRule::Grant { role, .. }) if decision.reason == Reason::Granted => {
            Some(role.clone())
        }
        _ => None,
    };
    let mut done = false;
    for lookup in looked {
        if lookup.roles.is_empty() {
            tried.push(Tried::NothingHeld {
                holder: lookup.holder.clone(),
                key: lookup.key.clone(),
            });
            continue;
        }
        for &id in &lookup.roles {
            let Some(role) = policy.roles.get(id as usize) else {
                continue;
            };
            let holds_action = action.is_some_and(|a| role.actions.contains(a));
            // Before the decider, each role holding the action had its
            // condition evaluated and it did not hold; the decider's held;
            // after it nothing was tried.
            let evaluated = holds_action && !done;
            let decided = evaluated && decider.as_deref() == Some(&*role.name);
            tried.push(Tried::Role {
                holder: lookup.holder.clone(),
                key: lookup.key.clone(),
                role: role.name.clone(),
                holds_action,
                condition: role
                    .condition
                    .as_ref()
                    .map(|c| (bounded(c.source()), evaluated.then_some(decided))),
                decided,
            });
            done |= decided;
        }
    }
    tried
}

fn bounded(text: &str) -> String {
    match text.char_indices().nth(CONDITION_SHOWN) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}
