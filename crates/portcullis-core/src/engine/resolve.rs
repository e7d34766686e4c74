//! Route resolution, written once for deciding and for explaining: the path
//! normalized, the Host checked, the application selected (selectors the
//! client cannot write before those it can), the path folded for a
//! case-insensitive application, the route matched.

use super::*;
use crate::path::NormalPath;
use crate::policy::{Application, Route, SelectedBy};

/// Where a request lands.
pub(super) enum Resolved<'a> {
    BadPath(PathError),
    BadHost,
    /// No application selects the request, or several do equally
    /// (`reason`: [`Reason::NoApplication`] or
    /// [`Reason::AmbiguousApplication`]).
    NoApplication {
        reason: Reason,
        path: &'a NormalPath,
        host: &'a str,
    },
    /// The selector named an application the policy lacks: a fault.
    Internal,
    /// The application takes no route for the method and path.
    NoRoute {
        app: &'a Application,
        selected_by: SelectedBy,
        path: &'a NormalPath,
        /// The path routes are matched against (folded when the
        /// application is case-insensitive).
        routes_path: &'a NormalPath,
    },
    Route {
        app: &'a Application,
        selected_by: SelectedBy,
        route: &'a Route,
        /// The captured values, in the template's order.
        captures: Vec<&'a str>,
    },
}

/// Resolves `request` against `policy` and hands where it lands to `then`:
/// the normalized (and folded) path the answer borrows lives only for the
/// call.
pub(super) fn resolve<R>(
    policy: &PolicySet,
    request: &RequestAttrs,
    then: impl FnOnce(Resolved<'_>) -> R,
) -> R {
    let path = match path::normalize(&request.path) {
        Ok(path) => path,
        Err(e) => return then(Resolved::BadPath(e)),
    };
    let Ok(host) = normalize_host(&request.host) else {
        return then(Resolved::BadHost);
    };
    let selection = policy.selector.select(SelectInput {
        context: &request.context_extensions,
        destination: &request.destination,
        host: &host,
        path: &path,
    });
    let (index, selected_by) = match selection {
        Selection::Found(index, by) => (index, by),
        Selection::NotFound | Selection::Ambiguous => {
            let reason = if selection == Selection::NotFound {
                Reason::NoApplication
            } else {
                Reason::AmbiguousApplication
            };
            return then(Resolved::NoApplication {
                reason,
                path: &path,
                host: &host,
            });
        }
    };
    let Some(app) = policy.applications.get(index) else {
        return then(Resolved::Internal);
    };
    let folded;
    let routes_path = if app.case_insensitive {
        folded = path.to_ascii_lowercase();
        &folded
    } else {
        &path
    };
    match app.routes.find(&request.method, routes_path) {
        Some((route, captures)) => then(Resolved::Route {
            app,
            selected_by,
            route,
            captures,
        }),
        None => then(Resolved::NoRoute {
            app,
            selected_by,
            path: &path,
            routes_path,
        }),
    }
}
