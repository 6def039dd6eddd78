//! The values an index takes and gives back (records, parameters, search options, hits,
//! counters), shared by the seam, both engines and the log, and so kept apart from all of them.

use serde::{Deserialize, Serialize};

use super::error::IndexError;

/// Largest `ef` (the HNSW candidate list) a search may ask for, over HTTP or the CLI: beyond
/// it a search is slower than exact search on any index this tool holds.
pub const MAX_EF: usize = 10_000;

/// The HNSW candidate list a search gets when it names none (raised to `k` when `k` is
/// larger): recall@10 near 0.99 on the data sets in docs/BENCHMARKS.md at a fraction of the
/// cost of larger lists.
pub const DEFAULT_EF: usize = 64;

/// Largest squared L2 distance two l2-normalised vectors can be apart: a `max_distance` at
/// or above it keeps everything.
pub const MAX_DISTANCE: f32 = 4.0;

/// A search's `k` and candidate list, checked once by [`SearchOptions::resolve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Neighbours wanted, within the caller's bound.
    pub k: usize,
    /// The candidate list: the one asked for, or [`DEFAULT_EF`], and never below `k`.
    pub ef: usize,
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
    /// Our graph's parameters for these settings (squared L2, fixed seed): the engine builds
    /// with them, and their ranges are the ones every engine is held to.
    pub fn graph(self) -> htg_ann::graph::GraphParams {
        htg_ann::graph::GraphParams {
            m: self.m,
            ef_construction: self.ef_construction,
            distance: htg_ann::graph::Distance::L2Sq,
            seed: 0x5eed,
        }
    }

    /// Rejects values that `hnsw_rs` would answer with `process::exit` or nonsense.
    pub fn validate(&self) -> Result<(), IndexError> {
        // One set of ranges, the engine's, for every engine.
        Ok(self.graph().validate()?)
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
    /// Drop hits farther than this (squared L2 between unit vectors, 0..=4): a search for
    /// near-duplicates or "only close matches" may then answer fewer than `k`, or none.
    pub max_distance: Option<f32>,
}

impl SearchOptions {
    /// Checks `k` against `1..=max_k` (the server's `max_k`, or `usize::MAX` where the caller
    /// bounds nothing) and an explicit `ef` against `1..=MAX_EF`, and picks the candidate list:
    /// the one place the CLI, the server, both indexes and the bench get these from.
    pub fn resolve(&self, k: usize, max_k: usize) -> Result<Resolved, IndexError> {
        if k == 0 || k > max_k {
            return Err(IndexError::Param(format!("k = {k} is outside 1..={max_k}")));
        }
        if let Some(ef) = self.ef {
            if ef == 0 || ef > MAX_EF {
                return Err(IndexError::Param(format!(
                    "ef = {ef} is outside 1..={MAX_EF}"
                )));
            }
        }
        if let Some(d) = self.max_distance {
            check_max_distance(d)?;
        }
        Ok(Resolved {
            k,
            ef: self.ef.unwrap_or(DEFAULT_EF).max(k),
        })
    }

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

    /// `hits` (nearest first) without those past `max_distance`: the one cut every index's
    /// search applies, so the CLI, every HTTP search and `duplicates` drop the same hits.
    pub fn within<T>(&self, mut hits: Vec<T>, distance: impl Fn(&T) -> f32) -> Vec<T> {
        if let Some(max) = self.max_distance {
            hits.retain(|h| distance(h) <= max);
        }
        hits
    }
}

/// Refuses a `max_distance` outside `0..=4`: NaN would keep nothing and say nothing about
/// why, and no two unit vectors are farther apart than [`MAX_DISTANCE`], so a larger bound is
/// a mistake (a distance of another metric, or a percentage) rather than a wish to keep all.
/// One closed range is also what the OpenAPI document can state exactly.
pub fn check_max_distance(d: f32) -> Result<(), IndexError> {
    if (0.0..=MAX_DISTANCE).contains(&d) {
        Ok(())
    } else {
        Err(IndexError::Param(format!(
            "max_distance = {d} is outside 0..={MAX_DISTANCE} (squared L2 between unit vectors)"
        )))
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
    /// A background task's failure outstanding now (a checkpoint that could not be written,
    /// adds the applier could not index): nobody waits on those tasks, so it is reported here.
    pub background_error: Option<String>,
    /// Background failures since the index was opened.
    pub background_errors: u64,
}

/// Squared Euclidean distance (the kernel in `htg_ann::kernels`).
pub fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    htg_ann::kernels::l2_sq(a, b)
}
