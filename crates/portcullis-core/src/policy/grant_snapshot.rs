//! A per-check view of grants kept outside the policy (a database): the
//! [`GrantSource`] the engine asks when the server, not the policy, holds
//! the grants.
//!
//! The engine asks for grants lazily, one holder and one resource key at a
//! time, and stops at the first grant that allows. A [`GrantSnapshot`]
//! answers each lookup from what it was given (a cache, lookups already
//! fetched) and records the lookups nobody could answer, which it treats as
//! holding nothing. Since a grant can only allow, a decision that allowed
//! stands; one that denied with lookups missing is decided again once the
//! server has fetched them. Pure: no I/O, no clock, no locks held.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::grants::{GrantSource, Holder, ResourceKey, RoleId};
use super::PolicySet;

/// The kind of a holder, as stored (`0` subject, `1` group, `2` every
/// authenticated subject).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HolderKind {
    Subject = 0,
    Group = 1,
    Authenticated = 2,
}

impl HolderKind {
    pub fn code(self) -> i16 {
        self as i16
    }

    pub fn from_code(code: i16) -> Option<Self> {
        match code {
            0 => Some(HolderKind::Subject),
            1 => Some(HolderKind::Group),
            2 => Some(HolderKind::Authenticated),
            _ => None,
        }
    }
}

/// One question the engine asks: the roles of one holder on one key,
/// owned, so it can be a cache key or a database parameter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lookup {
    pub kind: HolderKind,
    /// Empty for [`HolderKind::Authenticated`].
    pub holder: Box<str>,
    /// The key is a pattern and `resource` its prefix.
    pub pattern: bool,
    pub resource: Box<str>,
}

impl Lookup {
    pub fn new(holder: Holder<'_>, key: ResourceKey<'_>) -> Self {
        let (kind, name) = split_holder(holder);
        let (pattern, resource) = split_key(key);
        Lookup {
            kind,
            holder: name.into(),
            pattern,
            resource: resource.into(),
        }
    }

    pub fn is(&self, holder: Holder<'_>, key: ResourceKey<'_>) -> bool {
        let (kind, name) = split_holder(holder);
        let (pattern, resource) = split_key(key);
        self.kind == kind
            && self.pattern == pattern
            && *self.holder == *name
            && *self.resource == *resource
    }

    pub fn holder(&self) -> Holder<'_> {
        match self.kind {
            HolderKind::Subject => Holder::Subject(&self.holder),
            HolderKind::Group => Holder::Group(&self.holder),
            HolderKind::Authenticated => Holder::Authenticated,
        }
    }

    pub fn key(&self) -> ResourceKey<'_> {
        if self.pattern {
            ResourceKey::Prefix(&self.resource)
        } else {
            ResourceKey::Exact(&self.resource)
        }
    }
}

/// A lookup's parts, owned or borrowed: a cache keyed by [`Lookup`] is
/// asked with an [`Asked`] that borrows the engine's strings, so a hit
/// allocates nothing.
pub trait LookupKey {
    fn parts(&self) -> (HolderKind, &str, bool, &str);
}

impl LookupKey for Lookup {
    fn parts(&self) -> (HolderKind, &str, bool, &str) {
        (self.kind, &self.holder, self.pattern, &self.resource)
    }
}

/// A lookup as the engine asks it, borrowing its strings.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    pub kind: HolderKind,
    pub holder: &'a str,
    pub pattern: bool,
    pub resource: &'a str,
}

impl<'a> Asked<'a> {
    pub fn new(holder: Holder<'a>, key: ResourceKey<'a>) -> Self {
        let (kind, holder) = split_holder(holder);
        let (pattern, resource) = split_key(key);
        Asked {
            kind,
            holder,
            pattern,
            resource,
        }
    }

    pub fn to_owned(&self) -> Lookup {
        Lookup {
            kind: self.kind,
            holder: self.holder.into(),
            pattern: self.pattern,
            resource: self.resource.into(),
        }
    }
}

impl LookupKey for Asked<'_> {
    fn parts(&self) -> (HolderKind, &str, bool, &str) {
        (self.kind, self.holder, self.pattern, self.resource)
    }
}

fn hash_parts<H: Hasher>(key: &(impl LookupKey + ?Sized), state: &mut H) {
    let (kind, holder, pattern, resource) = key.parts();
    kind.hash(state);
    holder.hash(state);
    pattern.hash(state);
    resource.hash(state);
}

impl Hash for Lookup {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_parts(self, state);
    }
}

impl Hash for dyn LookupKey + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_parts(self, state);
    }
}

impl PartialEq for dyn LookupKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn LookupKey + '_ {}

impl<'a> Borrow<dyn LookupKey + 'a> for Lookup {
    fn borrow(&self) -> &(dyn LookupKey + 'a) {
        self
    }
}

/// A cache key sharing its [`Lookup`] with the cached value, so a cached
/// lookup's strings are stored once.
#[derive(Debug, Clone)]
pub struct SharedLookup(pub Arc<Lookup>);

impl LookupKey for SharedLookup {
    fn parts(&self) -> (HolderKind, &str, bool, &str) {
        self.0.parts()
    }
}

impl Hash for SharedLookup {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_parts(self, state);
    }
}

impl PartialEq for SharedLookup {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for SharedLookup {}

impl<'a> Borrow<dyn LookupKey + 'a> for SharedLookup {
    fn borrow(&self) -> &(dyn LookupKey + 'a) {
        self
    }
}

pub fn split_holder(holder: Holder<'_>) -> (HolderKind, &str) {
    match holder {
        Holder::Subject(s) => (HolderKind::Subject, s),
        Holder::Group(g) => (HolderKind::Group, g),
        Holder::Authenticated => (HolderKind::Authenticated, ""),
    }
}

pub fn split_key(key: ResourceKey<'_>) -> (bool, &str) {
    match key {
        ResourceKey::Exact(r) => (false, r),
        ResourceKey::Prefix(p) => (true, p),
    }
}

/// The roles of one lookup: by name as stored, and as ids of the policy
/// whose `version` they were resolved against.
#[derive(Debug, PartialEq, Eq)]
pub struct HeldRoles {
    /// What was asked: the same allocation as the cache's key.
    pub lookup: Arc<Lookup>,
    pub names: Box<[Box<str>]>,
    pub version: Box<str>,
    pub ids: Box<[RoleId]>,
}

impl HeldRoles {
    /// Resolves role names against `policy`: each names a role without a
    /// condition (conditions stay in the policy files); a name the policy
    /// does not define holds nothing, so a role removed from the policy
    /// stops granting at once.
    pub fn resolve(policy: &PolicySet, lookup: Arc<Lookup>, names: Box<[Box<str>]>) -> Self {
        let mut ids: Vec<RoleId> = names
            .iter()
            .filter_map(|name| role_id(policy, name))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        HeldRoles {
            lookup,
            names,
            version: policy.version.as_str().into(),
            ids: ids.into_boxed_slice(),
        }
    }

    /// None: no role at all.
    pub fn none(policy: &PolicySet, lookup: Arc<Lookup>) -> Self {
        Self::resolve(policy, lookup, Box::new([]))
    }
}

/// The id of the role `name` without a condition, if the policy has one.
pub fn role_id(policy: &PolicySet, name: &str) -> Option<RoleId> {
    policy
        .roles
        .iter()
        .position(|r| r.condition.is_none() && *r.name == *name)
        .and_then(|i| RoleId::try_from(i).ok())
}

/// Answers a lookup the snapshot does not hold yet (a cache); `None` when
/// it cannot.
pub type Resolve<'a> = &'a (dyn Fn(&Asked<'_>) -> Option<Arc<HeldRoles>> + Sync);

/// One lookup of a check: answered (the roles carry what was asked), or not.
enum Slot {
    Answered(Arc<HeldRoles>),
    Missed(Lookup),
}

impl Slot {
    fn lookup(&self) -> &Lookup {
        match self {
            Slot::Answered(roles) => &roles.lookup,
            Slot::Missed(lookup) => lookup,
        }
    }

    fn roles(&self) -> Option<&Arc<HeldRoles>> {
        match self {
            Slot::Answered(roles) => Some(roles),
            Slot::Missed(_) => None,
        }
    }
}

/// Slots of the first chunk; each next chunk doubles.
const FIRST_CHUNK: usize = 8;

/// Chunks a snapshot can have: room for `FIRST_CHUNK × (2^CHUNKS − 1)`
/// lookups (32,760), more than any capacity asked for.
const CHUNKS: usize = 12;

/// Where slot `at` lives: its chunk and its place in the chunk (chunk `i`
/// holds `FIRST_CHUNK << i` slots, starting at `FIRST_CHUNK × (2^i − 1)`).
fn place(at: usize) -> (usize, usize) {
    let units = at / FIRST_CHUNK + 1;
    let chunk = (usize::BITS - 1 - units.leading_zeros()) as usize;
    (chunk, at - FIRST_CHUNK * ((1 << chunk) - 1))
}

/// The grants of one check: answered lookups, and the ones nobody could
/// answer (see the module documentation).
///
/// The first eight slots are part of the snapshot; the rest are allocated
/// as lookups arrive, in chunks that double (16, 32, ...): a check that
/// asks two lookups allocates nothing, and pays nothing for the room a
/// check with many groups would need. A slot never moves once set, so the
/// roles handed to the engine stay borrowed from it.
pub struct GrantSnapshot<'a> {
    first: [OnceLock<Slot>; FIRST_CHUNK],
    more: [OnceLock<Box<[OnceLock<Slot>]>>; CHUNKS - 1],
    capacity: usize,
    next: AtomicUsize,
    overflowed: AtomicBool,
    resolve: Option<Resolve<'a>>,
}

impl<'a> GrantSnapshot<'a> {
    /// Room for `capacity` lookups (allocated as they come); `resolve`
    /// answers those not given.
    pub fn new(capacity: usize, resolve: Option<Resolve<'a>>) -> Self {
        GrantSnapshot {
            first: Default::default(),
            more: Default::default(),
            capacity: capacity.min(FIRST_CHUNK * ((1 << CHUNKS) - 1)),
            next: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
            resolve,
        }
    }

    /// The slot `at`, its chunk allocated on first use; `None` past the
    /// capacity.
    fn slot(&self, at: usize) -> Option<&OnceLock<Slot>> {
        if at >= self.capacity {
            return None;
        }
        match place(at) {
            (0, offset) => self.first.get(offset),
            (chunk, offset) => self
                .more
                .get(chunk - 1)?
                .get_or_init(|| (0..FIRST_CHUNK << chunk).map(|_| OnceLock::new()).collect())
                .get(offset),
        }
    }

    /// Takes the next slot, or records the overflow.
    fn next_slot(&self) -> Option<&OnceLock<Slot>> {
        let slot = self.slot(self.next.fetch_add(1, Ordering::AcqRel));
        if slot.is_none() {
            self.overflowed.store(true, Ordering::Release);
        }
        slot
    }

    /// Records an answer (its lookup is the one it carries).
    pub fn give(&self, roles: Arc<HeldRoles>) -> bool {
        self.next_slot()
            .is_some_and(|slot| slot.set(Slot::Answered(roles)).is_ok())
    }

    fn filled(&self) -> impl Iterator<Item = &Slot> {
        let used = self.next.load(Ordering::Acquire).min(self.capacity);
        let more = self.more.iter().map_while(OnceLock::get);
        self.first
            .iter()
            .chain(more.flat_map(|chunk| chunk.iter()))
            .take(used)
            .filter_map(OnceLock::get)
    }

    /// The lookups asked that nobody answered.
    pub fn missed(&self) -> Vec<Lookup> {
        self.filled()
            .filter_map(|s| match s {
                Slot::Missed(lookup) => Some(lookup.clone()),
                Slot::Answered(_) => None,
            })
            .collect()
    }

    /// Every answered lookup with its roles.
    pub fn answered(&self) -> impl Iterator<Item = &Arc<HeldRoles>> {
        self.filled().filter_map(Slot::roles)
    }

    /// More lookups were asked than the snapshot had room for: the
    /// decision cannot be trusted.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// Room the snapshot has.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl GrantSource for GrantSnapshot<'_> {
    fn roles(&self, holder: Holder<'_>, key: ResourceKey<'_>) -> &[RoleId] {
        if let Some(slot) = self.filled().find(|s| s.lookup().is(holder, key)) {
            return slot.roles().map_or(&[], |r| &r.ids);
        }
        let asked = Asked::new(holder, key);
        let slot = match self.resolve.and_then(|resolve| resolve(&asked)) {
            Some(roles) => Slot::Answered(roles),
            None => Slot::Missed(asked.to_owned()),
        };
        let Some(cell) = self.next_slot() else {
            return &[];
        };
        let _ = cell.set(slot);
        match cell.get().and_then(Slot::roles) {
            Some(roles) => &roles.ids,
            None => &[],
        }
    }

    fn len(&self) -> usize {
        self.answered().map(|r| r.ids.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_round_trip() {
        for (holder, key) in [
            (Holder::Subject("alice"), ResourceKey::Exact("document:1")),
            (Holder::Group("staff"), ResourceKey::Prefix("document:")),
            (Holder::Authenticated, ResourceKey::Prefix("")),
        ] {
            let lookup = Lookup::new(holder, key);
            assert!(lookup.is(holder, key));
            assert_eq!(lookup.holder(), holder);
            assert_eq!(lookup.key(), key);
        }
        let alice = Lookup::new(Holder::Subject("alice"), ResourceKey::Exact("d:1"));
        assert!(!alice.is(Holder::Group("alice"), ResourceKey::Exact("d:1")));
        assert!(!alice.is(Holder::Subject("alice"), ResourceKey::Prefix("d:1")));
    }

    #[test]
    fn unanswered_lookups_are_recorded_once() {
        let snapshot = GrantSnapshot::new(4, None);
        let key = ResourceKey::Exact("document:1");
        assert!(snapshot.roles(Holder::Subject("alice"), key).is_empty());
        assert!(snapshot.roles(Holder::Subject("alice"), key).is_empty());
        assert_eq!(
            snapshot.missed(),
            [Lookup::new(Holder::Subject("alice"), key)]
        );
        for g in ["a", "b", "c", "d"] {
            snapshot.roles(Holder::Group(g), key);
        }
        assert!(snapshot.overflowed());
    }

    #[test]
    fn slots_fill_chunk_after_chunk_in_order() {
        assert_eq!(place(0), (0, 0));
        assert_eq!(place(7), (0, 7));
        assert_eq!(place(8), (1, 0));
        assert_eq!(place(23), (1, 15));
        assert_eq!(place(24), (2, 0));
        assert_eq!(
            place(FIRST_CHUNK * ((1 << CHUNKS) - 1) - 1),
            (CHUNKS - 1, (FIRST_CHUNK << (CHUNKS - 1)) - 1)
        );
        // 100 lookups span five chunks; each is recorded once, in order.
        let snapshot = GrantSnapshot::new(100, None);
        let names: Vec<String> = (0..100).map(|i| format!("document:{i}")).collect();
        for name in &names {
            snapshot.roles(Holder::Subject("alice"), ResourceKey::Exact(name));
            snapshot.roles(Holder::Subject("alice"), ResourceKey::Exact(name));
        }
        assert!(!snapshot.overflowed());
        let missed = snapshot.missed();
        assert_eq!(missed.len(), 100);
        for (lookup, name) in missed.iter().zip(&names) {
            assert!(lookup.is(Holder::Subject("alice"), ResourceKey::Exact(name)));
        }
        snapshot.roles(Holder::Subject("bob"), ResourceKey::Exact("document:0"));
        assert!(snapshot.overflowed());
    }
}
