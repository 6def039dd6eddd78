//! Images/s of model inference at batch 1, 8 and 64 on tract and on ONNX Runtime (`ort`), for
//! the same model in the same run, so the two can be compared as a ratio.
//!
//! What is timed is [`Embedder::run`] on an already preprocessed batch (the fixture emoji), i.e.
//! the part that differs between backends; `benches/peers/ort_python.py` times the same model
//! and batches through onnxruntime's own Python API. Results and commands: `docs/BACKENDS.md`.
//!
//! Run with `cargo bench --bench backends`. Environment:
//! - `HTG_BENCH_MODEL`: ONNX model [default: `models/emoji-scratch.onnx` when present, else
//!   `tests/fixtures/models/tiny.onnx`];
//! - `HTG_BENCH_BATCHES`: comma-separated batch sizes [default `1,8,64`];
//! - `HTG_BENCH_THREADS`: ONNX Runtime intra-op threads [default 1; tract runs one thread per
//!   call, so 1 compares the engines, not the thread counts];
//! - `ORT_DYLIB_PATH`: ONNX Runtime library [default: where `scripts/fetch-data.sh onnxruntime`
//!   puts it]. Without it only tract is measured, with a note.
// `criterion_group!` and `criterion_main!` generate undocumented public items.
#![allow(missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use htg_retrieval::ort_backend::{self, ExecutionProvider, OrtEmbedder, OrtOptions};
use htg_retrieval::preprocess::{load_image, preprocess_batch};
use htg_retrieval::{Embedder, TractEmbedder};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HTG_BENCH_MODEL").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    let bundled = root().join("models/emoji-scratch.onnx");
    if bundled.is_file() {
        bundled
    } else {
        root().join("tests/fixtures/models/tiny.onnx")
    }
}

fn threads() -> usize {
    std::env::var("HTG_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn batches() -> Vec<usize> {
    std::env::var("HTG_BENCH_BATCHES")
        .ok()
        .and_then(|v| v.split(',').map(|b| b.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 64])
}

fn backends(c: &mut Criterion) {
    let model = model_path();
    let tract = TractEmbedder::load(&model).unwrap();
    let options = OrtOptions {
        library: ort_backend::resolve_library(None, ExecutionProvider::Cpu),
        intra_threads: Some(threads()),
        ..OrtOptions::default()
    };
    let ort = match OrtEmbedder::load(&model, &options) {
        Ok(e) => Some(e),
        Err(e) => {
            eprintln!("note: ort not measured: {e}");
            None
        }
    };
    let dir = root().join("tests/fixtures/images");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    let images: Vec<_> = files.iter().map(|p| load_image(p).unwrap()).collect();

    let name = model.file_name().unwrap().to_string_lossy().to_string();
    let mut g = c.benchmark_group(format!("backends/{name}/threads{}", threads()));
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for batch in batches() {
        let imgs: Vec<_> = images.iter().cycle().take(batch).cloned().collect();
        let input = preprocess_batch(&imgs, tract.spec());
        g.throughput(Throughput::Elements(batch as u64));
        let engines: [Option<&dyn Embedder>; 2] = [Some(&tract), ort.as_ref().map(|e| e as _)];
        for e in engines.into_iter().flatten() {
            g.bench_with_input(BenchmarkId::new(e.backend(), batch), &input, |b, x| {
                b.iter(|| e.run(x.view()).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, backends);
criterion_main!(benches);
