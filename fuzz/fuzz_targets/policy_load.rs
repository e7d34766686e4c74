//! The one loader on arbitrary bytes. The first byte chooses the layout
//! (modulo 3): 0, the rest is the only file of a policy directory; 1, it is
//! `grants.yaml` beside the bundled application, issuers and roles, so the
//! fuzzer works on grants, groups and denies with everything else valid;
//! 2, it is a bulk grants file (`bulk.grants`) beside the whole bundled
//! policy.
//! Beyond "never panics": a policy that loads can be asked about requests
//! without the engine panicking, and loading is deterministic.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use portcullis::engine::{decide, Credential, KnownPrincipal, Request, RequestAttrs};
use portcullis::policy::load_policies;
use portcullis::token::Principal;
use portcullis_fuzz::{bundled_copy, NOW, SECRET};
use portcullis_testkit::DEMO_SECRET_FILE;

struct Dirs {
    _alone: tempfile::TempDir,
    alone: PathBuf,
    _beside: tempfile::TempDir,
    beside: PathBuf,
    _bulk: tempfile::TempDir,
    bulk: PathBuf,
}

fn dirs() -> &'static Dirs {
    static DIRS: OnceLock<Dirs> = OnceLock::new();
    DIRS.get_or_init(|| {
        let alone = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let beside = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let bulk = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // Mode 0's file names its demo secret as the copies do.
        std::fs::write(alone.path().join(DEMO_SECRET_FILE), SECRET)
            .unwrap_or_else(|e| panic!("{e}"));
        bundled_copy(beside.path(), |name| {
            ["documents.yaml", "issuers.yaml", "roles.yaml"].contains(&name)
        });
        bundled_copy(bulk.path(), |name| {
            [
                "documents.yaml",
                "issuers.yaml",
                "roles.yaml",
                "grants.yaml",
            ]
            .contains(&name)
        });
        Dirs {
            alone: alone.path().to_path_buf(),
            _alone: alone,
            beside: beside.path().to_path_buf(),
            _beside: beside,
            bulk: bulk.path().to_path_buf(),
            _bulk: bulk,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, text)) = data.split_first() else {
        return;
    };
    let dirs = dirs();
    let (dir, name) = match mode % 3 {
        0 => (&dirs.alone, "policy.yaml"),
        1 => (&dirs.beside, "grants.yaml"),
        _ => (&dirs.bulk, "bulk.grants"),
    };
    if std::fs::write(dir.join(name), text).is_err() {
        return;
    }
    let Ok(policy) = load_policies(dir) else {
        return;
    };
    assert!(!policy.version.is_empty());
    let again = load_policies(dir).map(|p| p.version);
    assert_eq!(
        again.as_ref(),
        Ok(&policy.version),
        "loading twice gave another version"
    );
    let caller = KnownPrincipal(Arc::new(Principal {
        issuer: Arc::from("demo-idp"),
        subject: "alice".into(),
        groups: vec!["staff".into()],
        expires_at: u64::MAX,
        claims: Default::default(),
    }));
    for (method, path) in [
        ("GET", "/documents/1"),
        ("DELETE", "/documents/2"),
        ("GET", "/"),
    ] {
        let request = RequestAttrs {
            method: method.into(),
            path: path.into(),
            host: "localhost".into(),
            credential: Credential::Bearer("verified".into()),
            ..Default::default()
        };
        let _ = decide(
            &policy,
            &*policy.grants,
            &Request::Http(&request),
            &caller,
            NOW,
        );
    }
});
