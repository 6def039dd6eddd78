//! A whole training run: data, steps with checkpoints, export, evaluation in burn and
//! through the exported ONNX on tract, and the files written into the output directory.
//!
//! Output directory layout:
//! - `config.toml`: the config of the run (seed included);
//! - `checkpoint/`: weights, optimiser states and progress for `--resume`;
//! - `train_log.jsonl`: one [`StepStats`] per step;
//! - `model.onnx`: F with the `htg.*` metadata;
//! - `metrics.json`: the [`RunSummary`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use htg_retrieval::embed::TractEmbedder;
use serde::{Deserialize, Serialize};

use crate::config::LrSchedule;
use crate::data::{DataSource, Encoder, EvalProtocol, PkSampler, ZeroShotSplit};
use crate::eval::{embed_burn, embed_with, evaluate, max_abs_diff, top1_hits, EvalReport};
use crate::export::{
    export_feature_net, head_only_onnx, merge_backbone_head, run_matrix_onnx, write_atomic,
    Provenance,
};
use crate::features::Backbone;
use crate::model::input_spec;
use crate::trainer::{StepStats, Trainer};
use crate::{TrainConfig, TrainError};

/// Largest allowed difference between burn's and the ONNX file's embeddings.
pub const ONNX_TOLERANCE: f32 = 1e-4;

/// What a run is asked to do, besides the config.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// `emoji`, `fashion-mnist`, `mnist5k` or a class-per-subfolder directory.
    pub data: String,
    /// Output directory.
    pub out: PathBuf,
    /// Continue from `out/checkpoint` (its config wins). When `out/metrics.json` is the
    /// summary of that very checkpoint (a finished run continued to more steps), its
    /// validation curve and selection carry over: see [`train_and_export`].
    pub resume: bool,
    /// Keep only the first classes of the data set (quick runs and tests).
    pub max_classes: Option<usize>,
    /// The frozen backbone under F's head, for a config with `[backbone]`: its file, runtime
    /// and feature cache. Shared, so a seed sweep opens it once.
    pub backbone: Option<Arc<Backbone>>,
}

/// Everything `metrics.json` records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunSummary {
    /// Training method.
    pub method: String,
    /// Data set.
    pub data: String,
    /// Seed of the run.
    pub seed: u64,
    /// Steps trained in total.
    pub steps: usize,
    /// Number of training classes.
    pub train_classes: usize,
    /// Wall time of the training steps in this process, seconds.
    pub train_wall_s: f64,
    /// Mean wall time of one step in this process, milliseconds.
    pub ms_per_step: f64,
    /// Mean F loss of the first and the last 10% of the steps run in this process.
    pub loss_f_first_last: (f32, f32),
    /// Metrics computed with burn.
    pub burn: EvalReport,
    /// Metrics computed through `model.onnx` on tract.
    pub onnx_tract: EvalReport,
    /// Largest |burn − tract| over all evaluated embeddings.
    pub onnx_vs_burn_max_abs_diff: f32,
    /// Step of the exported F: the best validation MAP@R (= R@1 for emoji) when there is a
    /// validation split, else the last step.
    #[serde(default)]
    pub selected_step: usize,
    /// Validation metrics of the exported F (burn), when there is a validation split.
    #[serde(default)]
    pub val: Option<EvalReport>,
    /// `(step, validation MAP@R)` at every validation.
    #[serde(default)]
    pub val_curve: Vec<(usize, f64)>,
    /// Whether training stopped early (patience ran out).
    #[serde(default)]
    pub stopped_early: bool,
    /// Per test query, whether its nearest neighbour (through `model.onnx` on tract) has the
    /// query's class: the paired test over queries compares runs on these.
    #[serde(default)]
    pub test_top1_hits: Vec<bool>,
    /// Files of the data that did not decode and were left out, each with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_files: Vec<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Loads the zero-shot split of `data` for `cfg`'s input (pixels, or the features of the
/// backbone `cfg` names, which `backbone` must be), with the validation classes carved out of
/// the training classes when `cfg.val_classes > 0`.
pub fn load_split(
    data: &str,
    cfg: &TrainConfig,
    max_classes: Option<usize>,
    backbone: Option<&Backbone>,
) -> Result<ZeroShotSplit, TrainError> {
    let spec = input_spec(&cfg.feature);
    let enc = match (&cfg.backbone, backbone) {
        (None, _) => Encoder::Pixels(&spec),
        (Some(want), Some(b))
            if want.sha256 == b.config().sha256 && want.grid == b.config().grid =>
        {
            Encoder::Backbone(b)
        }
        (Some(want), Some(b)) => {
            return Err(TrainError::Config(format!(
                "the config trains on backbone {} (sha256 {}, grid {}), but the backbone given \
                 is {} (sha256 {}, grid {})",
                want.name,
                want.sha256,
                want.grid,
                b.config().name,
                b.config().sha256,
                b.config().grid
            )))
        }
        (Some(want), None) => {
            return Err(TrainError::Config(format!(
                "the config trains a head on backbone {} (sha256 {}); pass --backbone",
                want.name, want.sha256
            )))
        }
    };
    DataSource::resolve(data)?
        .load_with(enc, max_classes, &cfg.emoji)?
        .carve_validation(cfg.val_classes, cfg.val_split_seed)
}

/// The P×K sampler `cfg` asks for: cross-vendor when configured and the data has vendors.
pub fn sampler_for(cfg: &TrainConfig, split: &ZeroShotSplit) -> Result<PkSampler, TrainError> {
    match (&split.train_vendor, cfg.cross_vendor) {
        (Some(v), true) => PkSampler::with_vendors(&split.train.labels, v),
        _ => PkSampler::new(&split.train.labels),
    }
}

/// Raises the step budget saved with `out`'s checkpoint to `steps`, so that a resumed run
/// trains further, and returns the checkpoint's config. On resume the checkpoint's config
/// wins, so this is the one place a budget can grow: `htg train --resume --steps N` and the
/// protocol's `--extend` both go through it. A cosine schedule is refused, because its decay
/// depends on the step count: raising it would change the learning rate of the steps still
/// to come, and the continued run would no longer be the longer run it stands for.
pub fn extend_checkpoint(out: &Path, steps: usize) -> Result<TrainConfig, TrainError> {
    let path = out.join("checkpoint").join("config.toml");
    let mut c = TrainConfig::load(&path)?;
    if c.steps == steps {
        return Ok(c);
    }
    if c.lr_schedule != LrSchedule::Constant {
        return Err(TrainError::Config(format!(
            "{}: a run with a cosine learning-rate schedule cannot change its step count \
             ({} to {steps}) on resume: its decay depends on the step count; train it anew",
            path.display(),
            c.steps
        )));
    }
    c.steps = steps;
    c.save(&path)?;
    Ok(c)
}

/// The summary of the finished run whose last checkpoint is at `step`, when `out` has one
/// with a validation selection and its exported model: what a continued run must beat.
fn finished_run_at(out: &Path, step: usize) -> Option<RunSummary> {
    let text = std::fs::read_to_string(out.join("metrics.json")).ok()?;
    let s: RunSummary = serde_json::from_str(&text).ok()?;
    (s.steps == step && s.val.is_some() && out.join("model.onnx").is_file()).then_some(s)
}

/// Trains (or resumes), exports and evaluates; `on_step` sees every step's stats.
///
/// A finished run that is resumed with a higher step count (`htg train --resume --steps N`,
/// the protocol's `--extend`) keeps its earlier selection until a later validation beats it:
/// without that, continuing a run would forget the best F its first part found and export
/// a worse one. When no later validation is better, the earlier `model.onnx` and its test
/// figures stand, and only the step count, the curve and the timings are updated.
pub fn train_and_export(
    cfg: TrainConfig,
    opts: &RunOptions,
    mut on_step: impl FnMut(&StepStats),
) -> Result<RunSummary, TrainError> {
    std::fs::create_dir_all(&opts.out).map_err(io(&opts.out))?;
    let ck_dir = opts.out.join("checkpoint");
    let resumed = if opts.resume {
        Some(Trainer::load_checkpoint(&ck_dir)?)
    } else {
        None
    };
    let cfg = resumed.as_ref().map_or(cfg, |t| t.config().clone());
    let split = load_split(&opts.data, &cfg, opts.max_classes, opts.backbone.as_deref())?;
    let mut trainer = match resumed {
        Some(t) if t.train_classes() != split.train_classes => {
            return Err(TrainError::Checkpoint(format!(
                "the checkpoint was trained on {} classes but {} has {}",
                t.train_classes(),
                opts.data,
                split.train_classes
            )))
        }
        Some(t) => t,
        None => Trainer::new(&cfg, split.train_classes)?,
    };
    cfg.save(&opts.out.join("config.toml"))?;
    let sampler = sampler_for(&cfg, &split)?;

    let log_path = opts.out.join("train_log.jsonl");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(opts.resume)
        .write(true)
        .truncate(!opts.resume)
        .open(&log_path)
        .map_err(io(&log_path))?;
    let started = Instant::now();
    let first_step = trainer.step();
    let earlier = if opts.resume {
        finished_run_at(&opts.out, first_step)
    } else {
        None
    };
    let mut losses = Vec::new();
    // Model selection on the validation classes: the best F so far, as an independent copy
    // (a plain clone would share batch norm's running statistics with the live F, which
    // later steps keep updating).
    let mut best: Option<(f64, usize, crate::model::FeatureNet, EvalReport)> = None;
    let earlier_best = earlier
        .as_ref()
        .and_then(|e| e.val.as_ref().map(|v| v.map_at_r));
    let mut val_curve = earlier
        .as_ref()
        .map_or_else(Vec::new, |e| e.val_curve.clone());
    let mut since_best = earlier.as_ref().map_or(0, |e| {
        e.val_curve
            .iter()
            .filter(|(step, _)| *step > e.selected_step)
            .count()
    });
    let mut stopped_early = false;
    while trainer.step() < cfg.steps {
        let s = trainer.train_step(&split.train, &sampler);
        if !s.loss_f.is_finite() {
            return Err(TrainError::Data(format!(
                "loss became {} at step {}; lower the learning rate",
                s.loss_f, s.step
            )));
        }
        losses.push(s.loss_f);
        let line = serde_json::to_string(&s).map_err(|e| TrainError::Eval(e.to_string()))?;
        writeln!(log, "{line}").map_err(io(&log_path))?;
        on_step(&s);
        if cfg.checkpoint_every > 0 && s.step.is_multiple_of(cfg.checkpoint_every) {
            trainer.save_checkpoint(&ck_dir)?;
        }
        let due =
            s.step == cfg.steps || (cfg.val_every > 0 && s.step.is_multiple_of(cfg.val_every));
        if let (Some(val), true) = (&split.val, due) {
            let f = trainer.feature_net();
            let r = evaluate("validation", val, &cfg.recall_ks, cfg.seed, |sets| {
                Ok(sets.iter().map(|x| embed_burn(f, x)).collect())
            })?;
            val_curve.push((s.step, r.map_at_r));
            let to_beat = best.as_ref().map(|b| b.0).or(earlier_best);
            if to_beat.is_none_or(|b| r.map_at_r > b) {
                let copy = crate::model::FeatureNet::new(&cfg, &crate::backend::train_device())
                    .load_record(f.clone().into_record());
                best = Some((r.map_at_r, s.step, copy, r));
                since_best = 0;
            } else {
                since_best += 1;
                if cfg.patience > 0 && since_best >= cfg.patience {
                    stopped_early = true;
                    break;
                }
            }
        }
    }
    let train_wall_s = started.elapsed().as_secs_f64();
    let ran = trainer.step() - first_step;
    trainer.save_checkpoint(&ck_dir)?;
    let ms_per_step = if ran > 0 {
        train_wall_s * 1000.0 / ran as f64
    } else {
        0.0
    };
    let tenth = (losses.len() / 10).max(1);
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    let loss_f_first_last = if losses.is_empty() {
        (f32::NAN, f32::NAN)
    } else {
        (
            mean(&losses[..tenth]),
            mean(&losses[losses.len() - tenth..]),
        )
    };
    if let (None, Some(e)) = (&best, earlier) {
        // No later validation beat the earlier selection: its model.onnx stands.
        let summary = RunSummary {
            steps: trainer.step(),
            train_wall_s,
            ms_per_step,
            loss_f_first_last,
            val_curve,
            stopped_early,
            ..e
        };
        write_summary(&opts.out, &summary)?;
        return Ok(summary);
    }

    let prov = Provenance {
        method: cfg.method.name(),
        data: split.name.clone(),
        backbone: cfg.backbone.as_ref().map(|b| b.sha256.clone()),
    };
    let (selected_step, val, f) = match &best {
        Some((_, step, f, r)) => (*step, Some(r.clone()), f),
        None => (trainer.step(), None, trainer.feature_net()),
    };
    let model_path = opts.out.join("model.onnx");
    let burn = evaluate(&split.name, &split.eval, &cfg.recall_ks, cfg.seed, |sets| {
        Ok(sets.iter().map(|s| embed_burn(f, s)).collect())
    })?;
    let mut diff = 0f32;
    let mut tract_emb = Vec::new();
    let onnx_tract = match (f, opts.backbone.as_deref()) {
        (crate::model::FeatureNet::Head(head), Some(b)) => {
            // The merged file is what users run; it is checked against the backbone and
            // head run apart. The head's nodes, written by hand, are checked on tract
            // against burn over every evaluated feature vector.
            let (bytes, _spec) = merge_backbone_head(b.bytes(), b.spec(), head, &prov)?;
            write_atomic(&model_path, &bytes)?;
            diff = check_merged(&model_path, b, f)?;
            let head_onnx = head_only_onnx(head);
            evaluate(&split.name, &split.eval, &cfg.recall_ks, cfg.seed, |sets| {
                let e: Vec<_> = sets
                    .iter()
                    .map(|s| {
                        let x =
                            ndarray::Array2::from_shape_vec((s.len(), s.chw[0]), s.data.clone())
                                .map_err(|e| TrainError::Eval(e.to_string()))?;
                        let mut e = run_matrix_onnx(&head_onnx, &x)?;
                        htg_retrieval::embed::l2_normalize_rows(&mut e);
                        diff = diff.max(max_abs_diff(&e, &embed_burn(f, s)));
                        Ok(e)
                    })
                    .collect::<Result<_, TrainError>>()?;
                tract_emb = e.clone();
                Ok(e)
            })?
        }
        (crate::model::FeatureNet::Head(_), None) => {
            return Err(TrainError::Config(
                "a head was trained without its backbone".into(),
            ))
        }
        (crate::model::FeatureNet::Cnn(_), _) => {
            let spec = input_spec(&cfg.feature);
            let (bytes, _spec) = export_feature_net(f, &spec, &prov)?;
            write_atomic(&model_path, &bytes)?;
            let tract =
                TractEmbedder::load(&model_path).map_err(|e| TrainError::Eval(e.to_string()))?;
            evaluate(&split.name, &split.eval, &cfg.recall_ks, cfg.seed, |sets| {
                let e: Vec<_> = sets
                    .iter()
                    .map(|s| {
                        let e = embed_with(&tract, s)?;
                        diff = diff.max(max_abs_diff(&e, &embed_burn(f, s)));
                        Ok(e)
                    })
                    .collect::<Result<_, TrainError>>()?;
                tract_emb = e.clone();
                Ok(e)
            })?
        }
    };
    let test_top1_hits = top1_hits(&split.eval, &tract_emb);
    let summary = RunSummary {
        method: cfg.method.name(),
        data: split.name.clone(),
        seed: cfg.seed,
        steps: trainer.step(),
        train_classes: split.train_classes,
        train_wall_s,
        ms_per_step,
        loss_f_first_last,
        burn,
        onnx_tract,
        onnx_vs_burn_max_abs_diff: diff,
        selected_step,
        val,
        val_curve,
        stopped_early,
        test_top1_hits,
        skipped_files: split.skipped.clone(),
    };
    write_summary(&opts.out, &summary)?;
    if diff > ONNX_TOLERANCE {
        return Err(TrainError::Export(format!(
            "the exported ONNX differs from burn by {diff:e} (> {ONNX_TOLERANCE:e})"
        )));
    }
    Ok(summary)
}

/// Largest |difference| between the merged file at `model` on tract and the backbone, then
/// `f`'s head in burn, on two fixed pseudo-random images (values in the spec's input range):
/// the graft is checked on every export without keeping any pixels of the data set.
pub fn check_merged(
    model: &Path,
    backbone: &Backbone,
    f: &crate::model::FeatureNet,
) -> Result<f32, TrainError> {
    let spec = backbone.spec();
    let shape = htg_retrieval::preprocess::batch_shape(2, spec);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let input = ndarray::Array4::from_shape_fn((shape[0], shape[1], shape[2], shape[3]), |_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    });
    let feats = backbone.raw(input.view())?;
    let set = crate::data::ImageSet {
        data: feats.iter().copied().collect(),
        labels: vec![0, 1],
        chw: [feats.ncols(), 1, 1],
    };
    let want = embed_burn(f, &set);
    let merged = TractEmbedder::load(model).map_err(|e| TrainError::Eval(e.to_string()))?;
    let got = htg_retrieval::embed::Embedder::embed_tensor(&merged, input.view())
        .map_err(|e| TrainError::Eval(e.to_string()))?;
    Ok(max_abs_diff(&got, &want))
}

/// Writes `metrics.json`, atomically: a continued run reads it back as its starting point.
fn write_summary(out: &Path, summary: &RunSummary) -> Result<(), TrainError> {
    let json =
        serde_json::to_string_pretty(summary).map_err(|e| TrainError::Eval(e.to_string()))?;
    write_atomic(&out.join("metrics.json"), json.as_bytes())
}

/// Evaluates the ONNX model at `model` on the unseen classes of `data`, through tract.
pub fn evaluate_onnx(
    model: &Path,
    data: &str,
    ks: &[usize],
    seed: u64,
) -> Result<EvalReport, TrainError> {
    let tract = TractEmbedder::load(model).map_err(|e| TrainError::Eval(e.to_string()))?;
    evaluate_embedder(&tract, data, ks, seed)
}

/// [`evaluate_onnx`] through an already loaded model, on whichever runtime it was loaded on
/// (`htg eval --backend ort`).
pub fn evaluate_embedder(
    embedder: &dyn htg_retrieval::embed::Embedder,
    data: &str,
    ks: &[usize],
    seed: u64,
) -> Result<EvalReport, TrainError> {
    let split = DataSource::resolve(data)?.load(embedder.spec(), None)?;
    evaluate(&split.name, &split.eval, ks, seed, |sets| {
        sets.iter().map(|s| embed_with(embedder, s)).collect()
    })
}

/// The raw-pixel floor on the unseen classes of `data`, at `cfg`'s input size and colour.
pub fn evaluate_raw_pixels(data: &str, cfg: &TrainConfig) -> Result<EvalReport, TrainError> {
    let split = load_split(data, cfg, None, None)?;
    let report = evaluate(&split.name, &split.eval, &cfg.recall_ks, cfg.seed, |sets| {
        Ok(crate::eval::embed_raw_pixels(sets))
    })?;
    Ok(report)
}

/// The raw-backbone floor on the unseen classes of `data`: the backbone's own features,
/// l2-normalised, with no head: what a trained head must beat.
pub fn evaluate_backbone(
    data: &str,
    cfg: &TrainConfig,
    backbone: &Backbone,
) -> Result<EvalReport, TrainError> {
    let cfg = cfg.clone().on_backbone(backbone.config().clone());
    let split = load_split(data, &cfg, None, Some(backbone))?;
    evaluate(&split.name, &split.eval, &cfg.recall_ks, cfg.seed, |sets| {
        sets.iter()
            .map(|s| {
                let mut e = ndarray::Array2::from_shape_vec((s.len(), s.chw[0]), s.data.clone())
                    .map_err(|e| TrainError::Eval(e.to_string()))?;
                htg_retrieval::embed::l2_normalize_rows(&mut e);
                Ok(e)
            })
            .collect()
    })
}

/// Number of evaluation images, for messages.
pub fn eval_size(p: &EvalProtocol) -> usize {
    match p {
        EvalProtocol::QueryGallery { query, gallery } => query.len() + gallery.len(),
        EvalProtocol::LeaveOneOut(s) => s.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A constant schedule's budget grows and is saved; a cosine one is refused and its
    /// checkpoint left as it was, unless the step count does not change.
    #[test]
    fn extending_a_checkpoint_raises_a_constant_budget_and_refuses_a_cosine_one() {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("checkpoint");
        std::fs::create_dir_all(&ck).unwrap();
        let path = ck.join("config.toml");
        let mut cfg = TrainConfig {
            steps: 100,
            ..TrainConfig::default()
        };
        cfg.save(&path).unwrap();
        assert_eq!(extend_checkpoint(dir.path(), 300).unwrap().steps, 300);
        assert_eq!(TrainConfig::load(&path).unwrap().steps, 300);

        cfg.lr_schedule = LrSchedule::Cosine;
        cfg.save(&path).unwrap();
        let before = std::fs::read(&path).unwrap();
        let e = extend_checkpoint(dir.path(), 300).unwrap_err().to_string();
        assert!(e.contains("cosine") && e.contains("100 to 300"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(extend_checkpoint(dir.path(), 100).unwrap().steps, 100);
    }
}
