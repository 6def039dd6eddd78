//! Incremental folder indexing: walk, hash, decode in parallel, embed in batches, insert.
//!
//! Lives in the library so the CLI (`htg index`) and the server share the rules: bad files are
//! skipped and reported, never fatal; unchanged files (same path, same sha256) are not
//! re-embedded; a known content hash under a new path reuses its stored vector; records of
//! files gone from the folder are dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::{Array3, Array4, Axis};
use rayon::prelude::*;

use crate::embed::{sha256_hex, EmbedError, Embedder};
use crate::index::{IndexError, Record, SearchIndex};
use crate::preprocess::PreprocessError;
use crate::spec::ModelSpec;

/// File extensions treated as images; other files are counted as ignored, not as failures.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "gif", "bmp", "webp"];

/// Files decoded at once: bounds memory on large folders while keeping both cores busy.
const CHUNK: usize = 256;

/// Why a folder could not be indexed at all (single bad files are not errors: see [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The folder cannot be walked.
    #[error("cannot read folder {path}: {reason}")]
    Folder {
        /// Folder given.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The embedder failed on a whole batch.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// The index refused the vectors or could not be saved.
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// How a folder run went.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    /// Images embedded (new or changed files).
    pub embedded: usize,
    /// Images whose content hash was already indexed under another path: vector reused.
    pub reused: usize,
    /// Files already indexed with the same content.
    pub unchanged: usize,
    /// Records dropped because their file is gone, changed or now unreadable.
    pub removed: usize,
    /// Files with a non-image extension.
    pub ignored: usize,
    /// Image files that could not be read or decoded, with the reason.
    pub failed: Vec<(PathBuf, String)>,
}

/// Options of [`index_folder`].
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Images per inference call.
    pub batch_size: usize,
    /// Use each file's parent folder name as its label.
    pub label_from_parent: bool,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            batch_size: 32,
            label_from_parent: false,
        }
    }
}

/// Result of preparing one file.
enum Prepared {
    Unchanged,
    Reuse(Record, Vec<f32>),
    Tensor(Record, Array3<f32>),
    Failed(PathBuf, String),
}

/// Reads, hashes and preprocesses one image file into model input.
pub fn prepare_bytes(bytes: &[u8], spec: &ModelSpec) -> Result<Array3<f32>, PreprocessError> {
    crate::preprocess::tensor_from_bytes(bytes, spec, crate::preprocess::DEFAULT_MAX_PIXELS)
}

/// Lists image files under `dir` (sorted) and counts the others.
pub fn list_images(dir: &Path) -> Result<(Vec<PathBuf>, usize), IngestError> {
    let meta = std::fs::metadata(dir).map_err(|e| IngestError::Folder {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !meta.is_dir() {
        return Err(IngestError::Folder {
            path: dir.to_path_buf(),
            reason: "not a directory".into(),
        });
    }
    let mut images = Vec::new();
    let mut ignored = 0;
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let Ok(entry) = entry else {
            ignored += 1;
            continue;
        };
        if !entry.file_type().is_file() {
            continue;
        }
        let ext = entry
            .path()
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext {
            Some(e) if IMAGE_EXTENSIONS.contains(&e.as_str()) => {
                images.push(entry.path().to_path_buf())
            }
            _ => ignored += 1,
        }
    }
    Ok((images, ignored))
}

/// Indexes every image under `dir` into `index`, incrementally (files whose sha256 the index
/// already holds are skipped or their vector reused), then flushes it.
///
/// Every batch is durable once inserted, so a killed run keeps what it embedded.
/// `progress` is called with the number of files handled so far and the total.
pub fn index_folder(
    index: &dyn SearchIndex,
    embedder: &dyn Embedder,
    dir: &Path,
    opts: &IngestOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Report, IngestError> {
    let records = index.records();
    let dir = dir.canonicalize().map_err(|e| IngestError::Folder {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let (files, ignored) = list_images(&dir)?;
    let mut report = Report {
        ignored,
        ..Report::default()
    };
    let by_path: HashMap<&str, (u64, &str)> = records
        .iter()
        .map(|(id, r)| (r.path.as_str(), (*id, r.sha256.as_str())))
        .collect();
    let by_hash: HashMap<&str, u64> = records
        .iter()
        .map(|(id, r)| (r.sha256.as_str(), *id))
        .collect();
    let spec = embedder.spec().clone();
    let batch_size = opts.batch_size.max(1);
    let mut stale: Vec<u64> = Vec::new();
    let mut seen: std::collections::HashSet<String> = Default::default();
    let mut done = 0;
    progress(0, files.len());
    for chunk in files.chunks(CHUNK) {
        let prepared: Vec<Prepared> = chunk
            .par_iter()
            .map(|path| {
                let p = path.to_string_lossy().to_string();
                let bytes = match std::fs::read(path) {
                    Ok(b) => b,
                    Err(e) => return Prepared::Failed(path.clone(), e.to_string()),
                };
                let sha = sha256_hex(&bytes);
                if by_path.get(p.as_str()).is_some_and(|(_, s)| *s == sha) {
                    return Prepared::Unchanged;
                }
                let label = opts
                    .label_from_parent
                    .then(|| path.parent().and_then(|d| d.file_name()))
                    .flatten()
                    .map(|n| n.to_string_lossy().to_string());
                let record = Record {
                    path: p,
                    sha256: sha.clone(),
                    label,
                };
                if let Some(v) = by_hash.get(sha.as_str()).and_then(|id| index.vector(*id)) {
                    return Prepared::Reuse(record, v);
                }
                match prepare_bytes(&bytes, &spec) {
                    Ok(t) => Prepared::Tensor(record, t),
                    Err(e) => Prepared::Failed(path.clone(), e.to_string()),
                }
            })
            .collect();
        let mut items: Vec<(Record, Vec<f32>)> = Vec::new();
        let mut pending: Vec<(Record, Array3<f32>)> = Vec::new();
        for (path, p) in chunk.iter().zip(prepared) {
            let key = path.to_string_lossy().to_string();
            if let Some((id, _)) = by_path.get(key.as_str()) {
                if !matches!(p, Prepared::Unchanged) {
                    stale.push(*id);
                }
            }
            seen.insert(key);
            match p {
                Prepared::Unchanged => report.unchanged += 1,
                Prepared::Reuse(r, v) => {
                    report.reused += 1;
                    items.push((r, v));
                }
                Prepared::Tensor(r, t) => pending.push((r, t)),
                Prepared::Failed(path, why) => report.failed.push((path, why)),
            }
        }
        let batches: Vec<&[(Record, Array3<f32>)]> = pending.chunks(batch_size).collect();
        // tract runs one batch on one thread, so batches run side by side.
        let embedded: Vec<Result<ndarray::Array2<f32>, EmbedError>> = batches
            .par_iter()
            .map(|b| {
                let views: Vec<_> = b.iter().map(|(_, t)| t.view()).collect();
                let batch: Array4<f32> =
                    ndarray::stack(Axis(0), &views).map_err(|e| EmbedError::Run(e.to_string()))?;
                embedder.embed_tensor(batch.view())
            })
            .collect();
        for (b, vecs) in batches.iter().zip(embedded) {
            let vecs = vecs?;
            for ((r, _), v) in b.iter().zip(vecs.rows()) {
                items.push((r.clone(), v.to_vec()));
            }
        }
        report.embedded += pending.len();
        index.insert_many(items)?;
        done += chunk.len();
        progress(done, files.len());
    }
    let prefix = format!("{}{}", dir.display(), std::path::MAIN_SEPARATOR);
    for (id, r) in &records {
        if r.path.starts_with(&prefix) && !seen.contains(&r.path) {
            stale.push(*id);
        }
    }
    report.removed += index
        .remove_many(&stale)?
        .into_iter()
        .filter(|r| *r)
        .count();
    index.flush()?;
    Ok(report)
}
