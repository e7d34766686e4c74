//! The architecture, checked: what ARCHITECTURE.md promises about the code
//! fails this test when it stops being true (rust-analyzer's "tidy" tests).
//!
//! - The pure core (engine, path, the compiled policy, token verification)
//!   names no file, environment, clock, runtime, network or protocol crate.
//! - Envoy's protocol types stop at the adapter and the gRPC server.
//! - serde_yaml is used by the YAML module only.
//! - Every source file appears in ARCHITECTURE.md's code map.

use std::path::{Path, PathBuf};

/// The pure core: decides from its arguments alone.
const CORE: &[&str] = &[
    "src/engine.rs",
    "src/path.rs",
    "src/policy/mod.rs",
    "src/policy/callers.rs",
    "src/policy/events.rs",
    "src/policy/grants.rs",
    "src/policy/grant_snapshot.rs",
    "src/policy/routes.rs",
    "src/policy/source.rs",
    // CEL conditions: the `cel` crate parses and interprets, purely; the
    // time it sees is the decision's `now`, never a clock.
    "src/policy/condition.rs",
    "src/token/mod.rs",
    "src/search.rs",
    // Signing and opening event envelopes: time and ids come in as
    // arguments.
    "src/events/envelope.rs",
];

/// Names that mean I/O, a clock, a runtime or a protocol: none may appear in
/// the core, in code or comments (a comment that needs one is a sign the
/// code drifted).
const NOT_IN_CORE: &[&str] = &[
    "std::fs",
    "std::env",
    "std::net",
    "std::process",
    "std::thread",
    "SystemTime",
    "Instant",
    "tokio",
    "tonic",
    "prost",
    "envoy_types",
    "moka",
    "reqwest",
    "hyper",
    "axum",
    "notify::",
    "serde_yaml",
    "postgres",
    "deadpool",
];

/// Crates of one protocol, and the only files that may name them.
const CONFINED: &[(&str, &[&str])] = &[
    ("envoy_types", &["src/adapter.rs", "src/server.rs"]),
    ("prost", &["src/adapter.rs", "src/server.rs"]),
    ("tonic", &["src/server.rs", "src/tls.rs"]),
    ("serde_yaml", &["src/yaml.rs"]),
    // The process environment is read for issuer, caller and event secrets
    // only, when loading.
    ("std::env", &["src/policy/load/keys.rs"]),
    // The grants database: its shell and the commands that run it.
    (
        "tokio_postgres",
        &[
            "src/grants_db/mod.rs",
            "src/grants_db/feed.rs",
            "src/grants_db/migrate.rs",
            "src/grants_db/search.rs",
            "src/grants_db/write.rs",
            "src/cli/db.rs",
            "src/cli/grants.rs",
        ],
    ),
    ("deadpool", &["src/grants_db/mod.rs"]),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Every `src/**/*.rs`, as `src/...` paths.
fn source_files() -> Vec<(String, String)> {
    let mut files = Vec::new();
    sources(&root().join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let relative = path
                .strip_prefix(root())
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            (relative, text)
        })
        .collect()
}

/// Lines of `text` naming `name`, as `file:line: text`.
fn naming(file: &str, text: &str, name: &str) -> Vec<String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| line.contains(name))
        .map(|(n, line)| format!("{file}:{}: {}", n + 1, line.trim()))
        .collect()
}

#[test]
fn the_core_names_no_io_clock_runtime_or_protocol() {
    let files = source_files();
    let mut found = Vec::new();
    for core in CORE {
        let Some((_, text)) = files.iter().find(|(f, _)| f == core) else {
            panic!(
                "{core} is listed as core but does not exist: update this test and ARCHITECTURE.md"
            );
        };
        for name in NOT_IN_CORE {
            found.extend(naming(core, text, name));
        }
    }
    assert!(
        found.is_empty(),
        "the core must stay pure (ARCHITECTURE.md, Invariants):\n{}",
        found.join("\n")
    );
}

#[test]
fn protocol_crates_stay_in_their_modules() {
    let mut found = Vec::new();
    for (file, text) in source_files() {
        for (name, allowed) in CONFINED {
            if !allowed.contains(&file.as_str()) {
                found.extend(naming(&file, &text, name));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn every_source_file_is_in_the_code_map() {
    let map = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let missing: Vec<String> = source_files()
        .into_iter()
        .map(|(file, _)| file)
        .filter(|file| !map.contains(&format!("`{file}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's code map does not name: {}",
        missing.join(", ")
    );
}

#[test]
fn the_checks_above_can_fail() {
    // The scanner finds a forbidden name where there is one, so a pure core
    // is not just a scanner that never looks.
    let text = "use std::time::Instant;\nfn f() {}\n";
    assert_eq!(
        naming("src/x.rs", text, "Instant"),
        ["src/x.rs:1: use std::time::Instant;"]
    );
}

/// The integration tests are one binary, `tests/it`, with a module per
/// layer (its `main.rs` says which): a `tests/*.rs` or another
/// `tests/*/main.rs` would be a second binary that compiles and links the
/// library again, and a second place for a new test.
#[test]
fn the_integration_tests_are_one_binary() {
    let mut binaries: Vec<String> = std::fs::read_dir(root().join("tests"))
        .expect("tests/")
        .map(|entry| entry.expect("tests/ entry").path())
        .filter(|path| {
            path.extension().is_some_and(|e| e == "rs") || path.join("main.rs").is_file()
        })
        .map(|path| path.strip_prefix(root()).unwrap().display().to_string())
        .collect();
    binaries.sort();
    assert_eq!(binaries, ["tests/it"], "test binaries under tests/");
}
