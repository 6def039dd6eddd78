//! The comparison protocol of the model card: every method × every seed, each run selected on
//! the validation classes and tested once, then mean ± sd, paired differences against the
//! first method with 95% bootstrap intervals, and the paired test over test queries.
//!
//! ```text
//! cargo run -p htg-training --profile train --example protocol -- \
//!     --data emoji --out runs/protocol --seeds 1-10 --steps 3000 \
//!     bh=models/configs/emoji-protocol-batchhard.toml htg=models/configs/emoji-protocol-htg.toml
//! ```
//!
//! Each `NAME=CONFIG` is a TOML config (or a method name, for its defaults). `--steps`,
//! `--val-every`, `--patience` and `--val-classes` override every config when given. A run
//! whose `metrics.json` exists is read back, not retrained, so an interrupted protocol
//! continues where it stopped. With `--extend`, a finished run of fewer steps than `--steps`
//! is continued from its last checkpoint to `--steps` instead (the longer run up to rounding,
//! for a constant learning rate), keeping its earlier selection unless a later validation
//! beats it; copy the runs first to keep the shorter ones. With `--read-only` nothing trains: a
//! missing run (a misspelt name, say) is an error, so a report can be rebuilt safely. Seeds are interleaved (seed 1 of
//! every method, then seed 2, …) so a time-boxed protocol leaves complete pairs. `report.md` in `--out` is rewritten
//! after every run.

use std::path::{Path, PathBuf};

use htg_training::run::{extend_checkpoint, train_and_export, RunOptions, RunSummary};
use htg_training::stats::{mean_sd, paired_difference, paired_query_test};
use htg_training::{Method, TrainConfig};

struct Args {
    data: String,
    out: PathBuf,
    seeds: Vec<u64>,
    steps: Option<usize>,
    val_every: Option<usize>,
    patience: Option<usize>,
    val_classes: Option<usize>,
    extend: bool,
    read_only: bool,
    methods: Vec<(String, TrainConfig)>,
    backbone: Option<PathBuf>,
    backbone_grid: usize,
}

fn parse_seeds(s: &str) -> Result<Vec<u64>, String> {
    let bad = |e: &dyn std::fmt::Display| format!("--seeds {s:?}: {e}");
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b): (u64, u64) = (
                a.parse().map_err(|e| bad(&e))?,
                b.parse().map_err(|e| bad(&e))?,
            );
            if a > b {
                return Err(bad(&"empty range"));
            }
            Ok((a..=b).collect())
        }
        None => s
            .split(',')
            .map(|x| x.parse().map_err(|e| bad(&e)))
            .collect(),
    }
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        data: "emoji".into(),
        out: PathBuf::from("runs/protocol"),
        seeds: vec![1, 2, 3],
        steps: None,
        val_every: None,
        patience: None,
        val_classes: None,
        extend: false,
        read_only: false,
        methods: Vec::new(),
        backbone: None,
        backbone_grid: 1,
    };
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, f: &str| -> Result<usize, String> {
        v.ok_or(format!("{f} needs a value"))?
            .parse()
            .map_err(|e| format!("{f}: {e}"))
    };
    while let Some(x) = it.next() {
        match x.as_str() {
            "--data" => a.data = it.next().ok_or("--data needs a value")?,
            "--out" => a.out = it.next().ok_or("--out needs a value")?.into(),
            "--seeds" => a.seeds = parse_seeds(&it.next().ok_or("--seeds needs a value")?)?,
            "--steps" => a.steps = Some(num(it.next(), "--steps")?),
            "--val-every" => a.val_every = Some(num(it.next(), "--val-every")?),
            "--patience" => a.patience = Some(num(it.next(), "--patience")?),
            "--val-classes" => a.val_classes = Some(num(it.next(), "--val-classes")?),
            "--extend" => a.extend = true,
            "--read-only" => a.read_only = true,
            "--backbone-grid" => a.backbone_grid = num(it.next(), "--backbone-grid")?,
            "--backbone" => a.backbone = Some(it.next().ok_or("--backbone needs a value")?.into()),
            spec => {
                let (name, what) = spec.split_once('=').ok_or(format!(
                    "{spec:?}: expected NAME=CONFIG.toml or NAME=METHOD"
                ))?;
                let cfg = if what.ends_with(".toml") {
                    TrainConfig::load(Path::new(what)).map_err(|e| e.to_string())?
                } else {
                    let mut c = TrainConfig::default_for(&a.data);
                    c.method = serde_json::from_value::<Method>(serde_json::json!(what))
                        .map_err(|e| format!("method {what:?}: {e}"))?;
                    c
                };
                a.methods.push((name.to_string(), cfg));
            }
        }
    }
    if a.methods.is_empty() {
        return Err("name at least one NAME=CONFIG.toml".into());
    }
    Ok(a)
}

fn fmt_ms(v: &[f64]) -> String {
    let (m, s) = mean_sd(v);
    format!("{m:.4} ± {s:.4}")
}

fn report(a: &Args, runs: &[Vec<(u64, RunSummary)>]) -> String {
    let mut md = format!(
        "Protocol: data {}, seeds {:?}; validation = class-disjoint split of the training classes \
         (selection: best validation MAP@R, = R@1 for emoji); test = unseen classes, evaluated once \
         per run through model.onnx on tract. Δ columns: paired by seed against `{}`, 95% \
         bootstrap interval; p: sign-flip test over test queries of the per-query hit rate.\n\n",
        a.data, a.seeds, a.methods[0].0
    );
    md.push_str(
        "| method | runs | steps run / selected (mean) | val MAP@R | test R@1 | test R@2 | test R@4 | test R@8 | test NMI | Δ val [95% CI] | Δ test R@1 [95% CI] | p (queries) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let recall = |s: &RunSummary, k: usize| {
        s.onnx_tract
            .recall_at
            .iter()
            .find(|r| r.0 == k)
            .map_or(f64::NAN, |r| r.1)
    };
    let reference = &runs[0];
    for ((name, _), rs) in a.methods.iter().zip(runs) {
        if rs.is_empty() {
            continue;
        }
        let val: Vec<f64> = rs
            .iter()
            .map(|(_, s)| s.val.as_ref().map_or(f64::NAN, |v| v.map_at_r))
            .collect();
        let r1: Vec<f64> = rs.iter().map(|(_, s)| recall(s, 1)).collect();
        let r2: Vec<f64> = rs.iter().map(|(_, s)| recall(s, 2)).collect();
        let r4: Vec<f64> = rs.iter().map(|(_, s)| recall(s, 4)).collect();
        let r8: Vec<f64> = rs.iter().map(|(_, s)| recall(s, 8)).collect();
        let nmi: Vec<f64> = rs.iter().map(|(_, s)| s.onnx_tract.nmi).collect();
        let ran = rs.iter().map(|(_, s)| s.steps as f64).sum::<f64>() / rs.len() as f64;
        let sel = rs.iter().map(|(_, s)| s.selected_step as f64).sum::<f64>() / rs.len() as f64;
        // Pairs: seeds both this method and the reference have.
        let pairs: Vec<(&RunSummary, &RunSummary)> = rs
            .iter()
            .filter_map(|(seed, s)| {
                reference
                    .iter()
                    .find(|(r, _)| r == seed)
                    .map(|(_, r)| (s, r))
            })
            .collect();
        let (dval, dtest, p) = if std::ptr::eq(rs, reference) || pairs.is_empty() {
            ("–".to_string(), "–".to_string(), "–".to_string())
        } else {
            let get = |f: &dyn Fn(&RunSummary) -> f64| -> (Vec<f64>, Vec<f64>) {
                pairs.iter().map(|(s, r)| (f(s), f(r))).unzip()
            };
            let (va, vb) = get(&|s| s.val.as_ref().map_or(f64::NAN, |v| v.map_at_r));
            let (ta, tb) = get(&|s| recall(s, 1));
            let dv = paired_difference(&va, &vb, 7).map_or("–".into(), |c| {
                format!("{:+.4} [{:+.4}, {:+.4}]", c.mean, c.lo, c.hi)
            });
            let dt = paired_difference(&ta, &tb, 7).map_or("–".into(), |c| {
                format!("{:+.4} [{:+.4}, {:+.4}]", c.mean, c.lo, c.hi)
            });
            let ha: Vec<Vec<bool>> = pairs
                .iter()
                .map(|(s, _)| s.test_top1_hits.clone())
                .collect();
            let hb: Vec<Vec<bool>> = pairs
                .iter()
                .map(|(_, r)| r.test_top1_hits.clone())
                .collect();
            let p = paired_query_test(&ha, &hb, 10_000, 11)
                .map_or("–".into(), |(_, p)| format!("{p:.3}"));
            (dv, dt, p)
        };
        md.push_str(&format!(
            "| {name} | {} | {ran:.0} / {sel:.0} | {} | {} | {} | {} | {} | {} | {dval} | {dtest} | {p} |\n",
            rs.len(),
            fmt_ms(&val),
            fmt_ms(&r1),
            fmt_ms(&r2),
            fmt_ms(&r4),
            fmt_ms(&r8),
            fmt_ms(&nmi)
        ));
    }
    if let Some((name, seed, s)) = best_on_validation(a, runs) {
        let v = s.val.as_ref().map_or(f64::NAN, |v| v.map_at_r);
        md.push_str(&format!(
            "\nChosen by validation (the highest validation MAP@R of every run above; ties go to \
             the higher mean validation R@2/4/8, then to the earlier method and seed): `{name}` \
             seed {seed}, `{}`: validation MAP@R {v:.4}, test R@1 {:.4}.\n",
            a.out
                .join(name)
                .join(format!("s{seed}"))
                .join("model.onnx")
                .display(),
            recall(s, 1)
        ));
    } else {
        md.push_str("\nNo run is chosen: none has a validation score (no validation classes).\n");
    }
    md
}

/// The run validation prefers: the rule the bundled model is chosen by (models/README.md).
fn best_on_validation<'a>(
    a: &'a Args,
    runs: &'a [Vec<(u64, RunSummary)>],
) -> Option<(&'a str, u64, &'a RunSummary)> {
    // A run without a validation score (no validation classes: its MAP@R is NaN) cannot be
    // chosen by validation; with no such run at all, nothing is.
    let key = |s: &RunSummary| -> Option<(f64, f64)> {
        let v = s.val.as_ref().filter(|v| v.map_at_r.is_finite())?;
        let tail: Vec<f64> = v
            .recall_at
            .iter()
            .filter(|r| r.0 > 1)
            .map(|r| r.1)
            .collect();
        let mean = tail.iter().sum::<f64>() / tail.len().max(1) as f64;
        Some((v.map_at_r, mean))
    };
    let mut best: Option<(&str, u64, &RunSummary)> = None;
    for ((name, _), rs) in a.methods.iter().zip(runs) {
        for (seed, s) in rs {
            let Some(k) = key(s) else { continue };
            let better = match best {
                None => true,
                Some((_, _, b)) => Some(k) > key(b),
            };
            if better {
                best = Some((name, *seed, s));
            }
        }
    }
    best
}

fn main() {
    let mut a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("protocol: {e}");
            std::process::exit(2);
        }
    };
    // A frozen backbone (an ONNX file) under every method's head: opened once, on ONNX
    // Runtime when its library is installed, and its feature cache shared by all runs.
    let backbone = a.backbone.as_ref().map(|path| {
        let ort = htg_retrieval::ort_backend::OrtOptions {
            library: htg_retrieval::ort_backend::resolve_library(
                None,
                htg_retrieval::ort_backend::ExecutionProvider::Cpu,
            ),
            ..Default::default()
        };
        let load = |p: &Path| {
            let l = htg_retrieval::loader::load(
                p,
                htg_retrieval::loader::Runtime::Auto,
                &Default::default(),
                &ort,
            )
            .map_err(|e| e.to_string())?;
            eprintln!("{}", l.choice.unwrap_or_default());
            Ok(l.embedder)
        };
        let name = path
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        let cache = htg_retrieval::ort_backend::cache_dir();
        std::sync::Arc::new(
            htg_training::features::Backbone::open(
                &name,
                path,
                a.backbone_grid,
                Some(&cache),
                &load,
            )
            .unwrap_or_else(|e| {
                eprintln!("protocol: --backbone: {e}");
                std::process::exit(2);
            }),
        )
    });
    if let Some(b) = &backbone {
        for (_, cfg) in a.methods.iter_mut() {
            *cfg = cfg.clone().on_backbone(b.config().clone());
        }
    }
    let mut runs: Vec<Vec<(u64, RunSummary)>> = vec![Vec::new(); a.methods.len()];
    for &seed in &a.seeds {
        for (m, (name, base)) in a.methods.iter().enumerate() {
            let mut cfg = base.clone();
            cfg.seed = seed;
            cfg.steps = a.steps.unwrap_or(cfg.steps);
            cfg.val_every = a.val_every.unwrap_or(cfg.val_every);
            cfg.patience = a.patience.unwrap_or(cfg.patience);
            cfg.val_classes = a.val_classes.unwrap_or(cfg.val_classes);
            cfg.checkpoint_every = 0;
            let out = a.out.join(name).join(format!("s{seed}"));
            let metrics = out.join("metrics.json");
            let done = std::fs::read_to_string(&metrics)
                .ok()
                .and_then(|t| serde_json::from_str::<RunSummary>(&t).ok());
            let summary = match done {
                Some(s) if !(a.extend && s.steps < cfg.steps) => s,
                done if a.read_only => {
                    let why = match done {
                        Some(s) => format!("has {} steps, not {}", s.steps, cfg.steps),
                        None => format!("has no {}", metrics.display()),
                    };
                    eprintln!("protocol: --read-only: {name} seed {seed} {why}; nothing trained");
                    std::process::exit(1);
                }
                done => {
                    let resume = done.is_some();
                    if resume {
                        // Continue the finished run: its checkpoint's config wins on resume,
                        // so the longer budget goes there.
                        if let Err(e) = extend_checkpoint(&out, cfg.steps) {
                            eprintln!("protocol: {name} seed {seed}: {e}");
                            std::process::exit(1);
                        }
                    }
                    let opts = RunOptions {
                        data: a.data.clone(),
                        out: out.clone(),
                        resume,
                        max_classes: None,
                        backbone: backbone.clone(),
                    };
                    match train_and_export(cfg, &opts, |_| {}) {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("protocol: {name} seed {seed}: {e}");
                            std::process::exit(1);
                        }
                    }
                }
            };
            eprintln!(
                "{name} s{seed}: steps {} selected {} val {:.4} test R@1 {:.4} ({:.0} ms/step)",
                summary.steps,
                summary.selected_step,
                summary.val.as_ref().map_or(f64::NAN, |v| v.map_at_r),
                summary
                    .onnx_tract
                    .recall_at
                    .first()
                    .map_or(f64::NAN, |r| r.1),
                summary.ms_per_step
            );
            runs[m].push((seed, summary));
            let md = report(&a, &runs);
            let _ = std::fs::create_dir_all(&a.out);
            if let Err(e) = std::fs::write(a.out.join("report.md"), &md) {
                eprintln!("protocol: writing report.md: {e}");
            }
        }
    }
    println!("{}", report(&a, &runs));
}
