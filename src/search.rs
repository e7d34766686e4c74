//! Search: which resources, subjects or actions a decision would allow.
//!
//! The AuthZEN search endpoints ask the questions the other way round from
//! [`crate::engine::decide_resource_action`]: "which documents may alice
//! write?", "who may read document 1?", "what may bob do on document 1?".
//! Candidates come from the grants (through the subject's groups and the
//! roles' actions), and every result is confirmed by the same
//! [`authorize`] a decision runs, so an explicit deny removes it. A grant
//! under a condition is never a result: its condition needs the
//! attributes of one request, which a search does not have. Pure, like the
//! engine: no I/O, no clock.
//!
//! Results are ordered by their text and paged by a cursor, the last result
//! of the previous page, so a page costs one pass over the grants that can
//! hold it, never a sort of all of them. A pattern grant is a result of its
//! own: `document:*` is the resource id `*`, `org:1:*` of type `org` the id
//! `1:*`, and the global `*` is the id `*` of whatever type is asked.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashSet};
use std::ops::Bound;

use crate::engine::{authorize_with_grants, Attributes};
use crate::policy::{Access, GrantSource, Holder, PolicySet, ResourceKey, RoleId};
use crate::token::Principal;

/// One page of results, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub items: Vec<String>,
    /// More results follow the last item.
    pub more: bool,
}

impl Found {
    pub fn from(mut items: Vec<String>, limit: usize) -> Self {
        let more = items.len() > limit;
        items.truncate(limit);
        Found { items, more }
    }

    pub fn none() -> Self {
        Found {
            items: Vec::new(),
            more: false,
        }
    }
}

pub fn action_index(policy: &PolicySet, action: &str) -> Option<usize> {
    policy.actions.iter().position(|a| a == action)
}

pub fn role_holds(policy: &PolicySet, roles: &[RoleId], action: usize) -> bool {
    roles.iter().any(|r| {
        policy
            .roles
            .get(*r as usize)
            .is_some_and(|role| role.condition.is_none() && role.actions.contains(action))
    })
}

/// Whether `principal` may do `action` on `resource` with `grants`.
pub fn allows(
    policy: &PolicySet,
    grants: &dyn GrantSource,
    principal: &Principal,
    resource: &str,
    action: usize,
) -> bool {
    // Every candidate comes from a grant without a condition
    // (`role_holds`) and deny rules carry none, so the answer never hangs
    // on an attribute or the time: none are given.
    authorize_with_grants(
        policy,
        grants,
        principal,
        Access::Granted,
        Some(resource),
        Some(action),
        Attributes::none(),
        0,
    )
    .is_allowed()
}

/// A resource a grant names, as a result: its id, and the resource text a
/// decision is asked about to confirm it (for a pattern, the pattern's
/// prefix, so a deny of the whole pattern removes it).
#[derive(Debug, PartialEq, Eq)]
struct Candidate<'p> {
    id: Cow<'p, str>,
    check: Cow<'p, str>,
}

impl Ord for Candidate<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.id.cmp(&other.id)
    }
}

impl PartialOrd for Candidate<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The resources of type `kind` on which `principal` may do `action`, after
/// the id `after`, at most `limit`.
pub fn resources(
    policy: &PolicySet,
    principal: &Principal,
    action: &str,
    kind: &str,
    after: Option<&str>,
    limit: usize,
) -> Found {
    let Some(action) = action_index(policy, action) else {
        return Found::none();
    };
    let type_prefix = format!("{kind}:");
    let groups: Vec<&str> = principal
        .groups
        .iter()
        .chain(policy.policy_groups(&principal.subject))
        .map(String::as_str)
        .collect();
    let holders: Vec<Holder<'_>> = std::iter::once(Holder::Subject(principal.subject.as_str()))
        .chain(groups.iter().map(|g| Holder::Group(g)))
        .collect();
    let mut after: Option<String> = after.map(str::to_owned);
    let mut out = Vec::new();
    loop {
        let want = limit + 1 - out.len();
        // The `want` smallest ids after the cursor: a bounded max-heap, so
        // a page costs one pass over the holders' grants.
        let mut best: BinaryHeap<Candidate<'_>> = BinaryHeap::with_capacity(want + 1);
        let mut kept: HashSet<Cow<'_, str>> = HashSet::new();
        let mut overflowed = false;
        for holder in &holders {
            for (key, roles) in policy.grants.held(*holder) {
                let candidate = match key {
                    ResourceKey::Exact(r) => match r.strip_prefix(type_prefix.as_str()) {
                        Some(id) => Candidate {
                            id: Cow::Borrowed(id),
                            check: Cow::Borrowed(r),
                        },
                        None => continue,
                    },
                    ResourceKey::Prefix("") => Candidate {
                        id: Cow::Borrowed("*"),
                        check: Cow::Owned(type_prefix.clone()),
                    },
                    ResourceKey::Prefix(p) => match p.strip_prefix(type_prefix.as_str()) {
                        Some(rest) => Candidate {
                            id: Cow::Owned(format!("{rest}*")),
                            check: Cow::Borrowed(p),
                        },
                        None => continue,
                    },
                };
                if after.as_deref().is_some_and(|a| *candidate.id <= *a) {
                    continue;
                }
                // Cheapest test first: most grants fall outside the page.
                let full = best.len() == want;
                if full && best.peek().is_some_and(|largest| candidate >= *largest) {
                    overflowed |= role_holds(policy, roles, action);
                    continue;
                }
                if !role_holds(policy, roles, action) || kept.contains(&candidate.id) {
                    continue;
                }
                if full {
                    if let Some(dropped) = best.pop() {
                        kept.remove(&dropped.id);
                    }
                    overflowed = true;
                }
                kept.insert(candidate.id.clone());
                best.push(candidate);
            }
        }
        let batch = best.into_sorted_vec();
        let Some(last) = batch.last().map(|c| c.id.to_string()) else {
            break;
        };
        for candidate in batch {
            if allows(policy, &*policy.grants, principal, &candidate.check, action) {
                out.push(candidate.id.into_owned());
            }
        }
        // Done when the page is full, or every candidate after the cursor
        // was in this batch.
        if out.len() > limit || !overflowed {
            break;
        }
        after = Some(last);
    }
    Found::from(out, limit)
}

/// The subjects the policy names (in grants or group members) that may do
/// `action` on `resource`, after `after`, at most `limit`. Groups a subject
/// joins only through its token cannot be known here.
pub fn subjects(
    policy: &PolicySet,
    resource: &str,
    action: &str,
    after: Option<&str>,
    limit: usize,
) -> Found {
    subjects_with_grants(policy, &*policy.grants, resource, action, after, limit)
}

/// [`subjects`] over `grants` (which must hold every grant on a key
/// covering `resource`), not the policy's own.
pub fn subjects_with_grants(
    policy: &PolicySet,
    grants: &dyn GrantSource,
    resource: &str,
    action: &str,
    after: Option<&str>,
    limit: usize,
) -> Found {
    let Some(action) = action_index(policy, action) else {
        return Found::none();
    };
    let covering: Vec<ResourceKey<'_>> = ResourceKey::covering(resource).collect();
    let holds = |holder: Holder<'_>| {
        covering
            .iter()
            .any(|key| role_holds(policy, grants.roles(holder, *key), action))
    };
    let mut candidates: BTreeSet<&str> = BTreeSet::new();
    let mut granted_groups: HashSet<&str> = HashSet::new();
    for holder in grants.holders() {
        match holder {
            Holder::Subject(s) if holds(holder) => {
                candidates.insert(s);
            }
            Holder::Group(g) if holds(holder) => {
                granted_groups.insert(g);
            }
            _ => {}
        }
    }
    if !granted_groups.is_empty() {
        for (subject, groups) in &policy.member_of {
            if groups.iter().any(|g| granted_groups.contains(g.as_str())) {
                candidates.insert(subject);
            }
        }
    }
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut out = Vec::new();
    for subject in candidates.range::<&str, _>((start, Bound::Unbounded)) {
        let principal = Principal {
            issuer: "search".into(),
            subject: (*subject).to_owned(),
            groups: Vec::new(),
            expires_at: u64::MAX,
            claims: Default::default(),
        };
        if allows(policy, grants, &principal, resource, action) {
            out.push((*subject).to_owned());
            if out.len() > limit {
                break;
            }
        }
    }
    Found::from(out, limit)
}

/// The actions `principal` may do on `resource`, in name order, after
/// `after`, at most `limit`.
pub fn actions(
    policy: &PolicySet,
    principal: &Principal,
    resource: &str,
    after: Option<&str>,
    limit: usize,
) -> Found {
    actions_with_grants(policy, &*policy.grants, principal, resource, after, limit)
}

/// [`actions`] over `grants` (which must answer every lookup a decision on
/// `resource` for `principal` makes), not the policy's own.
pub fn actions_with_grants(
    policy: &PolicySet,
    grants: &dyn GrantSource,
    principal: &Principal,
    resource: &str,
    after: Option<&str>,
    limit: usize,
) -> Found {
    let mut out = Vec::new();
    let mut named: Vec<(usize, &String)> = policy.actions.iter().enumerate().collect();
    named.sort_by(|a, b| a.1.cmp(b.1));
    for (index, name) in named {
        if after.is_some_and(|a| name.as_str() <= a) {
            continue;
        }
        if allows(policy, grants, principal, resource, index) {
            out.push(name.clone());
            if out.len() > limit {
                break;
            }
        }
    }
    Found::from(out, limit)
}
