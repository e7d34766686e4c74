//! Loading a policy directory: which files are policy, each read whole,
//! then compiled by the core ([`compile`]) with this process's files and
//! environment as its [`Host`]. `serve`, `validate`, `check`, `token`,
//! `test` and every reload call [`load_policies`] (or
//! [`load_policies_with`]).
//!
//! Writing a file by rename (as Kubernetes does for ConfigMaps) is the one
//! way a reader can never catch it half-written. A writer that truncates
//! and rewrites in place (an editor, `cp`) can be caught mid-write, and a
//! policy cut short is not just smaller: `resource: document:249` cut after
//! `document:24` grants another document. So [`read_whole`] refuses what it
//! can tell is unfinished, and a reload that refuses keeps the last good
//! policy (the writer's next change reloads).

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::diagnostic::Diagnostic;
use crate::policy::{compile, Host, LoadErrors, Loaded, PolicySet, SourceFile, UnreadableKeys};
use portcullis_core::yaml;

/// Loads and compiles the policy directory `dir`; every issuer key must be
/// readable.
pub fn load_policies(dir: &Path) -> Result<PolicySet, LoadErrors> {
    load_policies_with(dir, UnreadableKeys::Refuse).map(|loaded| loaded.policy)
}

/// Loads and compiles the policy directory `dir`, treating keys that cannot
/// be read as `unreadable` says. The one loader: [`load_policies`] is this
/// with [`UnreadableKeys::Refuse`].
pub fn load_policies_with(dir: &Path, unreadable: UnreadableKeys) -> Result<Loaded, LoadErrors> {
    compile(&read_dir(dir)?, &Process, unreadable)
}

/// This process's files and environment: where key files and secrets
/// named by a policy are read from. The only `std::env` in the service.
struct Process;

impl Host for Process {
    fn read_file(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn env_var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Every policy file directly in `dir`, in name order, each read whole.
fn read_dir(dir: &Path) -> Result<Vec<SourceFile>, LoadErrors> {
    let fail = |message: String| {
        LoadErrors(vec![Diagnostic {
            file: dir.to_path_buf(),
            line: None,
            message,
        }])
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| fail(format!("cannot read directory: {e}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| fail(format!("cannot read directory: {e}")))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_policy =
            name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".grants");
        if name.starts_with('.') || !is_policy {
            continue;
        }
        // Follows links (Kubernetes mounts files as links into `..data`).
        let path = entry.path();
        if path.is_file() {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(fail(
            "no policy files (*.yaml, *.yml, *.grants) in directory".into(),
        ));
    }
    paths.sort();
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match read_whole(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                // A writer that truncates before writing leaves this for a
                // moment: loading it would revoke everything it granted.
                Ok(text) if yaml::is_blank(&text) => errors.push(Diagnostic {
                    file: path,
                    line: None,
                    message: "file holds nothing but blanks and comments (caught mid-write?); \
                              delete it, or say what it holds, e.g. `grants: []`"
                        .into(),
                }),
                Ok(text) => files.push(SourceFile { path, text }),
                Err(_) => errors.push(Diagnostic {
                    file: path,
                    line: None,
                    message: "file is not valid UTF-8".into(),
                }),
            },
            Err(e) => errors.push(Diagnostic {
                file: path,
                line: None,
                message: format!("cannot read file: {e}"),
            }),
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(LoadErrors(errors))
    }
}

/// How long a file that may be a writer's unfinished prefix must stay
/// unchanged before it is believed whole. A writer the kernel throttles
/// for dirty pages sleeps up to 200 ms at a time.
const QUIET: Duration = Duration::from_secs(1);

/// How often a file waiting out [`QUIET`] is looked at again.
const POLL: Duration = Duration::from_millis(10);

/// The unit a file grows by while one `write` fills it: a writer paused
/// mid-write leaves a file whose length is a multiple of it.
const PAGE: u64 = 4096;

/// Reads `path` whole, refusing a read a writer may still be changing.
///
/// Two things give an in-place writer away:
/// - the file's size or change time moves during the read (the start of
///   one version and the end of the next): the read is tried again, then
///   refused;
/// - the file was changed less than [`QUIET`] ago and its length is a
///   whole number of pages, which is what the kernel leaves visible while
///   a `write` is part-way through (it grows the file a page at a time):
///   the file must then stay unchanged, bytes and all, until it has been
///   quiet for [`QUIET`], or it is refused.
///
/// What this cannot see is a writer that finishes each `write` on a line
/// of its own (a shell loop appending line by line): every step is a
/// well-formed file. Reloads are debounced for that; writing by rename is
/// the one sure way.
pub(crate) fn read_whole(path: &Path) -> std::io::Result<Vec<u8>> {
    const TRIES: usize = 3;
    let changed = || {
        std::io::Error::other(
            "the file changed while it was read (rewritten in place?); \
             write policy files by rename",
        )
    };
    for _ in 0..TRIES {
        let before = std::fs::metadata(path)?;
        let bytes = std::fs::read(path)?;
        let after = std::fs::metadata(path)?;
        if Stamp::of(&before) != Stamp::of(&after) || bytes.len() as u64 != after.len() {
            continue;
        }
        let may_be_unfinished = after.len() > 0 && after.len() % PAGE == 0;
        if !may_be_unfinished {
            return Ok(bytes);
        }
        return match settle(path, Stamp::of(&after))? {
            Settled::Quiet if std::fs::read(path)? == bytes => Ok(bytes),
            _ => Err(changed()),
        };
    }
    Err(changed())
}

enum Settled {
    Quiet,
    Changed,
}

/// Waits until the file stamped `stamp` has been unchanged for [`QUIET`]
/// since its last change, or has changed.
fn settle(path: &Path, stamp: Stamp) -> std::io::Result<Settled> {
    loop {
        let now = SystemTime::now();
        let quiet = now.duration_since(stamp.changed).unwrap_or_default();
        if quiet >= QUIET {
            // The file may have changed in the last poll's interval.
            let again = Stamp::of(&std::fs::metadata(path)?);
            return Ok(if again == stamp {
                Settled::Quiet
            } else {
                Settled::Changed
            });
        }
        std::thread::sleep(POLL.min(QUIET - quiet));
        if Stamp::of(&std::fs::metadata(path)?) != stamp {
            return Ok(Settled::Changed);
        }
    }
}

/// What every write moves: the size, the modification time and the inode
/// change time (which moves even for a write that keeps the size and lands
/// within the modification time's granularity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    changed: SystemTime,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        let changed = SystemTime::UNIX_EPOCH
            .checked_add(Duration::new(
                meta.ctime().max(0) as u64,
                meta.ctime_nsec().clamp(0, 999_999_999) as u32,
            ))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            changed,
        }
    }
}
