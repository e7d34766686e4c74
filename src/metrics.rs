//! Prometheus metrics, exposed by the admin server at `/metrics`.
//!
//! Labels have low cardinality by construction: an application name comes
//! from the policy, a decision and a reason from fixed sets. No subject,
//! path or resource id is ever a label.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::logging::LogLines;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    entry: &'static str,
    application: String,
    decision: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// What moka keeps per cache entry besides our key and value (its hash
/// table slot, entry metadata, deque nodes, expiry timer); the caches'
/// weighers add it. With [`ALLOCATION_OVERHEAD_BYTES`], chosen so that the
/// estimate matches the resident memory 100,000 typical decisions add.
pub(crate) const CACHE_ENTRY_OVERHEAD_BYTES: usize = 384;

/// The allocator's rounding and header per heap allocation of an entry.
pub(crate) const ALLOCATION_OVERHEAD_BYTES: usize = 16;

/// A moka cache builder bounded by `max_entries`, or, when `max_bytes` is
/// given, by the estimated bytes of its entries (`weigh`): the one
/// construction of the token, decision and grants caches' bounds. The
/// bytes bound is returned for [`CacheStats::measuring`].
pub(crate) fn bounded_cache<K, V>(
    max_entries: u64,
    max_bytes: Option<u64>,
    weigh: fn(&V) -> usize,
) -> (
    moka::sync::CacheBuilder<K, V, moka::sync::Cache<K, V>>,
    Option<u64>,
)
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let builder = moka::sync::Cache::builder();
    match max_bytes {
        None => (builder.max_capacity(max_entries), None),
        Some(bytes) => (
            builder
                .max_capacity(bytes)
                .weigher(move |_: &K, value: &V| u32::try_from(weigh(value)).unwrap_or(u32::MAX)),
            Some(bytes),
        ),
    }
}

/// How much a cache holds, read at scrape time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSize {
    pub entries: u64,
    /// The estimated bytes held, for a cache bounded by bytes.
    pub bytes: Option<u64>,
    /// The bound in bytes, for a cache bounded by bytes.
    pub max_bytes: Option<u64>,
}

type SizeSource = Box<dyn Fn() -> CacheSize + Send + Sync>;

/// Hit and miss counts of one cache, shared with the cache itself, and a
/// way to read its size.
#[derive(Default)]
pub struct CacheStats {
    hits: AtomicU64,
    misses: AtomicU64,
    size: OnceLock<SizeSource>,
}

impl std::fmt::Debug for CacheStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStats")
            .field("hits", &self.hits())
            .field("misses", &self.misses())
            .finish_non_exhaustive()
    }
}

impl CacheStats {
    /// Stats for `entries`, whose size they read at scrape time (pending
    /// inserts and evictions applied first, so the size is current);
    /// `max_bytes` is the bound of a cache weighed in bytes.
    pub(crate) fn measuring<K, V>(
        entries: &moka::sync::Cache<K, V>,
        max_bytes: Option<u64>,
    ) -> Arc<Self>
    where
        K: std::hash::Hash + Eq + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        let stats = Arc::new(CacheStats::default());
        let measured = entries.clone();
        stats.set_size_source(Box::new(move || {
            measured.run_pending_tasks();
            CacheSize {
                entries: measured.entry_count(),
                bytes: max_bytes.map(|_| measured.weighted_size()),
                max_bytes,
            }
        }));
        stats
    }

    /// Stats for a cache whose entries `count` reads at scrape time.
    pub(crate) fn counting(count: impl Fn() -> u64 + Send + Sync + 'static) -> Arc<Self> {
        let stats = Arc::new(CacheStats::default());
        stats.set_size_source(Box::new(move || CacheSize {
            entries: count(),
            bytes: None,
            max_bytes: None,
        }));
        stats
    }

    /// Set once by the cache: how to read its size. Later calls are ignored.
    fn set_size_source(&self, source: SizeSource) {
        let _ = self.size.set(source);
    }

    /// The cache's size now, if it told how to read it.
    pub fn size(&self) -> Option<CacheSize> {
        self.size.get().map(|read| read())
    }

    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

/// Reads cache statistics at scrape time.
#[derive(Debug)]
struct CacheCollector {
    caches: Vec<(&'static str, Arc<CacheStats>)>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheNameLabels {
    cache: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
    result: &'static str,
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "portcullis_cache_requests",
            "Cache look-ups by cache and result (hit or miss)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (cache, stats) in &self.caches {
            for (result, value) in [("hit", stats.hits()), ("miss", stats.misses())] {
                let labels = CacheLabels { cache, result };
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        let sizes: Vec<(&'static str, CacheSize)> = self
            .caches
            .iter()
            .filter_map(|(cache, stats)| Some((*cache, stats.size()?)))
            .collect();
        type Read = fn(&CacheSize) -> Option<u64>;
        let gauges: [(&str, &str, Read); 3] = [
            ("portcullis_cache_entries", "Entries a cache holds", |s| {
                Some(s.entries)
            }),
            (
                "portcullis_cache_bytes",
                "Estimated bytes a cache holds (entries and their bookkeeping)",
                |s| s.bytes,
            ),
            (
                "portcullis_cache_capacity_bytes",
                "The bound on a cache's estimated bytes",
                |s| s.max_bytes,
            ),
        ];
        for (name, help, read) in gauges {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (cache, size) in &sizes {
                if let Some(value) = read(size) {
                    let labels = CacheNameLabels { cache };
                    let value = i64::try_from(value).unwrap_or(i64::MAX);
                    ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// Reads, at scrape time, the log lines dropped because the queue to
/// stderr was full.
struct LogCollector(LogLines);

impl std::fmt::Debug for LogCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Collector for LogCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = encoder.encode_descriptor(
            "portcullis_log_lines_dropped",
            "Log lines (decision and operational) dropped because the queue to stderr was full",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        ConstCounter::new(self.0.dropped()).encode(counter)
    }
}

/// Every metric Portcullis exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    checks: Family<CheckLabels, Counter>,
    check_duration: Histogram,
    policy_loads: Family<ResultLabels, Counter>,
    policy_info: Family<VersionLabels, Gauge>,
    policy_grants: Gauge,
    jwks_fetches: Family<ResultLabels, Counter>,
}

impl Metrics {
    /// Registers every metric; `caches` are read at each scrape.
    pub fn new(caches: Vec<(&'static str, Arc<CacheStats>)>) -> Self {
        Self::build(caches, None)
    }

    /// [`Self::new`], plus the lines `log` dropped, read at each scrape.
    pub fn with_log(caches: Vec<(&'static str, Arc<CacheStats>)>, log: LogLines) -> Self {
        Self::build(caches, Some(log))
    }

    fn build(caches: Vec<(&'static str, Arc<CacheStats>)>, log: Option<LogLines>) -> Self {
        let mut registry = Registry::default();
        let checks = Family::<CheckLabels, Counter>::default();
        registry.register(
            "portcullis_checks",
            "Decisions answered, by entry point (ext_authz, authzen, events), application, decision (allow, deny, would_deny) and reason",
            checks.clone(),
        );
        // 10 µs to about 0.3 s.
        let check_duration = Histogram::new(exponential_buckets(0.000_01, 2.0, 16));
        registry.register(
            "portcullis_check_duration_seconds",
            "Time to decide one check, from CheckRequest to CheckResponse",
            check_duration.clone(),
        );
        let policy_loads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "portcullis_policy_loads",
            "Policy loads (the first one and every reload) by result",
            policy_loads.clone(),
        );
        let policy_info = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "portcullis_policy_info",
            "The policy version being served (value 1)",
            policy_info.clone(),
        );
        let policy_grants = Gauge::default();
        registry.register(
            "portcullis_policy_grants",
            "Grants in the policy being served",
            policy_grants.clone(),
        );
        let jwks_fetches = Family::<ResultLabels, Counter>::default();
        registry.register(
            "portcullis_jwks_fetches",
            "Fetches of JWKS URLs by result (success, failure)",
            jwks_fetches.clone(),
        );
        registry.register_collector(Box::new(CacheCollector { caches }));
        if let Some(log) = log {
            registry.register_collector(Box::new(LogCollector(log)));
        }
        Self {
            registry,
            checks,
            check_duration,
            policy_loads,
            policy_info,
            policy_grants,
            jwks_fetches,
        }
    }

    /// Adds `collector`'s metrics to every scrape.
    pub(crate) fn with_collector(
        mut self,
        collector: Box<dyn prometheus_client::collector::Collector>,
    ) -> Self {
        self.registry.register_collector(collector);
        self
    }

    /// Counts one fetch of a JWKS URL.
    pub(crate) fn record_jwks_fetch(&self, succeeded: bool) {
        let result = if succeeded { "success" } else { "failure" };
        self.jwks_fetches
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts one answered check.
    pub(crate) fn record_check(
        &self,
        entry: &'static str,
        application: &str,
        decision: &'static str,
        reason: &'static str,
        seconds: f64,
    ) {
        self.checks
            .get_or_create(&CheckLabels {
                entry,
                application: application.to_owned(),
                decision,
                reason,
            })
            .inc();
        // From CheckRequest to CheckResponse: Envoy's checks only (an API
        // request's time is mostly its body and its caller's proof).
        if entry == "ext_authz" {
            self.check_duration.observe(seconds);
        }
    }

    /// Records a policy load; on success, the version now served.
    pub(crate) fn record_policy_load(&self, loaded: Result<(&str, usize), ()>) {
        match loaded {
            Ok((version, grants)) => {
                self.policy_loads
                    .get_or_create(&ResultLabels { result: "success" })
                    .inc();
                self.policy_info.clear();
                self.policy_info
                    .get_or_create(&VersionLabels {
                        version: version.to_owned(),
                    })
                    .set(1);
                self.policy_grants
                    .set(i64::try_from(grants).unwrap_or(i64::MAX));
            }
            Err(()) => {
                self.policy_loads
                    .get_or_create(&ResultLabels { result: "failure" })
                    .inc();
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
