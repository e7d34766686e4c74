//! The architecture, checked: what ARCHITECTURE.md promises about the code
//! fails this test when it stops being true (rust-analyzer's "tidy" tests).
//!
//! - The core crate depends on no runtime, protocol or cache crate, and its
//!   clippy configuration refuses std's clocks, files and environment (the
//!   compiler and clippy then hold the rest).
//! - Envoy's protocol types stop at the adapter and the gRPC server.
//! - serde_yaml is used by the YAML module only.
//! - Every source file appears in ARCHITECTURE.md's code map.
//! - Every test an invariant names as what holds it exists.

use std::path::{Path, PathBuf};

/// The core crate's manifest: what it may depend on is the one thing about
/// its purity the compiler cannot see (a runtime added to its Cargo.toml
/// compiles). std's clocks, files and environment are refused by clippy
/// (crates/portcullis-core/clippy.toml).
const CORE_MANIFEST: &str = "crates/portcullis-core/Cargo.toml";

/// Crates that mean I/O, a runtime, a protocol or a cache: none may be a
/// dependency of the core.
const NOT_IN_CORE: &[&str] = &[
    "tokio",
    "tonic",
    "prost",
    "envoy-types",
    "moka",
    "reqwest",
    "hyper",
    "hyper-util",
    "axum",
    "notify",
    "postgres",
    "tokio-postgres",
    "deadpool-postgres",
    "rustls",
    "tokio-rustls",
    "tracing",
    "libc",
    "getrandom",
];

/// Crates of one protocol, and the only files that may name them.
const CONFINED: &[(&str, &[&str])] = &[
    (
        "envoy_types",
        &["src/adapter.rs", "src/answer.rs", "src/server.rs"],
    ),
    (
        "prost",
        &["src/adapter.rs", "src/answer.rs", "src/server.rs"],
    ),
    ("tonic", &["src/answer.rs", "src/server.rs", "src/tls.rs"]),
    ("serde_yaml", &["crates/portcullis-core/src/yaml.rs"]),
    // The process environment is read for issuer, caller and event secrets
    // only, when loading.
    ("std::env", &["src/loader.rs"]),
    // The grants database: its shell and the commands that run it.
    (
        "tokio_postgres",
        &[
            "src/grants_db/mod.rs",
            "src/grants_db/postgres.rs",
            "src/grants_db/consumed.rs",
            "src/grants_db/feed.rs",
            "src/grants_db/migrate.rs",
            "src/grants_db/search.rs",
            "src/grants_db/write.rs",
            "src/cli/db.rs",
            "src/cli/grants.rs",
        ],
    ),
    (
        "deadpool",
        &["src/grants_db/mod.rs", "src/grants_db/postgres.rs"],
    ),
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

/// Every `src/**/*.rs` and `crates/*/src/**/*.rs`, as paths from the
/// repository's root.
fn source_files() -> Vec<(String, String)> {
    let mut files = Vec::new();
    sources(&root().join("src"), &mut files);
    sources(&root().join("crates/portcullis-core/src"), &mut files);
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

/// The dependency names of the `[dependencies]` table of `manifest`.
fn dependencies(manifest: &str) -> Vec<String> {
    let mut in_table = false;
    let mut names = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_table = line == "[dependencies]";
        } else if in_table && !line.is_empty() && !line.starts_with('#') {
            if let Some((name, _)) = line.split_once('=') {
                names.push(name.trim().to_string());
            }
        }
    }
    names
}

#[test]
fn the_core_depends_on_no_runtime_protocol_or_cache() {
    let manifest = std::fs::read_to_string(root().join(CORE_MANIFEST))
        .unwrap_or_else(|e| panic!("{CORE_MANIFEST}: {e}"));
    let names = dependencies(&manifest);
    assert!(names.contains(&"jsonwebtoken".to_string()), "{names:?}");
    let found: Vec<&String> = names
        .iter()
        .filter(|name| NOT_IN_CORE.contains(&name.as_str()))
        .collect();
    assert!(
        found.is_empty(),
        "the core must stay pure (ARCHITECTURE.md, Invariants): {CORE_MANIFEST} depends on {found:?}"
    );
}

#[test]
fn the_core_refuses_std_clocks_files_and_environment() {
    // The clippy configuration that makes them a build failure is there
    // and names each; `make test` runs clippy with -D warnings.
    let config = std::fs::read_to_string(root().join("crates/portcullis-core/clippy.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    for name in [
        "std::time::SystemTime",
        "std::time::Instant",
        "std::env::var",
        "std::fs::read",
        "std::fs::File",
        "std::net::TcpStream",
        "std::thread::spawn",
        "std::process::Command",
    ] {
        assert!(
            config.contains(&format!("\"{name}")),
            "{name} is not refused"
        );
    }
    let manifest =
        std::fs::read_to_string(root().join(CORE_MANIFEST)).unwrap_or_else(|e| panic!("{e}"));
    assert!(manifest.contains("disallowed_methods = \"deny\""));
    assert!(manifest.contains("disallowed_types = \"deny\""));
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

/// The test names (backquoted snake_case with at least three words) in
/// `text`.
fn named_tests(text: &str) -> Vec<&str> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|name| {
            name.split('_').count() >= 4
                && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
        .collect()
}

#[test]
fn every_test_an_invariant_names_exists() {
    let map = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let invariants = map
        .split("## Invariants")
        .nth(1)
        .expect("ARCHITECTURE.md has an Invariants section");
    let names = named_tests(invariants);
    assert!(names.len() >= 4, "too few named tests: {names:?}");
    let mut code = String::new();
    for dir in ["src", "crates/portcullis-core/src", "tests"] {
        let mut files = Vec::new();
        sources(&root().join(dir), &mut files);
        for file in files {
            code.push_str(&std::fs::read_to_string(file).expect("source"));
        }
    }
    let missing: Vec<&&str> = names
        .iter()
        .filter(|name| !code.contains(&format!("fn {name}(")))
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's invariants name tests that do not exist: {missing:?}"
    );
}

/// `make test` runs every workspace member's unit tests: the core's live in
/// their own crate, which a bare `cargo test` in the root would skip.
#[test]
fn make_test_runs_the_cores_unit_tests() {
    let makefile = std::fs::read_to_string(root().join("Makefile")).expect("Makefile");
    let test_target = makefile
        .split("\ntest:")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("the Makefile has a test target");
    assert!(
        test_target.contains("$(CARGO) test --workspace"),
        "make test must run `cargo test --workspace`:\n{test_target}"
    );
}

#[test]
fn the_checks_above_can_fail() {
    // The scanners find what they look for, so a pure core is not just a
    // scanner that never looks.
    let text = "use tonic::Status;\nfn f() {}\n";
    assert_eq!(
        naming("src/x.rs", text, "tonic"),
        ["src/x.rs:1: use tonic::Status;"]
    );
    let manifest = "[package]\nname = \"x\"\n[dependencies]\n# why\ntokio = \"1\"\n[dev-dependencies]\nmoka = \"1\"\n";
    assert_eq!(dependencies(manifest), ["tokio"]);
    assert_eq!(
        named_tests("held by `a_b_c_d` and `make test` and `not_a_test`"),
        ["a_b_c_d"]
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
