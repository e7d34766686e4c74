//! A compiled, immutable policy: what the engine decides against.
//!
//! A [`PolicySet`] is built whole by [`compile`] (the shell's `load_policies` reads a directory and calls it) and never changed
//! afterwards, except the current keys of an issuer's `jwks_url`, which the
//! fetcher swaps whole; a reload builds a new set. Names are resolved and
//! templates compiled at load time, so nothing here can fail while deciding.

pub mod callers;
pub mod condition;
pub mod connections;
pub mod events;
pub mod grant_snapshot;
pub mod grants;
pub mod load;
pub mod routes;
pub mod source;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub use condition::{Condition, ConditionEnv, ConditionError, Reads};
pub use connections::{ConnectionPeers, ConnectionRule, ConnectionRules};
pub use grants::{GrantIndex, GrantIndexBuilder, GrantSource, Holder, ResourceKey, RoleId};
pub use load::{
    compile, GrantOrigin, Host, LoadErrors, Loaded, Origins, Place, SourceFile, UnreadableKeys,
};
pub use routes::{bounded, Mismatch, NearMiss, PathTemplate, ResourceTemplate, Route, RouteTable};
pub use source::{Access, Mode};

use crate::path::NormalPath;
use crate::token::{Issuers, Principal};

/// The policy being served: one whole [`PolicySet`] that a reload replaces
/// with one atomic swap, so a check that took it sees it to the end.
pub type PolicyHandle = std::sync::Arc<arc_swap::ArcSwap<PolicySet>>;

/// Everything a decision needs, loaded from one policy directory.
pub struct PolicySet {
    /// A hash of the policy files' names and contents.
    pub version: String,
    pub issuers: Issuers,
    pub applications: Vec<Application>,
    pub(crate) selector: AppSelector,
    /// Action names; routes and roles refer to them by index.
    pub actions: Vec<Arc<str>>,
    /// Roles by [`RoleId`], with inherited actions already folded in.
    pub roles: Vec<Role>,
    /// Groups each subject belongs to by the policy (the token may add more).
    pub(crate) member_of: HashMap<String, Vec<String>>,
    pub grants: Box<dyn GrantSource>,
    pub(crate) denies: DenyIndex,
    /// The TCP connections allowed (checks without HTTP attributes).
    pub connections: ConnectionRules,
    /// The environment conditions run in.
    pub conditions: ConditionEnv,
    /// What the policy's conditions read, over all of them.
    pub condition_reads: Reads,
    /// The claims the policy's conditions read, sorted, when every read
    /// names its claim; `None` when some condition may read any. What the
    /// decision log records of a principal's claims.
    pub condition_claims: Option<Vec<String>>,
    /// Lower-case names of every request header some route makes visible
    /// to conditions (`headers:`), sorted: the adapter copies these, and
    /// only these, into [`crate::engine::RequestAttrs::headers`].
    pub condition_headers: Vec<String>,
    /// Who may call the AuthZEN API, and what each may ask.
    pub callers: callers::Callers,
    /// The keys of signed events; `None` when the policy names none.
    pub events: Option<events::EventKeys>,
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
    /// The selectors that choose the application at `app` (an index into
    /// [`PolicySet::applications`]), in words and in the order they are
    /// tried: for the console's view of the policy.
    pub fn application_selectors(&self, app: usize) -> Vec<String> {
        let s = &self.selector;
        let mut out = Vec::new();
        for (wanted, _) in s.by_context.iter().filter(|(_, a)| *a == app) {
            let pairs: Vec<String> = wanted.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push(format!("context extensions {}", pairs.join(", ")));
        }
        let mut sorted = |map: &HashMap<String, usize>, what: &str| {
            let mut names: Vec<&String> = map
                .iter()
                .filter(|(_, a)| **a == app)
                .map(|(n, _)| n)
                .collect();
            names.sort();
            out.extend(names.into_iter().map(|n| format!("{what} {n}")));
        };
        sorted(&s.by_principal, "destination principal");
        sorted(&s.by_namespace, "destination namespace");
        sorted(&s.exact_hosts, "host");
        for (suffix, _) in s.wildcard_hosts.iter().filter(|(_, a)| *a == app) {
            out.push(format!("host *{suffix}"));
        }
        for (prefix, _, _) in s.prefixes.iter().filter(|(_, a, _)| *a == app) {
            out.push(format!("path prefix /{}", prefix.join("/")));
        }
        out
    }

    /// Groups `subject` belongs to by the policy.
    pub(crate) fn policy_groups(&self, subject: &str) -> &[String] {
        self.member_of.get(subject).map_or(&[], Vec::as_slice)
    }

    /// Every holder whose grants count for `principal`, in the order a
    /// decision asks them: the subject, its token's groups, its groups by
    /// the policy, then every authenticated subject.
    pub fn holders<'a>(&'a self, principal: &'a Principal) -> impl Iterator<Item = Holder<'a>> {
        Holder::all_of(principal, self.policy_groups(&principal.subject))
    }

    /// Number of roles the policy defines (not counting the role of its
    /// own each grant with a condition holds).
    pub fn named_role_count(&self) -> usize {
        self.roles.iter().filter(|r| r.condition.is_none()).count()
    }

    /// Number of routes over all applications.
    pub fn route_count(&self) -> usize {
        self.applications.iter().map(|a| a.routes.len()).sum()
    }
}

/// A protected application.
#[derive(Debug)]
pub struct Application {
    pub name: Arc<str>,
    /// Indices of the issuers whose tokens it accepts.
    pub issuers: Vec<usize>,
    pub routes: RouteTable,
    /// Denies are recorded but not enforced (only when a selector the
    /// client cannot choose picked the application).
    pub dry_run: bool,
    /// Routes match the lower-cased path.
    pub case_insensitive: bool,
}

/// A role with every action it grants, inherited ones included. A grant
/// with a condition holds a role of its own: the role it names, with the
/// condition, so the grants index stays a map of role ids and a grant
/// without a condition costs nothing more.
#[derive(Debug)]
pub struct Role {
    pub name: Arc<str>,
    pub actions: ActionSet,
    /// The condition of the grants that hold this role, if any.
    pub condition: Option<std::sync::Arc<Condition>>,
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
pub(crate) enum OwnedResourceKey {
    Exact(String),
    Prefix(String),
}

impl OwnedResourceKey {
    /// The one resource named, for an exact key.
    pub fn exact(&self) -> Option<&str> {
        match self {
            OwnedResourceKey::Exact(r) => Some(r),
            OwnedResourceKey::Prefix(_) => None,
        }
    }

    pub(crate) fn as_key(&self) -> ResourceKey<'_> {
        match self {
            OwnedResourceKey::Exact(r) => ResourceKey::Exact(r),
            OwnedResourceKey::Prefix(p) => ResourceKey::Prefix(p),
        }
    }
}

/// An explicit deny.
#[derive(Debug)]
pub(crate) struct DenyRule {
    pub name: Arc<str>,
    pub resource: OwnedResourceKey,
    /// Denied actions; `None` denies every action.
    pub actions: Option<ActionSet>,
    pub reason: Option<Arc<str>>,
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

impl DenyIndex {
    /// Every deny rule, whoever it names.
    pub fn rules(&self) -> impl Iterator<Item = &DenyRule> {
        self.subjects
            .values()
            .chain(self.groups.values())
            .flatten()
            .chain(&self.everyone)
    }
}

/// An explicit deny as written, for showing the policy (the console):
/// whom it names (`None`: everyone), what it covers, which actions
/// (`None`: every action), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyView<'p> {
    pub name: &'p str,
    pub holder: Option<Holder<'p>>,
    pub resource: ResourceKey<'p>,
    pub actions: Option<Vec<&'p str>>,
    pub reason: Option<&'p str>,
}

impl PolicySet {
    /// The names of the actions in `set`, in the policy's order.
    pub fn action_names(&self, set: &ActionSet) -> Vec<&str> {
        self.actions
            .iter()
            .enumerate()
            .filter(|(i, _)| set.contains(*i))
            .map(|(_, a)| &**a)
            .collect()
    }

    /// Every explicit deny, ordered by name.
    pub fn deny_rules(&self) -> Vec<DenyView<'_>> {
        let subjects = self.denies.subjects.iter();
        let groups = self.denies.groups.iter();
        let mut views: Vec<DenyView<'_>> = subjects
            .map(|(s, rules)| (Some(Holder::Subject(s.as_str())), rules))
            .chain(groups.map(|(g, rules)| (Some(Holder::Group(g.as_str())), rules)))
            .chain([(None, &self.denies.everyone)])
            .flat_map(|(holder, rules)| {
                rules.iter().map(move |rule| DenyView {
                    name: &rule.name,
                    holder,
                    resource: rule.resource.as_key(),
                    actions: rule.actions.as_ref().map(|set| self.action_names(set)),
                    reason: rule.reason.as_deref(),
                })
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(b.name));
        views
    }
}

/// The outcome of choosing an application for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Selection {
    Found(usize, SelectedBy),
    NotFound,
    /// Two applications match equally well; the request is denied.
    Ambiguous,
}

/// Which selector chose the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SelectedBy {
    /// Envoy's per-route configuration: the client cannot set it.
    ContextExtensions,
    /// The destination workload's mTLS identity: the client cannot set it.
    Destination,
    /// The Host header: the client writes it.
    Host,
    /// The path: the client writes it.
    PathPrefix,
}

impl SelectedBy {
    /// True when the client could have made another application apply by
    /// sending another request line or Host.
    pub(crate) fn client_chosen(self) -> bool {
        matches!(self, SelectedBy::Host | SelectedBy::PathPrefix)
    }
}

/// What the application selector reads from a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SelectInput<'r> {
    pub context: &'r BTreeMap<Cow<'r, str>, Cow<'r, str>>,
    /// The destination workload's principal (a SPIFFE id), empty when the
    /// connection carried none.
    pub destination: &'r str,
    /// The Host, already checked by [`normalize_host`].
    pub host: &'r str,
    pub path: &'r NormalPath,
}

/// Chooses the application of a request. The selectors the client cannot
/// forge come first: context extensions (set by Envoy's configuration),
/// then the destination workload's identity; then the host, then the path
/// prefix. Within each, the most specific selector wins.
#[derive(Debug, Default)]
pub(crate) struct AppSelector {
    /// Required context extensions, most keys first.
    pub by_context: Vec<(BTreeMap<String, String>, usize)>,
    pub by_principal: HashMap<String, usize>,
    pub by_namespace: HashMap<String, usize>,
    pub exact_hosts: HashMap<String, usize>,
    /// `*.example.com` stored as `.example.com`, longest first.
    pub wildcard_hosts: Vec<(String, usize)>,
    /// Path prefixes as segments, longest first, and whether the
    /// application ignores case (its prefix is then stored lower-case).
    pub prefixes: Vec<(Vec<String>, usize, bool)>,
}

impl AppSelector {
    pub fn select(&self, input: SelectInput<'_>) -> Selection {
        let mut by_context = self.by_context.iter().filter(|(wanted, _)| {
            wanted
                .iter()
                .all(|(k, v)| input.context.get(k.as_str()).map(|c| &**c) == Some(v.as_str()))
        });
        if let Some((first, app)) = by_context.next() {
            return match by_context.next() {
                Some((second, _)) if second.len() == first.len() => Selection::Ambiguous,
                _ => Selection::Found(*app, SelectedBy::ContextExtensions),
            };
        }

        if !input.destination.is_empty() {
            let by_principal = self.by_principal.get(input.destination);
            let by_namespace =
                || spiffe_namespace(input.destination).and_then(|ns| self.by_namespace.get(ns));
            if let Some(app) = by_principal.or_else(by_namespace) {
                return Selection::Found(*app, SelectedBy::Destination);
            }
        }

        let host = input.host;
        if let Some(app) = self.exact_hosts.get(host) {
            return Selection::Found(*app, SelectedBy::Host);
        }
        if let Some((_, app)) = self
            .wildcard_hosts
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
        {
            return Selection::Found(*app, SelectedBy::Host);
        }

        let path = input.path;
        let found = self.prefixes.iter().find(|(prefix, _, fold)| {
            path.len() >= prefix.len()
                && path.segments().zip(prefix).all(|(a, b)| {
                    if *fold {
                        a.eq_ignore_ascii_case(b)
                    } else {
                        a == b
                    }
                })
        });
        found.map_or(Selection::NotFound, |(_, app, _)| {
            Selection::Found(*app, SelectedBy::PathPrefix)
        })
    }
}

/// The namespace of an Istio SPIFFE id, `spiffe://<trust domain>/ns/<namespace>/sa/<account>`.
pub(crate) fn spiffe_namespace(principal: &str) -> Option<&str> {
    let rest = principal.strip_prefix("spiffe://")?;
    let mut parts = rest.split('/');
    let (Some(domain), Some("ns"), Some(namespace), Some("sa"), Some(account), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let valid = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    (valid(domain) && valid(namespace) && valid(account)).then_some(namespace)
}

/// Why a Host was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the Host header is not a plain host name with an optional numeric port")]
pub struct BadHost;

/// The Host as selectors compare it: lower case, without its port. A Host
/// Envoy would not route as written is refused rather than repaired: a
/// trailing dot, a port that is not a number from 1 to 65535, anything
/// after an IPv6 literal's `]`, or a character a host name cannot hold.
/// Repairing would pick an application for a name Envoy routed elsewhere.
pub(crate) fn normalize_host(host: &str) -> Result<Cow<'_, str>, BadHost> {
    if host.is_empty() {
        return Ok(Cow::Borrowed(""));
    }
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (literal, after) = rest.split_once(']').ok_or(BadHost)?;
        let ipv6 = !literal.is_empty()
            && literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
        if !ipv6 {
            return Err(BadHost);
        }
        match after {
            "" => (literal, None),
            _ => (literal, Some(after.strip_prefix(':').ok_or(BadHost)?)),
        }
    } else {
        let (name, port) = match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        };
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(BadHost);
        }
        (name, port)
    };
    if let Some(port) = port {
        let numeric =
            !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        if !numeric || !(1..=65535).contains(&port.parse::<u32>().map_err(|_| BadHost)?) {
            return Err(BadHost);
        }
    }
    // Most Hosts are lower case already: copy only those that are not.
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(Cow::Owned(name.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalized() {
        let ok = |h: &str| normalize_host(h).ok().map(|h| h.into_owned());
        assert_eq!(
            ok("Docs.Example.COM:8080").as_deref(),
            Some("docs.example.com")
        );
        assert_eq!(ok("[::1]:9000").as_deref(), Some("::1"));
        assert_eq!(ok("[::1]").as_deref(), Some("::1"));
        assert_eq!(ok("10.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(ok("").as_deref(), Some(""));
        for bad in [
            "docs.example.com.",
            "docs.example.com:",
            "docs.example.com:0",
            "docs.example.com:65536",
            "docs.example.com:80:80",
            "docs.example.com:http",
            "[docs]suffix",
            "[::1]x",
            "[::1]:",
            "[docs.example.com]",
            "evil.com/x",
            "a..b",
            ".example.com",
            "ex ample.com",
            "exam_ple.com",
        ] {
            assert_eq!(normalize_host(bad), Err(BadHost), "{bad:?}");
        }
    }

    #[test]
    fn spiffe_namespaces() {
        assert_eq!(
            spiffe_namespace("spiffe://cluster.local/ns/documents/sa/api"),
            Some("documents")
        );
        for bad in [
            "spiffe://cluster.local/ns/documents",
            "spiffe://cluster.local/ns//sa/api",
            "spiffe://cluster.local/ns/a/sa/api/extra",
            "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/sa/a/ns/b",
        ] {
            assert_eq!(spiffe_namespace(bad), None, "{bad:?}");
        }
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
