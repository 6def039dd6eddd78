//! Model swap: re-embed every live image of a local index with another model, into a shadow
//! index beside the live one, then switch to it in one atomic step.
//!
//! Why this shape:
//! - the live index is never written by the swap, so it keeps answering (and stays the
//!   index on disk) until the switch, and a failed or killed swap leaves it as it was;
//! - the shadow is an ordinary [`LocalIndex`] in `<index>/reindex-<model sha256>/`, with its
//!   own log, so every embedded batch is durable and a rerun after a kill embeds only what
//!   is missing ([`Reindexer::start`] reopens it);
//! - each image keeps its id (the shadow takes the live ids, and the next id carries over),
//!   so clients holding ids see no change;
//! - a pass compares the live records with the shadow's: images added meanwhile are
//!   embedded, deleted ones removed; the caller runs passes while writes continue and the
//!   last one in [`Reindexer::switch`] after it has stopped writes, so nothing acknowledged
//!   is left behind;
//! - the switch writes `<index>/ACTIVE` (temporary file, fsync, rename): before it every
//!   opener gets the old model, after it the new one ([`crate::index::local::resolve_root`]).
//!
//! Images are re-read from their stored bytes (the indexed file, or the upload copy) and
//! checked against their recorded sha256; those that are gone or changed are listed, and
//! the switch refuses to drop them unless asked to.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{Array4, Axis};
use rayon::prelude::*;
use serde::Serialize;

use crate::embed::{EmbedError, Embedder};
use crate::index::local::{resolve_root, ACTIVE};
use crate::index::{describe, CreateOptions, IndexError, LocalIndex, Record, SearchIndex};
use crate::ingest::{prepare_bytes, stored_bytes};

/// Prefix of a shadow index's directory inside the index directory.
pub const SHADOW_PREFIX: &str = "reindex-";

/// Images embedded per batch (and made durable per log append).
pub const BATCH: usize = 32;

/// Why a model swap failed; the live index is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    /// The index or the shadow failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The new model failed on a batch.
    #[error("the new model failed: {0}")]
    Embed(#[from] EmbedError),
    /// The index already holds the new model's embeddings.
    #[error("the index already uses this model ({0})")]
    SameModel(String),
    /// Some images could not be re-read, and dropping them was not allowed.
    #[error("{count} image(s) could not be re-read from their stored bytes (gone or changed; listed with the status); nothing was switched. Restore them, delete them from the index, or allow dropping them (`--drop-missing`, `\"drop_missing\": true`)")]
    Missing {
        /// How many.
        count: usize,
    },
    /// Writing the switch failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// Path involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// An image of the live index the new model could not embed.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct MissingRecord {
    /// Its id.
    pub id: u64,
    /// Its recorded path.
    pub path: String,
    /// Why its bytes could not be used (gone, changed, undecodable).
    pub reason: String,
}

/// How far a swap has got, for progress lines and the task endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Progress {
    /// Live images in the index at the last pass.
    pub total: usize,
    /// Images the shadow holds (embedded by the new model).
    pub embedded: usize,
    /// Images already embedded when this run started (a resumed swap).
    pub resumed: usize,
    /// Writes (adds and deletes) that reached the live index after the first pass began
    /// and were carried into the shadow.
    pub caught_up: usize,
    /// Passes over the live records so far.
    pub passes: usize,
    /// Images that could not be re-read.
    pub missing: Vec<MissingRecord>,
}

/// A swap in progress: the shadow index and what the passes have learnt.
pub struct Reindexer {
    root: PathBuf,
    name: String,
    shadow: LocalIndex,
    embedder: Arc<dyn Embedder>,
    uploads: PathBuf,
    missing: BTreeMap<u64, MissingRecord>,
    progress: Progress,
}

/// The shadow directory's name for a model: stable, so a rerun finds the same shadow.
pub fn shadow_name(model_sha256: &str) -> String {
    format!(
        "{SHADOW_PREFIX}{}",
        &model_sha256[..model_sha256.len().min(16)]
    )
}

impl Reindexer {
    /// Opens (or creates) the shadow for `embedder`'s model beside `old`, the index the user
    /// named `root`. Leftovers of earlier swaps (superseded roots, abandoned shadows of other
    /// models) are removed first.
    pub fn start(
        root: &Path,
        old: &LocalIndex,
        embedder: Arc<dyn Embedder>,
        model_path: Option<String>,
        uploads: &Path,
    ) -> Result<Reindexer, ReindexError> {
        let local = old;
        let model = embedder.model_id().clone();
        let name = shadow_name(&model.sha256);
        sweep(root, &name);
        if old.model() == model {
            return Err(ReindexError::SameModel(describe(&model)));
        }
        let dir = root.join(&name);
        let reopened = if LocalIndex::exists(&dir) {
            let s = LocalIndex::open(&dir)?;
            (s.model() == model).then_some(s)
        } else {
            None
        };
        let shadow = match reopened {
            Some(s) => s,
            None => {
                if dir.exists() {
                    fs::remove_dir_all(&dir).map_err(|source| ReindexError::Io {
                        op: "remove",
                        path: dir.clone(),
                        source,
                    })?;
                }
                LocalIndex::create(
                    &dir,
                    model,
                    model_path,
                    &CreateOptions {
                        params: old.params(),
                        engine: local.engine_kind(),
                        capacity: old.len(),
                    },
                )?
            }
        };
        shadow.lock_writes()?;
        let resumed = shadow.len();
        Ok(Reindexer {
            root: root.to_path_buf(),
            name,
            progress: Progress {
                resumed,
                embedded: resumed,
                ..Progress::default()
            },
            shadow,
            embedder,
            uploads: uploads.to_path_buf(),
            missing: BTreeMap::new(),
        })
    }

    /// The shadow index (what serves after the switch).
    pub fn shadow(&self) -> &LocalIndex {
        &self.shadow
    }

    /// Progress so far.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// One pass: removes from the shadow what is no longer live, then embeds, in durable
    /// batches, every live image it lacks; `on_batch` sees the progress after each batch.
    /// Returns how many changes the pass carried (0: the shadow matched).
    pub fn pass(
        &mut self,
        old: &dyn SearchIndex,
        mut on_batch: impl FnMut(&Progress),
    ) -> Result<usize, ReindexError> {
        let live = old.records();
        let live_ids: HashSet<u64> = live.iter().map(|(id, _)| *id).collect();
        let have: HashMap<u64, Record> = self.shadow.records().into_iter().collect();
        let gone: Vec<u64> = have
            .keys()
            .copied()
            .filter(|id| !live_ids.contains(id))
            .collect();
        if !gone.is_empty() {
            self.shadow.remove_many(&gone)?;
        }
        self.missing.retain(|id, _| live_ids.contains(id));
        let todo: Vec<(u64, Record)> = live
            .into_iter()
            .filter(|(id, _)| !have.contains_key(id) && !self.missing.contains_key(id))
            .collect();
        self.progress.total = live_ids.len();
        let spec = self.embedder.spec().clone();
        for chunk in todo.chunks(BATCH) {
            let prepared: Vec<Result<ndarray::Array3<f32>, String>> = chunk
                .par_iter()
                .map(|(_, r)| {
                    let bytes = stored_bytes(r, &self.uploads)?;
                    prepare_bytes(&bytes, &spec).map_err(|e| format!("{}: {e}", r.path))
                })
                .collect();
            let mut rows = Vec::new();
            let mut items = Vec::new();
            for ((id, record), t) in chunk.iter().zip(prepared) {
                match t {
                    Ok(t) => {
                        rows.push(t);
                        items.push((*id, record.clone()));
                    }
                    Err(reason) => {
                        self.missing.insert(
                            *id,
                            MissingRecord {
                                id: *id,
                                path: record.path.clone(),
                                reason,
                            },
                        );
                    }
                }
            }
            if !rows.is_empty() {
                let views: Vec<_> = rows.iter().map(|t| t.view().insert_axis(Axis(0))).collect();
                let batch: Array4<f32> = ndarray::concatenate(Axis(0), &views)
                    .map_err(|e| EmbedError::run("stacking a batch", e))?;
                let vectors = self.embedder.embed_tensor(batch.view())?;
                let entries = items
                    .into_iter()
                    .zip(vectors.rows())
                    .map(|((id, r), v)| (id, r, v.to_vec()))
                    .collect();
                self.shadow.insert_with_ids(entries)?;
            }
            self.progress.embedded = self.shadow.len();
            self.progress.missing = self.missing.values().cloned().collect();
            on_batch(&self.progress);
        }
        let changes = gone.len() + todo.len();
        self.progress.passes += 1;
        if self.progress.passes > 1 {
            self.progress.caught_up += changes;
        }
        self.progress.embedded = self.shadow.len();
        self.progress.missing = self.missing.values().cloned().collect();
        Ok(changes)
    }

    /// Runs passes while writes go on, until one carries fewer than a batch of changes (or
    /// `max_passes` have run): what is left for [`Reindexer::switch`] to carry while writes
    /// wait is then small.
    pub fn catch_up(
        &mut self,
        old: &dyn SearchIndex,
        max_passes: usize,
        mut on_batch: impl FnMut(&Progress),
    ) -> Result<(), ReindexError> {
        for _ in 0..max_passes.max(1) {
            if self.pass(old, &mut on_batch)? < BATCH {
                break;
            }
        }
        Ok(())
    }

    /// Switches the index to the new model. The caller guarantees that nothing writes to
    /// `old` from now on (a server holds its write gate; the CLI is the only writer). Runs a
    /// last pass, refuses to leave images behind unless `drop_missing`, makes the shadow a
    /// checkpoint that carries the old next id, then writes `ACTIVE` (the atomic step) and
    /// removes the old root's files. Returns the new index (the shadow, now live).
    pub fn switch(
        &mut self,
        old: &LocalIndex,
        drop_missing: bool,
    ) -> Result<LocalIndex, ReindexError> {
        self.pass(old, |_| {})?;
        if !self.missing.is_empty() && !drop_missing {
            return Err(ReindexError::Missing {
                count: self.missing.len(),
            });
        }
        self.shadow.raise_next_id(old.next_id());
        self.shadow.checkpoint()?;
        let active = self.root.join(ACTIVE);
        crate::fsio::write_atomic(&active, self.name.as_bytes()).map_err(|source| {
            ReindexError::Io {
                op: "write",
                path: active.clone(),
                source,
            }
        })?;
        sweep(&self.root, &self.name);
        Ok(self.shadow.clone())
    }
}

/// Removes what earlier swaps left in `root`: the files of a root that `ACTIVE` no longer
/// names (the top level's, or a superseded shadow's) and shadows of other models than
/// `keep`. Best effort: a leftover only costs disk, never correctness, since `ACTIVE` decides
/// what opens. Uploads, snapshots and anything else in the directory are never touched.
pub fn sweep(root: &Path, keep: &str) {
    let active = match resolve_root(root) {
        Ok(r) if r != root => r.file_name().map(|n| n.to_string_lossy().to_string()),
        Ok(_) => None,
        Err(_) => return,
    };
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let path = e.path();
        if name.starts_with(SHADOW_PREFIX) {
            if name != keep && Some(&name) != active.as_ref() && path.is_dir() {
                let _ = fs::remove_dir_all(&path);
            }
            continue;
        }
        if active.is_none() {
            continue;
        }
        let stale_file = name == "CURRENT"
            || name == ".CURRENT.tmp"
            || (name.starts_with("wal-") && name.ends_with(".log"));
        let stale_dir = name.starts_with("gen-") || name.starts_with(".tmp-gen-");
        if stale_file && path.is_file() {
            let _ = fs::remove_file(&path);
        } else if stale_dir && path.is_dir() {
            let _ = fs::remove_dir_all(&path);
        }
    }
}
