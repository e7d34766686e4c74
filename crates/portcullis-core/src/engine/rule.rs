//! The rule that settled a decision, as data.
//!
//! Deciding records which grant, deny rule or condition settled the
//! question as a [`MatchedRule`]: names shared with the policy (`Arc<str>`)
//! and positions in the decision's own resource, so no text is formatted on
//! the way to an answer. The words are rendered at the edges (the decision
//! log, the API's `explain`, the CLI) by [`Decision::rule`].

use std::fmt;
use std::sync::Arc;

use super::{Decision, Reason};
use crate::policy::{bounded, Condition};

/// Which grant, rule or condition settled a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchedRule {
    /// A grant of `role` on `key` to `holder` holds the action; when the
    /// role has a condition, it held.
    Grant {
        role: Arc<str>,
        key: GrantKey,
        holder: GrantHolder,
        condition: Option<ConditionRef>,
    },
    /// No grant holds the action, and this one would have but for its
    /// condition (the first such grant).
    UnmetGrant {
        role: Arc<str>,
        key: GrantKey,
        holder: GrantHolder,
        condition: ConditionRef,
    },
    /// An explicit deny rule, with the reason its author gave.
    Deny {
        name: Arc<str>,
        reason: Option<Arc<str>>,
    },
    /// The route's condition does not hold.
    RouteCondition {
        route: Arc<str>,
        condition: ConditionRef,
    },
    /// A connection check: from which workload (empty: none proved) to
    /// which port.
    Connection { source: String, port: Option<u16> },
    /// Why a request no route took was refused, recorded for the log while
    /// the unauthenticated caller is told only that a token is needed.
    Unrouted(Reason),
    /// Grants kept in a database could not be read: why.
    GrantsUnavailable(Arc<str>),
}

/// One of the policy's conditions, compared by identity: two decisions
/// name the same condition when they point at the same one.
#[derive(Clone)]
pub struct ConditionRef(pub Arc<Condition>);

impl PartialEq for ConditionRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ConditionRef {}

impl fmt::Debug for ConditionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ConditionRef")
            .field(&self.0.source())
            .finish()
    }
}

/// Where the grant sits, relative to the decision's resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKey {
    /// On the resource itself.
    Resource,
    /// On the pattern made of the resource's first `n` bytes and `*`
    /// (`document:*` for `document:42` is `Prefix(9)`; `*` is `Prefix(0)`).
    Prefix(usize),
}

/// Who holds the grant, relative to the decision's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantHolder {
    /// The subject itself.
    Subject,
    /// A group the subject is in (by its token or by the policy).
    Group(Arc<str>),
    /// Every authenticated subject.
    Authenticated,
}

impl MatchedRule {
    /// Heap bytes the rule holds of its own: what it does not share with
    /// the policy.
    pub fn owned_bytes(&self) -> usize {
        match self {
            MatchedRule::Grant { holder, .. } | MatchedRule::UnmetGrant { holder, .. } => {
                match holder {
                    GrantHolder::Group(group) => group.len(),
                    GrantHolder::Subject | GrantHolder::Authenticated => 0,
                }
            }
            MatchedRule::Connection { source, .. } => source.capacity(),
            MatchedRule::GrantsUnavailable(why) => why.len(),
            MatchedRule::Deny { .. }
            | MatchedRule::RouteCondition { .. }
            | MatchedRule::Unrouted(_) => 0,
        }
    }
}

impl Decision {
    /// The rule that settled this decision, in words.
    pub fn rule(&self) -> Option<RuleText<'_>> {
        self.matched_rule.as_ref().map(|rule| RuleText {
            rule,
            resource: self.resource.as_deref().unwrap_or(""),
            subject: self.subject.as_deref().unwrap_or(""),
        })
    }

    /// [`Decision::rule`] as a string, for those who keep it.
    pub fn rule_text(&self) -> Option<String> {
        self.rule().map(|text| text.to_string())
    }
}

/// A [`MatchedRule`] with what it refers to, ready to be written.
#[derive(Debug, Clone, Copy)]
pub struct RuleText<'a> {
    rule: &'a MatchedRule,
    resource: &'a str,
    subject: &'a str,
}

/// Longest condition source shown in a rule's words.
const CONDITION_SHOWN: usize = 256;

impl RuleText<'_> {
    fn key(&self, key: GrantKey) -> KeyText<'_> {
        KeyText {
            key,
            resource: self.resource,
        }
    }

    fn holder<'h>(&'h self, holder: &'h GrantHolder) -> HolderText<'h> {
        HolderText {
            holder,
            subject: self.subject,
        }
    }
}

impl fmt::Display for RuleText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rule {
            MatchedRule::Grant {
                role,
                key,
                holder,
                condition,
            } => {
                write!(
                    f,
                    "grant of role {role:?} on {} to {}",
                    self.key(*key),
                    self.holder(holder)
                )?;
                if condition.is_some() {
                    f.write_str(" (its condition holds)")?;
                }
                Ok(())
            }
            MatchedRule::UnmetGrant {
                role,
                key,
                holder,
                condition,
            } => write!(
                f,
                "grant of role {role:?} on {} to {} under a condition that does not hold: {}",
                self.key(*key),
                self.holder(holder),
                bounded(condition.0.source(), CONDITION_SHOWN)
            ),
            MatchedRule::Deny {
                name,
                reason: Some(why),
            } => write!(f, "deny {name:?}: {why}"),
            MatchedRule::Deny { name, reason: None } => write!(f, "deny {name:?}"),
            MatchedRule::RouteCondition { route, condition } => write!(
                f,
                "condition of route {route:?} does not hold: {}",
                bounded(condition.0.source(), CONDITION_SHOWN)
            ),
            MatchedRule::Connection { source, port } => {
                let source = match source.as_str() {
                    "" => "a client without a workload identity",
                    principal => principal,
                };
                match port {
                    Some(port) => write!(f, "connection from {source} to port {port}"),
                    None => write!(f, "connection from {source} to an unknown port"),
                }
            }
            MatchedRule::Unrouted(reason) => write!(f, "{reason}"),
            MatchedRule::GrantsUnavailable(why) => f.write_str(why),
        }
    }
}

struct KeyText<'a> {
    key: GrantKey,
    resource: &'a str,
}

impl fmt::Display for KeyText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key {
            GrantKey::Resource => f.write_str(self.resource),
            GrantKey::Prefix(n) => {
                let prefix = self.resource.get(..n).unwrap_or("");
                write!(f, "{prefix}*")
            }
        }
    }
}

struct HolderText<'a> {
    holder: &'a GrantHolder,
    subject: &'a str,
}

impl fmt::Display for HolderText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.holder {
            GrantHolder::Subject => write!(f, "subject {:?}", self.subject),
            GrantHolder::Group(group) => write!(f, "group {group:?}"),
            GrantHolder::Authenticated => f.write_str("every authenticated subject"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{DenyStatus, Effect};

    fn decision(rule: MatchedRule) -> Decision {
        Decision {
            effect: Effect::Deny(DenyStatus::Forbidden),
            reason: Reason::NoGrant,
            application: None,
            route: None,
            subject: Some("alice".into()),
            resource: Some("org:1:document:42".into()),
            action: None,
            matched_rule: Some(rule),
            dry_run: false,
            valid_until: None,
            principal: None,
        }
    }

    #[test]
    fn a_grant_is_put_in_words_from_the_decision_it_settled() {
        let on = |key, holder| {
            decision(MatchedRule::Grant {
                role: "viewer".into(),
                key,
                holder,
                condition: None,
            })
            .rule_text()
        };
        assert_eq!(
            on(GrantKey::Resource, GrantHolder::Subject).as_deref(),
            Some(r#"grant of role "viewer" on org:1:document:42 to subject "alice""#)
        );
        assert_eq!(
            on(GrantKey::Prefix(6), GrantHolder::Group("staff".into())).as_deref(),
            Some(r#"grant of role "viewer" on org:1:* to group "staff""#)
        );
        assert_eq!(
            on(GrantKey::Prefix(0), GrantHolder::Authenticated).as_deref(),
            Some(r#"grant of role "viewer" on * to every authenticated subject"#)
        );
    }

    #[test]
    fn denies_connections_and_notes_are_put_in_words() {
        let text = |rule| decision(rule).rule_text();
        assert_eq!(
            text(MatchedRule::Deny {
                name: "no-archive".into(),
                reason: Some("archived".into()),
            })
            .as_deref(),
            Some(r#"deny "no-archive": archived"#)
        );
        assert_eq!(
            text(MatchedRule::Connection {
                source: String::new(),
                port: Some(5432),
            })
            .as_deref(),
            Some("connection from a client without a workload identity to port 5432")
        );
        assert_eq!(
            text(MatchedRule::Unrouted(Reason::NoRoute)).as_deref(),
            Some("no route matches the method and path")
        );
        assert_eq!(
            decision(MatchedRule::GrantsUnavailable("down".into()))
                .rule_text()
                .as_deref(),
            Some("down")
        );
    }

    #[test]
    fn a_prefix_past_the_resource_writes_no_text_of_it() {
        // Never produced by the engine; rendering must still not panic.
        let d = decision(MatchedRule::Grant {
            role: "viewer".into(),
            key: GrantKey::Prefix(999),
            holder: GrantHolder::Subject,
            condition: None,
        });
        assert_eq!(
            d.rule_text().as_deref(),
            Some(r#"grant of role "viewer" on * to subject "alice""#)
        );
    }
}
