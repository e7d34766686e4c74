//! Where `serve`'s log lines go: a bounded queue that one writer thread
//! drains to stderr in batches.
//!
//! A check never waits on stderr, nor wakes a thread: writing a line only
//! queues it, and the writer thread wakes on its own every
//! [`DRAIN_INTERVAL`] to write everything queued in as few writes as it
//! can. When the queue is full (a log collector that stalls, a flood of
//! denies) the line is dropped and counted
//! (`portcullis_log_lines_dropped_total`), so nothing but the log slows
//! down. Operational lines and decision lines share the queue, so they
//! reach stderr in the order they were written.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Lines the queue holds before it drops: a few MiB of decision lines at
/// most, and far more than arrive in one drain interval at full load.
pub(crate) const QUEUE_LINES: usize = 4096;

/// How often the writer thread writes what is queued: the most a line
/// waits, and few enough wake-ups to cost nothing.
pub(crate) const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// A batch is written once it holds this much.
const BATCH_BYTES: usize = 64 << 10;

/// The queue to stderr. Clones share it. [`LogLines::close`] (or dropping
/// the last clone) writes what is still queued and stops the writer thread.
#[derive(Clone)]
pub struct LogLines {
    shared: Arc<Shared>,
}

struct Shared {
    sender: SyncSender<Vec<u8>>,
    dropped: AtomicU64,
    closing: Arc<AtomicBool>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(writer) = writer {
            writer.thread().unpark();
            let _ = writer.join();
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.close();
    }
}

impl LogLines {
    /// A queue to this process's stderr, with its writer thread.
    pub fn stderr() -> Self {
        Self::to(io::stderr())
    }

    /// A queue to `sink`, with its writer thread. If the thread cannot be
    /// started, lines are dropped and counted rather than written on the
    /// caller's thread.
    pub fn to(sink: impl Write + Send + 'static) -> Self {
        let (sender, receiver) = mpsc::sync_channel(QUEUE_LINES);
        let closing = Arc::new(AtomicBool::new(false));
        let writer = {
            let closing = closing.clone();
            std::thread::Builder::new()
                .name("portcullis-log".into())
                .spawn(move || drain(receiver, sink, &closing))
                .ok()
        };
        Self {
            shared: Arc::new(Shared {
                sender,
                dropped: AtomicU64::new(0),
                closing,
                writer: Mutex::new(writer),
            }),
        }
    }

    /// Writes what is queued and stops the writer thread; lines queued
    /// afterwards are dropped and counted. For the end of `serve`, whose
    /// last lines would otherwise die with the process.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Queues `line` (one whole line, ending in `\n`). Never blocks: a
    /// full queue drops it and counts it.
    pub(crate) fn write_line(&self, line: Vec<u8>) {
        if self.shared.closing.load(Ordering::Relaxed) {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.shared.sender.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lines dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Sends every `tracing` event of this process (JSON, filtered by
    /// `PORTCULLIS_LOG`, `info` by default) through this queue.
    pub(crate) fn install_global(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let lines = self.clone();
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(move || EventWriter(lines.clone()))
            .try_init();
    }
}

/// What `tracing` writes one event through: its formatter hands over the
/// whole line in one `write`.
struct EventWriter(LogLines);

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_line(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The writer thread: every [`DRAIN_INTERVAL`], everything queued, in
/// batches; once more when closing, then it ends.
fn drain(receiver: Receiver<Vec<u8>>, sink: impl Write, closing: &AtomicBool) {
    let mut sink = io::BufWriter::with_capacity(BATCH_BYTES, sink);
    loop {
        // Read before draining, so a line queued before `close` is written.
        let last = closing.load(Ordering::Acquire);
        let disconnected = loop {
            match receiver.try_recv() {
                // A write error (a closed stderr) loses the line; there is
                // nowhere left to report it.
                Ok(line) => drop(sink.write_all(&line)),
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        let _ = sink.flush();
        if last || disconnected {
            return;
        }
        std::thread::park_timeout(DRAIN_INTERVAL);
    }
}

impl fmt::Debug for LogLines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogLines")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::Sender;

    /// A sink that tells when its first write began, holds it until
    /// released, and keeps everything written.
    struct Held {
        started: Option<Sender<()>>,
        release: Receiver<()>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Held {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(started) = self.started.take() {
                let _ = started.send(());
                let _ = self.release.recv();
            }
            self.written
                .lock()
                .map_err(|_| io::ErrorKind::Other)?
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_close_writes_the_rest_in_order() -> Result<(), String> {
        let (started, has_started) = mpsc::channel();
        let (release, released) = mpsc::channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        // A batch the size of the buffer goes to the sink at once, so the
        // first line alone fills it and the writer blocks in the sink.
        let lines = LogLines::to(Held {
            started: Some(started),
            release: released,
            written: written.clone(),
        });
        lines.write_line(vec![b'x'; BATCH_BYTES]);
        has_started.recv().map_err(|e| e.to_string())?;
        for i in 0..QUEUE_LINES + 10 {
            lines.write_line(format!("{i}\n").into_bytes());
        }
        assert_eq!(lines.dropped(), 10);
        release.send(()).map_err(|e| e.to_string())?;
        lines.close();
        let written = written.lock().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&written[BATCH_BYTES..]);
        let kept: Vec<String> = text.lines().map(str::to_owned).collect();
        let expected: Vec<String> = (0..QUEUE_LINES).map(|i| i.to_string()).collect();
        assert_eq!(kept, expected);
        lines.write_line(b"late\n".to_vec());
        assert_eq!(lines.dropped(), 11);
        Ok(())
    }
}
