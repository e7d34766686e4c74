//! Waiting for something a test caused, with a deadline: poll for the
//! awaited event and fail the test when the deadline passes first, never
//! sleep a fixed time and then assert.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `done` every 10 ms until it holds; fails the test, naming `what`,
/// when `within` passes first. Returns the time it took.
pub fn eventually(within: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if done() {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`eventually`] for async tests: awaits `done` every 50 ms (each try may
/// be a whole handshake) without blocking the runtime.
pub async fn eventually_async<F, Fut>(within: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < within {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {within:?}");
}

/// Waits (at most 10 s) until `log()` holds `needle`, and returns it. Log
/// lines reach stderr through a queue drained every 20 ms, so a line
/// about something that just happened is waited for, not read at once.
pub fn wait_for_log(log: impl Fn() -> String, needle: &str) -> String {
    let limit = Duration::from_secs(10);
    let started = Instant::now();
    loop {
        let text = log();
        if text.contains(needle) {
            return text;
        }
        if started.elapsed() > limit {
            panic!("no {needle:?} logged within {limit:?}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
