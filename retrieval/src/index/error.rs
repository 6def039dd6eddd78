//! Why an index operation failed, for every engine and the log under the local one: the leaf
//! every other index module uses, so none of them needs another's internals for its errors.

use std::io;
use std::path::{Path, PathBuf};

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
    /// A remote vector engine (Milvus) refused an operation; its SDK's errors are flattened
    /// into one line, as they carry gRPC detail not worth a type here.
    #[error("vector engine: {0}")]
    Engine(String),
    /// The local vector engine (`htg_ann`) refused an operation: kept whole, so a caller can
    /// tell a full graph from a bad parameter and walk to the cause.
    #[error("vector engine: {0}")]
    Ann(#[source] htg_ann::AnnError),
    /// The write-ahead log failed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// A remote engine (Milvus) did not answer: the server is down, unreachable or
    /// overloaded. Worth retrying later, unlike the other errors.
    #[error("{location} is unavailable: {reason}")]
    Unavailable {
        /// The index location.
        location: String,
        /// What failed.
        reason: String,
    },
    /// The operation exists for another kind of index but not this one (a snapshot or a model
    /// swap of a Milvus collection): nothing the caller sent was wrong, so HTTP answers 501.
    #[error("{operation} are not supported for {location}: {reason}")]
    NotSupported {
        /// The index location.
        location: String,
        /// What was asked for, plural (`snapshots`, `model swaps`).
        operation: &'static str,
        /// Why, and what to use instead.
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

/// Why the log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Filesystem failure, with the path involved.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// Path involved.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// An entry in the middle of the log is damaged: refusing to guess what it held.
    #[error("write-ahead log {path} is corrupt at byte {offset}: {reason} (entries after it exist, so this is not a torn write; restore from a snapshot)")]
    Corrupt {
        /// Segment file.
        path: PathBuf,
        /// Byte offset of the bad entry.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// The engine's refusals as the index reports them: a bad parameter is the caller's (400 over
/// HTTP) whichever layer noticed it; anything else keeps the engine's error whole.
impl From<htg_ann::AnnError> for IndexError {
    fn from(e: htg_ann::AnnError) -> Self {
        match e {
            htg_ann::AnnError::Param(m) => IndexError::Param(m),
            other => IndexError::Ann(other),
        }
    }
}

/// Wraps an I/O error with the operation and path.
pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> IndexError + 'a {
    move |source| IndexError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}
