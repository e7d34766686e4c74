//! Runs the bundled decision case files (`policies/tests/`) against the engine.

use std::path::Path;

use portcullis::cases::run_case_file;
use tempfile::TempDir;

const DEMO_SECRET: &str = "engine-cases-secret-0123456789abcdef0123";

/// The bundled policies with their case files in `tests/`, the demo
/// issuer's secret in a file: cases use no token, but the policy must load,
/// and no test may set the process's environment.
fn bundled_with_cases() -> TempDir {
    let dir = portcullis_testkit::bundled_with_secret(DEMO_SECRET);
    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/tests");
    std::fs::create_dir(dir.path().join("tests")).unwrap_or_else(|e| panic!("{e}"));
    for entry in std::fs::read_dir(&cases).unwrap_or_else(|e| panic!("{}: {e}", cases.display())) {
        let from = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if let Some(name) = from.file_name() {
            std::fs::copy(&from, dir.path().join("tests").join(name))
                .unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        }
    }
    dir
}

fn run_dir(dir: &Path) -> (usize, Vec<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    entries.sort();
    let mut count = 0;
    let mut failures = Vec::new();
    for file in entries {
        match run_case_file(&file) {
            Ok(outcomes) => {
                for outcome in outcomes {
                    count += 1;
                    if let Some(failure) = outcome.failure {
                        failures.push(format!(
                            "{}:{}: {}: {failure}",
                            file.display(),
                            outcome.line,
                            outcome.name
                        ));
                    }
                }
            }
            Err(errors) => failures.extend(errors.iter().map(ToString::to_string)),
        }
    }
    (count, failures)
}

#[test]
fn every_case_file_passes() {
    let bundled = bundled_with_cases();
    let (count, failures) = run_dir(&bundled.path().join("tests"));
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(count >= 50, "only {count} cases ran");
}

#[test]
fn a_wrong_expectation_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bundled = bundled_with_cases();
    let policies = bundled.path();
    let file = dir.path().join("wrong.yaml");
    let text = format!(
        "policies: {}\ncases:\n  - name: right\n    request: {{ method: GET, path: /healthz }}\n    expect: {{ decision: allow }}\n  - name: wrong\n    request: {{ method: DELETE, path: /documents/2 }}\n    as: {{ subject: alice }}\n    expect: {{ decision: allow, reason: granted }}\n",
        policies.display()
    );
    std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
    let (count, failures) = run_dir(dir.path());
    assert_eq!(count, 2);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains("wrong.yaml:6: wrong: expected allow, got deny"),
        "{}",
        failures[0]
    );
    assert!(
        failures[0].contains("expected reason granted, got no_grant"),
        "{}",
        failures[0]
    );
}
