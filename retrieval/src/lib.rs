//! Retrieval core of htg: resolve how to feed an ONNX image model, embed images with it, and
//! search the embeddings in a persisted HNSW index.
//!
//! The pieces are separate so that training (which needs the same preprocessing and metrics),
//! the CLI and the HTTP server share one implementation of each.

pub mod embed;
pub mod index;
pub mod ingest;
pub mod metrics;
pub mod ort_backend;
pub mod preprocess;
pub mod spec;

pub use embed::{EmbedError, Embedder, ModelId, TractEmbedder};
pub use index::{Hit, HnswParams, IndexError, LocalIndex, Record, SearchIndex, SearchOptions};
pub use preprocess::PreprocessError;
pub use spec::{ModelSpec, SpecError};
