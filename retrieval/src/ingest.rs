//! Incremental folder indexing: walk, hash, decode in parallel, embed in batches, insert,
//! as a pipeline with bounded queues ([`index_folder_with_progress`]).
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

/// Most files prepared in one parallel step: with the pipeline's two queued chunks this bounds
/// the tensors alive at once, whatever the folder's size.
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
    /// A file whose tensor went on to inference (its vector arrives in a later batch).
    Pending,
    Failed(PathBuf, String),
}

/// Largest original file read back for an indexed image (thumbnails, a model swap).
pub const MAX_STORED_FILE: u64 = 256 * 1024 * 1024;

/// Reads back the original bytes of an indexed image: the file at its recorded path, or the
/// copy an upload left in `uploads` under its content hash, whichever still holds the bytes
/// whose sha256 was recorded. The error says why none does (gone, or changed since).
pub fn stored_bytes(record: &Record, uploads: &Path) -> Result<Vec<u8>, String> {
    let mut candidates = vec![PathBuf::from(&record.path)];
    candidates.extend(
        IMAGE_EXTENSIONS
            .iter()
            .map(|e| uploads.join(format!("{}.{e}", record.sha256))),
    );
    let mut changed = None;
    for path in candidates {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if meta.len() > MAX_STORED_FILE {
            changed = Some(format!(
                "{} is larger than {MAX_STORED_FILE} bytes",
                path.display()
            ));
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        if sha256_hex(&bytes) == record.sha256 {
            return Ok(bytes);
        }
        changed = Some(format!("{} changed since it was indexed", path.display()));
    }
    Err(changed.unwrap_or_else(|| format!("{} is gone (and no upload copy)", record.path)))
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

/// Where an indexing run stands, for a progress line.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Files handled (embedded, reused, unchanged or failed).
    pub done: usize,
    /// Image files found.
    pub total: usize,
    /// Images per second since the start.
    pub images_per_s: f64,
    /// Seconds each stage spent working: read+decode+preprocess (wall time of its parallel
    /// chunks), inference, index insertion.
    pub busy_s: [f64; 3],
    /// The stage that worked longest: the one to speed up (`read+preprocess`, `inference`,
    /// `insert`).
    pub bottleneck: &'static str,
}

/// Names of the pipeline's stages, in the order of [`Progress::busy_s`].
pub const STAGES: [&str; 3] = ["read+preprocess", "inference", "insert"];

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
    index_folder_with_progress(index, embedder, dir, opts, &|p: &Progress| {
        progress(p.done, p.total)
    })
}

/// One parallel step's files, in folder order, with their path keys.
struct Chunk {
    files: Vec<(String, Prepared)>,
}

/// What the inference stage hands to the inserting thread.
enum Stage2 {
    /// A chunk's files that need no inference, for bookkeeping (tensors stripped).
    Chunk(Vec<(String, Prepared)>),
    /// A batch of embedded images.
    Embedded(Vec<(Record, Vec<f32>)>),
}

/// Like [`index_folder`], reporting images/s and the slowest stage.
///
/// The work is a pipeline with bounded queues, so memory stays flat whatever the folder's
/// size and each stage runs while the others do: reading, hashing, decoding and preprocessing
/// on rayon's pool in chunks; inference on its own thread in batches of `batch_size` (the
/// runtime parallelises inside a batch); insertion into the index on the calling thread.
pub fn index_folder_with_progress(
    index: &dyn SearchIndex,
    embedder: &dyn Embedder,
    dir: &Path,
    opts: &IngestOptions,
    progress: &(dyn Fn(&Progress) + Sync),
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
    // Files prepared per parallel step; the queues hold two of these, so at most a few batches
    // of tensors are alive at once.
    let chunk_len = batch_size.clamp(CHUNK / 4, CHUNK);
    let mut stale: Vec<u64> = Vec::new();
    let mut seen: std::collections::HashSet<String> = Default::default();
    let start = std::time::Instant::now();
    let total = files.len();
    let mut state = Progress {
        total,
        bottleneck: STAGES[0],
        ..Progress::default()
    };
    progress(&state);

    let prepare = |path: &PathBuf| -> Prepared {
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
    };

    let busy_prep = parking_lot::Mutex::new(0f64);
    let busy_infer = parking_lot::Mutex::new(0f64);
    let outcome = std::thread::scope(|s| -> Result<(), IngestError> {
        let (to_infer, from_prep) = std::sync::mpsc::sync_channel::<Chunk>(2);
        let (to_insert, from_infer) = std::sync::mpsc::sync_channel::<Stage2>(4);
        let files = &files;
        let (prepare, busy_prep, busy_infer) = (&prepare, &busy_prep, &busy_infer);
        s.spawn(move || {
            for chunk in files.chunks(chunk_len) {
                let t = std::time::Instant::now();
                let prepared: Vec<(String, Prepared)> = chunk
                    .par_iter()
                    .map(|path| (path.to_string_lossy().to_string(), prepare(path)))
                    .collect();
                *busy_prep.lock() += t.elapsed().as_secs_f64();
                if to_infer.send(Chunk { files: prepared }).is_err() {
                    return; // the inserting side stopped on an error
                }
            }
        });
        let infer = s.spawn(move || -> Result<(), EmbedError> {
            let mut pending: Vec<(Record, Array3<f32>)> = Vec::new();
            let run = |batch: Vec<(Record, Array3<f32>)>| -> Result<Stage2, EmbedError> {
                let t = std::time::Instant::now();
                let views: Vec<_> = batch.iter().map(|(_, t)| t.view()).collect();
                let tensor: Array4<f32> = ndarray::stack(Axis(0), &views)
                    .map_err(|e| EmbedError::run("stacking a batch", e))?;
                let vecs = embedder.embed_tensor(tensor.view())?;
                *busy_infer.lock() += t.elapsed().as_secs_f64();
                Ok(Stage2::Embedded(
                    batch
                        .into_iter()
                        .zip(vecs.rows())
                        .map(|((r, _), v)| (r, v.to_vec()))
                        .collect(),
                ))
            };
            for chunk in from_prep {
                let mut rest = Vec::with_capacity(chunk.files.len());
                for (key, p) in chunk.files {
                    match p {
                        Prepared::Tensor(r, t) => {
                            // Bookkeeping sees the file as embedded-to-be; the vector follows.
                            rest.push((key, Prepared::Pending));
                            pending.push((r, t));
                        }
                        other => rest.push((key, other)),
                    }
                }
                if to_insert.send(Stage2::Chunk(rest)).is_err() {
                    return Ok(());
                }
                while pending.len() >= batch_size {
                    let batch: Vec<_> = pending.drain(..batch_size).collect();
                    if to_insert.send(run(batch)?).is_err() {
                        return Ok(());
                    }
                }
            }
            if !pending.is_empty() {
                let _ = to_insert.send(run(pending)?);
            }
            Ok(())
        });
        let mut busy_insert = 0f64;
        let mut inserted = Ok(());
        for msg in from_infer.iter() {
            let items = match msg {
                Stage2::Chunk(files) => {
                    let mut items = Vec::new();
                    for (key, p) in files {
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
                            Prepared::Failed(path, why) => report.failed.push((path, why)),
                            // Counted when their vector arrives (tensors never reach this stage).
                            Prepared::Pending | Prepared::Tensor(..) => continue,
                        }
                        state.done += 1;
                    }
                    items
                }
                Stage2::Embedded(items) => {
                    report.embedded += items.len();
                    state.done += items.len();
                    items
                }
            };
            if !items.is_empty() {
                let t = std::time::Instant::now();
                if let Err(e) = index.insert_many(items) {
                    inserted = Err(e);
                    break;
                }
                busy_insert += t.elapsed().as_secs_f64();
            }
            let elapsed = start.elapsed().as_secs_f64().max(1e-9);
            state.images_per_s = state.done as f64 / elapsed;
            state.busy_s = [*busy_prep.lock(), *busy_infer.lock(), busy_insert];
            let slowest = (0..3)
                .max_by(|&a, &b| state.busy_s[a].total_cmp(&state.busy_s[b]))
                .unwrap_or(0);
            state.bottleneck = STAGES[slowest];
            progress(&state);
        }
        // Stops the other stages when insertion failed: their sends fail and they return.
        drop(from_infer);
        let infer = match infer.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        inserted?;
        infer?;
        Ok(())
    });
    outcome?;
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
