//! Actions (named by routes and roles), roles with their inherited
//! actions folded in, and groups with their members.

use super::*;

impl Compiler<'_> {
    /// Every action a route or a role names, in a stable order. A role
    /// defines the actions it lists: evaluation-style checks (a case's
    /// `resource`/`action`) ask about actions no route maps to. Deny rules
    /// define none, so a misspelled action there is still an error.
    pub(super) fn actions(&self) -> Vec<String> {
        let routes = self
            .files
            .iter()
            .flat_map(|f| &f.doc.applications)
            .flat_map(|a| &a.routes)
            .filter_map(|r| r.action.as_deref());
        let roles = self
            .files
            .iter()
            .flat_map(|f| f.doc.roles.values())
            .flat_map(|r| r.actions.iter().map(String::as_str));
        let set: BTreeSet<&str> = routes.chain(roles).filter(|a| !a.is_empty()).collect();
        set.into_iter().map(str::to_owned).collect()
    }

    pub(super) fn roles(&mut self, actions: &HashMap<&str, usize>) -> (Vec<Role>, RoleIds) {
        // Gather definitions first: a role may include one defined in another file.
        let mut specs: BTreeMap<&str, (usize, &crate::policy::source::RoleSpec)> = BTreeMap::new();
        for (f, file) in self.files.iter().enumerate() {
            for (name, spec) in &file.doc.roles {
                if let Some((first, _)) = specs.get(name.as_str()) {
                    let first = self.origin((
                        *first,
                        self.line(*first, &[Step::Key("roles"), Step::Key(name)]),
                    ));
                    self.error(
                        f,
                        &[Step::Key("roles"), Step::Key(name)],
                        format!("role {name:?} is already defined at {first}"),
                    );
                    continue;
                }
                specs.insert(name, (f, spec));
            }
        }
        let index: RoleIds = specs
            .keys()
            .enumerate()
            .map(|(i, name)| (name.to_string(), i as RoleId))
            .collect();
        let mut roles = Vec::new();
        for (name, (f, spec)) in &specs {
            let mut set = ActionSet::default();
            let mut ok = true;
            for action in &spec.actions {
                match actions.get(action.as_str()) {
                    Some(a) => set.insert(*a),
                    None => {
                        self.error(
                            *f,
                            &[Step::Key("roles"), Step::Key(name), Step::Key("actions")],
                            format!("role {name:?} lists an empty action"),
                        );
                        ok = false;
                    }
                }
            }
            // Fold in included roles, depth first, refusing cycles.
            let mut stack: Vec<(&str, Vec<&str>)> = spec
                .includes
                .iter()
                .map(|i| (i.as_str(), vec![*name]))
                .collect();
            let mut seen = HashSet::new();
            while let Some((included, chain)) = stack.pop() {
                if chain.contains(&included) {
                    let cycle = chain.join(" -> ");
                    self.error(
                        *f,
                        &[Step::Key("roles"), Step::Key(name), Step::Key("includes")],
                        format!("role {name:?} includes itself ({cycle} -> {included})"),
                    );
                    ok = false;
                    break;
                }
                let Some((_, inner)) = specs.get(included) else {
                    self.error(
                        *f,
                        &[Step::Key("roles"), Step::Key(name), Step::Key("includes")],
                        format!("role {name:?} includes unknown role {included:?}"),
                    );
                    ok = false;
                    continue;
                };
                if !seen.insert(included) {
                    continue;
                }
                for action in &inner.actions {
                    if let Some(a) = actions.get(action.as_str()) {
                        set.insert(*a);
                    }
                }
                let mut next = chain.clone();
                next.push(included);
                stack.extend(inner.includes.iter().map(|i| (i.as_str(), next.clone())));
            }
            if ok && set == ActionSet::default() {
                self.error(
                    *f,
                    &[Step::Key("roles"), Step::Key(name)],
                    format!("role {name:?} grants no action"),
                );
            }
            roles.push(Role {
                name: Arc::from(*name),
                actions: set,
                condition: None,
            });
        }
        (roles, index)
    }

    pub(super) fn groups(&mut self) -> (HashMap<String, Vec<String>>, GroupNames) {
        let mut member_of: HashMap<String, Vec<String>> = HashMap::new();
        let mut seen: HashMap<&str, Origin> = HashMap::new();
        for (f, file) in self.files.iter().enumerate() {
            for (name, spec) in &file.doc.groups {
                let at = [Step::Key("groups"), Step::Key(name.as_str())];
                if let Some(first) = seen.insert(name, (f, self.line(f, &at))) {
                    let first = self.origin(first);
                    self.error(
                        f,
                        &at,
                        format!("group {name:?} is already defined at {first}"),
                    );
                    continue;
                }
                for member in &spec.members {
                    if member.is_empty() {
                        self.error(f, &at, format!("group {name:?} has an empty member"));
                    }
                    let groups = member_of.entry(member.clone()).or_default();
                    if !groups.contains(name) {
                        groups.push(name.clone());
                    }
                }
            }
        }
        let names = seen.into_keys().map(str::to_owned).collect();
        (member_of, names)
    }
}
