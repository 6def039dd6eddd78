//! `htg bench embed`: images/s of a model at several batch sizes, split into decode (bytes to
//! pixels, in parallel as `htg index` decodes), preprocess (resize and normalise into the
//! batch tensor, `preprocess_batch`) and inference (`Embedder::embed_tensor`: run, pool,
//! l2-normalise). File reading is not timed.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use htg_retrieval::preprocess::{decode, preprocess_batch};
use rayon::prelude::*;
use serde::Serialize;

use super::args::EmbedArgs;
use super::machine::{self, Machine};
use crate::flags as model;

/// One batch size's figures.
#[derive(Debug, Serialize)]
struct Row {
    batch: usize,
    images: usize,
    decode_s: f64,
    preprocess_s: f64,
    inference_s: f64,
    images_per_s: f64,
    inference_images_per_s: f64,
}

#[derive(Debug, Serialize)]
struct EmbedReport {
    schema: &'static str,
    model: String,
    backend: String,
    images_dir: String,
    machine: Machine,
    git_commit: Option<String>,
    rows: Vec<Row>,
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().to_string(),
    )
}

fn default_images() -> Option<PathBuf> {
    let data = std::env::var_os("HTG_DATA_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/htg/data")))?;
    Some(data.join("emoji"))
}

/// Runs `htg bench embed`.
pub fn run(a: EmbedArgs) -> Result<()> {
    if a.batches.is_empty() || a.batches.contains(&0) {
        bail!("--batches needs sizes of at least 1");
    }
    if a.limit == 0 {
        bail!("--limit must be at least 1");
    }
    let dir = match a.images.clone().or_else(default_images) {
        Some(d) => d,
        None => bail!("--images is required (neither HTG_DATA_DIR nor HOME is set)"),
    };
    if !dir.is_dir() {
        bail!(
            "no image folder at {} (pass --images, or fetch the emoji set with scripts/fetch-data.sh emoji)",
            dir.display()
        );
    }
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(&dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| e.into_path())
        .filter(|p| {
            p.extension().is_some_and(|x| {
                matches!(
                    x.to_string_lossy().to_ascii_lowercase().as_str(),
                    "png" | "jpg" | "jpeg" | "webp" | "gif" | "bmp"
                )
            })
        })
        .collect();
    files.truncate(a.limit);
    if files.is_empty() {
        bail!("no images under {}", dir.display());
    }
    let bytes: Vec<Vec<u8>> = files
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<Result<_>>()?;
    let model_path = model::choose(a.model.as_deref(), None)?;
    let embedder = model::load(&model_path, &a.backend)?;
    let spec = embedder.spec().clone();

    // Warm-up: one batch of the largest size through every stage.
    let warm = a
        .batches
        .iter()
        .max()
        .copied()
        .unwrap_or(1)
        .min(bytes.len());
    let imgs = bytes[..warm]
        .par_iter()
        .map(|b| decode(b))
        .collect::<Result<Vec<_>, _>>()?;
    embedder.embed_tensor(preprocess_batch(&imgs, &spec).view())?;

    let mut rows = Vec::new();
    for &batch in &a.batches {
        let (mut dec, mut pre, mut inf) = (0.0, 0.0, 0.0);
        for chunk in bytes.chunks(batch) {
            let t = Instant::now();
            let imgs = chunk
                .par_iter()
                .map(|b| decode(b))
                .collect::<Result<Vec<_>, _>>()?;
            dec += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let tensor = preprocess_batch(&imgs, &spec);
            pre += t.elapsed().as_secs_f64();
            let t = Instant::now();
            std::hint::black_box(embedder.embed_tensor(tensor.view())?);
            inf += t.elapsed().as_secs_f64();
        }
        let n = bytes.len();
        rows.push(Row {
            batch,
            images: n,
            decode_s: dec,
            preprocess_s: pre,
            inference_s: inf,
            images_per_s: n as f64 / (dec + pre + inf),
            inference_images_per_s: n as f64 / inf,
        });
    }
    println!(
        "{} on {} ({} images from {})",
        model_path.display(),
        embedder.backend(),
        bytes.len(),
        dir.display()
    );
    println!("| batch | images/s (all) | decode ms/img | preprocess ms/img | inference ms/img | inference images/s |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        let per = |s: f64| 1000.0 * s / r.images as f64;
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.0} |",
            r.batch,
            r.images_per_s,
            per(r.decode_s),
            per(r.preprocess_s),
            per(r.inference_s),
            r.inference_images_per_s
        );
    }
    if let Some(path) = &a.json {
        let report = EmbedReport {
            schema: "htg-bench-embed/1",
            // File names and the model's hash, not local paths.
            model: format!(
                "{} (sha256 {})",
                file_name(&model_path),
                &embedder.model_id().sha256
            ),
            backend: embedder.backend().to_string(),
            images_dir: file_name(&dir),
            machine: Machine::detect(),
            git_commit: machine::git_commit(),
            rows,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
