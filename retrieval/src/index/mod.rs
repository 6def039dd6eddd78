//! The image index: records (path, hash, label) and their vectors, searchable by nearest
//! neighbour, behind one seam, [`SearchIndex`], so the CLI and the server never know which
//! engine or machine holds them.
//!
//! - [`LocalIndex`] ([`local`]): one directory on this machine: a checkpoint (engine file,
//!   records file, metadata) plus a write-ahead log ([`wal`]); see its docs for the
//!   layout and the crash guarantees.
//! - [`wal`]: the write-ahead log under [`LocalIndex`];
//! - [`open`] / [`create`]: the one opener, deciding the engine from the location.

//!
//! Its submodules use each other directly, never through this file, which only re-exports
//! them and opens an index: `tests/integration/architecture.rs` holds every module to that.

mod error;
mod legacy;
pub mod local;
pub mod location;
#[cfg(feature = "milvus")]
pub mod milvus;
pub mod records;
mod seam;
pub mod snapshot;
mod types;
pub mod wal;

use crate::embed::ModelId;

pub use error::IndexError;
pub use htg_ann::engine::EngineKind;
pub use local::LocalIndex;
pub use location::{is_remote, Location};
pub use seam::{describe, CreateOptions, SearchIndex};
pub use types::{
    check_max_distance, squared_l2, Hit, HnswParams, IndexStats, Record, Resolved, SearchOptions,
    DEFAULT_EF, MAX_DISTANCE, MAX_EF,
};
pub use wal::WalError;

use std::path::Path;

/// An opened index, local or remote: what [`open`] and [`create`] return. Callers that need
/// what only one kind has (a model swap needs a local directory) match on it; everything else
/// goes through [`SearchIndex`], which this implements by handing each call to the index
/// inside.
pub enum Index {
    /// A directory on this machine.
    Local(LocalIndex),
    /// A Milvus collection (boxed: its client is many times the size of a local handle).
    #[cfg(feature = "milvus")]
    Milvus(Box<milvus::MilvusIndex>),
}

impl Index {
    /// The refusal of `operation` by an index that is not local, naming the index.
    // Without the Milvus feature every index is local and `operation` is never named.
    #[cfg_attr(not(feature = "milvus"), allow(unused_variables))]
    pub fn local_only(&self, operation: &'static str) -> Result<&LocalIndex, IndexError> {
        match self {
            Index::Local(l) => Ok(l),
            #[cfg(feature = "milvus")]
            Index::Milvus(m) => Err(IndexError::NotSupported {
                location: m.location(),
                operation,
                reason: "they need an index directory on this machine (a Milvus collection is rebuilt with `htg index` into a new collection)".into(),
            }),
        }
    }
}

impl From<LocalIndex> for Index {
    fn from(l: LocalIndex) -> Index {
        Index::Local(l)
    }
}

/// In-process servers and tests share a local index as an `Arc`; the index is a cheap clone
/// of the same handle.
impl From<std::sync::Arc<LocalIndex>> for Index {
    fn from(l: std::sync::Arc<LocalIndex>) -> Index {
        Index::Local(LocalIndex::clone(&l))
    }
}

/// Calls `$call` on whichever index is inside.
macro_rules! each {
    ($self:ident, $i:ident => $call:expr) => {
        match $self {
            Index::Local($i) => $call,
            #[cfg(feature = "milvus")]
            Index::Milvus($i) => $call,
        }
    };
}

impl SearchIndex for Index {
    fn location(&self) -> String {
        each!(self, i => i.location())
    }
    fn model(&self) -> ModelId {
        each!(self, i => i.model())
    }
    fn model_path(&self) -> Option<String> {
        each!(self, i => i.model_path())
    }
    fn check_model(&self, query: &ModelId) -> Result<(), IndexError> {
        each!(self, i => i.check_model(query))
    }
    fn params(&self) -> HnswParams {
        each!(self, i => i.params())
    }
    fn dim(&self) -> usize {
        each!(self, i => i.dim())
    }
    fn len(&self) -> usize {
        each!(self, i => i.len())
    }
    fn is_empty(&self) -> bool {
        each!(self, i => i.is_empty())
    }
    fn record(&self, id: u64) -> Option<Record> {
        each!(self, i => i.record(id))
    }
    fn vector(&self, id: u64) -> Option<Vec<f32>> {
        each!(self, i => i.vector(id))
    }
    fn vectors(&self, ids: &[u64]) -> Vec<Option<Vec<f32>>> {
        each!(self, i => i.vectors(ids))
    }
    fn records(&self) -> Vec<(u64, Record)> {
        each!(self, i => i.records())
    }
    fn insert_many(&self, items: Vec<(Record, Vec<f32>)>) -> Result<Vec<u64>, IndexError> {
        each!(self, i => i.insert_many(items))
    }
    fn insert(&self, record: Record, vector: &[f32]) -> Result<u64, IndexError> {
        each!(self, i => i.insert(record, vector))
    }
    fn remove_many(&self, ids: &[u64]) -> Result<Vec<bool>, IndexError> {
        each!(self, i => i.remove_many(ids))
    }
    fn remove(&self, id: u64) -> Result<bool, IndexError> {
        each!(self, i => i.remove(id))
    }
    fn search(
        &self,
        query: &[f32],
        k: usize,
        opts: &SearchOptions,
    ) -> Result<Vec<Hit>, IndexError> {
        each!(self, i => i.search(query, k, opts))
    }
    fn flush(&self) -> Result<(), IndexError> {
        each!(self, i => i.flush())
    }
    fn stats(&self) -> IndexStats {
        each!(self, i => i.stats())
    }
    fn notice(&self) -> Option<String> {
        each!(self, i => i.notice())
    }
    fn snapshot(&self, out: &Path) -> Result<(u64, u64), IndexError> {
        each!(self, i => i.snapshot(out))
    }
    fn compact(&self) -> Result<(), IndexError> {
        each!(self, i => i.compact())
    }
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
pub fn open(location: impl Into<Location>) -> Result<Index, IndexError> {
    match location.into() {
        #[cfg(feature = "milvus")]
        Location::Milvus(url) => Ok(Index::Milvus(Box::new(milvus::MilvusIndex::open(&url)?))),
        #[cfg(not(feature = "milvus"))]
        Location::Milvus(url) => Err(no_milvus(&url)),
        Location::Dir(dir) => Ok(Index::Local(LocalIndex::open(&dir)?)),
    }
}

/// Whether an index exists at `location`.
pub fn exists(location: impl Into<Location>) -> bool {
    match location.into() {
        #[cfg(feature = "milvus")]
        Location::Milvus(url) => milvus::MilvusIndex::exists(&url),
        #[cfg(not(feature = "milvus"))]
        Location::Milvus(_) => false,
        Location::Dir(dir) => LocalIndex::exists(&dir),
    }
}

/// Creates an empty index at `location` for `model`.
pub fn create(
    location: impl Into<Location>,
    model: ModelId,
    model_path: Option<String>,
    opts: &CreateOptions,
) -> Result<Index, IndexError> {
    match location.into() {
        #[cfg(feature = "milvus")]
        Location::Milvus(url) => Ok(Index::Milvus(Box::new(milvus::MilvusIndex::create(
            &url,
            model,
            model_path,
            opts.params,
        )?))),
        #[cfg(not(feature = "milvus"))]
        Location::Milvus(url) => {
            let _ = (model, model_path, opts);
            Err(no_milvus(&url))
        }
        Location::Dir(dir) => Ok(Index::Local(LocalIndex::create(
            &dir, model, model_path, opts,
        )?)),
    }
}
