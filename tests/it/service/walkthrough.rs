//! The walk-through (`docs/walkthrough.md`) is what a new policy author
//! follows, so it is run here as written: the YAML blocks of the page are
//! the files of `examples/todo/`, and the commands it shows print what it
//! shows (through the real binary). The requests it sends through Envoy
//! are `e2e::walkthrough`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::repo_path;

/// The secret the walk-through exports (a demo value, as the page says).
pub(crate) const SECRET: &str = "todo-secret-not-for-production-0123456789";
pub(crate) const SECRET_ENV: &str = "TODO_IDP_SECRET";

pub(crate) fn page() -> String {
    std::fs::read_to_string(repo_path("docs/walkthrough.md"))
        .expect("cannot read docs/walkthrough.md")
}

/// The fenced block right after each `<!-- KIND: NAME -->` marker, by name.
fn blocks(text: &str, kind: &str) -> Vec<(String, String)> {
    let marker = format!("<!-- {kind}: ");
    let mut found = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix(&marker)
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            continue;
        };
        let fence = lines.next().unwrap_or_default();
        assert!(
            fence.starts_with("```"),
            "docs/walkthrough.md: {kind} {name} is not followed by a fenced block"
        );
        let mut body = String::new();
        for line in lines.by_ref() {
            if line == "```" {
                break;
            }
            body.push_str(line);
            body.push('\n');
        }
        found.push((name.to_owned(), body));
    }
    found
}

/// The page's output block named `name`.
fn shown(name: &str) -> String {
    blocks(&page(), "output")
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, body)| body)
        .unwrap_or_else(|| panic!("docs/walkthrough.md shows no output {name:?}"))
}

/// `portcullis ARGS` from the repository root, as the page runs it, with the
/// issuer's secret in the child's environment or removed from it.
fn portcullis(args: &[&str], secret: bool) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command.args(args).current_dir(repo_path(""));
    if secret {
        command.env(SECRET_ENV, SECRET);
    } else {
        command.env_remove(SECRET_ENV);
    }
    command.output().expect("cannot run portcullis")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every file below `dir`, relative to the repository.
fn files_below(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
        for entry in entries {
            let path: PathBuf = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(repo_path("")) {
                out.insert(relative.display().to_string());
            }
        }
    }
    out
}

#[test]
fn the_page_shows_every_file_of_the_example_as_it_is() {
    let shown = blocks(&page(), "file");
    let mut names = BTreeSet::new();
    for (name, body) in &shown {
        let actual = std::fs::read_to_string(repo_path(name)).unwrap_or_else(|e| {
            panic!("docs/walkthrough.md shows {name}, which cannot be read: {e}")
        });
        assert_eq!(
            body, &actual,
            "docs/walkthrough.md's block for {name} differs from the file"
        );
        names.insert(name.clone());
    }
    let files = files_below(&repo_path("examples/todo"));
    assert_eq!(
        names, files,
        "docs/walkthrough.md must show exactly the files of examples/todo"
    );
}

#[test]
fn validate_prints_what_the_page_shows() {
    let out = portcullis(&["validate", "examples/todo"], true);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The version is a hash of the files and the key: the page elides it.
    let stdout = text(&out.stdout);
    let elided: String = stdout
        .lines()
        .map(|line| match line.find("(version ") {
            Some(at) => format!("{}(version …)\n", &line[..at]),
            None => format!("{line}\n"),
        })
        .collect();
    assert_eq!(elided, shown("validate"));
}

#[test]
fn the_cases_pass_without_the_secret_as_the_page_shows() {
    let out = portcullis(&["test", "examples/todo/tests"], false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let printed = format!("{}{}", text(&out.stderr), text(&out.stdout));
    assert_eq!(printed, shown("test"));
    // And with the secret: the same cases, no warning.
    let out = portcullis(&["test", "examples/todo/tests"], true);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(text(&out.stderr), "");
    assert_eq!(text(&out.stdout), "16 passed, 0 failed\n");
}

#[test]
fn check_explains_as_the_page_shows() {
    let token = portcullis(
        &[
            "token",
            "--policies",
            "examples/todo",
            "--issuer",
            "todo-idp",
            "--subject",
            "ana",
        ],
        true,
    );
    assert!(token.status.success(), "{}", text(&token.stderr));
    let token = text(&token.stdout).trim().to_owned();
    let check = |method: &str, path: &str| {
        portcullis(
            &[
                "check",
                "--policies",
                "examples/todo",
                "--context-extension",
                "app=todo",
                "--method",
                method,
                "--path",
                path,
                "--token",
                &token,
            ],
            true,
        )
    };
    let out = check("DELETE", "/todos/1");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), shown("check-allow"));
    let out = check("GET", "/users/ana@todo.example");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), shown("check-no-route"));
}
