//! The decision case corpus (`policies/tests/*.yaml`) for the end-to-end
//! runners: every case with the engine's decision, as `portcullis test`
//! makes it, so a runner can send the same request through a real Envoy and
//! compare.

use portcullis::cases::{run_case_file, CaseOutcome, Deployment};
use portcullis::engine::RequestAttrs;

use super::probes::{Expect, Probes, Target};
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
        let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
        super::bearer(&if groups.is_empty() {
            super::token(subject)
        } else {
            super::token_with_groups(subject, &groups)
        })
    })
}

/// A subject for a probe's expectation, which the probes keep for the
/// test's whole run.
pub fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// Sends every request case of the corpus that `deployment` can express
/// (`expressible` says which requests it can send at all) through `probes`,
/// each expected to come back as the engine decided it, unless the case
/// says how the deployment changes it (`through:`). Prints what was sent
/// and skipped, and fails unless at least `at_least` cases went through.
pub fn send_through<T: Target>(
    probes: &mut Probes<'_, T>,
    deployment: Deployment,
    expressible: impl Fn(&RequestAttrs) -> bool,
    at_least: usize,
) {
    let before = probes.ran();
    let mut skipped = Vec::new();
    for (file, outcome) in cases() {
        let label = format!("{file}:{}: {}", outcome.line, outcome.name);
        let Some(request) = &outcome.request else {
            continue; // a subject/resource/action case: no request to send
        };
        let through = outcome.through.get(&deployment);
        if through.is_some_and(|t| t.skip) || !expressible(request) {
            skipped.push(label);
            continue;
        }
        let mut headers = Vec::new();
        if !request.host.is_empty() {
            headers.push(("Host", &*request.host));
        }
        let decision = &outcome.decision;
        let caller = || outcome.caller.as_ref().map(|(s, _)| leak(s.clone()));
        let expect = match (through.and_then(|t| t.status), decision.is_allowed()) {
            // The deployment rewrote the request into one the caller may make.
            (Some(200), _) => Expect::Allow(caller()),
            (Some(status), _) => Expect::Status(status),
            (None, true) => Expect::Allow(decision.subject.as_deref().map(|s| leak(s.to_owned()))),
            (None, false) => Expect::Deny(decision.status_code()),
        };
        probes.check(
            &label,
            &request.method,
            request.path.as_bytes(),
            authorization(&outcome).as_deref(),
            &headers,
            expect,
        );
    }
    let sent = probes.ran() - before;
    eprintln!(
        "corpus through {deployment:?}: {sent} cases sent, {} skipped (not expressible there):\n  {}",
        skipped.len(),
        skipped.join("\n  ")
    );
    assert!(
        sent >= at_least,
        "only {sent} corpus cases were sent through {deployment:?}"
    );
}
