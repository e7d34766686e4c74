//! Copies of the bundled policy directory (`policies/`) that load without
//! any environment variable.
//!
//! The bundled demo issuer reads its secret from `PORTCULLIS_DEMO_SECRET`.
//! Setting that variable in a test races every other test of the process
//! (and `set_var` is unsound while other threads read the environment), so
//! each copy made here names a `secret_file` beside the policies instead,
//! holding the secret the caller chose.

use std::path::{Path, PathBuf};

/// The file, in each copy, that holds the demo issuer's secret.
pub const DEMO_SECRET_FILE: &str = "demo.secret";

/// What the bundled issuers file says, and what a copy says instead.
const SECRET_FROM_ENV: &str = "secret_env: PORTCULLIS_DEMO_SECRET";
const SECRET_FROM_FILE: &str = "secret_file: demo.secret";

/// The repository's bundled policy directory.
pub fn bundled_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// Copies the files (not the `tests/` folder) of the bundled policies that
/// `keep` accepts by name into `into`, each passed through
/// `edit(name, text)`, with the demo issuer reading `secret` from
/// [`DEMO_SECRET_FILE`]. Panics if `issuers.yaml` is copied and no longer
/// names the environment variable this replaces, so the two cannot drift
/// apart silently.
pub fn copy_bundled(
    into: &Path,
    secret: &str,
    keep: impl Fn(&str) -> bool,
    edit: impl Fn(&str, String) -> String,
) {
    let from = bundled_dir();
    let entries =
        std::fs::read_dir(&from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("reading {}: {e}", from.display()))
            .path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if !path.is_file() || !keep(&name) {
            continue;
        }
        let mut text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        if name == "issuers.yaml" {
            assert!(
                text.contains(SECRET_FROM_ENV),
                "{} no longer says `{SECRET_FROM_ENV}`: update portcullis-testkit",
                path.display()
            );
            text = text.replace(SECRET_FROM_ENV, SECRET_FROM_FILE);
        }
        let to = into.join(&name);
        std::fs::write(&to, edit(&name, text))
            .unwrap_or_else(|e| panic!("writing {}: {e}", to.display()));
    }
    let secret_path = into.join(DEMO_SECRET_FILE);
    std::fs::write(&secret_path, secret)
        .unwrap_or_else(|e| panic!("writing {}: {e}", secret_path.display()));
}

/// A temporary copy of the whole bundled policy whose demo issuer's secret
/// is `secret`.
pub fn bundled_with_secret(secret: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_bundled(dir.path(), secret, |_| true, |_, text| text);
    dir
}
