//! `htg eval`: zero-shot retrieval metrics of an ONNX model (or of raw pixels) on unseen
//! classes, with the metric definitions shared with training and `htg bench`.

use std::path::PathBuf;

use anyhow::Context;
use htg_training::run::{evaluate_embedder, evaluate_raw_pixels};

use crate::flags::{self, BackendArgs};
use htg_training::TrainConfig;

/// Arguments of `htg eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// ONNX model (its spec comes from metadata or a `<model>.json` manifest).
    #[arg(long, required_unless_present = "raw_pixels")]
    pub model: Option<PathBuf>,
    /// Data set: `emoji`, `fashion-mnist`, `mnist5k` or a class-per-subfolder folder.
    #[arg(long)]
    pub data: String,
    /// Evaluate the raw-pixel floor instead of a model (32x32 RGB, or 28x28 grey for the
    /// MNIST-like sets; mean-centred, l2-normalised).
    #[arg(long, conflicts_with = "model")]
    pub raw_pixels: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "eval.json")]
    pub json: PathBuf,
    /// Inference runtime for --model.
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Seed of the k-means behind NMI.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Runs `htg eval`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let ks = [1, 2, 4, 8];
    let report = match (&args.model, args.raw_pixels) {
        (_, true) => {
            let mut cfg = TrainConfig::default_for(&args.data);
            cfg.seed = args.seed;
            evaluate_raw_pixels(&args.data, &cfg)?
        }
        (Some(m), false) => {
            let embedder = flags::load(m, &args.backend)?;
            evaluate_embedder(embedder.as_ref(), &args.data, &ks, args.seed)?
        }
        (None, false) => anyhow::bail!("--model or --raw-pixels is required"),
    };
    println!("{}: {}", report.data, report.protocol);
    println!("{}", report.table());
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&args.json, json).with_context(|| format!("writing {}", args.json.display()))?;
    println!("wrote {}", args.json.display());
    Ok(())
}
