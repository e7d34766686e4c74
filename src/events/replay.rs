//! Refusing a replayed event: every accepted event id is remembered until
//! its envelope expires.
//!
//! Memory is bounded: at `capacity` unexpired ids, a new event is refused
//! ([`Refusal::ReplayCacheFull`]) rather than an old id forgotten, since
//! forgetting one would let it be replayed. Ids are kept as 16 bytes of
//! their SHA-256 with their expiry (about 80 bytes each with the indexes).
//!
//! With a log file, each accepted id is appended (`EXPIRY ID`) before it is
//! answered, and the unexpired ones are read back at start: a replay is
//! refused across a restart or a crash of the process. The write is not
//! synced to disk, so a power loss may forget the last ids. Without a log,
//! ids live as long as the process. Either way the memory is this
//! replica's: replicas that each verify events need a shared store to
//! refuse a replay sent to another replica (see docs/events.md).

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::envelope::{Refusal, MAX_ID_LEN};

/// Ids remembered at most, by default: 1M ids, about 80 MiB.
pub const DEFAULT_REPLAY_CAPACITY: usize = 1_000_000;

type Key = [u8; 16];

/// The ids of accepted events that have not expired yet.
pub struct ReplayGuard {
    state: Mutex<Seen>,
    capacity: usize,
}

struct Seen {
    expiry: HashMap<Key, u64>,
    /// (expiry, key), oldest first: what to forget next.
    by_expiry: BTreeSet<(u64, Key)>,
    log: Option<Log>,
}

struct Log {
    path: PathBuf,
    file: File,
    /// Lines in the file: past twice the ids remembered, it is compacted.
    lines: usize,
}

/// Lines a log may hold beyond twice the ids remembered before it is
/// compacted.
const LOG_SLACK: usize = 4096;

/// Writes the log at `path` anew with `entries`, by rename, and opens it
/// for appending.
fn write_log(path: &Path, entries: impl Iterator<Item = (u64, String)>) -> std::io::Result<Log> {
    let staging = path.with_extension("compacting");
    let mut lines = 0;
    {
        let mut text = String::new();
        for (expiry, id) in entries {
            text.push_str(&format!("{expiry} {id}\n"));
            lines += 1;
        }
        let mut out = File::create(&staging)?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
    }
    // A crash now leaves the old log or the new one, never half of one.
    std::fs::rename(&staging, path)?;
    let file = OpenOptions::new().append(true).open(path)?;
    Ok(Log {
        path: path.to_path_buf(),
        file,
        lines,
    })
}

fn key(id: &str) -> Key {
    let digest = Sha256::digest(id.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

impl ReplayGuard {
    /// Remembers ids in memory only.
    pub fn new(capacity: usize) -> Self {
        ReplayGuard {
            state: Mutex::new(Seen {
                expiry: HashMap::new(),
                by_expiry: BTreeSet::new(),
                log: None,
            }),
            capacity,
        }
    }

    /// Remembers ids in memory and in the log at `path`: the unexpired ids
    /// it holds are read back, and the file is rewritten with only those.
    pub fn with_log(path: &Path, capacity: usize, now: u64) -> std::io::Result<Self> {
        let guard = ReplayGuard::new(capacity);
        let mut kept: Vec<(u64, String)> = Vec::new();
        match File::open(path) {
            Ok(file) => {
                for line in BufReader::new(file).lines() {
                    let line = line?;
                    // A torn last line (a crash mid-write) is skipped.
                    let Some((expiry, id)) = line.split_once(' ') else {
                        continue;
                    };
                    let Ok(expiry) = expiry.parse::<u64>() else {
                        continue;
                    };
                    if expiry > now && !id.is_empty() && id.len() <= MAX_ID_LEN {
                        kept.push((expiry, id.to_owned()));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let log = write_log(path, kept.iter().cloned())?;
        {
            let mut seen = guard.lock();
            for (expiry, id) in &kept {
                seen.insert(key(id), *expiry);
            }
            seen.log = Some(log);
        }
        Ok(guard)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        // A panic while holding it left whole entries: keep using them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Accepts `id` (which expires at `expires_at`) the first time only.
    pub fn first_use(&self, id: &str, expires_at: u64, now: u64) -> Result<(), Refusal> {
        let key = key(id);
        let mut seen = self.lock();
        seen.forget_expired(now);
        if seen.expiry.contains_key(&key) {
            return Err(Refusal::Replayed);
        }
        if seen.expiry.len() >= self.capacity {
            return Err(Refusal::ReplayCacheFull);
        }
        if let Some(log) = &mut seen.log {
            log.file
                .write_all(format!("{expires_at} {id}\n").as_bytes())
                .map_err(|e| Refusal::ReplayLog(format!("{}: {e}", log.path.display())))?;
            log.lines += 1;
        }
        seen.insert(key, expires_at);
        seen.compact_log();
        Ok(())
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.lock().expiry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Seen {
    fn insert(&mut self, key: Key, expiry: u64) {
        if self.expiry.insert(key, expiry).is_none() {
            self.by_expiry.insert((expiry, key));
        }
    }

    /// Rewrites the log with the ids remembered once it holds many more
    /// lines (expired ids) than that. The log keeps ids, memory only their
    /// digests, so the ids are the ones in the log still unexpired.
    fn compact_log(&mut self) {
        let live = self.expiry.len();
        let Some(log) = &self.log else {
            return;
        };
        if log.lines <= 2 * live + LOG_SLACK {
            return;
        }
        let path = log.path.clone();
        let Ok(file) = File::open(&path) else {
            return;
        };
        let expiry = &self.expiry;
        let live_lines: Vec<(u64, String)> = BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| {
                let (at, id) = line.split_once(' ')?;
                let at = at.parse::<u64>().ok()?;
                (expiry.get(&key(id)) == Some(&at)).then(|| (at, id.to_owned()))
            })
            .collect();
        // On failure the old log stays whole and is appended to as before.
        if let Ok(compacted) = write_log(&path, live_lines.into_iter()) {
            self.log = Some(compacted);
        }
    }

    fn forget_expired(&mut self, now: u64) {
        while let Some(&(expiry, key)) = self.by_expiry.first() {
            if expiry > now {
                break;
            }
            self.by_expiry.pop_first();
            self.expiry.remove(&key);
        }
    }
}
