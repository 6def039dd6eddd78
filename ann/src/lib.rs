//! Measurement kernels behind `htg bench index`.
//!
//! A separate crate so that the dev profile can compile it at `opt-level = 3` (see the root
//! `Cargo.toml`), as a release build would: `hnsw_rs` is generic over the distance, so its
//! search and insert loops are compiled in the crate that names `Hnsw<f32, D>`, here; and the
//! exact-search kernels and ground truth are straight-line code whose speed depends on it.
//!
//! - [`npy`]: read and write the `.npy` files a data set directory holds, shared with the
//!   Python peers in `benches/peers/`;
//! - [`dataset`]: the seeded clustered synthetic set, held-out query splits and exact ground
//!   truth;
//! - [`hnsw`]: HNSW builds and searches with a choice of distance kernel;
//! - [`exact`]: brute-force k-NN and the distance kernels it and our own HNSW distance use;
//! - [`stats`]: recall and latency percentiles.

pub mod dataset;
pub mod exact;
pub mod hnsw;
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
