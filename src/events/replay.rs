//! Refusing a replayed event: every accepted event id is remembered until
//! its envelope expires.
//!
//! Memory is bounded: at `capacity` unexpired ids, a new event is refused
//! ([`Refusal::ReplayCacheFull`]) rather than an old id forgotten, since
//! forgetting one would let it be replayed. The capacity is shared fairly:
//! each consumer (an envelope's audience, over HTTP the verifying caller)
//! holds at most `capacity / consumers` ids ([`Refusal::ReplayCallerFull`]
//! past it), so one caller consuming its own events can never fill the
//! memory every other worker needs. Ids are kept as 16 bytes of their
//! SHA-256 with their expiry and consumer (about 100 bytes each with the
//! indexes).
//!
//! With a log file, each accepted id is appended before it is answered,
//! one framed line per id: `EXPIRY AUDIENCE ID CHECK`, where `CHECK` is 8
//! hex digits of the SHA-256 of the rest. Reading it back at start keeps
//! only lines whose check and fields are valid, so garbage never reads as
//! an id. A write that fails part way (a full disk) is cut off again
//! (truncation to the end of the last whole line), so the next id starts
//! on a line of its own; if even that fails, the next line is written
//! after a newline of its own. At start, a line that fails its check is
//! searched for a valid line glued to its end (what a torn write left
//! when neither worked), a bad last line without its newline (a crash
//! mid-write: its id was never answered) is cut, and any other bad line
//! is skipped and counted ([`LoadReport`]) rather than refusing to start:
//! it holds no id that can be read, and refusing would take every check of
//! the replica down for a fault of the events log alone. The write is not
//! synced to disk, so a power loss may forget the last ids. Without a log,
//! ids live as long as the process. Either way the memory is this
//! replica's, and a log belongs to one process: with a grants database,
//! [`Replay::Database`](super::Replay) keeps the ids there instead, once
//! across replicas (see docs/events.md).

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::envelope::{is_audience, is_event_id, Refusal};

/// Ids remembered at most, by default: 1M ids, about 100 MiB.
pub const DEFAULT_REPLAY_CAPACITY: usize = 1_000_000;

/// The longest line a log holds (expiry, a 256-byte audience, a 64-byte
/// id, the check, separators), with room; longer lines are searched only
/// in their last this many bytes.
const MAX_LINE: usize = 512;

type Key = [u8; 16];

/// The ids of accepted events that have not expired yet.
pub struct ReplayGuard {
    state: Mutex<Seen>,
    capacity: usize,
    loaded: LoadReport,
}

/// What reading a log back found, for the start-up log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Unexpired ids read back.
    pub kept: usize,
    /// Valid lines whose ids had expired.
    pub expired: usize,
    /// The last line was torn (no newline, or invalid): cut.
    pub torn_tail: bool,
    /// Valid lines found glued to the end of a bad one, and kept.
    pub recovered: usize,
    /// Other lines that held nothing valid: skipped.
    pub bad_lines: usize,
    /// The 1-based number of the first such line.
    pub first_bad_line: Option<usize>,
}

struct Entry {
    expiry: u64,
    consumer: Arc<str>,
}

struct Seen {
    expiry: HashMap<Key, Entry>,
    /// (expiry, key), oldest first: what to forget next.
    by_expiry: BTreeSet<(u64, Key)>,
    /// Ids held per consumer.
    held: HashMap<Arc<str>, usize>,
    log: Option<Log>,
}

struct Log {
    path: PathBuf,
    file: File,
    /// Lines in the file: past twice the ids remembered, it is compacted.
    lines: usize,
    /// Bytes up to the end of the last whole line written.
    good_len: u64,
    /// A write failed and could not be cut off: the next line starts with
    /// a newline, so it is never glued to the torn one.
    torn: bool,
}

/// Lines a log may hold beyond twice the ids remembered before it is
/// compacted.
const LOG_SLACK: usize = 4096;

/// One remembered id as the log frames it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    expiry: u64,
    /// Empty for an id read from a log written before consumers were
    /// recorded: it counts against the capacity, not a consumer's share.
    consumer: String,
    id: String,
}

fn check(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    crate::events::envelope::hex(&digest[..4])
}

impl Record {
    /// The line, newline included.
    fn line(&self) -> String {
        let body = format!("{} {} {}", self.expiry, self.consumer, self.id);
        let check = check(&body);
        format!("{body} {check}\n")
    }

    /// A whole line (without its newline), strictly: every field valid
    /// and the check matching. A line of the log format before checks
    /// (`EXPIRY ID`) is read when its fields are valid.
    fn parse(line: &str) -> Option<Record> {
        let fields: Vec<&str> = line.split(' ').collect();
        let expiry = |text: &str| {
            (!text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse::<u64>().ok())
                .flatten()
        };
        match fields.as_slice() {
            [at, consumer, id, sum] => {
                let body = &line[..line.len() - sum.len() - 1];
                if *sum != check(body)
                    || !(consumer.is_empty() || is_audience(consumer))
                    || !is_event_id(id)
                {
                    return None;
                }
                Some(Record {
                    expiry: expiry(at)?,
                    consumer: (*consumer).to_owned(),
                    id: (*id).to_owned(),
                })
            }
            [at, id] if is_event_id(id) => Some(Record {
                expiry: expiry(at)?,
                consumer: String::new(),
                id: (*id).to_owned(),
            }),
            _ => None,
        }
    }

    /// A valid line glued to the end of `line` (a torn write followed by
    /// a whole one): the longest suffix that parses with a matching check. Legacy lines are not searched for: without
    /// a check a suffix of garbage could read as one.
    fn recover(line: &str) -> Option<Record> {
        let start = line.len().saturating_sub(MAX_LINE);
        let bytes = line.as_bytes();
        (start.max(1)..line.len())
            // Every digit may start the glued line (the torn one may end
            // in digits): the check tells which does.
            .filter(|&i| line.is_char_boundary(i) && bytes[i].is_ascii_digit())
            .find_map(|i| {
                let tail = &line[i..];
                (tail.split(' ').count() == 4)
                    .then(|| Record::parse(tail))
                    .flatten()
            })
    }
}

/// Writes the log at `path` anew with `records`, by rename, and opens it
/// for appending.
fn write_log<'r>(path: &Path, records: impl Iterator<Item = &'r Record>) -> std::io::Result<Log> {
    let staging = path.with_extension("compacting");
    let mut lines = 0;
    let mut text = String::new();
    for record in records {
        text.push_str(&record.line());
        lines += 1;
    }
    {
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
        good_len: text.len() as u64,
        torn: false,
    })
}

/// Reads the records of the log at `path` (none if it does not exist).
fn read_log(path: &Path, now: u64) -> std::io::Result<(Vec<Record>, LoadReport)> {
    let mut report = LoadReport::default();
    let mut kept = Vec::new();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((kept, report)),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        number += 1;
        let terminated = buf.last() == Some(&b'\n');
        if terminated {
            buf.pop();
        }
        let text = String::from_utf8_lossy(&buf);
        let record = match Record::parse(&text) {
            Some(record) => Some(record),
            None => {
                let recovered = Record::recover(&text);
                if recovered.is_some() {
                    report.recovered += 1;
                }
                recovered
            }
        };
        match record {
            Some(record) if record.expiry > now => kept.push(record),
            Some(_) => report.expired += 1,
            None if !terminated => report.torn_tail = true,
            None if text.is_empty() => {}
            None => {
                report.bad_lines += 1;
                report.first_bad_line.get_or_insert(number);
            }
        }
    }
    // A torn write of a line that was never answered, then no newline:
    // recorded as cut, whatever it held.
    report.kept = kept.len();
    Ok((kept, report))
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
                held: HashMap::new(),
                log: None,
            }),
            capacity,
            loaded: LoadReport::default(),
        }
    }

    /// Remembers ids in memory and in the log at `path`: the unexpired ids
    /// it holds are read back, and the file is rewritten with only those.
    pub fn with_log(path: &Path, capacity: usize, now: u64) -> std::io::Result<Self> {
        let mut guard = ReplayGuard::new(capacity);
        let (kept, report) = read_log(path, now)?;
        let log = write_log(path, kept.iter())?;
        {
            let mut seen = guard.lock();
            for record in &kept {
                seen.insert(key(&record.id), record.expiry, &record.consumer);
            }
            seen.log = Some(log);
        }
        guard.loaded = report;
        Ok(guard)
    }

    /// What reading the log back found (all zero without a log).
    pub fn load_report(&self) -> &LoadReport {
        &self.loaded
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        // A panic while holding it left whole entries: keep using them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Accepts `id` (which expires at `expires_at`), consumed by
    /// `consumer`, the first time only. `consumers`: how many consumers
    /// share the capacity; each holds at most its share of it.
    pub fn first_use(
        &self,
        consumer: &str,
        id: &str,
        expires_at: u64,
        now: u64,
        consumers: usize,
    ) -> Result<(), Refusal> {
        let key = key(id);
        let mut seen = self.lock();
        seen.forget_expired(now);
        if seen.expiry.contains_key(&key) {
            return Err(Refusal::Replayed);
        }
        if seen.expiry.len() >= self.capacity {
            return Err(Refusal::ReplayCacheFull);
        }
        if seen.held.get(consumer).copied().unwrap_or(0) >= self.share(consumers) {
            return Err(Refusal::ReplayCallerFull);
        }
        if let Some(log) = &mut seen.log {
            let record = Record {
                expiry: expires_at,
                consumer: consumer.to_owned(),
                id: id.to_owned(),
            };
            log.append(&record.line(), |file, bytes| file.write_all(bytes))?;
        }
        seen.insert(key, expires_at, consumer);
        seen.compact_log();
        Ok(())
    }

    /// The most ids one of `consumers` consumers may hold: an equal part
    /// of the capacity (at least one), so the shares never add up to more
    /// than the capacity and a consumer under its share always has room.
    pub fn share(&self, consumers: usize) -> usize {
        (self.capacity / consumers.max(1)).max(1)
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.lock().expiry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Log {
    /// Appends `line` with `write`; on failure cuts the file back to its
    /// last whole line, so no id is ever glued to a torn one.
    fn append(
        &mut self,
        line: &str,
        write: impl FnOnce(&mut File, &[u8]) -> std::io::Result<()>,
    ) -> Result<(), Refusal> {
        let framed;
        let bytes = if self.torn {
            framed = format!("\n{line}");
            framed.as_bytes()
        } else {
            line.as_bytes()
        };
        match write(&mut self.file, bytes) {
            Ok(()) => {
                self.good_len += bytes.len() as u64;
                self.lines += 1;
                self.torn = false;
                Ok(())
            }
            Err(e) => {
                // Appends go to the end, so after this the next line
                // starts where the last whole one ended.
                if self.file.set_len(self.good_len).is_err() {
                    self.torn = true;
                }
                Err(Refusal::ReplayLog(format!("{}: {e}", self.path.display())))
            }
        }
    }
}

impl Seen {
    fn insert(&mut self, key: Key, expiry: u64, consumer: &str) {
        if self.expiry.contains_key(&key) {
            return;
        }
        // One allocation per consumer, shared by all its entries.
        let consumer = match self.held.get_key_value(consumer) {
            Some((name, _)) => name.clone(),
            None => Arc::from(consumer),
        };
        *self.held.entry(consumer.clone()).or_insert(0) += 1;
        self.expiry.insert(key, Entry { expiry, consumer });
        self.by_expiry.insert((expiry, key));
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
        let Ok((records, _)) = read_log(&path, 0) else {
            return;
        };
        let expiry = &self.expiry;
        let live_records: Vec<Record> = records
            .into_iter()
            .filter(|r| expiry.get(&key(&r.id)).map(|e| e.expiry) == Some(r.expiry))
            .collect();
        // On failure the old log stays whole and is appended to as before.
        if let Ok(compacted) = write_log(&path, live_records.iter()) {
            self.log = Some(compacted);
        }
    }

    fn forget_expired(&mut self, now: u64) {
        while let Some(&(expiry, key)) = self.by_expiry.first() {
            if expiry > now {
                break;
            }
            self.by_expiry.pop_first();
            if let Some(entry) = self.expiry.remove(&key) {
                if let Some(held) = self.held.get_mut(&entry.consumer) {
                    *held -= 1;
                    if *held == 0 {
                        self.held.remove(&entry.consumer);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Record {
        Record {
            expiry: 1_700_000_600,
            consumer: "worker".into(),
            id: id.into(),
        }
    }

    #[test]
    fn a_line_reads_back_only_whole_and_unaltered() {
        let line = record("abc").line();
        let text = line.trim_end_matches('\n');
        assert_eq!(Record::parse(text), Some(record("abc")));
        // Any byte changed, dropped or added: not a line.
        assert_eq!(Record::parse(&text.replace("abc", "abd")), None);
        assert_eq!(Record::parse(&text[..text.len() - 1]), None);
        assert_eq!(Record::parse(&format!("1{text}")), None);
        // A torn line glued to a whole one: the whole one is found.
        let glued = format!("1700000600 wor{text}");
        assert_eq!(Record::parse(&glued), None);
        assert_eq!(Record::recover(&glued), Some(record("abc")));
        let glued = format!("17000{text}");
        assert_eq!(Record::recover(&glued), Some(record("abc")));
        // The format before checks still reads (an upgrade keeps its ids).
        assert_eq!(
            Record::parse("1700000600 abc"),
            Some(Record {
                consumer: String::new(),
                ..record("abc")
            })
        );
        assert_eq!(Record::parse("1700000600 a b c"), None);
        assert_eq!(Record::parse("1700000600 ab/c"), None);
    }

    #[test]
    fn a_failed_write_is_cut_off_and_the_next_id_is_read_back() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("replay.log");
        let now = 1_700_000_000;
        let guard = ReplayGuard::with_log(&path, 100, now).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            guard.first_use("worker", "first", now + 600, now, 1),
            Ok(())
        );
        // The disk fills part way through the second id's line.
        {
            let mut seen = guard.lock();
            let Some(log) = seen.log.as_mut() else {
                panic!("no log");
            };
            let torn = log.append(&record("second").line(), |file, bytes| {
                file.write_all(&bytes[..7])?;
                Err(std::io::Error::other("no space left on device"))
            });
            assert!(matches!(torn, Err(Refusal::ReplayLog(_))), "{torn:?}");
        }
        assert_eq!(
            guard.first_use("worker", "third", now + 600, now, 1),
            Ok(())
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text.lines().count(), 2, "{text}");
        drop(guard);
        let again = ReplayGuard::with_log(&path, 100, now + 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.load_report().kept, 2);
        assert_eq!(again.load_report().bad_lines, 0);
        for id in ["first", "third"] {
            assert_eq!(
                again.first_use("worker", id, now + 600, now + 1, 1),
                Err(Refusal::Replayed)
            );
        }
        // The torn id was refused, never answered: it may be consumed.
        assert_eq!(
            again.first_use("worker", "second", now + 600, now + 1, 1),
            Ok(())
        );
    }

    #[test]
    fn a_consumers_share_is_read_back_with_its_ids_and_freed_as_they_expire() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("replay.log");
        let now = 1_700_000_000;
        let guard = ReplayGuard::with_log(&path, 4, now).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(guard.share(2), 2);
        assert_eq!(guard.first_use("worker", "a", now + 10, now, 2), Ok(()));
        assert_eq!(guard.first_use("worker", "b", now + 600, now, 2), Ok(()));
        drop(guard);
        let again = ReplayGuard::with_log(&path, 4, now).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            again.first_use("worker", "c", now + 600, now, 2),
            Err(Refusal::ReplayCallerFull)
        );
        assert_eq!(again.first_use("mailer", "d", now + 600, now, 2), Ok(()));
        // Once "a" expires the worker has room again.
        assert_eq!(
            again.first_use("worker", "c", now + 600, now + 10, 2),
            Ok(())
        );
    }

    #[test]
    fn when_the_cut_fails_the_next_line_starts_on_its_own() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("replay.log");
        let now = 1_700_000_000;
        let guard = ReplayGuard::with_log(&path, 100, now).unwrap_or_else(|e| panic!("{e}"));
        {
            let mut seen = guard.lock();
            let Some(log) = seen.log.as_mut() else {
                panic!("no log");
            };
            let _ = log.append(&record("torn").line(), |file, bytes| {
                file.write_all(&bytes[..9])?;
                Err(std::io::Error::other("no space left on device"))
            });
            // As if the truncation had failed too.
            log.file
                .write_all(b"1700000")
                .unwrap_or_else(|e| panic!("{e}"));
            log.torn = true;
        }
        assert_eq!(guard.first_use("worker", "next", now + 600, now, 1), Ok(()));
        drop(guard);
        let again = ReplayGuard::with_log(&path, 100, now + 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            again.first_use("worker", "next", now + 600, now + 1, 1),
            Err(Refusal::Replayed)
        );
        assert_eq!(again.load_report().bad_lines, 1);
    }
}
