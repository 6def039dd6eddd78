//! `GET /stats`: what is indexed and how.

use actix_web::web::{self, Json};
use serde::Serialize;
use utoipa::ToSchema;

use super::Endpoint;
use crate::server::State;
use crate::ModelSpec;
use crate::SearchIndex as _;

/// The resource's endpoint.
pub fn endpoints() -> Vec<Endpoint> {
    Endpoint::documented::<__path_stats>(|| web::to(stats))
}

/// Answer of `GET /stats`.
#[derive(Serialize, ToSchema)]
pub struct Stats {
    /// Live images.
    pub count: usize,
    /// Embedding dimension: the length `/search/vector` expects.
    pub dimension: usize,
    /// The model that built the index.
    pub model: ModelInfo,
    /// The index and its engine.
    pub index: IndexInfo,
    /// Dynamic batching.
    pub batching: BatchingInfo,
    /// Request limits.
    pub limits: Limits,
    /// The folder watcher (`htg serve --watch`): its queue, counts and last error; absent
    /// when no folder is watched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<crate::watch::WatchStatus>,
}

/// The model that built the index (the one serving now, after a model swap).
#[derive(Serialize, ToSchema)]
pub struct ModelInfo {
    /// sha256 of the ONNX file, hex.
    pub sha256: String,
    /// Where it was loaded from, as recorded.
    pub path: Option<String>,
    /// Model swaps this server has completed.
    pub swaps: u64,
    /// How images are fed to it (see docs/MODEL_SPEC.md).
    #[schema(value_type = Object)]
    pub spec: ModelSpec,
}

/// The index and its engine.
#[derive(Serialize, ToSchema)]
pub struct IndexInfo {
    /// Always `hnsw`.
    pub kind: &'static str,
    /// The HNSW engine.
    pub engine: String,
    /// Where the index lives.
    pub location: String,
    /// HNSW links per node.
    pub m: usize,
    /// HNSW build-time candidate list.
    pub ef_construction: usize,
    /// Deleted images still in the graph.
    pub deleted_pending_compaction: usize,
    /// Write-ahead log bytes not yet checkpointed.
    pub log_bytes: u64,
    /// Checkpoints written since the server started.
    pub checkpoints: u64,
    /// Compactions since the server started: rebuilds that drop deleted images from the graph
    /// (run when they pass a fifth of it, while searches and writes go on).
    pub compactions: u64,
    /// What a background checkpoint or the indexing thread last failed at, while it lasts
    /// (`null` once it succeeds again): `/readyz` answers 503 meanwhile.
    pub background_error: Option<String>,
    /// Background failures since the index was opened.
    pub background_errors: u64,
}

/// Dynamic batching as configured, and the queue now.
#[derive(Serialize, ToSchema)]
pub struct BatchingInfo {
    /// Most images per inference call.
    pub max_size: usize,
    /// How long a non-full batch waits, in microseconds.
    pub max_delay_us: u64,
    /// Inference threads.
    pub threads: usize,
    /// Images waiting for inference.
    pub waiting: usize,
}

/// The limits requests are held to.
#[derive(Serialize, ToSchema)]
pub struct Limits {
    /// Largest body, in bytes.
    pub max_upload_bytes: u64,
    /// Largest decoded image, in pixels.
    pub max_pixels: u64,
    /// Largest `k`.
    pub max_k: usize,
    /// Most queries or images per request.
    pub max_batch_queries: usize,
}

/// Count, model, dimension, index parameters and the batching setup.
#[utoipa::path(
    get,
    path = "/stats",
    tag = "index",
    responses((status = 200, description = "What is indexed and how.", body = Stats))
)]
pub(super) async fn stats(state: web::Data<State>) -> Json<Stats> {
    let serving = state.serving();
    let index = &serving.index;
    let params = index.params();
    let stats = index.stats();
    let model = index.model();
    let config = &state.config;
    Json(Stats {
        count: stats.count,
        dimension: index.dim(),
        model: ModelInfo {
            sha256: model.sha256,
            spec: model.spec,
            path: serving.model_path.clone(),
            swaps: state.tasks.swaps(),
        },
        index: IndexInfo {
            kind: "hnsw",
            engine: stats.engine,
            location: index.location(),
            m: params.m,
            ef_construction: params.ef_construction,
            deleted_pending_compaction: stats.tombstones,
            log_bytes: stats.log_bytes,
            checkpoints: stats.checkpoints,
            compactions: stats.compactions,
            background_error: stats.background_error,
            background_errors: stats.background_errors,
        },
        batching: BatchingInfo {
            max_size: config.batch.max_size,
            max_delay_us: config.batch.max_delay_us,
            threads: config.batch.threads,
            waiting: serving.batcher.waiting(),
        },
        limits: Limits {
            max_upload_bytes: config.max_upload_bytes,
            max_pixels: config.max_pixels,
            max_k: config.max_k,
            max_batch_queries: config.max_batch_queries,
        },
        watch: state.watch.get().map(|w| w.get()),
    })
}
