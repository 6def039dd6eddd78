//! Retrieval core of htg: resolve how to feed an ONNX image model, embed images with it, and
//! search the embeddings in a persisted HNSW index.
//!
//! The pieces are separate so that training (which needs the same preprocessing and metrics),
//! the CLI and the HTTP server share one implementation of each.

pub mod embed;
/// Durable writes, from the vector engine's crate: one helper for every layer.
pub use htg_ann::fsio;
pub mod index;
pub mod ingest;
pub mod loader;
pub mod ort_backend;
pub mod preprocess;
#[cfg(feature = "http")]
pub mod server;
pub mod spec;
pub mod wal;

pub use embed::{Backend, EmbedError, Embedder, ModelFile, ModelId, TractEmbedder};
pub use index::{
    EngineKind, Hit, HnswParams, IndexError, IndexStats, LocalIndex, Record, SearchIndex,
    SearchOptions,
};
pub use preprocess::PreprocessError;
pub use spec::{ModelSpec, SpecError};
