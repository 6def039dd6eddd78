//! [`SearchIndex`], the seam: what the CLI and the server need from an index, local or remote,
//! and how a new one is set up.

use std::path::Path;

use super::error::IndexError;
use super::types::{Hit, HnswParams, IndexStats, Record, SearchOptions};
use crate::embed::ModelId;
use htg_ann::engine::EngineKind;

/// The operations the CLI and the server need from a vector index, local or remote.
///
/// Every method takes `&self`: implementations synchronise inside, so a server shares one
/// index between searches and writes without a lock around it, and a write returns only once
/// it is durable.
pub trait SearchIndex: Send + Sync {
    /// Where the index lives, for messages.
    fn location(&self) -> String;
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
    /// Rebuilds the engine from its live records, dropping every deleted slot, while searches
    /// and writes go on (`htg compact`).
    fn compact(&self) -> Result<(), IndexError> {
        Err(IndexError::NotSupported {
            location: self.location(),
            operation: "compaction",
            reason: "this index compacts itself".into(),
        })
    }
    /// Writes a consistent snapshot to `out` while writes go on; returns its size in bytes
    /// and the log position it contains.
    fn snapshot(&self, out: &Path) -> Result<(u64, u64), IndexError> {
        let _ = out;
        Err(IndexError::NotSupported {
            location: self.location(),
            operation: "snapshots",
            reason: "this index has no snapshot of its own".into(),
        })
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
