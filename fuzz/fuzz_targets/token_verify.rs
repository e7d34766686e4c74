//! The token parser and verifier (`Issuers::verify`) on arbitrary strings,
//! with one issuer per algorithm family (HS256, RS256, ES256).
//!
//! Invariants: only the tokens this process minted verify (the fuzzer holds
//! no key); what verifies has a sane subject and groups; and the token
//! cache agrees with a fresh verification, twice in a row.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::token::{MAX_GROUPS, MAX_SUBJECT_LEN};
use portcullis::token_cache::TokenCache;
use portcullis_fuzz::{token_world, NOW};

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let world = token_world();
    let issuers = &world.policy.issuers;
    let all: Vec<usize> = (0..issuers.len()).collect();
    let fresh = issuers.verify(&all, token, NOW);
    if let Ok(principal) = &fresh {
        assert!(
            world.valid.iter().any(|t| t == token),
            "a token this process never minted verified: {token:?} → {principal:?}"
        );
        assert!(!principal.subject.is_empty() && principal.subject.len() <= MAX_SUBJECT_LEN);
        assert!(!principal.subject.chars().any(char::is_control));
        assert!(principal.groups.len() <= MAX_GROUPS);
    }
    let cache = TokenCache::new(16);
    for _ in 0..2 {
        let cached = cache.verify(issuers, &world.policy.version, &all, token, NOW);
        assert_eq!(
            cached.as_ref().map(|p| p.subject.clone()).ok(),
            fresh.as_ref().map(|p| p.subject.clone()).ok(),
            "the cache and a fresh verification disagree on {token:?}"
        );
    }
});
