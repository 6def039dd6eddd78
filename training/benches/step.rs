//! One training step at the default sizes (32×32 RGB, widths 16/32/64, embedding 64,
//! P×K = 32×2): HTG (D, G and F updates) against batch-hard mining (F only).
//!
//! Synthetic pixels: the cost of a step does not depend on image content.
// `criterion_group!` and `criterion_main!` generate undocumented public items.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use htg_training::data::{ImageSet, PkSampler};
use htg_training::trainer::Trainer;
use htg_training::{Method, TrainConfig};

fn synthetic(cfg: &TrainConfig, classes: usize, per_class: usize) -> ImageSet {
    let s = cfg.feature.input_size as usize;
    let chw = [3, s, s];
    let n = classes * per_class;
    let data = (0..n * 3 * s * s)
        .map(|i| ((i * 2_654_435_761usize) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let labels = (0..n).map(|i| i / per_class).collect();
    ImageSet { data, labels, chw }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10);
    for method in [Method::Htg, Method::TripletBatchhard] {
        let cfg = TrainConfig {
            method,
            ..TrainConfig::default()
        };
        let set = synthetic(&cfg, 200, 2);
        let sampler = PkSampler::new(&set.labels).unwrap();
        let mut t = Trainer::new(&cfg, 200).unwrap();
        g.bench_function(method.name(), |b| b.iter(|| t.train_step(&set, &sampler)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
