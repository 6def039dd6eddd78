//! `htg bench embed`: images/s of a model at several batch sizes, split into decode (bytes to
//! pixels, in parallel as `htg index` decodes), preprocess (resize and normalise into the
//! batch tensor, `preprocess_batch`) and inference (`Embedder::embed_tensor`: run, pool,
//! l2-normalise). File reading is not timed.
//!
//! With `--backends tract,ort` every runtime runs in the same process on the same tensors at
//! the same thread count, and `--python` adds ONNX Runtime's own Python API
//! (`benches/peers/ort_python.py`) right after, so the ratios printed at the end come from one
//! run on one machine state; `--rounds` interleaves repeats.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use htg_retrieval::preprocess::{
    batch_shape, decode_for, decode_with_limit, preprocess_batch, DEFAULT_MAX_PIXELS,
};
use htg_retrieval::Embedder;
use rayon::prelude::*;
use serde::Serialize;

use super::args::EmbedArgs;
use super::machine::{self, Machine};
use crate::flags as model;
use htg_retrieval::loader::Runtime;

/// The Python peer, carried in the binary so that the bench needs no checkout.
const PEER: &str = include_str!("../../benches/peers/ort_python.py");

/// One batch size's figures on one runtime in one round.
#[derive(Debug, Serialize)]
struct Row {
    backend: String,
    round: usize,
    batch: usize,
    images: usize,
    decode_s: f64,
    preprocess_s: f64,
    /// Images run through inference (passes repeat until `--seconds`).
    inferred: usize,
    inference_s: f64,
    images_per_s: f64,
    inference_images_per_s: f64,
}

/// The Python peer's figure for one batch size in one round.
#[derive(Debug, Serialize)]
struct PeerRow {
    round: usize,
    batch: usize,
    images_per_s: f64,
}

#[derive(Debug, Serialize)]
struct EmbedReport {
    schema: &'static str,
    model: String,
    backends: Vec<String>,
    threads: usize,
    images_dir: String,
    machine: Machine,
    git_commit: Option<String>,
    rows: Vec<Row>,
    python_ort: Vec<PeerRow>,
}

fn file_name(p: &Path) -> String {
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
    if a.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if !(a.seconds.is_finite() && a.seconds >= 0.0) {
        bail!("--seconds must be a non-negative number");
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
    let plan = model::ModelPlan::resolve(a.model.as_deref(), None, &a.backend)?;
    let model_path = &plan.path;
    let kinds: Vec<Runtime> = if a.backends.is_empty() {
        vec![a.backend.backend.unwrap_or_default()]
    } else {
        a.backends.clone()
    };
    let mut embedders: Vec<Box<dyn Embedder>> = Vec::new();
    for &kind in &kinds {
        embedders.push(plan.runtimes.on(kind).load(&plan.path)?);
    }
    let threads = a.backend.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n as usize,
    );
    let spec = embedders[0].spec().clone();

    // Warm-up: every batch size once through every runtime (tract builds a plan per size on
    // first use, ONNX Runtime allocates per shape), and the tensors the passes reuse.
    let mut tensors: Vec<Vec<_>> = Vec::new();
    let mut stage: Vec<(f64, f64)> = Vec::new();
    for &batch in &a.batches {
        let (mut dec, mut pre) = (0.0, 0.0);
        let mut ts = Vec::new();
        for chunk in bytes.chunks(batch) {
            let t = Instant::now();
            let imgs = chunk
                .par_iter()
                .map(|b| {
                    if a.full_decode {
                        decode_with_limit(b, DEFAULT_MAX_PIXELS)
                    } else {
                        decode_for(b, &spec, DEFAULT_MAX_PIXELS)
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            dec += t.elapsed().as_secs_f64();
            let t = Instant::now();
            ts.push(preprocess_batch(&imgs, &spec));
            pre += t.elapsed().as_secs_f64();
        }
        for e in &embedders {
            e.embed_tensor(ts[0].view())?;
            if let Some(last) = ts.last().filter(|l| l.shape()[0] != batch) {
                e.embed_tensor(last.view())?;
            }
        }
        tensors.push(ts);
        stage.push((dec, pre));
    }

    let mut rows = Vec::new();
    let mut peer_rows = Vec::new();
    for round in 0..a.rounds {
        for (bi, &batch) in a.batches.iter().enumerate() {
            for e in &embedders {
                let (mut inferred, mut inf) = (0usize, 0.0f64);
                loop {
                    for t in &tensors[bi] {
                        let start = Instant::now();
                        std::hint::black_box(e.embed_tensor(t.view())?);
                        inf += start.elapsed().as_secs_f64();
                        inferred += t.shape()[0];
                    }
                    if inf >= a.seconds {
                        break;
                    }
                }
                let n = bytes.len();
                let (dec, pre) = stage[bi];
                let per_image_inf = inf / inferred as f64;
                rows.push(Row {
                    backend: e.backend().to_string(),
                    round,
                    batch,
                    images: n,
                    decode_s: dec,
                    preprocess_s: pre,
                    inferred,
                    inference_s: inf,
                    images_per_s: n as f64 / (dec + pre + per_image_inf * n as f64),
                    inference_images_per_s: inferred as f64 / inf,
                });
            }
        }
        if let Some(py) = &a.python {
            let shape = batch_shape(1, &spec);
            peer_rows.extend(
                run_peer(py, model_path, threads, &a.batches, a.seconds, &shape[1..])?
                    .into_iter()
                    .map(|(batch, images_per_s)| PeerRow {
                        round,
                        batch,
                        images_per_s,
                    }),
            );
        }
    }

    println!(
        "{} ({} images from {}), {threads} threads per inference call",
        model_path.display(),
        bytes.len(),
        dir.display()
    );
    for e in &embedders {
        println!("\n{}:", e.backend());
        println!("| round | batch | images/s (all) | decode ms/img | preprocess ms/img | inference ms/img | inference images/s |");
        println!("|---|---|---|---|---|---|---|");
        for r in rows.iter().filter(|r| r.backend == e.backend()) {
            let per = |s: f64| 1000.0 * s / r.images as f64;
            println!(
                "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.0} |",
                r.round + 1,
                r.batch,
                r.images_per_s,
                per(r.decode_s),
                per(r.preprocess_s),
                1000.0 / r.inference_images_per_s,
                r.inference_images_per_s
            );
        }
    }
    if !peer_rows.is_empty() {
        println!("\nONNX Runtime's Python API (session.run, same shapes and threads):");
        println!("| round | batch | images/s |");
        println!("|---|---|---|");
        for p in &peer_rows {
            println!("| {} | {} | {:.0} |", p.round + 1, p.batch, p.images_per_s);
        }
    }
    print_ratios(&rows, &peer_rows, &a.batches, a.rounds);
    if let Some(path) = &a.json {
        let report = EmbedReport {
            schema: "htg-bench-embed/2",
            // File names and the model's hash, not local paths.
            model: format!(
                "{} (sha256 {})",
                file_name(model_path),
                &embedders[0].model_id().sha256
            ),
            backends: embedders.iter().map(|e| e.backend().to_string()).collect(),
            threads,
            images_dir: file_name(&dir),
            machine: Machine::detect(),
            git_commit: machine::git_commit(),
            rows,
            python_ort: peer_rows,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Ratios within each round: tract/ort and ort/Python inference images/s, and preprocessing
/// time over ort's inference time per image.
fn print_ratios(rows: &[Row], peer: &[PeerRow], batches: &[usize], rounds: usize) {
    let find = |b: &str, round: usize, batch: usize| {
        rows.iter()
            .find(|r| r.backend == b && r.round == round && r.batch == batch)
    };
    let has = |b: &str| rows.iter().any(|r| r.backend == b);
    if !has("ort") {
        return;
    }
    println!("\nratios (same round, inference images/s):");
    println!("| round | batch | tract / ort | ort / Python ORT | preprocess / ort inference (per image) |");
    println!("|---|---|---|---|---|");
    for round in 0..rounds {
        for &batch in batches {
            let Some(ort) = find("ort", round, batch) else {
                continue;
            };
            let tract = find("tract", round, batch).map_or("–".to_string(), |t| {
                format!(
                    "{:.2}",
                    t.inference_images_per_s / ort.inference_images_per_s
                )
            });
            let py = peer
                .iter()
                .find(|p| p.round == round && p.batch == batch)
                .map_or("–".to_string(), |p| {
                    format!("{:.2}", ort.inference_images_per_s / p.images_per_s)
                });
            let pre = (ort.preprocess_s / ort.images as f64) * ort.inference_images_per_s;
            println!("| {} | {batch} | {tract} | {py} | {pre:.2} |", round + 1);
        }
    }
}

/// Runs the Python peer and returns (batch, images/s) per batch size.
fn run_peer(
    python: &Path,
    model: &Path,
    threads: usize,
    batches: &[usize],
    seconds: f64,
    shape: &[usize],
) -> Result<Vec<(usize, f64)>> {
    use std::io::Write;
    let join = |v: &[usize]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut child = std::process::Command::new(python)
        .arg("-")
        .arg("--model")
        .arg(model)
        .args(["--threads", &threads.to_string()])
        .args(["--batches", &join(batches)])
        .args(["--seconds", &seconds.max(0.5).to_string()])
        .args(["--shape", &join(shape)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", python.display()))?;
    child
        .stdin
        .take()
        .context("peer stdin")?
        .write_all(PEER.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the Python peer failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut got = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("ort-python ")) {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
        };
        if let (Some(b), Some(ips)) = (field("batch="), field("images/s=")) {
            got.push((b.parse()?, ips.parse()?));
        }
    }
    if got.len() != batches.len() {
        bail!("could not read the Python peer's output:\n{text}");
    }
    Ok(got)
}
