//! What `portcullis validate` warns about (`--strict` makes each an error),
//! and `portcullis test --explore`: ways a policy can be sidestepped that
//! load without error.
//!
//! A policy written the natural way often lets a request in through another
//! spelling: `/documents/01` is another resource than the `document:1` a
//! deny rule names, while most upstreams read the same row; `/ADMIN/users`
//! misses a case-sensitive `/admin/{rest...}` route and falls to a broader
//! one. (A route that another takes every request of cannot load: routes
//! are tried most specific first, and two of one shape are an error.) The
//! lint reads the compiled policy (and, for `file:line`, where each
//! part was written); exploring decides generated requests with the engine,
//! as an attacker would send them. Both are pure: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::diagnostic::Diagnostic;
use crate::engine::{self, Credential, Decision, KnownPrincipal, RequestAttrs};
use crate::path;
use crate::policy::routes::{CaptureType, Segment};
use crate::policy::{Access, Application, Origins, PathTemplate, Place, PolicySet, Route};
use crate::token::Principal;

/// Every warning for `policy`, each at the line it concerns.
pub fn lint(policy: &PolicySet, origins: &Origins) -> Vec<Diagnostic> {
    let mut lints = Lints {
        origins,
        found: Vec::new(),
    };
    lints.untyped_captures(policy);
    for app in &policy.applications {
        lints.case_fallthrough(app);
        lints.weaker_routes_overlap(app);
    }
    lints.types_no_route_produces(policy);
    lints.unused_roles(policy);
    lints.found
}

struct Lints<'o> {
    origins: &'o Origins,
    found: Vec<Diagnostic>,
}

impl Lints<'_> {
    fn warn(&mut self, place: Option<&Place>, message: String) {
        let (file, line) = match place {
            Some((file, line)) => (file.clone(), Some(*line)),
            None => (Default::default(), None),
        };
        self.found.push(Diagnostic {
            file,
            line,
            message,
        });
    }

    fn route_place(&self, app: &Application, route: &Route) -> Option<&Place> {
        self.origins
            .routes
            .get(&(app.name.to_string(), route.name.to_string()))
    }

    /// A deny rule naming one resource that a route builds from an untyped
    /// capture: the resource has other spellings the policy takes for
    /// other resources.
    fn untyped_captures(&mut self, policy: &PolicySet) {
        let mut denies: Vec<_> = policy.denies.rules().collect();
        denies.sort_by(|a, b| a.name.cmp(&b.name));
        for deny in denies {
            let Some(resource) = deny.resource.exact() else {
                continue;
            };
            let mut routes = Vec::new();
            let mut spellings = BTreeSet::new();
            let mut captures = BTreeSet::new();
            for app in &policy.applications {
                for route in app.routes.iter() {
                    let Some((capture, value)) = untyped_capture_of(route, resource) else {
                        continue;
                    };
                    captures.insert(capture.to_owned());
                    spellings.extend(
                        alternate_values(value, app.case_insensitive)
                            .into_iter()
                            .map(|v| format!("{}:{v}", resource_prefix(resource))),
                    );
                    let at = self
                        .route_place(app, route)
                        .map(|(f, l)| format!(" ({}:{l})", f.display()))
                        .unwrap_or_default();
                    routes.push(format!("{:?}{at}", route.name));
                }
            }
            if routes.is_empty() {
                continue;
            }
            let capture = captures.into_iter().collect::<Vec<_>>().join("}, {");
            let place = self.origins.denies.get(&*deny.name).cloned();
            self.warn(
                place.as_ref(),
                format!(
                    "deny rule {:?} names {resource}, but route {} build it from the untyped capture {{{capture}}}: {} are other resources to the policy and may be the same record to the upstream; type the capture (`{{id:uint}}`, `{{id:uuid}}`) or deny a pattern",
                    deny.name,
                    routes.join(", "),
                    spellings.into_iter().collect::<Vec<_>>().join(", "),
                ),
            );
        }
    }

    /// An application that matches case-sensitively where a request that
    /// differs only in case from a narrower route's path is taken by
    /// another route.
    fn case_fallthrough(&mut self, app: &Application) {
        if app.case_insensitive {
            return;
        }
        for route in app.routes.iter() {
            if route.access == Access::Public {
                continue;
            }
            let Some(sample) = sample_path(&route.template) else {
                continue;
            };
            let shouted = upper_literals(&route.template, &sample);
            if shouted == sample {
                continue;
            }
            let Ok(normal) = path::normalize(&shouted) else {
                continue;
            };
            for method in &route.methods {
                if let Some((other, _)) = app.routes.find(method, &normal) {
                    if other.name != route.name {
                        let place = self.route_place(app, route).cloned();
                        self.warn(
                            place.as_ref(),
                            format!(
                                "{method} {shouted} differs from route {:?} only in case and is taken by route {:?} ({}) instead: application {:?} matches case-sensitively; set `case_insensitive: true` if its upstream ignores case",
                                route.name,
                                other.name,
                                access_name(other.access),
                                app.name
                            ),
                        );
                        break;
                    }
                }
            }
        }
    }

    /// A public or `authenticated` route that takes a spelling of a
    /// protected route's paths the protected route refuses (a typed capture
    /// refusing `01`, a case-sensitive literal): the request is let in by
    /// the weaker route instead.
    fn weaker_routes_overlap(&mut self, app: &Application) {
        for strong in app.routes.iter().filter(|r| r.access == Access::Granted) {
            let Some(sample) = sample_path(&strong.template) else {
                continue;
            };
            let escapes = spellings_of(&strong.template, &sample, app.case_insensitive);
            'weak: for weak in app.routes.iter().filter(|r| r.access != Access::Granted) {
                let Some(method) = weak.methods.iter().find(|m| strong.methods.contains(m)) else {
                    continue;
                };
                for spelling in &escapes {
                    let Ok(mut normal) = path::normalize(spelling) else {
                        continue;
                    };
                    if app.case_insensitive {
                        normal = normal.to_ascii_lowercase();
                    }
                    let taken_by = app.routes.find(method, &normal).map(|(r, _)| &r.name);
                    if taken_by == Some(&weak.name) {
                        let place = self.route_place(app, weak).cloned();
                        self.warn(
                            place.as_ref(),
                            format!(
                                "route {:?} ({}) takes {method} {spelling}, a spelling of route {:?}'s {method} {sample} ({}) that route refuses: the request is let in here instead",
                                weak.name,
                                access_name(weak.access),
                                strong.name,
                                access_name(strong.access),
                            ),
                        );
                        continue 'weak;
                    }
                }
            }
        }
    }

    /// A grant or deny naming a resource type no route produces: only
    /// resource/action checks (the AuthZEN API, events) can reach it, and a
    /// misspelled type is never reached at all.
    fn types_no_route_produces(&mut self, policy: &PolicySet) {
        let mut produced = BTreeSet::new();
        for app in &policy.applications {
            for route in app.routes.iter() {
                match route.resource.as_ref().map(|r| r.resource_type()) {
                    Some(Some(t)) => {
                        produced.insert(t.to_owned());
                    }
                    // A route that builds the whole name from the path may
                    // produce any type.
                    Some(None) => return,
                    None => {}
                }
            }
        }
        if produced.is_empty() {
            return;
        }
        let known = produced.iter().cloned().collect::<Vec<_>>().join(", ");
        // A grant or deny only about actions no route names is meant for
        // resource/action checks, where any type is fine.
        let routed: HashSet<usize> = policy
            .applications
            .iter()
            .flat_map(|a| a.routes.iter())
            .filter_map(|r| r.action.as_ref().map(|(_, index)| *index))
            .collect();
        let routes_ask = |actions: Option<&crate::policy::ActionSet>| match actions {
            None => true,
            Some(set) => routed.iter().any(|a| set.contains(*a)),
        };
        let mut reported = HashSet::new();
        let mut named: Vec<(String, String, Option<Place>)> = Vec::new();
        for grant in &self.origins.grants {
            let role = policy.roles.iter().find(|r| *r.name == *grant.role);
            if !routes_ask(role.map(|r| &r.actions)) {
                continue;
            }
            named.push((
                grant.resource.clone(),
                "a grant".into(),
                Some(grant.place.clone()),
            ));
        }
        for deny in policy.denies.rules() {
            if !routes_ask(deny.actions.as_ref()) {
                continue;
            }
            let resource = deny.resource.as_key().to_string();
            let place = self.origins.denies.get(&*deny.name).cloned();
            named.push((resource, format!("deny rule {:?}", deny.name), place));
        }
        for (resource, who, place) in named {
            let Some((kind, _)) = resource.split_once(':') else {
                continue;
            };
            if kind.is_empty() || kind == "*" || produced.contains(kind) {
                continue;
            }
            if reported.insert(kind.to_owned()) {
                self.warn(
                    place.as_ref(),
                    format!(
                        "{who} names resource type {kind:?}, which no route produces (routes produce: {known}): only resource/action checks can reach it"
                    ),
                );
            }
        }
    }

    /// Roles no grant names. (Actions only roles name are deliberate, asked
    /// about by resource and action: `validate` lists them as a note.)
    fn unused_roles(&mut self, policy: &PolicySet) {
        let granted: HashSet<&str> = self
            .origins
            .grants
            .iter()
            .map(|grant| grant.role.as_str())
            .collect();
        // Roles in `*.grants` files are not listed in the origins: the lint
        // names unused roles only when there are no bulk grants to look in.
        if self.origins.grants.len() == policy.grants.len() {
            let mut unused: Vec<(&String, &Place)> = self
                .origins
                .roles
                .iter()
                .filter(|(name, _)| !granted.contains(name.as_str()))
                .collect();
            unused.sort();
            for (name, place) in unused {
                let place = place.clone();
                self.warn(Some(&place), format!("role {name:?} is granted to no one"));
            }
        }
    }
}

fn access_name(access: Access) -> &'static str {
    match access {
        Access::Public => "public",
        Access::Authenticated => "authenticated",
        Access::Granted => "needs a grant",
    }
}

/// `document` of `document:1`.
fn resource_prefix(resource: &str) -> &str {
    resource.split_once(':').map_or(resource, |(t, _)| t)
}

/// The name of the untyped capture `route` builds `resource` from, and the
/// capture's value in it, if it does.
fn untyped_capture_of<'r>(route: &'r Route, resource: &'r str) -> Option<(&'r str, &'r str)> {
    let (prefix, index) = route.resource.as_ref()?.prefix_and_capture()?;
    let value = resource.strip_prefix(prefix)?;
    let (name, kind) = route
        .template
        .segments()
        .iter()
        .filter_map(|s| match s {
            Segment::Capture(n, kind) => Some((n.as_str(), *kind)),
            Segment::Rest(n) => Some((n.as_str(), CaptureType::Any)),
            Segment::Literal(_) => None,
        })
        .nth(index)?;
    (kind == CaptureType::Any && !value.is_empty()).then_some((name, value))
}

/// Other spellings of a captured `value` that upstreams commonly read as
/// the same record: leading zeros of a number, a format suffix, other case.
fn alternate_values(value: &str, case_insensitive: bool) -> Vec<String> {
    let mut out = Vec::new();
    if value.bytes().all(|b| b.is_ascii_digit()) {
        out.push(format!("0{value}"));
    }
    out.push(format!("{value}.json"));
    if !case_insensitive && value.bytes().any(|b| b.is_ascii_lowercase()) {
        out.push(value.to_ascii_uppercase());
    }
    out
}

/// A path the template matches: literals as written, each capture a value
/// of its type, a rest capture one segment. `None` for the root template.
fn sample_path(template: &PathTemplate) -> Option<String> {
    let mut out = String::new();
    for segment in template.segments() {
        out.push('/');
        out.push_str(match segment {
            Segment::Literal(l) => l,
            Segment::Capture(_, CaptureType::Uuid) => "00000000-0000-4000-8000-000000000001",
            Segment::Capture(_, CaptureType::Email) => "someone@example.com",
            Segment::Capture(_, _) => "1",
            Segment::Rest(_) => "x",
        });
    }
    (!out.is_empty()).then_some(out)
}

/// `sample` with the template's literal segments in upper case.
fn upper_literals(template: &PathTemplate, sample: &str) -> String {
    let mut out = String::new();
    for (segment, text) in template.segments().iter().zip(sample.split('/').skip(1)) {
        out.push('/');
        match segment {
            Segment::Literal(_) => out.push_str(&text.to_ascii_uppercase()),
            _ => out.push_str(text),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Exploring: the spellings an attacker would try, decided by the engine
// ---------------------------------------------------------------------------

/// A request answered differently from its canonical spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidestep {
    pub subject: String,
    pub method: String,
    pub canonical: String,
    pub canonical_answer: String,
    pub spelling: String,
    pub answer: String,
}

impl std::fmt::Display for Sidestep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} as {:?}: {} (canonical {} {}: {})",
            self.method,
            self.spelling,
            self.subject,
            self.answer,
            self.method,
            self.canonical,
            self.canonical_answer
        )
    }
}

/// At most this many subjects are tried (those the YAML grants name, and
/// one with no grant).
const MAX_SUBJECTS: usize = 50;

/// Decides, for each route and each deny rule, the canonical request and
/// its alternate spellings (leading zeros, a format suffix, upper-case
/// literals) as each of a few subjects, and reports every spelling that is
/// allowed where the canonical request is denied.
pub fn explore(policy: &PolicySet, origins: &Origins) -> Vec<Sidestep> {
    let mut subjects: BTreeSet<String> = BTreeSet::new();
    subjects.insert("explore-no-grant".into());
    subjects.extend(origins.grants.iter().filter_map(|g| g.subject.clone()));
    let subjects: Vec<String> = subjects.into_iter().take(MAX_SUBJECTS).collect();
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    for app in &policy.applications {
        let selecting = selecting_request(policy, app);
        for route in app.routes.iter() {
            if route.access == Access::Public {
                continue;
            }
            let mut canonicals: Vec<String> = sample_path(&route.template).into_iter().collect();
            // The values deny rules name, in this route's capture.
            for deny in policy.denies.rules() {
                if let Some(resource) = deny.resource.exact() {
                    if let Some((_, value)) = untyped_capture_of(route, resource) {
                        if let Some(path) = path_with_capture(&route.template, route, value) {
                            canonicals.push(path);
                        }
                    }
                }
            }
            for canonical in canonicals {
                let spellings = spellings_of(&route.template, &canonical, false);
                for method in &route.methods {
                    for subject in &subjects {
                        let decide =
                            |path: &str| decide_as(policy, &selecting, method, path, subject);
                        let base = decide(&canonical);
                        if base.is_allowed() {
                            continue;
                        }
                        for spelling in &spellings {
                            let other = decide(spelling);
                            if other.is_allowed()
                                && seen.insert((method.clone(), spelling.clone(), subject.clone()))
                            {
                                found.push(Sidestep {
                                    subject: subject.clone(),
                                    method: method.clone(),
                                    canonical: canonical.clone(),
                                    canonical_answer: answer(&base),
                                    spelling: spelling.clone(),
                                    answer: answer(&other),
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    found
}

fn answer(decision: &Decision) -> String {
    let route = decision
        .route
        .as_deref()
        .map(|r| format!(" by route {r:?}"))
        .unwrap_or_default();
    format!(
        "{} {}{route}",
        if decision.is_allowed() {
            "allow"
        } else {
            "deny"
        },
        decision.reason.code()
    )
}

/// `canonical` with the capture holding a deny's value.
fn path_with_capture(template: &PathTemplate, route: &Route, value: &str) -> Option<String> {
    let (_, index) = route.resource.as_ref()?.prefix_and_capture()?;
    let mut capture = 0;
    let mut out = String::new();
    for segment in template.segments() {
        out.push('/');
        match segment {
            Segment::Literal(l) => out.push_str(l),
            Segment::Capture(..) | Segment::Rest(_) => {
                out.push_str(if capture == index { value } else { "1" });
                capture += 1;
            }
        }
    }
    Some(out)
}

/// The spellings of `canonical` worth trying: each capture with a leading
/// zero and with a suffix, and, unless the application ignores case, the
/// literals in upper case.
fn spellings_of(template: &PathTemplate, canonical: &str, case_insensitive: bool) -> Vec<String> {
    let parts: Vec<&str> = canonical.split('/').skip(1).collect();
    let mut out = Vec::new();
    for (i, segment) in template.segments().iter().enumerate() {
        if !matches!(segment, Segment::Capture(..)) {
            continue;
        }
        for alternate in alternate_values(parts[i], true) {
            let mut changed = parts.clone();
            changed[i] = &alternate;
            out.push(format!("/{}", changed.join("/")));
        }
    }
    if !case_insensitive {
        let upper = upper_literals(template, canonical);
        if upper != canonical {
            out.push(upper);
        }
    }
    out
}

/// What a request needs besides its path for the policy to select `app`:
/// the context extensions, destination or Host that selects it.
struct Selecting {
    context: BTreeMap<String, String>,
    destination: String,
    host: String,
}

fn selecting_request(policy: &PolicySet, app: &Application) -> Selecting {
    let index = policy
        .applications
        .iter()
        .position(|a| std::ptr::eq(a, app))
        .unwrap_or(usize::MAX);
    let selector = &policy.selector;
    let context = selector
        .by_context
        .iter()
        .find(|(_, i)| *i == index)
        .map(|(context, _)| context.clone())
        .unwrap_or_default();
    let destination = selector
        .by_principal
        .iter()
        .find(|(_, i)| **i == index)
        .map(|(p, _)| p.clone())
        .or_else(|| {
            selector
                .by_namespace
                .iter()
                .find(|(_, i)| **i == index)
                .map(|(ns, _)| format!("spiffe://cluster.local/ns/{ns}/sa/explore"))
        })
        .unwrap_or_default();
    let host = selector
        .exact_hosts
        .iter()
        .find(|(_, i)| **i == index)
        .map(|(h, _)| h.clone())
        .unwrap_or_else(|| "explore.invalid".into());
    Selecting {
        context,
        destination,
        host,
    }
}

fn decide_as(
    policy: &PolicySet,
    selecting: &Selecting,
    method: &str,
    path: &str,
    subject: &str,
) -> Decision {
    let request = RequestAttrs {
        method: method.into(),
        path: path.into(),
        host: selecting.host.as_str().into(),
        destination: selecting.destination.as_str().into(),
        context_extensions: selecting
            .context
            .iter()
            .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
            .collect(),
        credential: Credential::Bearer("explore".into()),
        request_id: None,
        verified_payloads: BTreeMap::new(),
        headers: BTreeMap::new(),
    };
    let principal = Principal::named("explore", subject);
    let authn = KnownPrincipal(std::sync::Arc::new(principal));
    engine::decide(
        policy,
        &*policy.grants,
        &engine::Request::Http(&request),
        &authn,
        0,
    )
}
