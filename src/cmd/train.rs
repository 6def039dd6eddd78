//! `htg train`: train F with HTG or a triplet-mining baseline, export it to ONNX, evaluate it.

use std::path::PathBuf;

use anyhow::Context;
use std::sync::Arc;

use htg_training::features::Backbone;
use htg_training::run::{extend_checkpoint, train_and_export, RunOptions};
use htg_training::{Method, TrainConfig};
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `htg train`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Data set: `emoji`, `fashion-mnist`, `mnist5k` (under `$HTG_DATA_DIR` or `data/`, see
    /// `scripts/fetch-data.sh`) or a folder with one subfolder per class.
    #[arg(long)]
    pub data: String,
    /// Training method (overrides the config's `method`).
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    /// TOML config (unknown keys are rejected); defaults suit the data set.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output directory: model.onnx, config.toml, metrics.json, checkpoint/.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from `<out>/checkpoint` with its saved config.
    #[arg(long)]
    pub resume: bool,
    /// Override the number of steps (also when resuming, to train further).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Override the seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Use only the first N classes of the data set (quick runs).
    #[arg(long)]
    pub max_classes: Option<usize>,
    /// Train a head on a frozen pretrained backbone, as the paper does: `efficientnet-lite0`
    /// (the bundled photo model), `efficientnet-lite2` (`scripts/fetch-models.sh`) or an
    /// ONNX file. Its features are computed once per image and cached; the exported
    /// model.onnx is the backbone and the head in one file.
    #[arg(long)]
    pub backbone: Option<String>,
    /// Pool the backbone's last feature map to a G×G grid instead of one vector (G > 1):
    /// keeps coarse layout, which drawings such as emoji need [default: the config's
    /// `[backbone] grid`, else 1]
    #[arg(long, value_name = "G", requires = "backbone")]
    pub backbone_grid: Option<usize>,
    /// Runtime that computes the backbone's features.
    #[command(flatten)]
    pub runtime: crate::flags::BackendArgs,
}

/// Runs `htg train`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = match &args.config {
        Some(p) => TrainConfig::load(p)?,
        None => TrainConfig::default_for(&args.data),
    };
    if let Some(m) = args.method {
        cfg.method = m;
    }
    if let Some(s) = args.steps {
        cfg.steps = s;
    }
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    if args.resume {
        // The checkpoint's config wins; only --steps may extend it.
        let saved = args.out.join("checkpoint").join("config.toml");
        if saved.is_file() {
            let mut c = TrainConfig::load(&saved)?;
            if let Some(m) = args.method {
                anyhow::ensure!(
                    m == c.method,
                    "--method {} differs from the checkpoint's method {}",
                    m.name(),
                    c.method.name()
                );
            }
            if let Some(s) = args.steps {
                c = extend_checkpoint(&args.out, s)?;
            }
            cfg = c;
        }
    }
    let backbone = match &args.backbone {
        Some(given) => {
            let path = crate::flags::backbone(given)?;
            let grid = args
                .backbone_grid
                .or(cfg.backbone.as_ref().map(|b| b.grid))
                .unwrap_or(1);
            let cache = htg_retrieval::ort_backend::cache_dir();
            let load = |p: &std::path::Path| {
                crate::flags::load(p, &args.runtime).map_err(|e| format!("{e:#}"))
            };
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "features {bar:30} {pos}/{len} {elapsed_precise} eta {eta}",
                )
                .context("progress template")?,
            );
            let b = Backbone::open(given, &path, grid, Some(&cache), &load)?.with_progress(
                Box::new(move |done, total| {
                    if bar.length() != Some(total as u64) {
                        bar.reset();
                        bar.set_length(total as u64);
                    }
                    bar.set_position(done as u64);
                    if done == total {
                        bar.finish();
                    }
                }),
            );
            cfg = cfg.on_backbone(b.config().clone());
            Some(Arc::new(b))
        }
        None => None,
    };
    cfg.validate()?;
    let bar = ProgressBar::new(cfg.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed_precise} eta {eta} {msg}")
            .context("progress template")?,
    );
    let opts = RunOptions {
        data: args.data.clone(),
        out: args.out.clone(),
        resume: args.resume,
        max_classes: args.max_classes,
        backbone: backbone.clone(),
    };
    eprintln!(
        "training {}{} on {} for {} steps (seed {}) into {}",
        cfg.method.name(),
        cfg.backbone
            .as_ref()
            .map(|b| format!(" (a head on {}, sha256 {})", b.name, &b.sha256[..16]))
            .unwrap_or_default(),
        args.data,
        cfg.steps,
        cfg.seed,
        args.out.display()
    );
    let summary = train_and_export(cfg, &opts, |s| {
        bar.set_position(s.step as u64);
        let mut msg = format!("F {:.4}", s.loss_f);
        if let (Some(g), Some(d), Some(acc), Some(h)) =
            (s.loss_g, s.loss_d, s.d_real_fake_acc, s.hardness_out)
        {
            msg.push_str(&format!(
                " G {g:.3} D {d:.3} D-acc {acc:.2} hard {:.3}->{h:.3}",
                s.hardness_in
            ));
        } else {
            msg.push_str(&format!(" hard {:.3}", s.hardness_in));
        }
        bar.set_message(msg);
    })?;
    bar.finish();
    for s in &summary.skipped_files {
        eprintln!("left out, does not decode: {s}");
    }
    if let Some(b) = &backbone {
        let (held, computed) = b.cache_counts();
        eprintln!("backbone features: {computed} computed, {held} in the cache");
    }
    println!(
        "{} on {}: {} steps, {:.1} ms/step, train {:.0} s",
        summary.method, summary.data, summary.steps, summary.ms_per_step, summary.train_wall_s
    );
    let on = if backbone.is_some() {
        "the head's ONNX on tract, over the cached features"
    } else {
        "ONNX on tract"
    };
    println!("{} ({on})", summary.onnx_tract.protocol);
    println!("{}", summary.onnx_tract.table());
    println!(
        "ONNX vs burn max |diff| = {:.2e}; wrote {}",
        summary.onnx_vs_burn_max_abs_diff,
        args.out.join("model.onnx").display()
    );
    Ok(())
}
