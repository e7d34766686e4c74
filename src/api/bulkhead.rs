//! The API's decision work, kept where it cannot slow Envoy's checks.
//!
//! The gRPC check path, the admin port and the API share one tokio runtime
//! (two workers on a two-core machine). A batch of evaluations or a search
//! is CPU work that never awaits, and its size is the caller's choice: run
//! on a worker, it holds that worker until it ends, and two such requests
//! at once hold every worker, so checks queue behind them and time out at
//! Envoy. So batches and searches run on a pool of their own: [`api_decision_threads`] OS threads (half the
//! cores, at least one) at a lower CPU priority (nice +10), fed by a
//! bounded queue. When the pool is busy and the queue full, a request is
//! refused at once (503), never queued without bound. A runtime worker
//! only parses, authenticates and waits.
//!
//! One evaluation of a check's size (`evaluate::INLINE_BODY_BYTES`) is not
//! sent here: its work is a check's, and the services asking are as
//! latency-bound as Envoy (the hop to a niced thread doubled its latency
//! under load). It is decided on the runtime, beside the checks. Each job also carries a deadline
//! ([`REQUEST_TIME_BUDGET`]): a batch checks it between items and stops.
//!
//! A job is a future: each pool thread drives one job at a time to its end
//! on a current-thread runtime of its own (timers only), so a decision that
//! waits for the grants database waits on the pool, not on the runtime that
//! answers checks, and the pool bounds database work as it bounds CPU work.
//! Connections to the database are still made on the main runtime (the
//! grants store does that), so none is tied to a pool thread.
//!
//! Why not `spawn_blocking`: tokio's blocking pool is shared with file I/O
//! and grows to 512 threads, so it bounds nothing, and a thread's priority
//! cannot be lowered for one job and raised back.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Longest time one API request's decisions may take on the pool; then a
/// batch stops between items and the request is refused (503). Advertised
/// in the metadata (`max_request_time_ms`).
pub const REQUEST_TIME_BUDGET: Duration = Duration::from_secs(2);

/// Requests that may wait for a pool thread; more are refused (503).
pub(crate) const QUEUE_LENGTH: usize = 64;

/// The pool's threads: half the machine's cores, at least one, so the
/// other half is left to the runtime that answers checks.
pub fn api_decision_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() / 2)
        .unwrap_or(1)
        .max(1)
}

type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// Why a job did not run to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the API is busy: every decision thread is taken and {QUEUE_LENGTH} requests wait; retry later")]
    Busy,
    #[error("the request failed inside the decision pool")]
    Failed,
}

/// A bounded pool of decision threads. Dropping the last handle ends the
/// threads once the queue is empty.
pub struct Bulkhead {
    jobs: SyncSender<Job>,
}

impl std::fmt::Debug for Bulkhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bulkhead")
    }
}

impl Bulkhead {
    /// Starts `threads` decision threads.
    pub fn new(threads: usize) -> std::io::Result<Bulkhead> {
        let (jobs, queue) = sync_channel::<Job>(QUEUE_LENGTH);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()?;
            std::thread::Builder::new()
                .name(format!("portcullis-api-{i}"))
                .spawn(move || work(&queue, &runtime))?;
        }
        Ok(Bulkhead { jobs })
    }

    /// Queues `job` for a pool thread (refused at once when the queue is
    /// full) and returns its answer to come. `job` is given its deadline.
    pub fn run<T, F, J>(&self, job: J) -> impl Future<Output = Result<T, Refused>> + Send + 'static
    where
        T: Send + 'static,
        F: Future<Output = T> + 'static,
        J: FnOnce(Instant) -> F + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move || {
            Box::pin(async move {
                // The deadline counts from when a thread takes the job.
                let deadline = Instant::now() + REQUEST_TIME_BUDGET;
                let _ = answer.send(job(deadline).await);
            })
        });
        let queued = match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Refused::Busy),
            Err(TrySendError::Disconnected(_)) => Err(Refused::Failed),
        };
        async move {
            queued?;
            answered.await.map_err(|_| Refused::Failed)
        }
    }
}

fn work(queue: &Mutex<Receiver<Job>>, runtime: &tokio::runtime::Runtime) {
    lower_priority();
    loop {
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            return;
        };
        // A panic drops the job's answer: the request is refused (Failed).
        if catch_unwind(AssertUnwindSafe(|| runtime.block_on(job()))).is_err() {
            tracing::error!("an API request panicked in the decision pool");
        }
    }
}

/// Nice +10 for this thread (on Linux a thread's nice value is its own):
/// under contention the scheduler prefers the runtime's threads.
pub(crate) fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take and return plain integers;
        // setpriority on our own thread id changes only this thread.
        let outcome = unsafe {
            let tid = libc::syscall(libc::SYS_gettid);
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10)
        };
        if outcome != 0 {
            tracing::debug!("cannot lower the priority of an API decision thread");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_and_a_full_queue_refuses() {
        let pool = Bulkhead::new(1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pool.run(|_| async { 2 + 2 }).await, Ok(4));
        // Hold the one thread, fill the queue, then one more is refused.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = oneshot::channel::<()>();
        let holding = pool.run(move |_| async move {
            let _ = started.send(());
            let _ = held.recv();
        });
        let _ = running.await;
        let waiting: Vec<_> = (0..QUEUE_LENGTH).map(|_| pool.run(|_| async {})).collect();
        assert_eq!(pool.run(|_| async {}).await, Err(Refused::Busy));
        let _ = release.send(());
        assert_eq!(holding.await, Ok(()));
        for w in waiting {
            assert_eq!(w.await, Ok(()));
        }
        assert_eq!(
            pool.run(|_| async { panic!("boom") }).await,
            Err(Refused::Failed)
        );
        // The one thread and its runtime outlive the panic: the next job
        // runs, awaiting a timer on that runtime.
        let after = pool.run(|_| async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            7
        });
        assert_eq!(after.await, Ok(7));
    }
}
