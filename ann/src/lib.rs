//! The vector engine: the ground floor under `htg-retrieval`, and the measurement kernels
//! behind `htg bench index`.
//!
//! - [`graph`]: our own HNSW graph — flat cache-friendly layout, parallel and concurrent
//!   inserts through `&self`, filters and tombstones inside the traversal (with an exact scan
//!   for small allowed sets), compaction, optional 8-bit quantised traversal with `f32`
//!   rescoring, and a checksummed file format opened with `mmap`;
//! - [`kernels`]: the one set of distance kernels (`f32` and 8-bit), compiled for AVX-512,
//!   AVX2+FMA and the base ISA and chosen once at run time;
//! - [`exact`]: brute-force k-NN, the ground truth of every recall figure;
//! - [`engine`]: the one engine type, over [`graph`] or `hnsw_rs`, that the persisted index
//!   runs on and `htg bench` measures;
//! - [`hnsw`]: timed HNSW builds and searches for benchmarks, over `hnsw_rs` or [`engine`];
//! - [`npy`], [`dataset`]: the `.npy` data set directories shared with the Python peers in
//!   `benches/peers/`, and the seeded clustered synthetic set;
//! - [`stats`]: recall and latency percentiles;
//! - [`codec`]: the one byte codec of every file (integers, strings, framed and sealed data);
//! - [`fsio`]: the one durable write (temporary file, fsync, rename, directory fsync).
//!
//! A separate crate so that the dev profile can compile it at `opt-level = 3` (see the root
//! `Cargo.toml`), as a release build would: search loops and kernels are straight-line code
//! whose speed depends on it, and `hnsw_rs`'s generic loops are instantiated here.

pub mod codec;
pub mod dataset;
pub mod engine;
pub mod exact;
pub mod fsio;
pub mod graph;
pub mod hnsw;
pub mod kernels;
pub mod npy;
pub mod stats;

/// Why a measurement input was refused.
#[derive(Debug, thiserror::Error)]
pub enum AnnError {
    /// Filesystem failure, with the path involved. The I/O error is part of the message and
    /// deliberately not a `source`, so `anyhow`'s `{:#}` does not print it twice.
    #[error("{op} {path}: {err}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// Path involved.
        path: std::path::PathBuf,
        /// Underlying error.
        err: std::io::Error,
    },
    /// A `.npy` file is malformed or has an unexpected dtype or shape.
    #[error("{path}: {reason}")]
    Npy {
        /// File involved.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Inputs disagree with each other (dimensions, counts, ids).
    #[error("{0}")]
    Mismatch(String),
    /// A parameter is out of range.
    #[error("invalid parameter: {0}")]
    Param(String),
    /// Every slot reserved for the graph is taken: the caller grows it with
    /// [`graph::Graph::reserve`] (under its write lock) and retries.
    #[error("the index is full ({capacity} vectors); reserve room before inserting")]
    Full {
        /// Slots the graph has.
        capacity: usize,
    },
    /// An id that names no vector of the graph.
    #[error("id {id} is not in the index ({len} ids)")]
    UnknownId {
        /// The id asked for.
        id: u64,
        /// Ids the graph has handed out.
        len: usize,
    },
    /// The graph's storage is a read-only file map; [`graph::Graph::reserve`] copies it into
    /// memory, after which it can change.
    #[error("the index is mapped read-only from its file; reserve room to make it writable")]
    ReadOnly,
    /// An index file is truncated, altered, or from another format version.
    #[error("{path}: not a valid index file: {reason}")]
    Format {
        /// File involved.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> AnnError + 'a {
    move |err| AnnError::Io {
        op,
        path: path.to_path_buf(),
        err,
    }
}
