//! Why no route takes a request, and which came closest: computed on
//! demand for `portcullis check`, the case runner and the decision log of a
//! deny, never while deciding.

use super::resolve::{resolve, Resolved};
use super::*;

/// Longest method and path an [`Unmatched`] carries, in bytes: enough to
/// recognise the request, bounded so a log line stays small.
pub const UNMATCHED_METHOD_MAX: usize = 32;
pub const UNMATCHED_PATH_MAX: usize = 256;

/// A request no application or route takes, explained: what it was and
/// what came closest. Never part of a [`Decision`]; computed on demand by
/// [`explain_unmatched`] for `portcullis check`, the case runner and the
/// decision log of a deny, so [`decide`] pays nothing for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmatched {
    /// The method, bounded.
    pub method: String,
    /// The normalized path (no query string), bounded.
    pub path: String,
    /// Which application or route came closest and why it did not take it.
    pub explanation: String,
}

/// Explains why no route takes `request`, or `None` when one does (or the
/// path or Host cannot be read: [`decide`]'s reason already says why).
/// Pure, like [`decide`], and never called by it.
pub fn explain_unmatched(policy: &PolicySet, request: &RequestAttrs) -> Option<Unmatched> {
    let method = &request.method;
    let unmatched = |path: &str, explanation: String| Unmatched {
        method: bounded(method, UNMATCHED_METHOD_MAX),
        path: bounded(path, UNMATCHED_PATH_MAX),
        explanation,
    };
    resolve(policy, request, |resolved| {
        match resolved {
        Resolved::BadPath(_) | Resolved::BadHost | Resolved::Internal | Resolved::Route { .. } => {
            None
        }
        Resolved::NoApplication {
            reason: Reason::AmbiguousApplication,
            path,
            ..
        } => Some(unmatched(
            path.as_str(),
            "several applications select the request equally (same kind of selector, same strength)"
                .into(),
        )),
        Resolved::NoApplication { path, host, .. } => {
            let context: Vec<String> = request
                .context_extensions
                .iter()
                .map(|(k, v)| format!("{k}={}", bounded(v, 64)))
                .collect();
            Some(unmatched(
                path.as_str(),
                format!(
                    "no application selects the request (context extensions [{}], destination {:?}, host {:?}, path {})",
                    context.join(", "),
                    bounded(&request.destination, 128),
                    bounded(host, 128),
                    bounded(path.as_str(), UNMATCHED_PATH_MAX)
                ),
            ))
        }
        Resolved::NoRoute {
            app,
            path,
            routes_path,
            ..
        } => {
            let explanation = match app.routes.closest(method, routes_path) {
                Some(miss) => format!(
                    "no route of application {:?} takes {} {}; closest: {}",
                    app.name,
                    bounded(method, UNMATCHED_METHOD_MAX),
                    bounded(path.as_str(), UNMATCHED_PATH_MAX),
                    miss.describe(method)
                ),
                None => format!("application {:?} has no routes", app.name),
            };
            Some(unmatched(path.as_str(), explanation))
        }
    }
    })
}

/// Which application `request` lands in and by which selector, in words
/// (`"context extensions (a selector the client cannot write)"`), for the
/// console's explanation; `None` when none is chosen. Pure, computed on
/// demand, never by [`decide`].
pub fn explain_selection(policy: &PolicySet, request: &RequestAttrs) -> Option<(String, String)> {
    resolve(policy, request, |resolved| {
        let (app, selected_by) = match resolved {
            Resolved::NoRoute {
                app, selected_by, ..
            }
            | Resolved::Route {
                app, selected_by, ..
            } => (app, selected_by),
            _ => return None,
        };
        let how = match selected_by {
            crate::policy::SelectedBy::ContextExtensions => "Envoy's context extensions",
            crate::policy::SelectedBy::Destination => "the destination workload's identity",
            crate::policy::SelectedBy::Host => "the Host header",
            crate::policy::SelectedBy::PathPrefix => "the path prefix",
        };
        let who = if selected_by.client_chosen() {
            "a selector the client writes"
        } else {
            "a selector the client cannot write"
        };
        Some((app.name.to_string(), format!("{how} ({who})")))
    })
}
