//! The decision case corpus (`policies/tests/*.yaml`) for the end-to-end
//! runners: every case with the engine's decision, as `portcullis test`
//! makes it, so a runner can send the same request through a real Envoy and
//! compare.

use portcullis::cases::{run_case_file, CaseOutcome};

use super::repo_path;

/// Every case of the bundled corpus, with its file name. Panics when the
/// corpus fails on the engine: an end-to-end runner compares against it.
pub fn cases() -> Vec<(String, CaseOutcome)> {
    let dir = repo_path("policies/tests");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut all = Vec::new();
    for file in files {
        let outcomes = run_case_file(&file).unwrap_or_else(|e| panic!("{}: {e:?}", file.display()));
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for outcome in outcomes {
            assert!(
                outcome.failure.is_none(),
                "{name}:{}: the corpus fails on the engine: {:?}",
                outcome.line,
                outcome.failure
            );
            all.push((name.clone(), outcome));
        }
    }
    all
}

/// The Authorization header for the case's caller: a real token from the
/// test issuer with its subject and groups.
pub fn authorization(outcome: &CaseOutcome) -> Option<String> {
    outcome.caller.as_ref().map(|(subject, groups)| {
        let mut claims = super::Claims::valid(subject);
        if !groups.is_empty() {
            claims = claims.groups(&groups.iter().map(String::as_str).collect::<Vec<_>>());
        }
        super::bearer(&claims.sign())
    })
}

/// A subject for a probe's expectation, which the probes keep for the
/// test's whole run.
pub fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}
