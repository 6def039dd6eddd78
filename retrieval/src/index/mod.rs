//! The image index: records (path, hash, label) and their vectors, searchable by nearest
//! neighbour, behind one seam, [`SearchIndex`], so the CLI and the server never know which
//! engine or machine holds them.
//!
//! - [`LocalIndex`] ([`local`]): one directory on this machine: a checkpoint (engine file,
//!   records file, metadata) plus a write-ahead log ([`wal`]); see its docs for the
//!   layout and the crash guarantees.
//! - [`wal`]: the write-ahead log under [`LocalIndex`];
//! - [`open`] / [`create`]: the one opener, deciding the engine from the location.

pub mod engine;
mod legacy;
pub mod local;
#[cfg(feature = "milvus")]
pub mod milvus;
pub mod records;
pub mod snapshot;
pub mod wal;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::embed::ModelId;

pub use engine::EngineKind;
pub use local::LocalIndex;

/// Largest `ef` (the HNSW candidate list) a search may ask for, over HTTP or the CLI: beyond
/// it a search is slower than exact search on any index this tool holds.
pub const MAX_EF: usize = 10_000;

/// Why an index operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Filesystem failure, with the path involved.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// Path involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The directory holds no index.
    #[error("no index at {0} (create one with `htg index <DIR> --index {0}`)")]
    NotFound(PathBuf),
    /// Files exist but do not form a valid index.
    #[error("index at {path} is unreadable: {reason}")]
    Corrupt {
        /// Index directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The query model differs from the model that built the index.
    #[error("index was built with model {built} but the query model is {query}; re-index or pass the same --model")]
    ModelMismatch {
        /// Description of the index's model.
        built: String,
        /// Description of the query model.
        query: String,
    },
    /// A vector has the wrong length.
    #[error("vector has dimension {got}, the index expects {expected}")]
    Dimension {
        /// Length given.
        got: usize,
        /// Index dimension.
        expected: usize,
    },
    /// A parameter is out of range.
    #[error("invalid index parameter: {0}")]
    Param(String),
    /// The id is not in the index.
    #[error("no image with id {0}")]
    UnknownId(u64),
    /// The vector engine refused an operation.
    #[error("vector engine: {0}")]
    Engine(String),
    /// The write-ahead log failed.
    #[error(transparent)]
    Wal(#[from] wal::WalError),
    /// A remote engine (Milvus) did not answer: the server is down, unreachable or
    /// overloaded. Worth retrying later, unlike the other errors.
    #[error("{location} is unavailable: {reason}")]
    Unavailable {
        /// The index location.
        location: String,
        /// What failed.
        reason: String,
    },
    /// A location that names no engine this build can open.
    #[error("cannot open index {location:?}: {reason}")]
    Location {
        /// What was given.
        location: String,
        /// Why it cannot be opened.
        reason: String,
    },
}

/// What the index knows about one image.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Where the image was read from.
    pub path: String,
    /// sha256 of the file's bytes, hex: how re-indexing detects changes.
    pub sha256: String,
    /// Optional class or tag, for filtered search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// HNSW build parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswParams {
    /// Links per node (hnswlib's M); 2..=256.
    pub m: usize,
    /// Candidate list size while building.
    pub ef_construction: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 200,
        }
    }
}

impl HnswParams {
    /// Rejects values that `hnsw_rs` would answer with `process::exit` or nonsense.
    pub fn validate(&self) -> Result<(), IndexError> {
        // One set of ranges, the engine's, for every engine.
        engine::graph_params(*self).validate().map_err(|e| match e {
            htg_ann::AnnError::Param(m) => IndexError::Param(m),
            other => IndexError::Param(other.to_string()),
        })
    }
}

/// How to search.
#[derive(Clone, Debug, Default)]
pub struct SearchOptions {
    /// HNSW candidate list size; defaults to `max(k, 64)`.
    pub ef: Option<usize>,
    /// Brute force instead of HNSW: exact, for ground truth and small sets.
    pub exact: bool,
    /// Keep only records with this label.
    pub label: Option<String>,
    /// Keep only records whose path starts with this.
    pub path_prefix: Option<String>,
}

impl SearchOptions {
    /// Whether `r` passes the label and path filters.
    pub fn accepts(&self, r: &Record) -> bool {
        self.label
            .as_ref()
            .is_none_or(|l| r.label.as_ref() == Some(l))
            && self
                .path_prefix
                .as_ref()
                .is_none_or(|p| r.path.starts_with(p.as_str()))
    }

    /// Whether any filter is set.
    pub fn filtered(&self) -> bool {
        self.label.is_some() || self.path_prefix.is_some()
    }
}

/// One search result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    /// Record id.
    pub id: u64,
    /// Squared Euclidean distance between l2-normalised vectors (0..=4).
    pub distance: f32,
    /// The record.
    #[serde(flatten)]
    pub record: Record,
}

/// What an index reports about itself for `/stats`, `/metrics` and `htg search`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IndexStats {
    /// Engine name (`htg`, `hnsw_rs`, `milvus`).
    pub engine: String,
    /// Live records.
    pub count: usize,
    /// Deleted ids still in the graph, waiting for compaction.
    pub tombstones: usize,
    /// Acknowledged adds not yet in the graph (searched exactly meanwhile).
    pub unindexed: usize,
    /// Bytes of log not yet covered by a checkpoint.
    pub log_bytes: u64,
    /// Checkpoints written since the index was opened.
    pub checkpoints: u64,
    /// Compactions (rebuilds without the tombstones) since the index was opened.
    pub compactions: u64,
}

/// The operations the CLI and the server need from a vector index, local or remote.
///
/// Every method takes `&self`: implementations synchronise inside, so a server shares one
/// index between searches and writes without a lock around it, and a write returns only once
/// it is durable.
pub trait SearchIndex: Send + Sync {
    /// Where the index lives, for messages.
    fn location(&self) -> String;
    /// The local index behind this one, for what only it can do (a model swap).
    fn as_local(&self) -> Option<&LocalIndex> {
        None
    }
    /// The model whose embeddings the index holds.
    fn model(&self) -> ModelId;
    /// Path of the model that built the index, as recorded then (a hint for `htg search`).
    fn model_path(&self) -> Option<String>;
    /// Refuses a query model that differs from the one that built the index.
    fn check_model(&self, query: &ModelId) -> Result<(), IndexError> {
        let built = self.model();
        if &built != query {
            return Err(IndexError::ModelMismatch {
                built: describe(&built),
                query: describe(query),
            });
        }
        Ok(())
    }
    /// HNSW build parameters.
    fn params(&self) -> HnswParams;
    /// Vector dimension.
    fn dim(&self) -> usize;
    /// Number of live records.
    fn len(&self) -> usize;
    /// True when no records are live.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A record by id.
    fn record(&self, id: u64) -> Option<Record>;
    /// A stored vector by id.
    fn vector(&self, id: u64) -> Option<Vec<f32>>;
    /// Stored vectors for many ids at once (what a migration copies): one round trip on a
    /// remote engine instead of one per id.
    fn vectors(&self, ids: &[u64]) -> Vec<Option<Vec<f32>>> {
        ids.iter().map(|&id| self.vector(id)).collect()
    }
    /// Every live record with its id (what incremental ingest compares hashes against).
    fn records(&self) -> Vec<(u64, Record)>;
    /// Adds records with their l2-normalised vectors; returns their new ids once durable.
    fn insert_many(&self, items: Vec<(Record, Vec<f32>)>) -> Result<Vec<u64>, IndexError>;
    /// Adds one record; returns its id once durable.
    fn insert(&self, record: Record, vector: &[f32]) -> Result<u64, IndexError> {
        let ids = self.insert_many(vec![(record, vector.to_vec())])?;
        ids.first()
            .copied()
            .ok_or_else(|| IndexError::Engine("insert returned no id".into()))
    }
    /// Removes records; for each id, `false` if it did not exist. Durable on return.
    fn remove_many(&self, ids: &[u64]) -> Result<Vec<bool>, IndexError>;
    /// Removes one record; `false` if it did not exist. Durable on return.
    fn remove(&self, id: u64) -> Result<bool, IndexError> {
        Ok(self.remove_many(&[id])?.first().copied().unwrap_or(false))
    }
    /// The `k` nearest live records, nearest first.
    fn search(&self, query: &[f32], k: usize, opts: &SearchOptions)
        -> Result<Vec<Hit>, IndexError>;
    /// Compacts what the engine keeps (a checkpoint, for the local index): writes are durable
    /// without it, this makes reopening fast.
    fn flush(&self) -> Result<(), IndexError>;
    /// Counters for monitoring.
    fn stats(&self) -> IndexStats;
    /// A one-line message about how the index was opened (an old format upgraded), if any.
    fn notice(&self) -> Option<String> {
        None
    }
    /// Writes a consistent snapshot to `out` while writes go on; returns its size in bytes
    /// and the log position it contains.
    fn snapshot(&self, out: &Path) -> Result<(u64, u64), IndexError> {
        let _ = out;
        Err(IndexError::Param(format!(
            "snapshots are not supported for {}",
            self.location()
        )))
    }
}

/// A short human description of a model for mismatch messages.
pub fn describe(m: &ModelId) -> String {
    format!(
        "sha256 {}… ({}x{} {:?}, dim {})",
        &m.sha256[..m.sha256.len().min(12)],
        m.spec.width,
        m.spec.height,
        m.spec.color,
        m.spec.embedding_dim
    )
}

/// How a new index is set up.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// HNSW parameters.
    pub params: HnswParams,
    /// Vector engine (local indexes).
    pub engine: EngineKind,
    /// Vectors to make room for up front (a bulk load that knows its size); the engine grows
    /// past it as needed.
    pub capacity: usize,
}

/// Whether `location` names a remote Milvus collection (`milvus://…`, `milvus+tls://…`)
/// rather than a local directory.
pub fn is_remote(location: &str) -> bool {
    location.starts_with("milvus://") || location.starts_with("milvus+tls://")
}

#[cfg(not(feature = "milvus"))]
fn no_milvus(location: &str) -> IndexError {
    IndexError::Location {
        location: location.to_string(),
        reason: "this build has no Milvus support (cargo feature `milvus`)".into(),
    }
}

/// Opens the index at `location`: `milvus://HOST:PORT/COLLECTION` (Milvus), or else a
/// directory path (local).
pub fn open(location: &str) -> Result<Box<dyn SearchIndex>, IndexError> {
    if is_remote(location) {
        #[cfg(feature = "milvus")]
        return Ok(Box::new(milvus::MilvusIndex::open(location)?));
        #[cfg(not(feature = "milvus"))]
        return Err(no_milvus(location));
    }
    Ok(Box::new(LocalIndex::open(Path::new(location))?))
}

/// Whether an index exists at `location`.
pub fn exists(location: &str) -> bool {
    if is_remote(location) {
        #[cfg(feature = "milvus")]
        return milvus::MilvusIndex::exists(location);
        #[cfg(not(feature = "milvus"))]
        return false;
    }
    LocalIndex::exists(Path::new(location))
}

/// Creates an empty index at `location` for `model`.
pub fn create(
    location: &str,
    model: ModelId,
    model_path: Option<String>,
    opts: &CreateOptions,
) -> Result<Box<dyn SearchIndex>, IndexError> {
    if is_remote(location) {
        #[cfg(feature = "milvus")]
        return Ok(Box::new(milvus::MilvusIndex::create(
            location,
            model,
            model_path,
            opts.params,
        )?));
        #[cfg(not(feature = "milvus"))]
        return Err(no_milvus(location));
    }
    Ok(Box::new(LocalIndex::create(
        Path::new(location),
        model,
        model_path,
        opts,
    )?))
}

/// Squared Euclidean distance (the kernel in `htg_ann::kernels`).
pub fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    htg_ann::kernels::l2_sq(a, b)
}

/// Wraps an I/O error with the operation and path.
pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> IndexError + 'a {
    move |source| IndexError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}
