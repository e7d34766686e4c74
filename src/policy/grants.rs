//! Who holds which role on what: the grants source the engine asks.
//!
//! The engine never walks a list of grants. It asks a [`GrantSource`] for
//! the roles one holder has under one resource key, a handful of times per
//! decision (the subject and each of its groups, times the resource and its
//! patterns), so a decision costs the same with a thousand grants or a
//! million. [`GrantIndex`] is the in-memory source built from YAML; a source
//! backed by a shared store can implement the same trait.

use std::collections::HashMap;

use foldhash::fast::RandomState;

/// Maps of the index. Keys come from the policy, never from requests (which
/// only look up), so a fast seeded hasher is safe here.
type Map<K, V> = HashMap<K, V, RandomState>;

/// Index of a role in the policy's role table.
pub type RoleId = u32;

/// Who a grant or deny is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder<'a> {
    Subject(&'a str),
    Group(&'a str),
}

/// A resource key as stored: one resource, or a pattern given by its prefix
/// (`document:*` is the prefix `document:`, `*` the empty prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKey<'a> {
    Exact(&'a str),
    Prefix(&'a str),
}

impl<'a> ResourceKey<'a> {
    /// Parses a resource or pattern as written in a policy. A `*` may only
    /// stand alone or end the name right after a `:`.
    pub fn parse(text: &'a str) -> Result<Self, &'static str> {
        if text.is_empty() {
            return Err("resource is empty");
        }
        match text.strip_suffix('*') {
            Some(prefix) if prefix.is_empty() || prefix.ends_with(':') => {
                if prefix.contains('*') {
                    Err("'*' may only end a pattern")
                } else {
                    Ok(ResourceKey::Prefix(prefix))
                }
            }
            Some(_) => Err("a pattern's '*' must follow ':' or stand alone"),
            None if text.contains('*') => Err("'*' may only end a pattern"),
            None => Ok(ResourceKey::Exact(text)),
        }
    }

    /// Every key that covers `resource`: itself, then each pattern from
    /// the most specific (`document:1:*`) to the broadest (`*`).
    pub fn covering(resource: &'a str) -> impl Iterator<Item = ResourceKey<'a>> {
        let patterns = resource
            .rmatch_indices(':')
            .map(move |(i, _)| ResourceKey::Prefix(&resource[..=i]));
        std::iter::once(ResourceKey::Exact(resource))
            .chain(patterns)
            .chain(std::iter::once(ResourceKey::Prefix("")))
    }

    /// True when this key covers `resource`.
    pub fn covers(&self, resource: &str) -> bool {
        match self {
            ResourceKey::Exact(r) => *r == resource,
            ResourceKey::Prefix(p) => resource.starts_with(p),
        }
    }
}

impl std::fmt::Display for ResourceKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResourceKey::Exact(r) => f.write_str(r),
            ResourceKey::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// Answers "which roles does this holder have under this key?".
pub trait GrantSource: Send + Sync {
    /// Roles `holder` holds on exactly `key`; empty when none.
    fn roles(&self, holder: Holder<'_>, key: ResourceKey<'_>) -> &[RoleId];

    /// Number of grants held.
    fn len(&self) -> usize;

    /// Every holder with at least one grant, in no particular order. For
    /// the search endpoints, never for a decision; a source that cannot
    /// list its holders finds nothing (the default), which fails closed.
    fn holders(&self) -> Box<dyn Iterator<Item = Holder<'_>> + '_> {
        Box::new(std::iter::empty())
    }

    /// Every key `holder` holds roles on, with those roles, in no
    /// particular order. For search only, like [`Self::holders`].
    fn held(
        &self,
        holder: Holder<'_>,
    ) -> Box<dyn Iterator<Item = (ResourceKey<'_>, &[RoleId])> + '_> {
        let _ = holder;
        Box::new(std::iter::empty())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Roles under one key. Most keys hold one role, stored without allocating.
#[derive(Debug, Clone)]
enum Roles {
    One([RoleId; 1]),
    Many(Vec<RoleId>),
}

impl Roles {
    fn as_slice(&self) -> &[RoleId] {
        match self {
            Roles::One(one) => one,
            Roles::Many(many) => many,
        }
    }

    fn add(&mut self, role: RoleId) {
        if self.as_slice().contains(&role) {
            return;
        }
        // Kept sorted, so the grant named in an explanation does not depend
        // on the order of grants in the files.
        match self {
            Roles::One([first]) => {
                *self = Roles::Many(vec![(*first).min(role), (*first).max(role)]);
            }
            Roles::Many(many) => {
                let at = many.partition_point(|r| *r < role);
                many.insert(at, role);
            }
        }
    }
}

#[derive(Debug, Default)]
struct HolderGrants {
    exact: Map<Box<str>, Roles>,
    prefix: Map<Box<str>, Roles>,
}

/// The in-memory grants source: hash maps by holder, then by resource key.
#[derive(Debug, Default)]
pub struct GrantIndex {
    subjects: Map<Box<str>, HolderGrants>,
    groups: Map<Box<str>, HolderGrants>,
    len: usize,
}

impl GrantIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `holder` holds `role` on `key`. Granting the same
    /// role twice is harmless.
    pub fn insert(&mut self, holder: Holder<'_>, key: ResourceKey<'_>, role: RoleId) {
        let (map, name) = match holder {
            Holder::Subject(s) => (&mut self.subjects, s),
            Holder::Group(g) => (&mut self.groups, g),
        };
        let grants = match map.get_mut(name) {
            Some(grants) => grants,
            None => map.entry(name.into()).or_default(),
        };
        let (map, text) = match key {
            ResourceKey::Exact(r) => (&mut grants.exact, r),
            ResourceKey::Prefix(p) => (&mut grants.prefix, p),
        };
        match map.get_mut(text) {
            Some(roles) => roles.add(role),
            None => {
                map.insert(text.into(), Roles::One([role]));
            }
        }
        self.len += 1;
    }
}

impl GrantSource for GrantIndex {
    fn roles(&self, holder: Holder<'_>, key: ResourceKey<'_>) -> &[RoleId] {
        let grants = match holder {
            Holder::Subject(s) => self.subjects.get(s),
            Holder::Group(g) => self.groups.get(g),
        };
        let roles = grants.and_then(|g| match key {
            ResourceKey::Exact(r) => g.exact.get(r),
            ResourceKey::Prefix(p) => g.prefix.get(p),
        });
        roles.map_or(&[], Roles::as_slice)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn holders(&self) -> Box<dyn Iterator<Item = Holder<'_>> + '_> {
        let subjects = self.subjects.keys().map(|s| Holder::Subject(s));
        let groups = self.groups.keys().map(|g| Holder::Group(g));
        Box::new(subjects.chain(groups))
    }

    fn held(
        &self,
        holder: Holder<'_>,
    ) -> Box<dyn Iterator<Item = (ResourceKey<'_>, &[RoleId])> + '_> {
        let grants = match holder {
            Holder::Subject(s) => self.subjects.get(s),
            Holder::Group(g) => self.groups.get(g),
        };
        let Some(grants) = grants else {
            return Box::new(std::iter::empty());
        };
        let exact = grants
            .exact
            .iter()
            .map(|(k, r)| (ResourceKey::Exact(k), r.as_slice()));
        let prefix = grants
            .prefix
            .iter()
            .map(|(k, r)| (ResourceKey::Prefix(k), r.as_slice()));
        Box::new(exact.chain(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resources_and_patterns() {
        assert_eq!(
            ResourceKey::parse("document:1"),
            Ok(ResourceKey::Exact("document:1"))
        );
        assert_eq!(
            ResourceKey::parse("document:*"),
            Ok(ResourceKey::Prefix("document:"))
        );
        assert_eq!(ResourceKey::parse("*"), Ok(ResourceKey::Prefix("")));
        for bad in ["", "doc*", "*:1", "a:*:*", "a*b"] {
            assert!(ResourceKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn covering_keys_go_from_specific_to_broad() {
        let keys: Vec<String> = ResourceKey::covering("org:1:doc:2")
            .map(|k| k.to_string())
            .collect();
        assert_eq!(
            keys,
            ["org:1:doc:2", "org:1:doc:*", "org:1:*", "org:*", "*"]
        );
        for key in ResourceKey::covering("org:1:doc:2") {
            assert!(key.covers("org:1:doc:2"));
        }
        assert!(!ResourceKey::Prefix("doc:").covers("document:1"));
    }

    #[test]
    fn index_answers_by_holder_and_key() {
        let mut index = GrantIndex::new();
        index.insert(
            Holder::Subject("alice"),
            ResourceKey::Exact("document:1"),
            2,
        );
        index.insert(
            Holder::Subject("alice"),
            ResourceKey::Exact("document:1"),
            1,
        );
        index.insert(
            Holder::Subject("alice"),
            ResourceKey::Exact("document:1"),
            1,
        );
        index.insert(
            Holder::Group("auditors"),
            ResourceKey::Prefix("document:"),
            0,
        );
        assert_eq!(
            index.roles(Holder::Subject("alice"), ResourceKey::Exact("document:1")),
            [1, 2]
        );
        assert_eq!(
            index.roles(Holder::Subject("alice"), ResourceKey::Exact("document:2")),
            [] as [RoleId; 0]
        );
        assert_eq!(
            index.roles(Holder::Group("alice"), ResourceKey::Exact("document:1")),
            [] as [RoleId; 0]
        );
        assert_eq!(
            index.roles(Holder::Group("auditors"), ResourceKey::Prefix("document:")),
            [0]
        );
        assert_eq!(index.len(), 4);
    }
}
