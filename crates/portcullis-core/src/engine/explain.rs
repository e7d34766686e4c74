//! Why no route takes a request, and which came closest: computed on
//! demand for `portcullis check`, the case runner and the decision log of a
//! deny, never while deciding.

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
    let path = path::normalize(&request.path).ok()?;
    let host = normalize_host(&request.host).ok()?;
    let method = &request.method;
    let unmatched = |explanation: String| Unmatched {
        method: bounded(method, UNMATCHED_METHOD_MAX),
        path: bounded(path.as_str(), UNMATCHED_PATH_MAX),
        explanation,
    };
    let selection = policy.selector.select(SelectInput {
        context: &request.context_extensions,
        destination: &request.destination,
        host: &host,
        path: &path,
    });
    let app_index = match selection {
        Selection::Found(index, _) => index,
        Selection::NotFound => {
            let context: Vec<String> = request
                .context_extensions
                .iter()
                .map(|(k, v)| format!("{k}={}", bounded(v, 64)))
                .collect();
            return Some(unmatched(format!(
                "no application selects the request (context extensions [{}], destination {:?}, host {:?}, path {})",
                context.join(", "),
                bounded(&request.destination, 128),
                bounded(&host, 128),
                bounded(path.as_str(), UNMATCHED_PATH_MAX)
            )));
        }
        Selection::Ambiguous => {
            return Some(unmatched(
                "several applications select the request equally (same kind of selector, same strength)"
                    .into(),
            ))
        }
    };
    let app = policy.applications.get(app_index)?;
    let folded;
    let path_for_routes = if app.case_insensitive {
        folded = path.to_ascii_lowercase();
        &folded
    } else {
        &path
    };
    if app.routes.find(method, path_for_routes).is_some() {
        return None;
    }
    let explanation = match app.routes.closest(method, path_for_routes) {
        Some(miss) => format!(
            "no route of application {:?} takes {} {}; closest: {}",
            app.name,
            bounded(method, UNMATCHED_METHOD_MAX),
            bounded(path.as_str(), UNMATCHED_PATH_MAX),
            miss.describe(method)
        ),
        None => format!("application {:?} has no routes", app.name),
    };
    Some(unmatched(explanation))
}
