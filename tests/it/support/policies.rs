//! Policy directories on disk and the readiness that reports which one is
//! loaded: copies of the bundled policies (their demo issuer reading the
//! secret from a file, see `portcullis_testkit::policies`), and waits on
//! the version `/ready` reports.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::{send_raw, test_secret, try_send};

/// A file or directory of this repository.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The bundled policy directory.
pub fn bundled_policies() -> PathBuf {
    repo_path("policies")
}

// ---------------------------------------------------------------------------
// Policy directories and readiness
// ---------------------------------------------------------------------------

/// A copy of the bundled policies (files only), each passed through
/// `edit(file name, content)`, whose demo issuer reads [`test_secret`] from
/// a file: it loads in-process and in a child without any environment.
pub fn copy_policies(edit: impl Fn(&str, String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    portcullis_testkit::copy_bundled(dir.path(), test_secret(), |_| true, edit);
    dir
}

/// The policy directory `dir`, loaded in-process; a test failure, with the
/// load errors, when it does not load.
pub fn load(dir: &Path) -> portcullis::policy::PolicySet {
    portcullis::policy::load_policies(dir)
        .unwrap_or_else(|e| panic!("the policy should load:\n{e}"))
}

/// The policy version `/ready` reports, or `None` while not ready.
pub fn ready_version(admin_port: u16) -> Option<String> {
    let response = try_send(admin_port, "GET", b"/ready", &[]).ok()?;
    if response.status != 200 {
        return None;
    }
    response.text().trim().rsplit(' ').next().map(str::to_owned)
}

/// Waits (at most `limit`) until `/ready` reports a version other than
/// `old`; returns it with the time it took.
pub fn wait_for_new_version(
    admin_port: u16,
    old: &str,
    limit: Duration,
) -> Option<(String, Duration)> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(version) = ready_version(admin_port).filter(|v| v != old) {
            return Some((version, started.elapsed()));
        }
        thread::sleep(Duration::from_millis(5));
    }
    None
}

/// The value of one series on `/metrics` (`name{labels}` exactly as
/// exposed), or `None` when it is not exposed.
pub fn metric(admin_port: u16, series: &str) -> Option<f64> {
    let text = send_raw(admin_port, "GET", b"/metrics", &[]).text();
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}
