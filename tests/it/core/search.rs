//! Search against brute force: on a policy of a few thousand generated
//! grants (subjects, groups, roles, explicit denies), every page of every
//! search, walked with a small limit, gives exactly the resources, subjects
//! and actions whose single decision (`engine::decide`)
//! allows, in order, each once.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use portcullis::engine::{decide, Attributes, Request, ResourceAction, VerifyEveryTime};
use portcullis::policy::{load_policies, PolicySet};
use portcullis::search::{self, Found};

fn none() -> search::Circumstances<'static> {
    search::Circumstances::none()
}
use crate::support::copy_policies;
use portcullis::token::Principal;

const DOCUMENTS: usize = 300;
const USERS: usize = 40;

/// A deterministic scatter (no RNG crate needed for a fixed policy).
fn scatter(i: usize, n: usize) -> usize {
    (i.wrapping_mul(2_654_435_761) >> 7) % n
}

fn policy() -> (tempfile::TempDir, PolicySet) {
    let dir = copy_policies(|_, text| text);
    let roles = ["viewer", "editor", "owner", "viewer", "viewer"];
    let mut grants = String::new();
    for i in 0..3_000 {
        let user = scatter(i, USERS);
        let document = scatter(i * 7 + 3, DOCUMENTS);
        let role = roles[i % roles.len()];
        let _ = writeln!(grants, "subject:user{user} {role} document:{document}");
    }
    for i in 0..200 {
        let _ = writeln!(
            grants,
            "group:staff editor document:{}",
            scatter(i * 13 + 1, DOCUMENTS)
        );
    }
    std::fs::write(dir.path().join("bulk.grants"), grants).unwrap();
    let mut yaml = String::from("groups:\n  readers:\n    members: [");
    yaml.push_str(
        &(0..USERS)
            .step_by(3)
            .map(|u| format!("user{u}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    yaml.push_str(
        "]\ngrants:\n  - { group: readers, role: viewer, resource: document:7 }\ndenies:\n",
    );
    for u in (0..USERS).step_by(5) {
        let _ = writeln!(
            yaml,
            "  - {{ name: d{u}, subject: user{u}, resource: document:{}, actions: [write] }}",
            scatter(u, DOCUMENTS)
        );
    }
    yaml.push_str("  - { name: no-readers-99, group: readers, resource: document:99 }\n");
    std::fs::write(dir.path().join("more.yaml"), yaml).unwrap();
    let policy = load_policies(dir.path()).unwrap();
    (dir, policy)
}

fn user(name: &str) -> Principal {
    Principal {
        issuer: "test".into(),
        subject: name.into(),
        groups: Vec::new(),
        expires_at: u64::MAX,
        claims: Default::default(),
    }
}

fn allows(policy: &PolicySet, subject: &str, resource: &str, action: &str) -> bool {
    let principal = user(subject);
    let request = Request::ResourceAction(ResourceAction {
        principal: &principal,
        resource,
        action,
        attributes: Attributes::none(),
    });
    decide(policy, &*policy.grants, &request, &VerifyEveryTime, 0).is_allowed()
}

/// Every item of a search, page by page.
fn walk(mut page: impl FnMut(Option<&str>) -> Found) -> Vec<String> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10_000 {
        let found = page(after.as_deref());
        assert!(found.items.len() <= 7);
        all.extend(found.items.iter().cloned());
        if !found.more {
            return all;
        }
        after = found.items.last().cloned();
        assert!(after.is_some(), "more, but nothing on this page");
    }
    panic!("pagination does not end");
}

#[test]
fn every_search_page_agrees_with_single_decisions() {
    let (_dir, policy) = policy();
    let subjects: Vec<String> = (0..USERS)
        .map(|u| format!("user{u}"))
        .chain(["alice".to_owned(), "carol".to_owned()])
        .collect();
    let documents: Vec<String> = (0..DOCUMENTS).map(|d| d.to_string()).collect();
    let mut results = 0;
    for action in ["read", "write", "delete"] {
        for subject in &subjects {
            let found = walk(|after| {
                search::resources(
                    &policy,
                    &*policy.grants,
                    &user(subject),
                    action,
                    "document",
                    after,
                    7,
                    none(),
                )
            });
            let mut expected: Vec<String> = documents
                .iter()
                .filter(|d| allows(&policy, subject, &format!("document:{d}"), action))
                .cloned()
                .collect();
            // carol's global grant is the pattern, not each document.
            if subject == "carol" {
                expected = vec!["*".to_owned()];
            }
            expected.sort();
            assert_eq!(found, expected, "{subject} {action}");
            results += found.len();
        }
        for document in documents
            .iter()
            .step_by(11)
            .chain(["7".to_owned(), "99".to_owned()].iter())
        {
            let resource = format!("document:{document}");
            let found = walk(|after| {
                search::subjects(
                    &policy,
                    &*policy.grants,
                    &resource,
                    action,
                    after,
                    7,
                    none(),
                )
            });
            let expected: BTreeSet<String> = subjects
                .iter()
                .filter(|s| allows(&policy, s, &resource, action))
                .cloned()
                .collect();
            assert_eq!(
                found,
                expected.into_iter().collect::<Vec<_>>(),
                "{resource} {action}"
            );
        }
    }
    // Not a comparison of empty lists: most pages were full.
    assert!(results > 1_000, "only {results} results");
    for subject in subjects.iter().step_by(4) {
        for document in documents.iter().step_by(17) {
            let resource = format!("document:{document}");
            let found = walk(|after| {
                search::actions(
                    &policy,
                    &*policy.grants,
                    &user(subject),
                    &resource,
                    after,
                    7,
                    none(),
                )
            });
            let expected: Vec<String> = {
                let mut names = policy.actions.clone();
                names.sort();
                names
                    .into_iter()
                    .filter(|a| allows(&policy, subject, &resource, a))
                    .map(|a| a.to_string())
                    .collect()
            };
            assert_eq!(found, expected, "{subject} on {resource}");
        }
    }
}
