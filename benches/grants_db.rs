//! Grants in PostgreSQL at scale (issue 15), one run, numbers side by side:
//!
//! - load: GRANTS_BENCH_N grants (default 10M) with COPY, then the indexes;
//! - check latency p50/p99: the file source (an in-memory GrantIndex of the
//!   same grants) and the database source with a warm cache, then a cold
//!   miss (every check reads the database);
//! - cache memory at 1M cached lookups (RSS growth);
//! - write throughput (one grant a write; 1 and 4 writers);
//! - revocation latency to a second replica (its own store and feed) through
//!   NOTIFY: from the write's commit to the other replica's applied revision;
//! - a resource-search page (100 results) for a holder of 100 grants and one
//!   of 1M grants, first page and deep.
//!
//! A private PostgreSQL (fsync off) from `portcullis_testkit::postgres`;
//! skipped without one. Results on stdout and in target/bench/grants_db.json.
//! `make bench-grants` (part of `make bench`).

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use hdrhistogram::Histogram;
use portcullis::engine::{self, KnownPrincipal};
use portcullis::grants_db::{self, write, DatabaseConfig, Grant, GrantStore};
use portcullis::policy::grant_snapshot::Lookup;
use portcullis::policy::{GrantIndex, Holder, PolicySet, ResourceKey};
use portcullis::token::Principal;
use portcullis_testkit::postgres::Postgres;
use serde_json::json;

mod common;
use common::{bundled, verified_request};

/// Subjects the grants are spread over (besides `heavy`).
const SUBJECTS: usize = 100_000;

fn n() -> usize {
    std::env::var("GRANTS_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000)
}

/// Grant `i` of the data set: document `i / 2` (two holders each); 10% go
/// to one heavy subject, the rest over [`SUBJECTS`] subjects. No two
/// grants are the same.
fn grant(i: usize) -> (String, String, &'static str) {
    let subject = if i.is_multiple_of(10) {
        "heavy".to_owned()
    } else {
        format!("user{}", i % SUBJECTS)
    };
    let role = if i.is_multiple_of(3) {
        "editor"
    } else {
        "viewer"
    };
    (subject, format!("document:{}", i / 2), role)
}

/// A path user `k` (k % 10 != 0, k < SUBJECTS) may read: grant `i = k`.
fn held(k: usize) -> String {
    format!("/documents/{}", k / 2)
}

fn principal(subject: &str) -> KnownPrincipal {
    KnownPrincipal(Arc::new(Principal {
        issuer: Arc::from("demo-idp"),
        subject: subject.into(),
        groups: Vec::new(),
        expires_at: u64::MAX,
        claims: Default::default(),
    }))
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap_or_else(|e| panic!("{e}"))
}

fn micros(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let pg = grants_db::pg_config(&DatabaseConfig::new(url)).unwrap_or_else(|e| panic!("{e}"));
    let (client, connection) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(connection);
    client
}

async fn load(url: &str, n: usize) -> Duration {
    let mut client = connect(url).await;
    grants_db::migrate::migrate(&mut client)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    client
        .batch_execute(
            "SET maintenance_work_mem = '512MB';
             ALTER TABLE portcullis_grants DROP CONSTRAINT portcullis_grants_pkey;
             DROP INDEX portcullis_grants_by_resource;",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let sink = client
        .copy_in(
            "COPY portcullis_grants (holder_kind, holder, pattern, resource, role, revision) FROM STDIN",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut sink = pin!(sink);
    let mut buffer = String::with_capacity(1 << 20);
    for i in 0..n {
        let (subject, resource, role) = grant(i);
        buffer.push_str(&format!("0\t{subject}\tf\t{resource}\t{role}\t1\n"));
        if buffer.len() > (1 << 20) - 256 {
            sink.send(Bytes::from(std::mem::take(&mut buffer)))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            buffer.reserve(1 << 20);
        }
    }
    if !buffer.is_empty() {
        sink.send(Bytes::from(buffer))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    sink.finish().await.unwrap_or_else(|e| panic!("{e}"));
    let copied = started.elapsed();
    eprintln!("copied {n} grants in {copied:?}; building indexes");
    client
        .batch_execute(
            "SET maintenance_work_mem = '512MB';
             ALTER TABLE portcullis_grants ADD PRIMARY KEY (holder_kind, holder, pattern, resource, role);
             CREATE INDEX portcullis_grants_by_resource ON portcullis_grants (pattern, resource, holder_kind, holder);
             UPDATE portcullis_revision SET revision = 1;
             ANALYZE portcullis_grants;",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    started.elapsed()
}

fn file_source(base: &PolicySet, n: usize) -> PolicySet {
    let mut policy = bundled();
    let role = |name: &str| {
        base.roles
            .iter()
            .position(|r| &*r.name == name && r.condition.is_none())
            .unwrap_or_else(|| panic!("no role {name}")) as u32
    };
    let mut index = GrantIndex::builder();
    for i in 0..n {
        let (subject, resource, name) = grant(i);
        index.insert(
            Holder::Subject(&subject),
            ResourceKey::Exact(&resource),
            role(name),
        );
    }
    policy.grants = Box::new(index.build());
    policy
}

fn main() {
    // `cargo bench` passes --bench; no other argument is read.
    let n = n();
    let Some(pg) = Postgres::start() else {
        return;
    };
    let url = pg.create_database("bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut results = serde_json::Map::new();
    let mut note = |key: &str, value: serde_json::Value| {
        println!("{key}: {value}");
        results.insert(key.to_owned(), value);
    };
    note("grants", json!(n));

    let loaded = rt.block_on(load(&url, n));
    note("load_seconds_copy_and_indexes", json!(loaded.as_secs_f64()));

    let policy = bundled();
    let documents = (n / 2).max(1);

    // The file source, the same grants in memory.
    let started = Instant::now();
    let files = file_source(&policy, n);
    eprintln!("built the file source in {:?}", started.elapsed());
    let samples = 100_000usize;
    let users: Vec<(KnownPrincipal, String)> = (1..=1100)
        .filter(|k: &usize| !k.is_multiple_of(10))
        .map(|k| (principal(&format!("user{k}")), held(k)))
        .collect();
    for (who, path) in &users[..10] {
        assert!(engine::decide(
            &files,
            &*files.grants,
            &engine::Request::Http(&verified_request("GET", path)),
            who,
            0
        )
        .is_allowed());
    }
    let mut h_files = histogram();
    for s in 0..samples {
        let (who, path) = &users[s % users.len()];
        let request = verified_request("GET", path);
        let t = Instant::now();
        let d = engine::decide(
            &files,
            &*files.grants,
            &engine::Request::Http(&request),
            who,
            0,
        );
        h_files.record(t.elapsed().as_nanos() as u64).ok();
        std::hint::black_box(d);
    }
    drop(files);

    let mut config = DatabaseConfig::new(url.clone());
    config.pool_size = 8;
    let (store, feed) = rt
        .block_on(GrantStore::open(config.clone()))
        .unwrap_or_else(|e| panic!("{e}"));
    // Warm: every sample's lookups cached first.
    let (h_warm, h_cold) = rt.block_on(async {
        for (who, path) in &users {
            let request = verified_request("GET", path);
            let d = portcullis::pdp::decide_with_cache(&store, &policy, None, |g| {
                engine::decide(&policy, g, &engine::Request::Http(&request), who, 0)
            })
            .await;
            assert!(d.is_allowed(), "{d:?}");
        }
        let mut warm = histogram();
        for s in 0..samples {
            let (who, path) = &users[s % users.len()];
            let request = verified_request("GET", path);
            let t = Instant::now();
            let d = portcullis::pdp::decide_with_cache(&store, &policy, None, |g| {
                engine::decide(&policy, g, &engine::Request::Http(&request), who, 0)
            })
            .await;
            warm.record(t.elapsed().as_nanos() as u64).ok();
            std::hint::black_box(d);
        }
        // Cold: subjects never asked about, so every check reads the database.
        let mut cold = histogram();
        for k in (2000..4200).filter(|k: &usize| !k.is_multiple_of(10)) {
            let who = principal(&format!("user{k}"));
            let request = verified_request("GET", &held(k));
            let t = Instant::now();
            let d = portcullis::pdp::decide_with_cache(&store, &policy, None, |g| {
                engine::decide(&policy, g, &engine::Request::Http(&request), &who, 0)
            })
            .await;
            cold.record(t.elapsed().as_nanos() as u64).ok();
            assert!(d.is_allowed());
        }
        (warm, cold)
    });
    note(
        "check_file_source_us",
        json!({ "p50": micros(&h_files, 0.5), "p99": micros(&h_files, 0.99) }),
    );
    note(
        "check_db_warm_cache_us",
        json!({ "p50": micros(&h_warm, 0.5), "p99": micros(&h_warm, 0.99) }),
    );
    note(
        "check_db_cold_miss_us",
        json!({ "p50": micros(&h_cold, 0.5), "p99": micros(&h_cold, 0.99) }),
    );

    // Cache memory: 1M lookups cached (in batches of 1000, one statement each).
    store.clear();
    let before = rss_bytes();
    let filled = Instant::now();
    rt.block_on(async {
        let mut lookups = Vec::with_capacity(1000);
        for i in 0..1_000_000usize {
            let subject = format!("user{}", i % SUBJECTS);
            let resource = format!("document:{}", (i * 7919) % documents);
            lookups.push(Lookup::new(
                Holder::Subject(&subject),
                ResourceKey::Exact(&resource),
            ));
            if lookups.len() == 1000 {
                store
                    .fetch(&policy, &lookups, None)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                lookups.clear();
            }
        }
    });
    let entries = store.cached_entries();
    let grown = rss_bytes().saturating_sub(before);
    note(
        "cache_1m_entries",
        json!({
            "entries": entries,
            "rss_growth_mib": grown as f64 / (1 << 20) as f64,
            "bytes_per_entry": grown as f64 / entries.max(1) as f64,
            "fill_seconds": filled.elapsed().as_secs_f64(),
        }),
    );

    // Write throughput: one grant a write.
    let writes = 2000usize;
    let throughput = |writers: usize| {
        rt.block_on(async {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..writers {
                let pool = store.pool().clone();
                tasks.push(tokio::spawn(async move {
                    let mut client = pool.get().await.unwrap_or_else(|e| panic!("{e}"));
                    for j in 0..writes / writers {
                        let g = Grant::new(
                            Some(&format!("writer{w}")),
                            None,
                            false,
                            "viewer",
                            &format!("document:w{j}"),
                        )
                        .unwrap_or_else(|e| panic!("{e}"));
                        write::write(&mut client, &[g], &[])
                            .await
                            .unwrap_or_else(|e| panic!("{e}"));
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap_or_else(|e| panic!("{e}"));
            }
            writes as f64 / started.elapsed().as_secs_f64()
        })
    };
    note("writes_per_second_1_writer", json!(throughput(1)));
    note("writes_per_second_4_writers", json!(throughput(4)));

    // Revocation latency to a second replica: its own store and feed.
    let (other, other_feed) = rt
        .block_on(GrantStore::open(config))
        .unwrap_or_else(|e| panic!("{e}"));
    let h_revoke = rt.block_on(async {
        let mut client = connect(&url).await;
        let mut h = histogram();
        let g = Grant::new(Some("user7"), None, false, "viewer", "document:revoked")
            .unwrap_or_else(|e| panic!("{e}"));
        for i in 0..300usize {
            let (adds, removes) = if i.is_multiple_of(2) {
                (vec![g.clone()], vec![])
            } else {
                (vec![], vec![g.clone()])
            };
            let written = write::write(&mut client, &adds, &removes)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let committed = Instant::now();
            while other.applied_revision() < written.revision {
                tokio::time::sleep(Duration::from_micros(200)).await;
                if committed.elapsed() > Duration::from_secs(5) {
                    panic!(
                        "the second replica did not apply revision {}",
                        written.revision
                    );
                }
            }
            h.record(committed.elapsed().as_nanos() as u64).ok();
        }
        h
    });
    note(
        "revocation_to_second_replica_ms",
        json!({ "p50": micros(&h_revoke, 0.5) / 1000.0, "p99": micros(&h_revoke, 0.99) / 1000.0 }),
    );

    // A resource-search page of 100.
    let search = |subject: &str, after: Option<&str>| {
        let p = Principal {
            issuer: Arc::from("demo-idp"),
            subject: subject.into(),
            groups: Vec::new(),
            expires_at: u64::MAX,
            claims: Default::default(),
        };
        let mut h = histogram();
        let mut found = 0;
        for _ in 0..50 {
            let t = Instant::now();
            let page = rt
                .block_on(grants_db::search::resources(
                    &store,
                    &policy,
                    &p,
                    "read",
                    "document",
                    after,
                    100,
                    portcullis::search::Circumstances::none(),
                ))
                .unwrap_or_else(|e| panic!("{e}"));
            h.record(t.elapsed().as_nanos() as u64).ok();
            found = page.items.len();
        }
        json!({ "results": found, "p50_ms": micros(&h, 0.5) / 1000.0, "p99_ms": micros(&h, 0.99) / 1000.0 })
    };
    note("search_page_100_grants_holder", search("user42", None));
    note("search_page_1m_grants_holder", search("heavy", None));
    note(
        "search_page_1m_grants_holder_deep",
        search("heavy", Some("500000")),
    );

    other_feed.abort();
    feed.abort();
    let _ = std::fs::create_dir_all("target/bench");
    let _ = std::fs::write(
        "target/bench/grants_db.json",
        serde_json::Value::Object(results).to_string(),
    );
    drop(pg);
}
