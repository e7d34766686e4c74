//! Path templates and the route table of one application.
//!
//! A template is a sequence of segments: literals (`documents`), captures of
//! one segment (`{id}`, or typed: `{id:uint}`, `{id:uuid}`) and, last only, a
//! capture of the rest (`{path...}`). A typed capture accepts only the
//! canonical spelling of its type, so the resource it names has one key:
//! `/documents/01` and `/documents/1.json` are not document 1.
//! Literals and captured values are made of unreserved characters only
//! (`A-Z a-z 0-9 - . _ ~`), so a captured value can never smuggle a `:` into
//! a resource name or a `;` past a server that strips path parameters.
//!
//! The table is sorted once, most specific first: segment by segment, a
//! literal beats a capture, which beats a rest capture. The first route
//! whose template and method match wins, so the outcome never depends on
//! the order of routes in a file.
//!
//! Templates (path and resource) are in [`template`]; matching a request
//! against the table, and saying why a route did not take it, are here.

mod template;
#[cfg(test)]
mod tests;

pub use template::*;

use std::cmp::Ordering;
use std::fmt;

use super::source::Access;
use crate::path::{is_unreserved, NormalPath};

/// (segments count from 1).
/// Why a path does not match a template, at the first segment that fails
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// A literal segment differs.
    Literal {
        segment: usize,
        value: String,
        expected: String,
    },
    /// A segment a capture would take holds characters no capture accepts.
    Reserved {
        segment: usize,
        value: String,
        /// Each character that is not unreserved, once.
        chars: String,
    },
    /// A typed capture does not accept the value.
    Type {
        segment: usize,
        value: String,
        /// The capture as written, such as `{id:uint}`.
        capture: String,
    },
    /// The path ends where the template goes on with `missing`.
    TooShort { missing: String },
    /// The path goes on after the template ends.
    TooLong { segment: usize, value: String },
}

/// Values quoted in an explanation are cut to this many bytes.
const QUOTED_MAX: usize = 64;

/// `value`, cut to at most `max` bytes at a character boundary, with `…`
/// when cut.
pub fn bounded(value: &str, max: usize) -> String {
    if value.len() <= max {
        return value.to_owned();
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end])
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = |v: &str| bounded(v, QUOTED_MAX);
        match self {
            Mismatch::Literal {
                segment,
                value,
                expected,
            } => write!(f, "segment {segment} {:?} is not {expected:?}", q(value)),
            Mismatch::Reserved {
                segment,
                value,
                chars,
            } => {
                let listed: Vec<String> = chars.chars().map(|c| format!("`{c}`")).collect();
                write!(
                    f,
                    "segment {segment} {:?} holds characters a capture does not accept ({}): captures take only A-Z a-z 0-9 - . _ ~",
                    q(value),
                    listed.join(" ")
                )
            }
            Mismatch::Type {
                segment,
                value,
                capture,
            } => {
                let what = if capture.contains(":uint") {
                    "an unsigned integer without leading zeros"
                } else if capture.contains(":uuid") {
                    "a lower-case hyphenated UUID"
                } else if capture.contains(":email") {
                    "an e-mail address with a lower-case domain"
                } else {
                    "a non-empty value"
                };
                write!(
                    f,
                    "segment {segment}: `{capture}` does not accept {:?} (it takes {what})",
                    q(value)
                )
            }
            Mismatch::TooShort { missing } => {
                write!(f, "the path ends where the template goes on with {missing}")
            }
            Mismatch::TooLong { segment, value } => write!(
                f,
                "the path goes on after the template ends, at segment {segment} {:?}",
                q(value)
            ),
        }
    }
}

/// The route that came closest to taking a request, and why it did not.
#[derive(Debug)]
pub struct NearMiss<'t> {
    pub route: &'t Route,
    /// `None` when the path matches and only the method does not.
    pub mismatch: Option<Mismatch>,
    /// The method is one the route takes.
    pub method_ok: bool,
}

impl NearMiss<'_> {
    /// The explanation in words, the request's method given.
    pub fn describe(&self, method: &str) -> String {
        let route = &self.route;
        let head = format!("route {:?} ({})", route.name, route.template);
        match (&self.mismatch, self.method_ok) {
            (Some(mismatch), true) => format!("{head}: {mismatch}"),
            (Some(mismatch), false) => format!(
                "{head}: {mismatch}; it also takes {}, not {}",
                route.methods.join(", "),
                bounded(method, 32)
            ),
            (None, _) => format!(
                "{head} takes {}, not {}",
                route.methods.join(", "),
                bounded(method, 32)
            ),
        }
    }
}

/// A route: methods and a template, mapped to what the request does.
#[derive(Debug)]
pub struct Route {
    pub name: std::sync::Arc<str>,
    pub methods: Vec<String>,
    pub template: PathTemplate,
    pub access: Access,
    pub resource: Option<ResourceTemplate>,
    /// The action's name and its index in the policy's action table.
    pub action: Option<(std::sync::Arc<str>, usize)>,
    /// A condition that must hold for the route to allow.
    pub condition: Option<std::sync::Arc<super::Condition>>,
    /// Lower-case names of the request headers the route shows conditions.
    pub headers: Vec<String>,
}

/// The routes of one application, most specific first.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by(|a, b| a.template.specificity(&b.template));
        Self { routes }
    }

    /// The most specific route matching `method` and `path`, with its captures.
    pub fn find<'p>(&self, method: &str, path: &'p NormalPath) -> Option<(&Route, Vec<&'p str>)> {
        self.routes.iter().find_map(|route| {
            if !route.methods.iter().any(|m| m == method) {
                return None;
            }
            route
                .template
                .matches(path)
                .map(|captures| (route, captures))
        })
    }

    /// The route that came closest to taking `method` and `path`, when
    /// none does: the one whose template matches the most leading segments
    /// (a whole-path match first), then one of the path's length, then one
    /// that takes the method; among
    /// equals, the most specific. `None` when a route takes the request or
    /// the table is empty. Only for explanations, never on the decision path.
    pub fn closest<'t>(&'t self, method: &str, path: &NormalPath) -> Option<NearMiss<'t>> {
        let mut best: Option<((bool, usize, bool, bool), NearMiss<'t>)> = None;
        for route in &self.routes {
            let (matched, mismatch) = route.template.mismatch(path);
            let method_ok = route.methods.iter().any(|m| m == method);
            if mismatch.is_none() && method_ok {
                return None;
            }
            // A template of the path's length that fails at one segment is
            // closer than one that ends early or goes on.
            let same_length = !matches!(
                mismatch,
                Some(Mismatch::TooShort { .. } | Mismatch::TooLong { .. })
            );
            let score = (mismatch.is_none(), matched, same_length, method_ok);
            if best.as_ref().is_none_or(|(top, _)| score > *top) {
                let miss = NearMiss {
                    route,
                    mismatch,
                    method_ok,
                };
                best = Some((score, miss));
            }
        }
        best.map(|(_, miss)| miss)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}
