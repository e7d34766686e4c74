//! Who holds which role on what: the grants source the engine asks.
//!
//! The engine never walks a list of grants. It asks a [`GrantSource`] for
//! the roles one holder has under one resource key, a handful of times per
//! decision (the subject and each of its groups, times the resource and its
//! patterns), so a decision costs the same with a thousand grants or a
//! million. [`GrantIndex`] is the in-memory source built from YAML; a source
//! backed by a shared store can implement the same trait.

use std::collections::HashMap;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use hashbrown::HashTable;

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
    /// Every subject with a valid token (`authenticated: true`).
    Authenticated,
}

impl<'a> Holder<'a> {
    /// Every holder whose grants count for `principal` in the groups
    /// `policy_groups` (the policy's, looked up once by the caller), in the
    /// order a decision asks them: the subject, its token's groups, its
    /// groups by the policy, then every authenticated subject.
    pub(crate) fn all_of(
        principal: &'a crate::token::Principal,
        policy_groups: &'a [String],
    ) -> impl Iterator<Item = Holder<'a>> {
        std::iter::once(Holder::Subject(&principal.subject))
            .chain(
                principal
                    .groups
                    .iter()
                    .chain(policy_groups)
                    .map(|g| Holder::Group(g.as_str())),
            )
            .chain(std::iter::once(Holder::Authenticated))
    }
}

impl std::fmt::Display for Holder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Subject(s) => write!(f, "subject {s:?}"),
            Holder::Group(g) => write!(f, "group {g:?}"),
            Holder::Authenticated => f.write_str("every authenticated subject"),
        }
    }
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

/// Roles under one pattern key. Most keys hold one role, stored without
/// allocating.
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

/// Index of an exact resource in the index's resource table.
type ResourceId = u32;

/// One holder's grants. Exact resources, by far the most numerous, are two
/// parallel sorted arrays (8 bytes a grant), so the roles on one resource
/// are one slice; patterns, few, are a map.
#[derive(Debug, Default)]
struct HolderGrants {
    exact_resources: Box<[ResourceId]>,
    exact_roles: Box<[RoleId]>,
    prefix: Map<Box<str>, Roles>,
}

impl HolderGrants {
    fn exact(&self, resource: ResourceId) -> &[RoleId] {
        let from = self.exact_resources.partition_point(|r| *r < resource);
        let to = from + self.exact_resources[from..].partition_point(|r| *r == resource);
        &self.exact_roles[from..to]
    }
}

/// The in-memory grants source: holders by name, each with its grants; an
/// exact resource's name is stored once however many grants name it.
#[derive(Debug, Default)]
pub struct GrantIndex {
    /// Every exact resource a grant names, once.
    resources: ResourceNames,
    subjects: Map<Box<str>, HolderGrants>,
    groups: Map<Box<str>, HolderGrants>,
    authenticated: HolderGrants,
    len: usize,
}

/// The names of exact resources, each stored once and numbered in the
/// order first seen. The names are one string, not an allocation each:
/// with a hundred thousand resources that is a few megabytes less, at load
/// and after. A name's id finds it through a table of ids hashed by name.
#[derive(Default)]
struct ResourceNames {
    /// Every name, one after the other.
    text: String,
    /// Where each name ends in `text`; it starts where the one before ends.
    ends: Vec<u32>,
    /// Ids, hashed by their name.
    table: HashTable<ResourceId>,
    hasher: RandomState,
}

impl std::fmt::Debug for ResourceNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceNames")
            .field("len", &self.ends.len())
            .finish_non_exhaustive()
    }
}

impl ResourceNames {
    /// The name numbered `id`.
    fn get(&self, id: ResourceId) -> Option<&str> {
        Self::name_in(&self.text, &self.ends, id)
    }

    /// The id of `name`, if it is stored.
    fn id_of(&self, name: &str) -> Option<ResourceId> {
        let hash = self.hasher.hash_one(name);
        self.table
            .find(hash, |&id| {
                Self::name_in(&self.text, &self.ends, id) == Some(name)
            })
            .copied()
    }

    /// The id of `name`, stored first if it is new; `None` once ids or the
    /// text would outgrow 32 bits (an id past them would alias).
    fn insert(&mut self, name: &str) -> Option<ResourceId> {
        if let Some(id) = self.id_of(name) {
            return Some(id);
        }
        let id = ResourceId::try_from(self.ends.len()).ok()?;
        let end = u32::try_from(self.text.len() + name.len()).ok()?;
        self.text.push_str(name);
        self.ends.push(end);
        let (text, ends, hasher) = (&self.text, &self.ends, &self.hasher);
        let hash = hasher.hash_one(name);
        self.table.insert_unique(hash, id, |&id| {
            hasher.hash_one(Self::name_in(text, ends, id).unwrap_or_default())
        });
        Some(id)
    }

    fn name_in<'t>(text: &'t str, ends: &[u32], id: ResourceId) -> Option<&'t str> {
        let id = id as usize;
        let end = *ends.get(id)? as usize;
        let start = match id {
            0 => 0,
            _ => *ends.get(id - 1)? as usize,
        };
        text.get(start..end)
    }

    fn shrink_to_fit(&mut self) {
        let (text, ends, hasher) = (&self.text, &self.ends, &self.hasher);
        self.table.shrink_to_fit(|&id| {
            hasher.hash_one(Self::name_in(text, ends, id).unwrap_or_default())
        });
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
    }
}

impl GrantIndex {
    /// An index without grants.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts an index: [`GrantIndexBuilder::insert`] each grant, then
    /// [`GrantIndexBuilder::build`].
    pub fn builder() -> GrantIndexBuilder {
        GrantIndexBuilder::default()
    }
}

/// A holder's grants while the index is built: exact grants in the order
/// they came, sorted once at the end.
#[derive(Debug, Default)]
struct HolderGrantsBuilder {
    exact: Vec<(ResourceId, RoleId)>,
    prefix: Map<Box<str>, Roles>,
}

/// Collects grants, then builds a [`GrantIndex`] in one pass.
#[derive(Debug, Default)]
pub struct GrantIndexBuilder {
    resources: ResourceNames,
    subjects: Map<Box<str>, HolderGrantsBuilder>,
    groups: Map<Box<str>, HolderGrantsBuilder>,
    authenticated: HolderGrantsBuilder,
    len: usize,
}

impl GrantIndexBuilder {
    /// Records that `holder` holds `role` on `key`. Granting the same
    /// role twice is harmless.
    pub fn insert(&mut self, holder: Holder<'_>, key: ResourceKey<'_>, role: RoleId) {
        let named = match holder {
            Holder::Subject(name) => Some((&mut self.subjects, name)),
            Holder::Group(name) => Some((&mut self.groups, name)),
            Holder::Authenticated => None,
        };
        let grants = match named {
            None => &mut self.authenticated,
            Some((map, name)) => match map.get_mut(name) {
                Some(grants) => grants,
                None => map.entry(name.into()).or_default(),
            },
        };
        match key {
            ResourceKey::Exact(resource) => {
                // Ids are u32 to keep a grant at 8 bytes; a resource past
                // that many would alias, so it is refused outright.
                let Some(id) = self.resources.insert(resource) else {
                    return;
                };
                grants.exact.push((id, role));
            }
            ResourceKey::Prefix(prefix) => match grants.prefix.get_mut(prefix) {
                Some(roles) => roles.add(role),
                None => {
                    grants.prefix.insert(prefix.into(), Roles::One([role]));
                }
            },
        }
        self.len += 1;
    }

    /// The index, each holder's exact grants sorted by resource and role
    /// (so the grant an explanation names does not depend on file order)
    /// and their duplicates dropped.
    pub fn build(self) -> GrantIndex {
        fn built(mut grants: HolderGrantsBuilder) -> HolderGrants {
            grants.exact.sort_unstable();
            grants.exact.dedup();
            let (resources, roles): (Vec<_>, Vec<_>) = grants.exact.into_iter().unzip();
            HolderGrants {
                exact_resources: resources.into_boxed_slice(),
                exact_roles: roles.into_boxed_slice(),
                prefix: grants.prefix,
            }
        }
        fn holders(builders: Map<Box<str>, HolderGrantsBuilder>) -> Map<Box<str>, HolderGrants> {
            builders
                .into_iter()
                .map(|(name, grants)| (name, built(grants)))
                .collect()
        }
        let mut resources = self.resources;
        resources.shrink_to_fit();
        GrantIndex {
            resources,
            subjects: holders(self.subjects),
            groups: holders(self.groups),
            authenticated: built(self.authenticated),
            len: self.len,
        }
    }
}

impl GrantSource for GrantIndex {
    fn roles(&self, holder: Holder<'_>, key: ResourceKey<'_>) -> &[RoleId] {
        let grants = match holder {
            Holder::Subject(s) => self.subjects.get(s),
            Holder::Group(g) => self.groups.get(g),
            Holder::Authenticated => Some(&self.authenticated),
        };
        let Some(grants) = grants else {
            return &[];
        };
        match key {
            ResourceKey::Exact(resource) => match self.resources.id_of(resource) {
                Some(id) => grants.exact(id),
                None => &[],
            },
            ResourceKey::Prefix(prefix) => grants.prefix.get(prefix).map_or(&[], Roles::as_slice),
        }
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
            Holder::Authenticated => Some(&self.authenticated),
        };
        let Some(grants) = grants else {
            return Box::new(std::iter::empty());
        };
        // Runs of one resource id in the sorted arrays: one entry each.
        let ids = &grants.exact_resources;
        let mut from = 0;
        let exact = std::iter::from_fn(move || {
            let id = *ids.get(from)?;
            // Runs are short (one role or two on a resource): a scan, not a
            // binary search over the rest, keeps a pass over many grants linear.
            let to = from + ids[from..].iter().take_while(|r| **r == id).count();
            let roles = &grants.exact_roles[from..to];
            from = to;
            Some((id, roles))
        })
        .filter_map(|(id, roles)| {
            let name = self.resources.get(id)?;
            Some((ResourceKey::Exact(name), roles))
        });
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
    fn resource_names_are_stored_once_and_found_by_name() {
        let mut names = ResourceNames::default();
        assert_eq!(names.insert("document:1"), Some(0));
        assert_eq!(names.insert("document:22"), Some(1));
        assert_eq!(names.insert("document:1"), Some(0));
        names.shrink_to_fit();
        assert_eq!(names.id_of("document:22"), Some(1));
        assert_eq!(names.id_of("document:2"), None);
        assert_eq!(names.get(0), Some("document:1"));
        assert_eq!(names.get(1), Some("document:22"));
        assert_eq!(names.get(2), None);
        // The table grows many times over; every id still finds its name.
        let name = |i: u32| format!("r:{i}");
        for i in 0..10_000 {
            assert_eq!(names.insert(&name(i)), Some(i + 2));
        }
        for i in 0..10_000 {
            assert_eq!(names.id_of(&name(i)), Some(i + 2));
            assert_eq!(names.get(i + 2), Some(name(i).as_str()));
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
        let mut index = GrantIndex::builder();
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
        index.insert(Holder::Subject("bob"), ResourceKey::Exact("document:2"), 3);
        let index = index.build();
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
        assert_eq!(
            index.roles(Holder::Subject("bob"), ResourceKey::Exact("document:2")),
            [3]
        );
        assert_eq!(
            index.roles(Holder::Subject("bob"), ResourceKey::Exact("document:1")),
            [] as [RoleId; 0]
        );
        assert_eq!(index.len(), 5);
    }
}
