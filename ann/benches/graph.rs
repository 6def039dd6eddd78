//! Our HNSW graph against `hnsw_rs` at the same `ef`, on the same seeded clustered set, built
//! with the same M and ef_construction: one query at a time, k = 10.
//!
//! `cargo bench -p htg-ann --bench graph`
// `criterion_group!` and `criterion_main!` generate undocumented public items.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use htg_ann::dataset::{clustered, SynthParams};
use htg_ann::hnsw::{BuildParams, Index, Metric};

fn search(c: &mut Criterion) {
    let (base, queries) = clustered(&SynthParams {
        n: 10_000,
        queries: 200,
        dim: 128,
        clusters: 50,
        spread: 0.6,
        seed: 1,
    })
    .expect("valid parameters");
    let p = BuildParams {
        m: 16,
        ef_construction: 100,
        metric: Metric::L2Sq,
    };
    let engines = [
        ("htg", Index::build_htg(&base, p, 1).expect("build")),
        ("hnsw_rs", Index::build(&base, p).expect("build")),
    ];
    let mut g = c.benchmark_group("graph_search_k10");
    for ef in [16, 64] {
        for (name, idx) in &engines {
            g.bench_with_input(BenchmarkId::new(*name, ef), &ef, |b, &ef| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % queries.rows;
                    idx.search(queries.row(i), 10, ef)
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, search);
criterion_main!(benches);
