//! Prometheus metrics, exposed by the admin server at `/metrics`.
//!
//! Labels have low cardinality by construction: an application name comes
//! from the policy, a decision and a reason from fixed sets. No subject,
//! path or resource id is ever a label.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
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

/// Hit and miss counts of one cache, shared with the cache itself.
#[derive(Debug, Default)]
pub struct CacheStats {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CacheStats {
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
        Ok(())
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
        let mut registry = Registry::default();
        let checks = Family::<CheckLabels, Counter>::default();
        registry.register(
            "portcullis_checks",
            "Checks answered, by application, decision (allow, deny, would_deny) and reason",
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

    /// Counts one fetch of a JWKS URL.
    pub fn record_jwks_fetch(&self, succeeded: bool) {
        let result = if succeeded { "success" } else { "failure" };
        self.jwks_fetches
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts one answered check.
    pub fn record_check(
        &self,
        application: &str,
        decision: &'static str,
        reason: &'static str,
        seconds: f64,
    ) {
        self.checks
            .get_or_create(&CheckLabels {
                application: application.to_owned(),
                decision,
                reason,
            })
            .inc();
        self.check_duration.observe(seconds);
    }

    /// Records a policy load; on success, the version now served.
    pub fn record_policy_load(&self, loaded: Result<(&str, usize), ()>) {
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
