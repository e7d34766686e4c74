//! Grants (YAML and `*.grants` lines) and explicit denies, resolved
//! against the roles, groups and actions.

use super::*;

impl Compiler<'_> {
    fn holder<'s>(
        &mut self,
        f: usize,
        at: &[Step<'_>],
        subject: &'s Option<String>,
        group: &'s Option<String>,
        groups: &GroupNames,
        everyone_allowed: bool,
    ) -> Result<Option<Holder<'s>>, ()> {
        match (subject, group) {
            (Some(_), Some(_)) => {
                self.error(f, at, "name either a subject or a group, not both");
                Err(())
            }
            (Some(s), None) if s.is_empty() => {
                self.error(f, at, "subject is empty");
                Err(())
            }
            (Some(s), None) => Ok(Some(Holder::Subject(s))),
            (None, Some(g)) if !groups.contains(g) => {
                self.error(
                    f,
                    at,
                    format!("unknown group {g:?} (declare it under groups:)"),
                );
                Err(())
            }
            (None, Some(g)) => Ok(Some(Holder::Group(g))),
            (None, None) if everyone_allowed => Ok(None),
            (None, None) => {
                self.error(
                    f,
                    at,
                    "a grant names a subject or a group (or says authenticated: true)",
                );
                Err(())
            }
        }
    }

    pub(super) fn grants(
        &mut self,
        roles: &mut Vec<Role>,
        role_ids: &RoleIds,
        groups: &GroupNames,
        conditions: &ConditionEnv,
        visible_headers: &[String],
    ) -> GrantIndex {
        let mut index = GrantIndex::builder();
        // One role of its own per (role, condition) written, however many
        // grants repeat it.
        let mut conditional: HashMap<(RoleId, String), RoleId> = HashMap::new();
        for (f, file) in self.files.iter().enumerate() {
            for (g, grant) in file.doc.grants.iter().enumerate() {
                let at = [Step::Key("grants"), Step::Index(g)];
                let field = |key| [Step::Key("grants"), Step::Index(g), Step::Key(key)];
                let holder = if grant.authenticated {
                    if grant.subject.is_some() || grant.group.is_some() {
                        self.error(
                            f,
                            &at,
                            "authenticated: true grants every authenticated subject; name no subject or group with it",
                        );
                        continue;
                    }
                    Some(Holder::Authenticated)
                } else if grant.subject.as_deref() == Some("*") {
                    self.error(
                        f,
                        &field("subject"),
                        "subject \"*\" is not a pattern; to grant every authenticated subject write authenticated: true",
                    );
                    continue;
                } else {
                    let Ok(holder) =
                        self.holder(f, &at, &grant.subject, &grant.group, groups, false)
                    else {
                        continue;
                    };
                    holder
                };
                let Some(role) = role_ids.get(&grant.role) else {
                    self.error(
                        f,
                        &field("role"),
                        format!("unknown role {:?} in grant", grant.role),
                    );
                    continue;
                };
                let key = match ResourceKey::parse(&grant.resource) {
                    Ok(key) => key,
                    Err(e) => {
                        self.error(
                            f,
                            &field("resource"),
                            format!("resource {:?}: {e}", grant.resource),
                        );
                        continue;
                    }
                };
                let role = match &grant.condition {
                    None => *role,
                    Some(text) => {
                        if let Some(id) = conditional.get(&(*role, text.clone())) {
                            *id
                        } else {
                            let condition = match Condition::compile(conditions, text) {
                                Ok(condition) => condition,
                                Err(e) => {
                                    self.error(
                                        f,
                                        &field("condition"),
                                        format!("grant condition: {e}"),
                                    );
                                    continue;
                                }
                            };
                            let unseen = condition
                                .headers()
                                .iter()
                                .find(|h| !visible_headers.contains(h));
                            if let Some(header) = unseen {
                                self.error(f, &field("condition"), format!("grant condition reads header {header:?}, which no route's headers: name (in lower case)"));
                                continue;
                            }
                            let Some(base) = roles.get(*role as usize) else {
                                continue;
                            };
                            let derived = Role {
                                name: base.name.clone(),
                                actions: base.actions.clone(),
                                condition: Some(Arc::new(condition)),
                            };
                            let id = roles.len() as RoleId;
                            roles.push(derived);
                            conditional.insert((*role, text.clone()), id);
                            id
                        }
                    }
                };
                if let Some(holder) = holder {
                    index.insert(holder, key, role);
                }
            }
        }
        for file in self.grant_files {
            self.grant_lines(file, role_ids, groups, &mut index);
        }
        index.build()
    }

    /// Reads a `*.grants` file: one grant a line, `subject:NAME ROLE RESOURCE`
    /// or `group:NAME ROLE RESOURCE`, blank lines and `#` comment lines
    /// allowed. Made for grants in bulk: no YAML tree is built.
    fn grant_lines(
        &mut self,
        file: &SourceFile,
        roles: &RoleIds,
        groups: &GroupNames,
        index: &mut GrantIndexBuilder,
    ) {
        const MAX_REPORTED: usize = 100;
        let mut failed = 0usize;
        for (n, line) in file.text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_ascii_whitespace();
            let parsed = match (fields.next(), fields.next(), fields.next(), fields.next()) {
                (Some(holder), Some(role), Some(resource), None) => {
                    grant_line(holder, role, resource, roles, groups)
                }
                _ => Err(
                    "expected three fields: a holder (subject:NAME, group:NAME or authenticated), a role, a resource".into(),
                ),
            };
            match parsed {
                Ok((holder, key, role)) => index.insert(holder, key, role),
                Err(message) => {
                    failed += 1;
                    if failed <= MAX_REPORTED {
                        self.errors.push(Diagnostic {
                            file: file.path.clone(),
                            line: Some(n + 1),
                            message,
                        });
                    }
                }
            }
        }
        if failed > MAX_REPORTED {
            self.errors.push(Diagnostic {
                file: file.path.clone(),
                line: None,
                message: format!("{} more lines with errors not shown", failed - MAX_REPORTED),
            });
        }
    }

    pub(super) fn denies(
        &mut self,
        actions: &HashMap<&str, usize>,
        groups: &GroupNames,
    ) -> DenyIndex {
        let mut index = DenyIndex::default();
        let mut names: HashMap<&str, Origin> = HashMap::new();
        for (f, file) in self.files.iter().enumerate() {
            for (d, deny) in file.doc.denies.iter().enumerate() {
                let at = [Step::Key("denies"), Step::Index(d)];
                if let Some(first) = names.insert(&deny.name, (f, self.line(f, &at))) {
                    let first = self.origin(first);
                    self.error(
                        f,
                        &at,
                        format!("deny rule {:?} is already defined at {first}", deny.name),
                    );
                    continue;
                }
                let Ok(holder) = self.holder(f, &at, &deny.subject, &deny.group, groups, true)
                else {
                    continue;
                };
                let resource = match ResourceKey::parse(deny.resource.as_deref().unwrap_or("*")) {
                    Ok(ResourceKey::Exact(r)) => OwnedResourceKey::Exact(r.to_owned()),
                    Ok(ResourceKey::Prefix(p)) => OwnedResourceKey::Prefix(p.to_owned()),
                    Err(e) => {
                        self.error(
                            f,
                            &[Step::Key("denies"), Step::Index(d), Step::Key("resource")],
                            format!("deny rule {:?}: {e}", deny.name),
                        );
                        continue;
                    }
                };
                let mut denied = None;
                if !deny.actions.is_empty() {
                    let mut set = ActionSet::default();
                    for action in &deny.actions {
                        match actions.get(action.as_str()) {
                            Some(a) => set.insert(*a),
                            None => self.error(
                                f,
                                &[Step::Key("denies"), Step::Index(d), Step::Key("actions")],
                                format!(
                                    "unknown action {action:?} in deny rule {:?} (no route or role names it)",
                                    deny.name
                                ),
                            ),
                        }
                    }
                    denied = Some(set);
                }
                let rule = DenyRule {
                    name: deny.name.as_str().into(),
                    resource,
                    actions: denied,
                    reason: deny.reason.as_deref().map(Into::into),
                };
                match holder {
                    Some(Holder::Subject(s)) => {
                        index.subjects.entry(s.to_owned()).or_default().push(rule)
                    }
                    Some(Holder::Group(g)) => {
                        index.groups.entry(g.to_owned()).or_default().push(rule)
                    }
                    Some(Holder::Authenticated) | None => index.everyone.push(rule),
                }
            }
        }
        // By name, so the rule an explanation names does not depend on file order.
        let by_name = |rules: &mut Vec<DenyRule>| rules.sort_by(|a, b| a.name.cmp(&b.name));
        index.subjects.values_mut().for_each(by_name);
        index.groups.values_mut().for_each(by_name);
        by_name(&mut index.everyone);
        index
    }
}

/// One line of a `*.grants` file, resolved.
fn grant_line<'l>(
    holder: &'l str,
    role: &str,
    resource: &'l str,
    roles: &RoleIds,
    groups: &GroupNames,
) -> Result<(Holder<'l>, ResourceKey<'l>, RoleId), String> {
    let holder = match (
        holder.strip_prefix("subject:"),
        holder.strip_prefix("group:"),
    ) {
        _ if holder == "authenticated" => Holder::Authenticated,
        (Some("*"), _) => return Err(
            "subject:* is not a pattern; to grant every authenticated subject write authenticated"
                .into(),
        ),
        (Some(subject), _) if !subject.is_empty() => Holder::Subject(subject),
        (_, Some(group)) if groups.contains(group) => Holder::Group(group),
        (_, Some(group)) => {
            return Err(format!(
                "unknown group {group:?} (declare it under groups:)"
            ))
        }
        _ => {
            return Err(format!(
                "holder {holder:?} must be subject:NAME, group:NAME or authenticated"
            ))
        }
    };
    let role = *roles
        .get(role)
        .ok_or_else(|| format!("unknown role {role:?} in grant"))?;
    let key = ResourceKey::parse(resource).map_err(|e| format!("resource {resource:?}: {e}"))?;
    Ok((holder, key, role))
}
