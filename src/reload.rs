//! Live policy reloads: watch the directory, rebuild, swap, keep the last good.
//!
//! A reload calls the one loader ([`load_policies`]) and, only if the whole
//! directory loads, publishes the new [`PolicySet`] with a single atomic
//! swap: every check sees either the old snapshot or the new one, never a
//! mix. A directory that fails to load (bad YAML, an unknown role, a file
//! caught half-written) leaves the served snapshot untouched; every error
//! is logged with its file and line and the failure is counted.
//!
//! Reloads are triggered by file-system events on the directory (debounced,
//! so an editor's save or Kubernetes' atomic `..data` swap is one reload)
//! and by SIGHUP. The replaced snapshot is dropped on a blocking thread once
//! no check holds it, so freeing a large grant index never stalls a check.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::policy::PolicyHandle;
use crate::policy::{load_policies, LoadErrors, PolicySet};

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// A new version is being served.
    Published { version: String, grants: usize },
    /// The directory loads to the version already served.
    Unchanged { version: String },
    /// The directory does not load; the served version stays.
    Failed(LoadErrors),
}

/// What the console shows of the reloads: when the served policy was
/// published and what the last failed reload said (`file:line: message`),
/// until a later reload publishes or finds the directory unchanged.
#[derive(Debug)]
pub struct ReloadStatus {
    state: std::sync::Mutex<ReloadState>,
}

/// One reading of [`ReloadStatus`].
#[derive(Debug, Clone)]
pub struct ReloadState {
    /// When the served policy was published.
    pub loaded_at: std::time::SystemTime,
    /// When the last reload failed, and its errors; `None` once one
    /// succeeds.
    pub last_failure: Option<(std::time::SystemTime, Vec<String>)>,
}

/// Errors a failed reload keeps for the console; more are counted.
const KEPT_RELOAD_ERRORS: usize = 50;

impl ReloadStatus {
    /// Status of a policy published now.
    pub fn new() -> Self {
        Self {
            state: std::sync::Mutex::new(ReloadState {
                loaded_at: std::time::SystemTime::now(),
                last_failure: None,
            }),
        }
    }

    pub fn read(&self) -> ReloadState {
        match self.state.lock() {
            Ok(state) => state.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn update(&self, change: impl FnOnce(&mut ReloadState)) {
        match self.state.lock() {
            Ok(mut state) => change(&mut state),
            Err(poisoned) => change(&mut poisoned.into_inner()),
        }
    }
}

impl Default for ReloadStatus {
    fn default() -> Self {
        Self::new()
    }
}

/// Work done on a freshly loaded policy before it is published.
pub(crate) type Prepare = Box<dyn Fn(&mut PolicySet) + Send + Sync>;

/// Reloads one policy directory into one policy handle.
pub struct Reloader {
    dir: PathBuf,
    policy: PolicyHandle,
    metrics: Option<Arc<Metrics>>,
    prepare: Option<Prepare>,
    published: Option<Box<dyn Fn() + Send + Sync>>,
    /// Which policy this reloads, in its log lines (`served`, `shadow`).
    label: &'static str,
    status: Option<Arc<ReloadStatus>>,
}

impl Reloader {
    pub fn new(dir: &Path, policy: PolicyHandle, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            dir: dir.to_path_buf(),
            policy,
            metrics,
            prepare: None,
            published: None,
            label: "served",
            status: None,
        }
    }

    /// Names the policy in log lines (`policies = label`): `shadow` for
    /// `--shadow-policies`.
    pub(crate) fn with_label(mut self, label: &'static str) -> Self {
        self.label = label;
        self
    }

    /// Keeps `status` up to date with each reload's outcome.
    pub(crate) fn with_status(mut self, status: Arc<ReloadStatus>) -> Self {
        self.status = Some(status);
        self
    }

    /// Runs `published` after each new policy is published: to drop cache
    /// entries keyed by the old version, which no check can reach any more.
    pub(crate) fn with_published(mut self, published: Box<dyn Fn() + Send + Sync>) -> Self {
        self.published = Some(published);
        self
    }

    /// Runs `prepare` on each new policy before it is published (to hand it
    /// the key sets already fetched, for instance).
    pub(crate) fn with_prepare(mut self, prepare: Prepare) -> Self {
        self.prepare = Some(prepare);
        self
    }

    /// Loads the directory and publishes it when it loads and differs from
    /// what is served. Reads files: call it off the async workers.
    pub fn reload(&self) -> ReloadOutcome {
        let outcome = self.load_and_publish();
        if let Some(status) = &self.status {
            status.update(|state| match &outcome {
                ReloadOutcome::Published { .. } => {
                    state.loaded_at = std::time::SystemTime::now();
                    state.last_failure = None;
                }
                ReloadOutcome::Unchanged { .. } => state.last_failure = None,
                ReloadOutcome::Failed(errors) => {
                    let mut kept: Vec<String> = errors
                        .0
                        .iter()
                        .take(KEPT_RELOAD_ERRORS)
                        .map(ToString::to_string)
                        .collect();
                    if errors.0.len() > KEPT_RELOAD_ERRORS {
                        kept.push(format!(
                            "... and {} more",
                            errors.0.len() - KEPT_RELOAD_ERRORS
                        ));
                    }
                    state.last_failure = Some((std::time::SystemTime::now(), kept));
                }
            });
        }
        outcome
    }

    fn load_and_publish(&self) -> ReloadOutcome {
        match load_policies(&self.dir) {
            Ok(mut policy) => {
                // Compare without holding a guard: `retire` waits for the old
                // snapshot to be unused, and our own guard would stall it.
                let unchanged = self.policy.load().version == policy.version;
                if unchanged {
                    return ReloadOutcome::Unchanged {
                        version: policy.version,
                    };
                }
                if let Some(prepare) = &self.prepare {
                    prepare(&mut policy);
                }
                let version = policy.version.clone();
                let grants = policy.grants.len();
                let previous = self.policy.swap(Arc::new(policy));
                if let Some(metrics) = &self.metrics {
                    metrics.record_policy_load(Ok((&version, grants)));
                }
                if let Some(published) = &self.published {
                    published();
                }
                retire(previous);
                ReloadOutcome::Published { version, grants }
            }
            Err(errors) => {
                if let Some(metrics) = &self.metrics {
                    metrics.record_policy_load(Err(()));
                }
                ReloadOutcome::Failed(errors)
            }
        }
    }

    /// Reloads and logs the outcome.
    pub(crate) fn reload_and_log(&self, trigger: &str) -> ReloadOutcome {
        let started = std::time::Instant::now();
        let outcome = self.reload();
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let policies = self.label;
        match &outcome {
            ReloadOutcome::Published { version, grants } => {
                tracing::info!(trigger, policies, policy_version = %version, grants, elapsed_ms, "policy reloaded");
            }
            ReloadOutcome::Unchanged { version } => {
                tracing::debug!(trigger, policies, policy_version = %version, "policy unchanged");
            }
            ReloadOutcome::Failed(errors) => {
                for error in &errors.0 {
                    tracing::error!(trigger, policies, error = %error, "policy error");
                }
                let kept = self.policy.load().version.clone();
                tracing::error!(
                    trigger,
                    policies,
                    errors = errors.0.len(),
                    policy_version = %kept,
                    "policy reload failed; still serving the last good policy"
                );
            }
        }
        outcome
    }
}

/// Drops a replaced snapshot on a blocking thread once no check holds it.
fn retire(previous: Arc<PolicySet>) {
    let drop_when_unused = move || {
        // Checks hold a snapshot for microseconds; wait for them, bounded.
        for _ in 0..1000 {
            if Arc::strong_count(&previous) == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(previous);
        release_freed_memory();
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(drop_when_unused);
        }
        Err(_) => drop_when_unused(),
    }
}

/// Hands memory freed by a dropped snapshot back to the operating system.
/// glibc keeps freed heap pages for reuse, so without this a process that
/// reloaded a large policy would keep the high-water mark of two snapshots.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only returns free pages of
    // the allocator's own arenas to the kernel; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How reloads are triggered.
#[derive(Debug, Clone, Copy)]
pub struct WatchConfig {
    /// Watch the directory for changes (SIGHUP always reloads).
    pub watch_files: bool,
    /// Quiet time after the last event before reloading.
    pub debounce: Duration,
}

/// Reloads the policy on file events in its directory and on SIGHUP.
pub fn watch(
    reloader: Arc<Reloader>,
    config: WatchConfig,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let dirs = vec![reloader.dir.clone()];
    on_change(dirs, config, move |trigger| {
        reloader.reload_and_log(trigger);
    })
}

/// Runs `reload(trigger)` on a blocking thread after file events in `dirs`
/// (when `config.watch_files`; a burst of events is one call, once they
/// have been quiet for `config.debounce`) and on SIGHUP. Directories, not
/// files, are watched, so a rename into place and Kubernetes' `..data` swap
/// are seen. The SIGHUP handler is installed before this returns, so a
/// signal sent once the server is announced is never lost.
pub(crate) fn on_change(
    dirs: Vec<PathBuf>,
    config: WatchConfig,
    reload: impl Fn(&'static str) + Send + Sync + 'static,
) -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup())?;
    let (events, mut changed) = mpsc::unbounded_channel::<()>();
    let watcher = if config.watch_files {
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = events.send(());
                }
            })
            .map_err(std::io::Error::other)?;
        for dir in &dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", dir.display())))?;
        }
        Some(watcher)
    } else {
        None
    };
    let reload = Arc::new(reload);
    Ok(async move {
        // Kept alive for as long as the loop runs.
        let _watcher = watcher;
        let mut watching = config.watch_files;
        loop {
            let trigger = tokio::select! {
                event = changed.recv(), if watching => match event {
                    Some(()) => "file change",
                    None => {
                        watching = false;
                        continue;
                    }
                },
                _ = hangup.recv() => "SIGHUP",
            };
            // Let a burst of events (a save, a ConfigMap swap) settle.
            while let Ok(Some(())) = tokio::time::timeout(config.debounce, changed.recv()).await {}
            let reload = reload.clone();
            let _ = tokio::task::spawn_blocking(move || reload(trigger)).await;
        }
    })
}
