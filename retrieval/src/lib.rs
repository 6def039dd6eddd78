//! Retrieval core of htg: resolve how to feed an ONNX image model, embed images with it,
//! keep the embeddings in a durable index (our HNSW engine from `htg-ann`, a write-ahead log),
//! and serve nearest-neighbour search over HTTP ([`server`], feature `http`).
//!
//! The pieces are separate so that training (which needs the same preprocessing), the CLI and
//! the HTTP server share one implementation of each.

pub mod duplicates;
pub mod embed;
/// Durable writes, from the vector engine's crate: one helper for every layer.
pub use htg_ann::fsio;
pub mod index;
pub mod ingest;
pub mod loader;
pub mod ort_backend;
pub mod preprocess;
pub mod reindex;
#[cfg(feature = "http")]
pub mod server;
pub mod spec;
pub mod watch;

pub use embed::{Backend, EmbedError, Embedder, ModelFile, ModelId, TractEmbedder, TractOptions};
pub use index::{
    EngineKind, Hit, HnswParams, IndexError, IndexStats, LocalIndex, Record, SearchIndex,
    SearchOptions, MAX_DISTANCE,
};
pub use preprocess::PreprocessError;
pub use spec::{ModelSpec, SpecError};
