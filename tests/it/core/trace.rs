//! What a decision tried (`engine::trace`, the console's "rules tried"),
//! over the bundled policy and a conditional grant: the deny rules of the
//! principal, each grant lookup in the engine's order with the roles it
//! found, each condition's value, and the one that decided. The lookups
//! come from deciding for real through a `Recording` grants source.

use std::sync::Arc;

use portcullis::engine::{self, Attributes, Decision, Recording, ResourceAction, Tried};
use portcullis::policy::{load_policies, PolicySet};
use portcullis::token::Principal;
use serde_json::json;

use crate::support::copy_policies;

fn policy() -> (tempfile::TempDir, PolicySet) {
    let dir = copy_policies(|_, text| text);
    std::fs::write(
        dir.path().join("conditional.yaml"),
        "grants:\n  - subject: dana\n    role: editor\n    resource: document:9\n    \
         condition: resource.properties.owner == subject.id\n",
    )
    .unwrap();
    let policy = load_policies(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    (dir, policy)
}

fn who(name: &str, groups: &[&str]) -> Principal {
    let mut principal = Principal::named("test", name.to_owned());
    principal.groups = groups.iter().map(|g| g.to_string()).collect();
    principal
}

/// Decides `action` on `resource` for `principal` and traces it.
fn traced(
    policy: &PolicySet,
    principal: &Principal,
    resource: &str,
    action: &str,
    owner: Option<&str>,
) -> (Decision, Vec<Tried>) {
    let mut properties = serde_json::Map::new();
    if let Some(owner) = owner {
        properties.insert("owner".into(), json!(owner));
    }
    let attributes = Attributes {
        resource: Arc::new(properties),
        ..Attributes::default()
    };
    let recording = Recording::new(&*policy.grants);
    let request = engine::Request::ResourceAction(ResourceAction {
        principal,
        resource,
        action,
        attributes: &attributes,
    });
    let decision = engine::decide(policy, &recording, &request, &engine::VerifyEveryTime, 0);
    let tried = engine::trace(policy, &decision, Some(principal), &recording.looked());
    (decision, tried)
}

fn decided(tried: &[Tried]) -> Vec<&Tried> {
    tried
        .iter()
        .filter(|t| match t {
            Tried::Deny { decided, .. } | Tried::Role { decided, .. } => *decided,
            Tried::RouteCondition { holds, .. } => !holds,
            Tried::NothingHeld { .. } => false,
        })
        .collect()
}

#[test]
fn an_allow_names_the_grant_that_decided_and_nothing_after_it() {
    let (_dir, policy) = policy();
    let (decision, tried) = traced(&policy, &who("alice", &[]), "document:1", "delete", None);
    assert!(decision.is_allowed(), "{decision:?}");
    let decided = decided(&tried);
    assert_eq!(decided.len(), 1, "{tried:#?}");
    assert!(
        matches!(decided[0], Tried::Role { holder, key, role, holds_action: true, condition: None, .. }
            if holder == "subject alice" && key == "document:1" && &**role == "owner"),
        "{tried:#?}"
    );
    // The engine stopped at the deciding grant: it is the last step.
    assert_eq!(tried.last(), Some(decided[0]));
}

#[test]
fn a_deny_by_grant_shows_every_lookup_and_no_decider() {
    let (_dir, policy) = policy();
    // alice is an editor of document 2 (no delete), through staff a creator
    // of `documents`; nothing lets her delete document 2.
    let (decision, tried) = traced(&policy, &who("alice", &[]), "document:2", "delete", None);
    assert!(!decision.is_allowed());
    assert!(decided(&tried).is_empty(), "{tried:#?}");
    assert!(
        tried.iter().any(
            |t| matches!(t, Tried::Role { role, holds_action: false, .. } if &**role == "editor")
        ),
        "{tried:#?}"
    );
    assert!(
        tried
            .iter()
            .any(|t| matches!(t, Tried::NothingHeld { holder, .. } if holder == "group staff")),
        "{tried:#?}"
    );
    assert!(
        tried
            .iter()
            .any(|t| matches!(t, Tried::NothingHeld { holder, .. } if holder == "every authenticated subject")),
        "{tried:#?}"
    );
}

#[test]
fn an_explicit_deny_is_the_decider_and_stops_the_trace() {
    let (_dir, policy) = policy();
    let (decision, tried) = traced(&policy, &who("mallory", &[]), "document:3", "read", None);
    assert_eq!(decision.reason, engine::Reason::ExplicitDeny);
    assert_eq!(
        tried,
        [Tried::Deny {
            name: "suspend-mallory".into(),
            applies: true,
            decided: true
        }]
    );
}

#[test]
fn a_conditions_value_is_shown_for_each_grant_it_guards() {
    let (_dir, policy) = policy();
    let condition = |tried: &[Tried]| {
        tried
            .iter()
            .find_map(|t| match t {
                Tried::Role {
                    role, condition, ..
                } if &**role == "editor" => condition.clone(),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{tried:#?}"))
    };
    let dana = who("dana", &[]);
    let (decision, tried) = traced(&policy, &dana, "document:9", "write", Some("dana"));
    assert!(decision.is_allowed());
    let (source, value) = condition(&tried);
    assert!(source.contains("resource.properties.owner"), "{source}");
    assert_eq!(value, Some(true));
    assert_eq!(decided(&tried).len(), 1);

    let (decision, tried) = traced(&policy, &dana, "document:9", "write", Some("erin"));
    assert!(!decision.is_allowed());
    assert_eq!(condition(&tried).1, Some(false), "{tried:#?}");
    assert!(decided(&tried).is_empty());

    // Asked for an action the role does not hold: never evaluated.
    let (decision, tried) = traced(&policy, &dana, "document:9", "delete", Some("dana"));
    assert!(!decision.is_allowed());
    assert_eq!(condition(&tried).1, None, "{tried:#?}");
}

#[test]
fn a_decision_that_never_reached_authorization_tried_nothing() {
    let (_dir, policy) = policy();
    let mallory = Arc::new(who("mallory", &[]));
    for reason in [engine::Reason::NoRoute, engine::Reason::PublicRoute] {
        let mut decision = engine::Decision::deny(engine::DenyStatus::Forbidden, reason);
        decision.principal = Some(mallory.clone());
        // mallory's deny rule covers everything, yet was not consulted.
        assert_eq!(engine::trace(&policy, &decision, None, &[]), []);
    }
}
