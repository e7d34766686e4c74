//! Shadow policies (`serve --shadow-policies DIR`): every ext_authz check
//! decided by a candidate policy too, off the request path, never changing
//! the answer.
//!
//! The served check hands [`Shadow::offer`] its question (a [`Question`]:
//! the owned request, read by the adapter only on the worker) and its
//! decision once it has its answer; `offer` only tries to queue them
//! (a bounded channel): when the queue is full the check is counted as
//! dropped (`portcullis_shadow_dropped_total`), never waited for. One
//! worker thread at a lower CPU priority (nice +10) reads the request with
//! the adapter against the candidate's condition headers and decides it
//! with the engine over the candidate snapshot (its own [`PolicyHandle`],
//! loaded and reloaded by the one loader and the same reloader as the
//! served policy) and its file grants. The caller is the principal the
//! served decision verified (its issuer must be one the candidate's
//! application trusts); a token the served decision did not verify (a
//! public route, a refused token) is verified against the candidate's
//! issuers, on the worker.
//!
//! A disagreement is a different effect (allow, deny; a dry-run
//! `would_deny` is a deny): counted by application, from and to
//! (`portcullis_shadow_disagreements_total`), kept among the
//! [`RECENT_DISAGREEMENTS`] latest for [`Shadow::summary`] (what the
//! console shows), and logged on the `shadow` target, at most
//! [`LOGGED_PER_SECOND`] lines a second.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use serde::Serialize;

use crate::engine::{Authenticate, Decision, DenyStatus, Reason, VerifyEveryTime};
use crate::policy::{PolicyHandle, PolicySet};
use crate::replay::Effect;
use crate::token::{Principal, TokenError};

/// Checks waiting for the shadow worker before new ones are dropped.
pub const SHADOW_QUEUE: usize = 4096;

/// Disagreements kept for [`Shadow::summary`].
pub const RECENT_DISAGREEMENTS: usize = 50;

/// Most disagreement lines logged in one second (all are counted).
pub const LOGGED_PER_SECOND: u64 = 10;

/// A served check asked again: decides it against the policy given, with
/// the caller given, at the time given. Built by the server around the
/// request it owns (protocol types stay in the server and the adapter).
pub type Question = Box<dyn FnOnce(&PolicySet, &dyn Authenticate, u64) -> Asked + Send>;

/// A [`Question`]'s answer.
pub struct Asked {
    pub decision: Decision,
    /// The request's `x-request-id`, for the log.
    pub request_id: String,
}

/// One served check for the shadow worker.
struct Job {
    question: Question,
    served: Arc<Decision>,
    now: u64,
}

/// The candidate policy decided beside the served one.
pub struct Shadow {
    running: OnceLock<Running>,
    state: Arc<State>,
}

/// The candidate and the worker's queue, once started.
struct Running {
    policy: PolicyHandle,
    queue: SyncSender<Job>,
}

#[derive(Default)]
struct State {
    decided: AtomicU64,
    dropped: AtomicU64,
    disagreements: Mutex<BTreeMap<DisagreementKey, u64>>,
    recent: Mutex<VecDeque<Disagreement>>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, EncodeLabelSet)]
struct DisagreementKey {
    application: String,
    from: &'static str,
    to: &'static str,
}

/// One check the candidate would answer otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disagreement {
    /// Seconds since the epoch of the check.
    pub time: u64,
    pub application: String,
    pub route: String,
    pub request_id: String,
    /// What was answered (`allow`, `deny`) and why.
    pub from: &'static str,
    pub served_reason: &'static str,
    /// What the candidate would answer, why, and by which rule.
    pub to: &'static str,
    pub candidate_reason: &'static str,
    pub candidate_rule: String,
}

/// Disagreements so far: what the console shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShadowSummary {
    /// The candidate's policy version.
    pub version: String,
    /// Checks the candidate decided.
    pub decided: u64,
    /// Checks not shadowed because the worker was behind.
    pub dropped: u64,
    /// Counts by application, from and to.
    pub disagreements: Vec<DisagreementCount>,
    /// The latest disagreements, newest last.
    pub recent: Vec<Disagreement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DisagreementCount {
    pub application: String,
    pub from: &'static str,
    pub to: &'static str,
    pub count: u64,
}

impl Shadow {
    /// A shadow with no candidate yet: its counts (and metrics collector)
    /// exist from the start, and [`Self::start`] gives it the candidate.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            running: OnceLock::new(),
            state: Arc::new(State::default()),
        })
    }

    /// Starts the worker over `policy` (the candidate's handle, which its
    /// reloader publishes to), with a queue of `capacity` checks
    /// ([`SHADOW_QUEUE`] in `serve`). Only the first call starts one.
    pub fn start(&self, policy: PolicyHandle, capacity: usize) -> std::io::Result<()> {
        let (queue, jobs) = mpsc::sync_channel::<Job>(capacity);
        let worker = Worker {
            policy: policy.clone(),
            state: self.state.clone(),
            logged_second: 0,
            logged: 0,
        };
        if self.running.set(Running { policy, queue }).is_err() {
            return Ok(());
        }
        std::thread::Builder::new()
            .name("portcullis-shadow".into())
            .spawn(move || {
                crate::api::bulkhead::lower_priority();
                let mut worker = worker;
                // Ends when every sender (this `Shadow`) is gone.
                for job in jobs {
                    worker.run(job);
                }
            })?;
        Ok(())
    }

    /// Queues a served check for the candidate, or counts it as dropped:
    /// never waits.
    pub fn offer(&self, question: Question, served: Arc<Decision>, now: u64) {
        let Some(running) = self.running.get() else {
            return;
        };
        match running.queue.try_send(Job {
            question,
            served,
            now,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.state.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Checks the candidate has decided so far.
    pub fn decided(&self) -> u64 {
        self.state.decided.load(Ordering::Relaxed)
    }

    /// Counts, recent disagreements and drops, for the console.
    pub fn summary(&self) -> ShadowSummary {
        let disagreements = lock(&self.state.disagreements)
            .iter()
            .map(|(key, count)| DisagreementCount {
                application: key.application.clone(),
                from: key.from,
                to: key.to,
                count: *count,
            })
            .collect();
        ShadowSummary {
            version: self
                .running
                .get()
                .map(|running| running.policy.load().version.clone())
                .unwrap_or_default(),
            decided: self.decided(),
            dropped: self.state.dropped.load(Ordering::Relaxed),
            disagreements,
            recent: lock(&self.state.recent).iter().cloned().collect(),
        }
    }

    /// The metrics collector of the shadow counts, read at each scrape.
    pub fn collector(self: &Arc<Self>) -> Box<dyn Collector> {
        Box::new(ShadowCollector(self.clone()))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the worker still needs of a job once it is decided.
struct Served {
    served: Arc<Decision>,
    now: u64,
}

struct Worker {
    policy: PolicyHandle,
    state: Arc<State>,
    logged_second: u64,
    logged: u64,
}

impl Worker {
    fn run(&mut self, job: Job) {
        let policy = self.policy.load_full();
        let Job {
            question,
            served,
            now,
        } = job;
        let caller = ServedCaller(served.principal.clone());
        let asked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            question(&policy, &caller, now)
        }))
        .unwrap_or_else(|_| {
            tracing::error!(target: "shadow", "the engine panicked on a shadow decision");
            Asked {
                decision: Decision::deny(DenyStatus::Forbidden, Reason::InternalError),
                request_id: String::new(),
            }
        });
        let candidate = asked.decision;
        let job = Served { served, now };
        self.state.decided.fetch_add(1, Ordering::Relaxed);
        let (from, to) = (Effect::of(&job.served), Effect::of(&candidate));
        if from == to {
            return;
        }
        let application = job
            .served
            .application
            .as_deref()
            .or(candidate.application.as_deref())
            .unwrap_or("")
            .to_owned();
        let key = DisagreementKey {
            application: application.clone(),
            from: from.label(),
            to: to.label(),
        };
        *lock(&self.state.disagreements).entry(key).or_default() += 1;
        let request_id = asked.request_id;
        let disagreement = Disagreement {
            time: job.now,
            application,
            route: job
                .served
                .route
                .as_deref()
                .or(candidate.route.as_deref())
                .unwrap_or("")
                .to_owned(),
            request_id,
            from: from.label(),
            served_reason: job.served.reason.code(),
            to: to.label(),
            candidate_reason: candidate.reason.code(),
            candidate_rule: candidate.rule_text().unwrap_or_default(),
        };
        if self.logged_second != job.now {
            self.logged_second = job.now;
            self.logged = 0;
        }
        if self.logged < LOGGED_PER_SECOND {
            self.logged += 1;
            tracing::info!(
                target: "shadow",
                application = %disagreement.application,
                route = %disagreement.route,
                request_id = %disagreement.request_id,
                from = disagreement.from,
                served_reason = disagreement.served_reason,
                to = disagreement.to,
                candidate_reason = disagreement.candidate_reason,
                candidate_rule = %disagreement.candidate_rule,
                candidate_version = %policy.version,
                "the shadow policy disagrees"
            );
        }
        let mut recent = lock(&self.state.recent);
        if recent.len() == RECENT_DISAGREEMENTS {
            recent.pop_front();
        }
        recent.push_back(disagreement);
    }
}

/// The principal the served decision verified, where the candidate's
/// application trusts its issuer; a token it did not verify is verified
/// against the candidate's issuers.
struct ServedCaller(Option<Arc<Principal>>);

impl Authenticate for ServedCaller {
    fn authenticate(
        &self,
        policy: &PolicySet,
        allowed_issuers: &[usize],
        token: &str,
        now: u64,
    ) -> Result<Arc<Principal>, TokenError> {
        match &self.0 {
            Some(principal) => crate::engine::trusted_again(policy, allowed_issuers, principal),
            None => VerifyEveryTime.authenticate(policy, allowed_issuers, token, now),
        }
    }
}

/// `portcullis_shadow_*`, read at scrape time.
struct ShadowCollector(Arc<Shadow>);

impl std::fmt::Debug for ShadowCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShadowCollector")
    }
}

impl Collector for ShadowCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = &self.0.state;
        let mut family = encoder.encode_descriptor(
            "portcullis_shadow_disagreements",
            "Checks the shadow policy (--shadow-policies) would answer with another effect, by application, from (served) and to (shadow)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        let counts: Vec<(DisagreementKey, u64)> = lock(&state.disagreements)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (key, count) in &counts {
            ConstCounter::new(*count).encode(family.encode_family(key)?)?;
        }
        for (name, help, value) in [
            (
                "portcullis_shadow_checks",
                "Checks the shadow policy decided",
                &state.decided,
            ),
            (
                "portcullis_shadow_dropped",
                "Checks not decided by the shadow policy because its queue was full",
                &state.dropped,
            ),
        ] {
            let counter = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            ConstCounter::new(value.load(Ordering::Relaxed)).encode(counter)?;
        }
        Ok(())
    }
}
