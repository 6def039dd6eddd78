//! Distance kernels, exact search and HNSW search, as `htg bench index` uses them.
//!
//! Run with `cargo bench --profile dev --bench ann` (CI only compiles it). The data is the
//! seeded clustered synthetic set (10k x 128, l2-normalised) that `htg bench dataset synth`
//! writes. The `hnsw/*/caller-opt` series instantiates `hnsw_rs` in this bench crate, i.e. at
//! the opt-level of the crate that names `Hnsw<f32, D>` (1 in the dev profile), beside the same
//! search compiled in `htg-ann` at opt-level 3 (measured: no difference beyond noise, since
//! the search is bound by memory loads; see docs/BENCHMARKS.md).
// `criterion_group!` and `criterion_main!` generate undocumented public items.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hnsw_rs::prelude::{DistDot, DistL2, Distance, Hnsw};
use htg_ann::dataset::{clustered, SynthParams};
use htg_ann::exact;
use htg_ann::hnsw::{BuildParams, Index, Metric};
use htg_ann::npy::Matrix;

fn data(n: usize) -> (Matrix<f32>, Matrix<f32>) {
    clustered(&SynthParams {
        n,
        queries: 200,
        dim: 128,
        ..SynthParams::default()
    })
    .expect("valid synthetic parameters")
}

fn distances(c: &mut Criterion) {
    let (base, q) = data(1000);
    let (a, b) = (q.row(0), base.row(0));
    let mut g = c.benchmark_group("distance/128");
    g.bench_function("hnsw_rs DistL2 (simdeez, sqrt)", |bn| {
        bn.iter(|| DistL2 {}.eval(std::hint::black_box(a), std::hint::black_box(b)))
    });
    g.bench_function("hnsw_rs DistDot (simdeez)", |bn| {
        bn.iter(|| DistDot {}.eval(std::hint::black_box(a), std::hint::black_box(b)))
    });
    g.bench_function("htg-ann l2_sq (avx2 loop)", |bn| {
        bn.iter(|| exact::l2_sq(std::hint::black_box(a), std::hint::black_box(b)))
    });
    g.bench_function("htg-ann dot (avx2 loop)", |bn| {
        bn.iter(|| exact::dot(std::hint::black_box(a), std::hint::black_box(b)))
    });
    g.bench_function("retrieval squared_l2 (htg search --exact)", |bn| {
        bn.iter(|| {
            htg_retrieval::index::squared_l2(std::hint::black_box(a), std::hint::black_box(b))
        })
    });
    g.finish();
}

fn exact_search(c: &mut Criterion) {
    let (base, q) = data(10_000);
    let mut g = c.benchmark_group("exact/10k x 128");
    g.throughput(Throughput::Elements(1));
    let mut scratch = Vec::new();
    let mut i = 0;
    g.bench_function("knn k=10", |bn| {
        bn.iter(|| {
            i = (i + 1) % q.rows;
            exact::knn(&base, q.row(i), 10, &mut scratch)
        })
    });
    g.finish();
}

fn hnsw_search(c: &mut Criterion) {
    let (base, q) = data(10_000);
    let mut g = c.benchmark_group("hnsw/10k x 128 M=16 efc=100");
    g.throughput(Throughput::Elements(1));
    for metric in [Metric::L2, Metric::L2Sq] {
        let idx = Index::build(
            &base,
            BuildParams {
                m: 16,
                ef_construction: 100,
                metric,
            },
        )
        .expect("valid build");
        for ef in [16usize, 64] {
            let mut i = 0;
            g.bench_with_input(
                BenchmarkId::new(format!("{}/htg-ann", metric.name()), ef),
                &ef,
                |bn, &ef| {
                    bn.iter(|| {
                        i = (i + 1) % q.rows;
                        idx.search(q.row(i), 10, ef)
                    })
                },
            );
        }
    }
    // The same DistL2 graph, instantiated here (this crate's opt-level).
    let h: Hnsw<f32, DistL2> = Hnsw::new(16, base.rows, 16, 100, DistL2 {});
    let items: Vec<(&[f32], usize)> = (0..base.rows).map(|i| (base.row(i), i)).collect();
    h.parallel_insert_slice(&items);
    for ef in [16usize, 64] {
        let mut i = 0;
        g.bench_with_input(BenchmarkId::new("l2/caller-opt", ef), &ef, |bn, &ef| {
            bn.iter(|| {
                i = (i + 1) % q.rows;
                h.search(q.row(i), 10, ef)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, distances, exact_search, hnsw_search);
criterion_main!(benches);
