//! The `connections:` rules: every file may list some; names are unique
//! across the directory, each rule names its ports, and principals and
//! namespaces are checked as the application selectors check theirs.

use super::*;
use crate::policy::connections::{ConnectionRule, ConnectionRules};
use crate::policy::source::ConnectionRuleSpec;

impl Compiler<'_> {
    pub(super) fn connections(&mut self) -> ConnectionRules {
        let mut rules = Vec::new();
        let mut names: HashMap<String, Origin> = HashMap::new();
        for (f, file) in self.files.iter().enumerate() {
            for (i, spec) in file.doc.connections.0.iter().enumerate() {
                let at = [Step::Key("connections"), Step::Index(i)];
                let here = (f, self.line(f, &at));
                let name = spec.name.clone();
                let checked = self.connection_rule(spec);
                if let Some(first) = names.insert(name.clone(), here) {
                    let first = self.origin(first);
                    self.error(
                        f,
                        &at,
                        format!("connection rule {name:?} is already defined at {first}"),
                    );
                    continue;
                }
                match checked {
                    Ok(rule) => rules.push(rule),
                    Err(problems) => {
                        for (key, message) in problems {
                            let at = [Step::Key("connections"), Step::Index(i), Step::Key(key)];
                            self.error(f, &at, format!("connection rule {name:?}: {message}"));
                        }
                    }
                }
            }
        }
        ConnectionRules(rules)
    }

    /// The rule, or each problem with the key it is under.
    fn connection_rule(
        &self,
        spec: &ConnectionRuleSpec,
    ) -> Result<ConnectionRule, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        if !token::is_printable_name(&spec.name, 128) {
            problems.push(("name", "the name must be non-empty printable text".into()));
        }
        if spec.ports.is_empty() {
            problems.push((
                "ports",
                "ports must list at least one destination port: a rule for every port would let HTTP through as TCP".into(),
            ));
        }
        if spec.ports.contains(&0) {
            problems.push(("ports", "0 is not a port".into()));
        }
        for (key, principals) in [
            ("destination_principals", &spec.destination_principals),
            ("source_principals", &spec.source_principals),
        ] {
            for principal in principals {
                if crate::policy::spiffe_namespace(principal).is_none() {
                    problems.push((key, format!("{principal:?} is not a SPIFFE id of the form spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT")));
                }
            }
        }
        for (key, namespaces) in [
            ("destination_namespaces", &spec.destination_namespaces),
            ("source_namespaces", &spec.source_namespaces),
        ] {
            for namespace in namespaces {
                let probe = format!("spiffe://x/ns/{namespace}/sa/x");
                if namespace.contains('/') || crate::policy::spiffe_namespace(&probe).is_none() {
                    problems.push((key, format!("{namespace:?} is not a namespace name")));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut ports = spec.ports.clone();
        ports.sort_unstable();
        ports.dedup();
        Ok(ConnectionRule {
            name: spec.name.as_str().into(),
            ports,
            destination_principals: spec.destination_principals.clone(),
            destination_namespaces: spec.destination_namespaces.clone(),
            source_principals: spec.source_principals.clone(),
            source_namespaces: spec.source_namespaces.clone(),
        })
    }
}
