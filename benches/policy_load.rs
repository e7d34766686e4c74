//! `load_policies` on a directory with a large grants file: what `serve`,
//! `validate` and every reload pay.
//!
//! The bundled documents policy (issuers, roles, routes) is copied next to
//! a generated `grants.yaml` of N grants over 10k subjects and N/2
//! documents. N is 10k and 100k by default; 1M grants (a 40 MB YAML file,
//! about 4 s and 1.2 GB peak per load in release) is opt-in with
//! `PORTCULLIS_BENCH_1M=1`, because criterion's minimum of ten samples
//! would take over a minute. The load bench (`scripts/bench/load.py`)
//! measures one 1M load with its peak RSS instead.

use std::fmt::Write as _;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use portcullis::policy::load_policies;
use tempfile::TempDir;

const ROLES: [&str; 3] = ["viewer", "editor", "owner"];

/// Writes the grants section: `count` grants, deterministic.
fn grants_yaml(count: usize) -> String {
    let documents = (count / 2).max(1);
    let mut out = String::with_capacity(count * 64);
    out.push_str("grants:\n");
    for i in 0..count {
        // A multiplicative hash spreads grants over documents without
        // repeating a (subject, document) pair in order.
        let document = (i.wrapping_mul(2_654_435_761)) % documents;
        let _ = write!(
            out,
            "  - subject: user{}\n    role: {}\n    resource: document:{}\n",
            i % 10_000,
            ROLES[i % 3],
            document
        );
    }
    out
}

fn policy_dir(count: usize) -> TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let keep = |name: &str| ["documents.yaml", "issuers.yaml", "roles.yaml"].contains(&name);
    portcullis_testkit::copy_bundled(
        dir.path(),
        "bench-secret-0123456789abcdef0123456789",
        keep,
        |_, text| text,
    );
    std::fs::write(dir.path().join("grants.yaml"), grants_yaml(count))
        .unwrap_or_else(|e| panic!("writing grants.yaml: {e}"));
    dir
}

fn load(c: &mut Criterion) {
    let mut sizes = vec![10_000usize, 100_000];
    if std::env::var_os("PORTCULLIS_BENCH_1M").is_some_and(|v| v == "1") {
        sizes.push(1_000_000);
    }
    let mut group = c.benchmark_group("policy_load");
    group.sample_size(10);
    for count in sizes {
        let dir = policy_dir(count);
        let loaded = load_policies(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            loaded.grants.len() > count / 2,
            "expected about {count} grants, loaded {}",
            loaded.grants.len()
        );
        drop(loaded);
        group.bench_with_input(BenchmarkId::new("grants", count), &dir, |b, dir| {
            b.iter(|| load_policies(dir.path()))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = load
}
criterion_main!(benches);
