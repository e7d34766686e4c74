//! Search: which resources, subjects or actions a decision would allow.
//!
//! The AuthZEN search endpoints ask the questions the other way round from
//! the resource/action form of [`crate::engine::decide`]: "which documents may alice
//! write?", "who may read document 1?", "what may bob do on document 1?".
//! Candidates come from the grants (through the subject's groups and the
//! roles' actions), and every result is confirmed by the same
//! [`authorize`] a decision runs, so an explicit deny removes it. A grant
//! under a condition is a result when its condition holds with the
//! request's attributes (subject, resource and action properties, context)
//! at the request's time ([`Circumstances`]), as the evaluation of the same
//! request would: a time-window grant leaves search when its window closes.
//! Pure, like the engine: no I/O, the time a parameter.
//!
//! Results are ordered by their text and paged by a cursor, the last result
//! of the previous page (or the last candidate examined), so a page costs
//! passes over the grants that can hold it, never a sort of all of them,
//! and at most [`MAX_SEARCH_CANDIDATES`] candidates confirmed: when explicit
//! denies or conditions remove candidate after candidate, the page ends
//! early, with what it found and a cursor to go on. A pattern grant is a result of its
//! own: `document:*` is the resource id `*`, `org:1:*` of type `org` the id
//! `1:*`, and the global `*` is the id `*` of whatever type is asked.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashSet};
use std::ops::Bound;

use crate::engine::{authorize, Attributes};

/// Most candidates one page confirms with a decision; then the page ends
/// (perhaps short, even empty) with a cursor after the last one examined.
/// Advertised in the API's metadata (`max_search_candidates`).
pub const MAX_SEARCH_CANDIDATES: usize = 10_000;

/// What a search is judged with besides grants: the request's attributes,
/// which conditions read, and the time (`context.time`).
#[derive(Debug, Clone, Copy)]
pub struct Circumstances<'a> {
    pub attributes: &'a Attributes,
    /// Seconds since the epoch.
    pub now: u64,
}

impl Circumstances<'static> {
    /// No attributes, at time 0: only conditions that read nothing hold.
    pub fn none() -> Self {
        Circumstances {
            attributes: Attributes::none(),
            now: 0,
        }
    }
}
use crate::policy::{Access, GrantSource, Holder, PolicySet, ResourceKey, RoleId};
use crate::token::Principal;

/// One page of results, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub items: Vec<String>,
    /// More results may follow.
    pub more: bool,
    /// Where the next page starts (after this text), when `more`: the last
    /// item, or the last candidate examined when the page ended on its
    /// budget ([`MAX_SEARCH_CANDIDATES`]).
    pub next: Option<String>,
}

impl Found {
    pub fn from(mut items: Vec<String>, limit: usize) -> Self {
        let more = items.len() > limit;
        items.truncate(limit);
        let next = if more { items.last().cloned() } else { None };
        Found { items, more, next }
    }

    /// A page cut short by the budget: everything found, and the cursor
    /// after the last candidate examined.
    pub fn spent(items: Vec<String>, last_examined: String) -> Self {
        Found {
            items,
            more: true,
            next: Some(last_examined),
        }
    }

    pub fn none() -> Self {
        Found {
            items: Vec::new(),
            more: false,
            next: None,
        }
    }
}

pub fn action_index(policy: &PolicySet, action: &str) -> Option<usize> {
    policy.actions.iter().position(|a| **a == *action)
}

/// Whether one of `roles` holds `action`, under a condition or not: a
/// candidate, which [`allows`] confirms (conditions included).
pub(crate) fn role_holds(policy: &PolicySet, roles: &[RoleId], action: usize) -> bool {
    roles.iter().any(|r| {
        policy
            .roles
            .get(*r as usize)
            .is_some_and(|role| role.actions.contains(action))
    })
}

/// Whether `principal` may do `action` on `resource` with `grants`, judged
/// as an evaluation of the same request is: with its attributes, at its
/// time.
pub fn allows(
    policy: &PolicySet,
    grants: &dyn GrantSource,
    principal: &Principal,
    resource: &str,
    action: usize,
    given: Circumstances<'_>,
) -> bool {
    authorize(
        policy,
        grants,
        principal,
        Access::Granted,
        Some(resource),
        Some(action),
        given.attributes,
        given.now,
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
/// the id `after`, at most `limit`, confirming at most
/// [`MAX_SEARCH_CANDIDATES`].
#[allow(clippy::too_many_arguments)] // the question, the page and the circumstances
pub fn resources(
    policy: &PolicySet,
    grants: &dyn GrantSource,
    principal: &Principal,
    action: &str,
    kind: &str,
    after: Option<&str>,
    limit: usize,
    given: Circumstances<'_>,
) -> Found {
    let Some(action) = action_index(policy, action) else {
        return Found::none();
    };
    let type_prefix = format!("{kind}:");
    // Grants to every authenticated subject name no resource of their own
    // here: each is confirmed through the subject's decision anyway.
    let holders: Vec<Holder<'_>> = policy
        .holders(principal)
        .filter(|h| !matches!(h, Holder::Authenticated))
        .collect();
    let mut after: Option<String> = after.map(str::to_owned);
    let mut out = Vec::new();
    let mut examined = 0usize;
    // Each pass takes twice the candidates of the one before, so a page
    // that denies remove candidate after candidate costs a few passes over
    // the grants, not one pass per page-full.
    let mut batch_size = limit + 1;
    loop {
        let want = (limit + 1 - out.len())
            .max(batch_size)
            .min(MAX_SEARCH_CANDIDATES - examined)
            .max(1);
        // The `want` smallest ids after the cursor: a bounded max-heap, so
        // a pass costs one walk over the holders' grants.
        let mut best: BinaryHeap<Candidate<'_>> = BinaryHeap::with_capacity(want + 1);
        let mut kept: HashSet<Cow<'_, str>> = HashSet::new();
        let mut overflowed = false;
        for holder in &holders {
            for (key, roles) in grants.held(*holder) {
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
        examined += batch.len();
        for candidate in batch {
            if allows(policy, grants, principal, &candidate.check, action, given) {
                out.push(candidate.id.into_owned());
            }
        }
        // Done when the page is full, or every candidate after the cursor
        // was in this batch.
        if out.len() > limit || !overflowed {
            break;
        }
        if examined >= MAX_SEARCH_CANDIDATES {
            return Found::spent(out, last);
        }
        after = Some(last);
        batch_size = batch_size.saturating_mul(2);
    }
    Found::from(out, limit)
}

/// The subjects the policy names (in grants or group members) that may do
/// `action` on `resource`, after `after`, at most `limit`. Groups a subject
/// joins only through its token cannot be known here.
/// `grants` must hold every grant on a key covering `resource`.
pub fn subjects(
    policy: &PolicySet,
    grants: &dyn GrantSource,
    resource: &str,
    action: &str,
    after: Option<&str>,
    limit: usize,
    given: Circumstances<'_>,
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
    for (examined, subject) in candidates
        .range::<&str, _>((start, Bound::Unbounded))
        .enumerate()
    {
        if examined == MAX_SEARCH_CANDIDATES {
            return Found::spent(out, (*subject).to_owned());
        }
        let principal = Principal::named("search", *subject);
        if allows(policy, grants, &principal, resource, action, given) {
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
/// `grants` must answer every lookup a decision on `resource` for
/// `principal` makes.
pub fn actions(
    policy: &PolicySet,
    grants: &dyn GrantSource,
    principal: &Principal,
    resource: &str,
    after: Option<&str>,
    limit: usize,
    given: Circumstances<'_>,
) -> Found {
    let mut out = Vec::new();
    let mut named: Vec<(usize, &std::sync::Arc<str>)> = policy.actions.iter().enumerate().collect();
    named.sort_by(|a, b| a.1.cmp(b.1));
    for (index, name) in named {
        if after.is_some_and(|a| &**name <= a) {
            continue;
        }
        if allows(policy, grants, principal, resource, index, given) {
            out.push(name.to_string());
            if out.len() > limit {
                break;
            }
        }
    }
    Found::from(out, limit)
}
