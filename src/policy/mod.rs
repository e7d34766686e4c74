//! A compiled, immutable policy: what the engine decides against.
//!
//! A [`PolicySet`] is built whole by [`load_policies`] and never changed
//! afterwards; a reload builds a new one. Names are resolved and templates
//! compiled at load time, so nothing here can fail while deciding.

pub mod grants;
mod load;
pub mod routes;
pub mod source;

use std::collections::{BTreeMap, HashMap};

pub use grants::{GrantIndex, GrantSource, Holder, ResourceKey, RoleId};
pub use load::{load_policies, LoadError, LoadErrors};
pub use routes::{PathTemplate, ResourceTemplate, Route, RouteTable};
pub use source::{Access, Mode};

use crate::path::NormalPath;
use crate::token::Issuers;

/// Everything a decision needs, loaded from one policy directory.
pub struct PolicySet {
    /// A hash of the policy files' names and contents.
    pub version: String,
    pub issuers: Issuers,
    pub applications: Vec<Application>,
    pub(crate) selector: AppSelector,
    /// Action names; routes and roles refer to them by index.
    pub actions: Vec<String>,
    /// Roles by [`RoleId`], with inherited actions already folded in.
    pub roles: Vec<Role>,
    /// Groups each subject belongs to by the policy (the token may add more).
    pub(crate) member_of: HashMap<String, Vec<String>>,
    pub grants: Box<dyn GrantSource>,
    pub(crate) denies: DenyIndex,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("version", &self.version)
            .field("applications", &self.applications.len())
            .field("roles", &self.roles.len())
            .field("grants", &self.grants.len())
            .finish_non_exhaustive()
    }
}

impl PolicySet {
    /// Groups `subject` belongs to by the policy.
    pub fn policy_groups(&self, subject: &str) -> &[String] {
        self.member_of.get(subject).map_or(&[], Vec::as_slice)
    }

    /// Number of routes over all applications.
    pub fn route_count(&self) -> usize {
        self.applications.iter().map(|a| a.routes.len()).sum()
    }
}

/// A protected application.
#[derive(Debug)]
pub struct Application {
    pub name: String,
    /// Indices of the issuers whose tokens it accepts.
    pub issuers: Vec<usize>,
    pub routes: RouteTable,
    /// Denies are recorded but not enforced.
    pub dry_run: bool,
}

/// A role with every action it grants, inherited ones included.
#[derive(Debug)]
pub struct Role {
    pub name: String,
    pub actions: ActionSet,
}

/// A set of action indices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionSet(Vec<u64>);

impl ActionSet {
    pub fn insert(&mut self, action: usize) {
        let word = action / 64;
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (action % 64);
    }

    pub fn contains(&self, action: usize) -> bool {
        self.0
            .get(action / 64)
            .is_some_and(|w| w & (1 << (action % 64)) != 0)
    }

    pub fn union_with(&mut self, other: &ActionSet) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            *mine |= theirs;
        }
    }
}

/// A resource key owned by the policy (see [`ResourceKey`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedResourceKey {
    Exact(String),
    Prefix(String),
}

impl OwnedResourceKey {
    pub fn as_key(&self) -> ResourceKey<'_> {
        match self {
            OwnedResourceKey::Exact(r) => ResourceKey::Exact(r),
            OwnedResourceKey::Prefix(p) => ResourceKey::Prefix(p),
        }
    }
}

/// An explicit deny.
#[derive(Debug)]
pub struct DenyRule {
    pub name: String,
    pub resource: OwnedResourceKey,
    /// Denied actions; `None` denies every action.
    pub actions: Option<ActionSet>,
    pub reason: Option<String>,
}

impl DenyRule {
    pub fn applies(&self, resource: &str, action: Option<usize>) -> bool {
        let action_denied = match (&self.actions, action) {
            (None, _) => true,
            (Some(set), Some(action)) => set.contains(action),
            // A rule scoped to some actions does not stop a route that
            // names none (access: authenticated without an action).
            (Some(_), None) => false,
        };
        action_denied && self.resource.as_key().covers(resource)
    }
}

/// Deny rules by holder; few per holder, so each list is scanned.
#[derive(Debug, Default)]
pub(crate) struct DenyIndex {
    pub subjects: HashMap<String, Vec<DenyRule>>,
    pub groups: HashMap<String, Vec<DenyRule>>,
    pub everyone: Vec<DenyRule>,
}

/// The outcome of choosing an application for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    Found(usize),
    NotFound,
    /// Two applications match equally well; the request is denied.
    Ambiguous,
}

/// Chooses the application of a request. Context extensions (set by Envoy's
/// configuration, not by the client) are trusted first, then the host, then
/// the path prefix; within each, the most specific selector wins.
#[derive(Debug, Default)]
pub(crate) struct AppSelector {
    /// Required context extensions, most keys first.
    pub by_context: Vec<(BTreeMap<String, String>, usize)>,
    pub exact_hosts: HashMap<String, usize>,
    /// `*.example.com` stored as `.example.com`, longest first.
    pub wildcard_hosts: Vec<(String, usize)>,
    /// Path prefixes as segments, longest first.
    pub prefixes: Vec<(Vec<String>, usize)>,
}

impl AppSelector {
    pub fn select(
        &self,
        context: &BTreeMap<String, String>,
        host: &str,
        path: &NormalPath,
    ) -> Selection {
        let mut by_context = self
            .by_context
            .iter()
            .filter(|(wanted, _)| wanted.iter().all(|(k, v)| context.get(k) == Some(v)));
        if let Some((first, app)) = by_context.next() {
            return match by_context.next() {
                Some((second, _)) if second.len() == first.len() => Selection::Ambiguous,
                _ => Selection::Found(*app),
            };
        }

        let host = normalize_host(host);
        if let Some(app) = self.exact_hosts.get(host.as_str()) {
            return Selection::Found(*app);
        }
        if let Some((_, app)) = self
            .wildcard_hosts
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
        {
            return Selection::Found(*app);
        }

        let found = self.prefixes.iter().find(|(prefix, _)| {
            path.len() >= prefix.len() && path.segments().zip(prefix).all(|(a, b)| a == b)
        });
        found.map_or(Selection::NotFound, |(_, app)| Selection::Found(*app))
    }
}

/// Lower-cases a host and removes its port and a trailing dot. Anything
/// that is not a plausible host name becomes empty and matches no selector.
pub fn normalize_host(host: &str) -> String {
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 literal: keep the brackets' content.
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    let host = without_port.strip_suffix('.').unwrap_or(without_port);
    let plausible = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'));
    if plausible {
        host.to_ascii_lowercase()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Docs.Example.COM:8080"), "docs.example.com");
        assert_eq!(normalize_host("docs.example.com."), "docs.example.com");
        assert_eq!(normalize_host("[::1]:9000"), "::1");
        assert_eq!(normalize_host("evil.com/x"), "");
        assert_eq!(normalize_host(""), "");
    }

    #[test]
    fn action_sets() {
        let mut a = ActionSet::default();
        a.insert(3);
        a.insert(130);
        assert!(a.contains(3) && a.contains(130));
        assert!(!a.contains(4) && !a.contains(1000));
        let mut b = ActionSet::default();
        b.insert(4);
        b.union_with(&a);
        assert!(b.contains(3) && b.contains(4) && b.contains(130));
    }
}
