//! `htg eval`: zero-shot retrieval metrics of an ONNX model (or of raw pixels) on unseen
//! classes, with the metric definitions shared with training and `htg bench`; with
//! `--hard-pairs`, the class pairs the model confuses most (`htg_training::report`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use htg_training::features::Backbone;
use htg_training::report;
use htg_training::run::{evaluate_backbone, evaluate_embedder, evaluate_raw_pixels};

use crate::flags::{self, BackendArgs};
use htg_training::TrainConfig;

/// Arguments of `htg eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// ONNX model (its spec comes from metadata or a `<model>.json` manifest).
    #[arg(long, required_unless_present_any = ["raw_pixels", "backbone"])]
    pub model: Option<PathBuf>,
    /// Data set: `emoji`, `fashion-mnist`, `mnist5k` or a class-per-subfolder folder.
    #[arg(long)]
    pub data: String,
    /// Evaluate the raw-pixel floor instead of a model (32x32 RGB, or 28x28 grey for the
    /// MNIST-like sets; mean-centred, l2-normalised).
    #[arg(long, conflicts_with = "model")]
    pub raw_pixels: bool,
    /// Evaluate the raw-backbone floor instead: a backbone's own l2-normalised features, no
    /// head (`efficientnet-lite0`, `efficientnet-lite2` or an ONNX file), read from or added
    /// to the feature cache that `htg train --backbone` uses, so the images are never held
    /// as full-size tensors.
    #[arg(long, conflicts_with_all = ["model", "raw_pixels"])]
    pub backbone: Option<String>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "eval.json")]
    pub json: PathBuf,
    /// Inference runtime for --model.
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Seed of the k-means behind NMI.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Also report the N class pairs (A, B) the model confuses most: how often A's queries
    /// retrieve a B image first (HTML report with thumbnails, and the pairs in the JSON).
    #[arg(long, value_name = "N", conflicts_with = "raw_pixels")]
    pub hard_pairs: Option<usize>,
    /// A second ONNX model whose pairs and per-class R@1 go beside the first's.
    #[arg(long, value_name = "OTHER.onnx", requires = "hard_pairs")]
    pub compare: Option<PathBuf>,
    /// Where to write the HTML report of --hard-pairs.
    #[arg(long, value_name = "PATH.html", requires = "hard_pairs")]
    pub report: Option<PathBuf>,
}

/// Runs `htg eval`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let ks = [1, 2, 4, 8];
    if let (Some(n), Some(m)) = (args.hard_pairs, &args.model) {
        return hard_pairs(&args, m, n, &ks);
    }
    let report = match (&args.model, args.raw_pixels) {
        _ if args.backbone.is_some() => {
            let given = args.backbone.as_deref().unwrap_or_default();
            let path = flags::backbone(given)?;
            let load = |p: &Path| flags::load(p, &args.backend).map_err(|e| format!("{e:#}"));
            let cache = htg_retrieval::ort_backend::cache_dir();
            let b = Backbone::open(given, &path, 1, Some(&cache), &load)?;
            let mut cfg = TrainConfig::default_for(&args.data);
            cfg.seed = args.seed;
            evaluate_backbone(&args.data, &cfg, &b)?
        }
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

/// `htg eval --hard-pairs N [--compare OTHER.onnx]`: the metrics, the pairs and the report.
fn hard_pairs(args: &Args, model: &Path, n: usize, ks: &[usize]) -> anyhow::Result<()> {
    let first = flags::load(model, &args.backend)?;
    let second = match &args.compare {
        Some(p) => Some(flags::load(p, &args.backend)?),
        None => None,
    };
    let name = |p: &Path| {
        p.file_name().map_or_else(
            || p.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        )
    };
    let mut labels = (name(model), args.compare.as_deref().map(name));
    if labels.1.as_ref() == Some(&labels.0) {
        labels.1 = labels.1.map(|l| format!("{l} (--compare)"));
    }
    let run = report::hard_pairs(
        (&labels.0, first.as_ref()),
        labels.1.as_deref().zip(second.as_deref()),
        &args.data,
        ks,
        args.seed,
        n,
    )?;
    let r = &run.report;
    println!("{}: {}", r.first.eval.data, r.first.eval.protocol);
    for m in std::iter::once(&r.first).chain(&r.compare) {
        let c = &m.hard_pairs;
        println!("{}\n{}", m.model, m.eval.table());
        println!(
            "{} of {} queries missed; hardest pairs (A -> B: count / queries of A, B -> A):",
            c.queries - c.top1_hits,
            c.queries
        );
        for (i, p) in c.pairs.iter().enumerate() {
            println!(
                "{:>3}. {} -> {}: {} / {}, {}",
                i + 1,
                p.from_name,
                p.to_name,
                p.count,
                p.from_queries,
                p.reverse_count
            );
        }
    }
    let html_path = args
        .report
        .clone()
        .unwrap_or_else(|| PathBuf::from("hard-pairs.html"));
    std::fs::write(&html_path, run.html()?)
        .with_context(|| format!("writing {}", html_path.display()))?;
    std::fs::write(&args.json, serde_json::to_string_pretty(r)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("wrote {} and {}", html_path.display(), args.json.display());
    Ok(())
}
