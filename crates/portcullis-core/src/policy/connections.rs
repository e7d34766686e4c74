//! Which TCP connections are allowed: the compiled `connections:` rules.
//!
//! A connection check is what Envoy's network ext_authz filter sends for a
//! TCP connection: no method, path or token, only the two peers. The rules
//! name what an operator allowed on purpose (a database port, from one
//! namespace); every other connection is denied, so HTTP that a client
//! disguises as TCP to land on a TCP filter chain is closed unless its port
//! was allowed as TCP.

use super::spiffe_namespace;

/// What a connection check knows: each field is empty (or `None`) when
/// Envoy did not report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionPeers<'a> {
    /// The client workload's SPIFFE id (its certificate's URI SAN; mTLS only).
    pub source_principal: &'a str,
    /// The destination workload's SPIFFE id (mTLS only).
    pub destination_principal: &'a str,
    /// The destination port: the original destination under Istio.
    pub destination_port: Option<u16>,
}

/// One compiled rule; a field left empty matches anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRule {
    pub name: std::sync::Arc<str>,
    /// Never empty: a rule always names its ports.
    pub ports: Vec<u16>,
    pub destination_principals: Vec<String>,
    pub destination_namespaces: Vec<String>,
    pub source_principals: Vec<String>,
    pub source_namespaces: Vec<String>,
}

impl ConnectionRule {
    /// Whether every field the rule sets matches the connection. A
    /// connection without a port or without principals matches no rule
    /// that needs them.
    pub fn matches(&self, peers: &ConnectionPeers<'_>) -> bool {
        let listed = |values: &[String], value: Option<&str>| {
            values.is_empty() || value.is_some_and(|v| values.iter().any(|w| w == v))
        };
        peers
            .destination_port
            .is_some_and(|port| self.ports.contains(&port))
            && listed(
                &self.destination_principals,
                non_empty(peers.destination_principal),
            )
            && listed(
                &self.destination_namespaces,
                spiffe_namespace(peers.destination_principal),
            )
            && listed(&self.source_principals, non_empty(peers.source_principal))
            && listed(
                &self.source_namespaces,
                spiffe_namespace(peers.source_principal),
            )
    }
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// Every rule, in the order the files list them; the first that matches
/// allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionRules(pub Vec<ConnectionRule>);

impl ConnectionRules {
    /// The rule that allows the connection, if any.
    pub fn allowing(&self, peers: &ConnectionPeers<'_>) -> Option<&ConnectionRule> {
        self.0.iter().find(|rule| rule.matches(peers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> ConnectionRule {
        ConnectionRule {
            name: "orders-postgres".into(),
            ports: vec![5432],
            destination_principals: vec![],
            destination_namespaces: vec!["orders".into()],
            source_principals: vec![],
            source_namespaces: vec!["billing".into()],
        }
    }

    const BILLING: &str = "spiffe://cluster.local/ns/billing/sa/billing";
    const ORDERS_DB: &str = "spiffe://cluster.local/ns/orders/sa/postgres";

    #[test]
    fn every_field_a_rule_sets_must_match() {
        let rules = ConnectionRules(vec![rule()]);
        let peers = ConnectionPeers {
            source_principal: BILLING,
            destination_principal: ORDERS_DB,
            destination_port: Some(5432),
        };
        assert_eq!(
            rules.allowing(&peers).map(|r| &*r.name),
            Some("orders-postgres")
        );
        let other_port = ConnectionPeers {
            destination_port: Some(8080),
            ..peers
        };
        assert!(rules.allowing(&other_port).is_none());
        let other_source = ConnectionPeers {
            source_principal: "spiffe://cluster.local/ns/web/sa/web",
            ..peers
        };
        assert!(rules.allowing(&other_source).is_none());
        // Plaintext (PERMISSIVE): no principals, so no namespace to match.
        let plaintext = ConnectionPeers {
            source_principal: "",
            destination_principal: "",
            destination_port: Some(5432),
        };
        assert!(rules.allowing(&plaintext).is_none());
        let no_port = ConnectionPeers {
            destination_port: None,
            ..peers
        };
        assert!(rules.allowing(&no_port).is_none());
    }

    #[test]
    fn a_rule_of_ports_alone_admits_plaintext_on_those_ports() {
        let rules = ConnectionRules(vec![ConnectionRule {
            destination_namespaces: vec![],
            source_namespaces: vec![],
            ..rule()
        }]);
        let plaintext = ConnectionPeers {
            destination_port: Some(5432),
            ..ConnectionPeers::default()
        };
        assert!(rules.allowing(&plaintext).is_some());
        assert!(ConnectionRules::default().allowing(&plaintext).is_none());
    }
}
