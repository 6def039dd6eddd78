//! One training step of htg against the same step in PyTorch, side by side in one run:
//! batch-hard (F only) and HTG (D, G and F), at the default sizes (32×32 RGB, widths
//! 16/32/64, embedding 64, P×K = 32×2), on the same number of threads.
//!
//! ```text
//! scripts/setup-torch.sh          # once: PyTorch in $HTG_CACHE_DIR/torch-venv
//! cargo bench -p htg-training --profile train --bench step_vs_torch
//! ```
//!
//! `HTG_BENCH_THREADS` (default 2) sets both sides' threads; `HTG_TORCH_PYTHON` picks the
//! Python with torch (default `$HTG_CACHE_DIR/torch-venv/bin/python`). Without torch the htg
//! column is still printed and the peer column says why it is missing. Each figure is the
//! median ms/step over 5 blocks of 10 steps after 5 warm-up steps (the peer does the same).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use htg_training::data::{ImageSet, PkSampler};
use htg_training::trainer::Trainer;
use htg_training::{Method, TrainConfig};

fn synthetic(cfg: &TrainConfig, classes: usize, per_class: usize) -> ImageSet {
    let s = cfg.feature.input_size as usize;
    let n = classes * per_class;
    let data = (0..n * 3 * s * s)
        .map(|i| ((i * 2_654_435_761usize) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let labels = (0..n).map(|i| i / per_class).collect();
    ImageSet {
        data,
        labels,
        chw: [3, s, s],
    }
}

fn htg_ms(method: Method) -> f64 {
    let cfg = TrainConfig {
        method,
        ..TrainConfig::default()
    };
    let set = synthetic(&cfg, 200, 2);
    let sampler = PkSampler::new(&set.labels).expect("two classes");
    let mut t = Trainer::new(&cfg, 200).expect("default config is valid");
    for _ in 0..5 {
        t.train_step(&set, &sampler);
    }
    let mut blocks: Vec<f64> = (0..5)
        .map(|_| {
            let t0 = Instant::now();
            for _ in 0..10 {
                t.train_step(&set, &sampler);
            }
            t0.elapsed().as_secs_f64() * 1000.0 / 10.0
        })
        .collect();
    blocks.sort_by(f64::total_cmp);
    blocks[blocks.len() / 2]
}

fn torch_python() -> PathBuf {
    if let Some(p) = std::env::var_os("HTG_TORCH_PYTHON") {
        return p.into();
    }
    let cache = std::env::var_os("HTG_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/htg")))
        .unwrap_or_default();
    cache.join("torch-venv/bin/python")
}

fn torch_ms(method: &str, threads: usize) -> Result<f64, String> {
    let py = torch_python();
    if !py.is_file() {
        return Err(format!(
            "no torch at {} (run scripts/setup-torch.sh)",
            py.display()
        ));
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../benches/peers/torch_step.py");
    let out = Command::new(&py)
        .arg(&script)
        .args(["--method", method, "--threads", &threads.to_string()])
        .output()
        .map_err(|e| format!("{}: {e}", py.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("torch_step.py printed no JSON: {e}"))?;
    v["ms_per_step"]
        .as_f64()
        .ok_or_else(|| "torch_step.py: no ms_per_step".to_string())
}

fn main() {
    // `cargo bench` passes harness flags (`--bench`); a `--list` from tooling lists nothing.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let threads: usize = std::env::var("HTG_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
    {
        eprintln!("step_vs_torch: rayon pool already set: {e}");
    }
    println!("threads: {threads}");
    println!(
        "| step | htg, burn's conv and batch norm | htg, own conv | htg (own conv and batch \
         norm) | PyTorch | htg / PyTorch |"
    );
    println!("|---|---|---|---|---|---|");
    for (method, peer) in [
        (Method::TripletBatchhard, "batchhard"),
        (Method::Htg, "htg"),
    ] {
        // burn-flex's own convolution and batch norm, then htg's convolution
        // (`htg_training::conv`), then htg's batch norm too (`htg_training::norm`): what each
        // buys, in one process.
        htg_training::conv::set_enabled(false);
        htg_training::norm::set_enabled(false);
        let burn_conv = htg_ms(method);
        htg_training::conv::set_enabled(true);
        let conv_only = htg_ms(method);
        htg_training::norm::set_enabled(true);
        let ours = htg_ms(method);
        match torch_ms(peer, threads) {
            Ok(theirs) => println!(
                "| {} | {burn_conv:.1} | {conv_only:.1} | {ours:.1} | {theirs:.1} | {:.2}× |",
                method.name(),
                ours / theirs
            ),
            Err(e) => println!(
                "| {} | {burn_conv:.1} | {conv_only:.1} | {ours:.1} | – ({e}) | – |",
                method.name()
            ),
        }
    }
}
