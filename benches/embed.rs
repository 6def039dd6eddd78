//! Images/s through decode + preprocess + tract embed, at batch 1 and 32.
//!
//! Run with `cargo bench --bench embed`. Uses the committed emoji fixtures (64×64 PNG) and the
//! bundled model when present, else the tiny fixture model.
// `criterion_group!` and `criterion_main!` generate undocumented public items.
#![allow(missing_docs)]

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use htg_retrieval::preprocess::decode;
use htg_retrieval::{Embedder, TractEmbedder};

fn model_path() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bundled = root.join("models/emoji-scratch.onnx");
    if bundled.is_file() {
        bundled
    } else {
        root.join("tests/fixtures/models/tiny.onnx")
    }
}

fn fixture_bytes() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn embed(c: &mut Criterion) {
    let model = model_path();
    let e = TractEmbedder::load(&model).unwrap();
    let bytes = fixture_bytes();
    let mut g = c.benchmark_group(format!(
        "decode+preprocess+tract/{}",
        model.file_name().unwrap().to_string_lossy()
    ));
    for batch in [1usize, 32] {
        let inputs: Vec<&Vec<u8>> = bytes.iter().cycle().take(batch).collect();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &inputs, |b, inputs| {
            b.iter(|| {
                let imgs: Vec<_> = inputs.iter().map(|b| decode(b).unwrap()).collect();
                e.embed_images(&imgs).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, embed);
criterion_main!(benches);
