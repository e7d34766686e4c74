//! Where each named part of the policy was written, for messages about the
//! compiled policy that must point at a line (`validate`'s lint).

use super::*;

/// A file and line.
pub type Place = (PathBuf, usize);

/// Where routes, deny rules, YAML grants and roles were written.
#[derive(Debug, Default)]
pub struct Origins {
    /// By (application, route) name.
    pub routes: HashMap<(String, String), Place>,
    /// By application name.
    pub applications: HashMap<String, Place>,
    /// By deny rule name.
    pub denies: HashMap<String, Place>,
    /// Each YAML grant, in file order (`*.grants` lines are not listed:
    /// there may be millions).
    pub grants: Vec<GrantOrigin>,
    /// By role name.
    pub roles: HashMap<String, Place>,
}

/// A YAML grant as written.
#[derive(Debug, Clone)]
pub struct GrantOrigin {
    /// The subject it names, if it names one (not a group).
    pub subject: Option<String>,
    pub resource: String,
    pub role: String,
    pub place: Place,
}

impl Compiler<'_> {
    pub(super) fn origins(&self) -> Origins {
        let mut origins = Origins::default();
        for (f, file) in self.files.iter().enumerate() {
            let place = |at: &[Step<'_>]| (file.path.to_path_buf(), self.line(f, at));
            for (a, app) in file.doc.applications.iter().enumerate() {
                let at = [Step::Key("applications"), Step::Index(a)];
                origins.applications.insert(app.name.clone(), place(&at));
                for (r, route) in app.routes.iter().enumerate() {
                    let at = [
                        Step::Key("applications"),
                        Step::Index(a),
                        Step::Key("routes"),
                        Step::Index(r),
                    ];
                    origins
                        .routes
                        .insert((app.name.clone(), route.name.clone()), place(&at));
                }
            }
            for (d, deny) in file.doc.denies.iter().enumerate() {
                let at = [Step::Key("denies"), Step::Index(d)];
                origins.denies.insert(deny.name.clone(), place(&at));
            }
            for (g, grant) in file.doc.grants.iter().enumerate() {
                let at = [Step::Key("grants"), Step::Index(g)];
                origins.grants.push(GrantOrigin {
                    subject: grant.subject.clone(),
                    resource: grant.resource.clone(),
                    role: grant.role.clone(),
                    place: place(&at),
                });
            }
            for name in file.doc.roles.keys() {
                let at = [Step::Key("roles"), Step::Key(name)];
                origins.roles.insert(name.clone(), place(&at));
            }
        }
        origins
    }
}
