//! Runs the bundled decision case files (`policies/tests/`) and those of the
//! conditions example (`examples/conditions/tests/`) against the engine.

use std::path::Path;

use portcullis::cases::run_case_file;

fn run_dir(dir: &Path) -> (usize, Vec<String>) {
    // The demo issuer's secret is not needed: cases never verify a token,
    // so a secret the environment lacks only makes its issuer unverifiable.
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
    let (count, failures) = run_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/tests"));
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(count >= 50, "only {count} cases ran");
}

#[test]
fn the_conditions_example_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/conditions/tests");
    let (count, failures) = run_dir(&dir);
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(count >= 25, "only {count} cases ran");
}

#[test]
fn a_wrong_expectation_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let file = dir.path().join("wrong.yaml");
    let text = format!(
        "policies: {}\ncases:\n  - name: right\n    request: {{ method: GET, path: /healthz }}\n    expect: {{ decision: allow }}\n  - name: wrong\n    request: {{ method: DELETE, path: /documents/2 }}\n    as: {{ subject: alice }}\n    expect: {{ decision: allow, reason: granted }}\n",
        policies.display()
    );
    std::fs::write(&file, text).unwrap();
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

#[test]
fn a_failed_case_no_route_took_names_the_closest_route() {
    let dir = tempfile::tempdir().unwrap();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let file = dir.path().join("miss.yaml");
    let text = format!(
        "policies: {}\ncases:\n  - name: zero-padded id\n    request: {{ method: GET, path: /documents/01 }}\n    as: {{ subject: alice }}\n    expect: {{ decision: allow }}\n",
        policies.display()
    );
    std::fs::write(&file, text).unwrap();
    let (count, failures) = run_dir(dir.path());
    assert_eq!(count, 1);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains("expected allow, got deny (engine: no route matches the method and path; no route of application \"documents\" takes GET /documents/01; closest: route \"read-document\" (/documents/{id:uint}): segment 2: `{id:uint}` does not accept \"01\""),
        "{}",
        failures[0]
    );
}
