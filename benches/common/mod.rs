//! What the benches share: the bundled policy, the same policy with N grants
//! built in code, a verified caller, a demo token and a CheckRequest.

// Each bench compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use portcullis::engine::{Credential, KnownPrincipal, RequestAttrs};
use portcullis::policy::{
    load_policies, Condition, GrantIndex, Holder, PolicySet, ResourceKey, Role,
};
use portcullis::token::Principal;
use portcullis_testkit::{Check, Claims, Signer};

/// The demo issuer's secret in the benches.
pub const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
/// Beyond today: the token cache expires entries by the wall clock at `exp`.
pub const NOW: u64 = 4_000_000_000;

/// The bundled documents policy (a copy whose demo issuer reads
/// [`SECRET`] from a file).
pub fn bundled() -> PolicySet {
    let dir = portcullis_testkit::bundled_with_secret(SECRET);
    load_policies(dir.path()).unwrap_or_else(|e| panic!("{e}"))
}

/// The bundled policy with its grants replaced by `count` grants spread over
/// 10k subjects and `count / 10` documents, built in code so a bench measures
/// deciding, not YAML parsing. user42 holds document:42 at every size,
/// document:999999 under a condition ([`CONDITION`]) and document:999998
/// under the owner-only one ([`OWNER_CONDITION`]).
pub fn bundled_with_grants(count: usize) -> PolicySet {
    let mut policy = bundled();
    let role = |name: &str| {
        policy
            .roles
            .iter()
            .position(|r| &*r.name == name)
            .unwrap_or_else(|| panic!("no role {name}")) as u32
    };
    let (viewer, editor) = (role("viewer"), role("editor"));
    let mut index = GrantIndex::builder();
    let documents = (count / 10).max(1);
    for i in 0..count {
        let subject = format!("user{}", i % 10_000);
        let resource = format!("document:{}", i % documents);
        let role = if i % 3 == 0 { editor } else { viewer };
        index.insert(
            Holder::Subject(&subject),
            ResourceKey::Exact(&resource),
            role,
        );
    }
    // One grant under a condition, as `condition:` on a grant compiles:
    // a role of its own holding the viewer's actions.
    let condition = Condition::compile(&policy.conditions, CONDITION)
        .unwrap_or_else(|e| panic!("{CONDITION}: {e}"));
    let viewer_actions = policy.roles[viewer as usize].actions.clone();
    policy.roles.push(Role {
        name: "viewer".into(),
        actions: viewer_actions,
        condition: Some(Arc::new(condition)),
    });
    index.insert(
        Holder::Subject("user42"),
        ResourceKey::Exact("document:999999"),
        (policy.roles.len() - 1) as u32,
    );
    // And one under the owner-only condition, on document:999998.
    let owner = Condition::compile(&policy.conditions, OWNER_CONDITION)
        .unwrap_or_else(|e| panic!("{OWNER_CONDITION}: {e}"));
    let viewer_actions = policy.roles[viewer as usize].actions.clone();
    policy.roles.push(Role {
        name: "viewer".into(),
        actions: viewer_actions,
        condition: Some(Arc::new(owner)),
    });
    index.insert(
        Holder::Subject("user42"),
        ResourceKey::Exact("document:999998"),
        (policy.roles.len() - 1) as u32,
    );
    policy.grants = Box::new(index.build());
    policy
}

/// The condition of user42's grant on document:999998: the owner-only
/// rule, the resource's `owner` property given by the caller.
pub const OWNER_CONDITION: &str = "resource.properties.owner == subject.id";

/// The condition of user42's grant on document:999999: reads the resource
/// and the subject's groups, as a typical rule does.
pub const CONDITION: &str =
    "resource.type == \"document\" && resource.properties.id == resource.id && \"readers\" in subject.groups";

/// A documents request whose caller is already verified (see [`user42`]).
pub fn verified_request(method: &str, path: &str) -> RequestAttrs<'static> {
    RequestAttrs {
        method: method.to_owned().into(),
        path: path.to_owned().into(),
        host: "documents.example.com".into(),
        credential: Credential::Bearer("verified".into()),
        ..Default::default()
    }
}

/// user42, in the group readers, as a verified principal.
pub fn user42() -> KnownPrincipal {
    KnownPrincipal(Arc::new(Principal {
        issuer: Arc::from("demo-idp"),
        subject: "user42".into(),
        groups: vec!["readers".into()],
        expires_at: u64::MAX,
        claims: Default::default(),
    }))
}

/// A demo-issuer token for alice (owner of document 1, editor of 2).
pub fn alice_token() -> String {
    let claims = Claims {
        iat_offset: None,
        ..Claims::demo("alice", NOW).ttl(3600)
    };
    claims.sign(&Signer::hs256(SECRET.as_bytes()))
}

/// A CheckRequest as Envoy sends it for the documents application.
pub fn check_request(method: &str, path: &str, token: &str) -> CheckRequest {
    Check::http(method, path)
        .host("documents.example.com")
        .bearer(token)
        .header("x-request-id", "bench-request")
        .app("documents")
        .build()
}
