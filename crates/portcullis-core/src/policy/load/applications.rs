//! Applications: their selectors (context extensions, destination,
//! hosts, path prefixes), their issuers, and their routes compiled into a
//! route table.

use super::*;

impl Compiler<'_> {
    pub(super) fn applications(
        &mut self,
        issuers: &Issuers,
        actions: &HashMap<&str, usize>,
        conditions: &ConditionEnv,
    ) -> (Vec<Application>, AppSelector) {
        let mut applications = Vec::new();
        let mut selector = AppSelector::default();
        let mut names: HashMap<&str, Origin> = HashMap::new();
        let mut contexts: HashMap<&BTreeMap<String, String>, Origin> = HashMap::new();
        let mut hosts: HashMap<String, Origin> = HashMap::new();
        let mut destinations: HashMap<String, Origin> = HashMap::new();
        let mut prefixes: HashMap<Vec<String>, Origin> = HashMap::new();
        for (f, file) in self.files.iter().enumerate() {
            for (i, spec) in file.doc.applications.iter().enumerate() {
                let at = |key| [Step::Key("applications"), Step::Index(i), Step::Key(key)];
                let here = (
                    f,
                    self.line(f, &[Step::Key("applications"), Step::Index(i)]),
                );
                if let Some(first) = names.insert(&spec.name, here) {
                    let first = self.origin(first);
                    self.error(
                        f,
                        &at("name"),
                        format!("application {:?} is already defined at {first}", spec.name),
                    );
                    continue;
                }
                let app = applications.len();
                let select = &spec.select;
                let trusted = !select.context_extensions.is_empty()
                    || !select.destination_principals.is_empty()
                    || !select.destination_namespaces.is_empty();
                if !trusted && select.hosts.is_empty() && select.path_prefixes.is_empty() {
                    self.error(f, &at("select"), format!("application {:?} has no selector (context_extensions, destination_principals, destination_namespaces, hosts or path_prefixes)", spec.name));
                }
                if spec.mode == crate::policy::source::Mode::DryRun && !trusted {
                    self.error(f, &at("mode"), format!("application {:?} is in dry_run but only hosts or path_prefixes select it: the client chooses those, and could choose this application to have its requests let through; select it by context_extensions or destination_* (docs/policy-reference.md)", spec.name));
                }
                for principal in &select.destination_principals {
                    if crate::policy::spiffe_namespace(principal).is_none() {
                        self.error(f, &at("select"), format!("destination principal {principal:?} is not a SPIFFE id of the form spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT"));
                    } else if let Some(first) = destinations.insert(principal.clone(), here) {
                        let first = self.origin(first);
                        self.error(f, &at("select"), format!("destination principal {principal:?} already selects the application at {first}"));
                    } else {
                        selector.by_principal.insert(principal.clone(), app);
                    }
                }
                for namespace in &select.destination_namespaces {
                    let probe = format!("spiffe://x/ns/{namespace}/sa/x");
                    if namespace.contains('/') || crate::policy::spiffe_namespace(&probe).is_none()
                    {
                        self.error(
                            f,
                            &at("select"),
                            format!("destination namespace {namespace:?} is not a namespace name"),
                        );
                    } else if let Some(first) = destinations.insert(format!("ns/{namespace}"), here)
                    {
                        let first = self.origin(first);
                        self.error(f, &at("select"), format!("destination namespace {namespace:?} already selects the application at {first}"));
                    } else {
                        selector.by_namespace.insert(namespace.clone(), app);
                    }
                }
                if !select.context_extensions.is_empty() {
                    if let Some(first) = contexts.insert(&select.context_extensions, here) {
                        let first = self.origin(first);
                        self.error(
                            f,
                            &at("select"),
                            format!(
                                "the same context_extensions select the application at {first}"
                            ),
                        );
                    }
                    selector
                        .by_context
                        .push((select.context_extensions.clone(), app));
                }
                for host in &select.hosts {
                    let lower = host.to_ascii_lowercase();
                    let valid = match lower.strip_prefix("*.") {
                        Some(rest) => {
                            !rest.is_empty()
                                && crate::policy::normalize_host(rest).as_deref() == Ok(rest)
                        }
                        None => crate::policy::normalize_host(&lower).as_deref() == Ok(&lower),
                    };
                    if !valid {
                        self.error(f, &at("select"), format!("host {host:?} is not a host name or *.suffix (no port, no trailing dot)"));
                        continue;
                    }
                    if let Some(first) = hosts.insert(lower.clone(), here) {
                        let first = self.origin(first);
                        self.error(
                            f,
                            &at("select"),
                            format!("host {host:?} already selects the application at {first}"),
                        );
                        continue;
                    }
                    match lower.strip_prefix('*') {
                        Some(suffix) => selector.wildcard_hosts.push((suffix.to_owned(), app)),
                        None => {
                            selector.exact_hosts.insert(lower, app);
                        }
                    }
                }
                for prefix in &select.path_prefixes {
                    let segments: Option<Vec<String>> = path::normalize(prefix)
                        .ok()
                        .filter(|p| p.as_str() == prefix)
                        .map(|p| p.segments().map(str::to_owned).collect());
                    let Some(segments) = segments else {
                        self.error(
                            f,
                            &at("select"),
                            format!("path prefix {prefix:?} is not a normalized path"),
                        );
                        continue;
                    };
                    if let Some(first) = prefixes.insert(segments.clone(), here) {
                        let first = self.origin(first);
                        self.error(
                            f,
                            &at("select"),
                            format!(
                                "path prefix {prefix:?} already selects the application at {first}"
                            ),
                        );
                        continue;
                    }
                    let segments = if spec.case_insensitive {
                        segments.iter().map(|s| s.to_ascii_lowercase()).collect()
                    } else {
                        segments
                    };
                    selector
                        .prefixes
                        .push((segments, app, spec.case_insensitive));
                }
                let allowed = self.application_issuers(f, i, spec, issuers);
                let routes = self.routes(f, i, spec, actions, conditions);
                applications.push(Application {
                    name: Arc::from(spec.name.as_str()),
                    issuers: allowed,
                    routes,
                    dry_run: spec.mode == crate::policy::source::Mode::DryRun,
                    case_insensitive: spec.case_insensitive,
                });
            }
        }
        selector
            .by_context
            .sort_by_key(|(wanted, _)| std::cmp::Reverse(wanted.len()));
        selector
            .wildcard_hosts
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        selector
            .prefixes
            .sort_by_key(|(segments, _, _)| std::cmp::Reverse(segments.len()));
        (applications, selector)
    }

    /// True when some file defines an issuer named `name`, whether or not
    /// it compiled.
    fn declares_issuer(&self, name: &str) -> bool {
        self.files
            .iter()
            .flat_map(|f| &f.doc.issuers)
            .any(|spec| spec.name == name)
    }

    fn application_issuers(
        &mut self,
        f: usize,
        i: usize,
        spec: &ApplicationSpec,
        issuers: &Issuers,
    ) -> Vec<usize> {
        let Some(names) = &spec.issuers else {
            if issuers.len() > 1 {
                self.error(
                    f,
                    &[Step::Key("applications"), Step::Index(i), Step::Key("name")],
                    format!(
                        "application {:?} must list its issuers: the policy trusts {} issuers",
                        spec.name,
                        issuers.len()
                    ),
                );
            }
            return (0..issuers.len()).collect();
        };
        let mut allowed = Vec::new();
        for name in names {
            match issuers.position(name) {
                Some(index) => allowed.push(index),
                // Declared, but its definition failed: that error is
                // reported where it is; a second one here would only
                // send the author looking for a missing definition.
                None if self.declares_issuer(name) => {}
                None => self.error(
                    f,
                    &[
                        Step::Key("applications"),
                        Step::Index(i),
                        Step::Key("issuers"),
                    ],
                    format!("application {:?} names unknown issuer {name:?}", spec.name),
                ),
            }
        }
        allowed
    }

    fn routes(
        &mut self,
        f: usize,
        i: usize,
        spec: &ApplicationSpec,
        actions: &HashMap<&str, usize>,
        conditions: &ConditionEnv,
    ) -> RouteTable {
        let mut routes: Vec<Route> = Vec::new();
        let mut names: HashSet<&str> = HashSet::new();
        let mut shapes: HashMap<String, Vec<(String, Vec<String>)>> = HashMap::new();
        for (r, route) in spec.routes.iter().enumerate() {
            let at = |key: &'static str| {
                [
                    Step::Key("applications"),
                    Step::Index(i),
                    Step::Key("routes"),
                    Step::Index(r),
                    Step::Key(key),
                ]
            };
            let mut ok = true;
            if route.name.is_empty() || !names.insert(&route.name) {
                self.error(
                    f,
                    &at("name"),
                    format!(
                        "route name {:?} is empty or used twice in application {:?}",
                        route.name, spec.name
                    ),
                );
                ok = false;
            }
            if route.methods.is_empty() {
                self.error(
                    f,
                    &at("methods"),
                    format!("route {:?} lists no method", route.name),
                );
                ok = false;
            }
            for method in &route.methods {
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    self.error(
                        f,
                        &at("methods"),
                        format!("method {method:?} must be an upper-case HTTP method such as GET"),
                    );
                    ok = false;
                }
            }
            let template = match PathTemplate::parse(&route.path) {
                Ok(t) if spec.case_insensitive => Some(t.with_lowercase_literals()),
                Ok(t) => Some(t),
                Err(e) => {
                    self.error(f, &at("path"), format!("route {:?}: {e}", route.name));
                    None
                }
            };
            let action = match &route.action {
                Some(name) => actions.get(name.as_str()).map(|a| (name.clone(), *a)),
                None => None,
            };
            let needs_target = route.access == Access::Granted;
            if needs_target && (route.resource.is_none() || route.action.is_none()) {
                self.error(f, &at("access"), format!("route {:?} needs a resource and an action (or access: public / authenticated)", route.name));
                ok = false;
            }
            if route.action.as_deref() == Some("") {
                self.error(f, &at("action"), "action is empty");
                ok = false;
            }
            let Some(template) = template else { continue };
            let resource = match &route.resource {
                Some(text) => match ResourceTemplate::parse(text, &template) {
                    Ok(r) if !text.is_empty() => Some(r),
                    Ok(_) => {
                        self.error(f, &at("resource"), "resource is empty");
                        ok = false;
                        None
                    }
                    Err(e) => {
                        self.error(f, &at("resource"), format!("route {:?}: {e}", route.name));
                        ok = false;
                        None
                    }
                },
                None => None,
            };
            let shape = template.shape();
            let overlapping = shapes.get(&shape).and_then(|others| {
                others
                    .iter()
                    .find(|(_, m)| m.iter().any(|x| route.methods.contains(x)))
            });
            if let Some((other, _)) = overlapping {
                self.error(
                    f,
                    &at("path"),
                    format!(
                        "route {:?} matches the same requests as route {other:?} ({shape})",
                        route.name
                    ),
                );
                ok = false;
            }
            shapes
                .entry(shape)
                .or_default()
                .push((route.name.clone(), route.methods.clone()));
            let mut headers = Vec::new();
            for name in &route.headers {
                let lower = name.to_ascii_lowercase();
                let token = !lower.is_empty()
                    && lower
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !token {
                    self.error(f, &at("headers"), format!("route {:?}: header {name:?} is not a header name (letters, digits, - and _)", route.name));
                    ok = false;
                } else if matches!(
                    lower.as_str(),
                    "authorization" | "cookie" | "proxy-authorization"
                ) {
                    self.error(f, &at("headers"), format!("route {:?}: header {name:?} carries credentials; conditions read the caller through subject", route.name));
                    ok = false;
                } else if !headers.contains(&lower) {
                    headers.push(lower);
                }
            }
            headers.sort();
            let condition = match &route.condition {
                Some(_) if route.access == Access::Public => {
                    self.error(f, &at("condition"), format!("route {:?} is public: it reads no token, so it cannot have a condition", route.name));
                    ok = false;
                    None
                }
                Some(text) => match Condition::compile(conditions, text) {
                    Ok(condition) => {
                        for header in condition.headers() {
                            if !headers.contains(&header.to_ascii_lowercase())
                                || header.bytes().any(|b| b.is_ascii_uppercase())
                            {
                                self.error(f, &at("condition"), format!("route {:?}: the condition reads header {header:?}, which the route's headers: do not name (in lower case)", route.name));
                                ok = false;
                            }
                        }
                        Some(condition)
                    }
                    Err(e) => {
                        self.error(f, &at("condition"), format!("route {:?}: {e}", route.name));
                        ok = false;
                        None
                    }
                },
                None => None,
            };
            if ok {
                routes.push(Route {
                    name: Arc::from(route.name.as_str()),
                    methods: route.methods.clone(),
                    template,
                    access: route.access,
                    resource,
                    action: action.map(|(name, index)| (Arc::from(name), index)),
                    condition: condition.map(Arc::new),
                    headers,
                });
            }
        }
        RouteTable::new(routes)
    }
}
