//! `GET /stats`: what is indexed and how.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::resource;
use crate::server::State;

/// Mounts the resource.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/stats").route(web::get().to(stats)));
}

/// Count, model, dimension, index parameters and the batching setup.
async fn stats(state: web::Data<State>) -> HttpResponse {
    let body = {
        let index = &state.index;
        let params = index.params();
        let stats = index.stats();
        let model = index.model();
        json!({
            "count": stats.count,
            "dimension": index.dim(),
            "model": {
                "sha256": model.sha256,
                "spec": model.spec,
            },
            "index": {
                "kind": "hnsw",
                "engine": stats.engine,
                "location": index.location(),
                "m": params.m,
                "ef_construction": params.ef_construction,
                "deleted_pending_compaction": stats.tombstones,
                "log_bytes": stats.log_bytes,
                "checkpoints": stats.checkpoints,
            },
            "batching": {
                "max_size": state.config.batch.max_size,
                "max_delay_us": state.config.batch.max_delay_us,
                "threads": state.config.batch.threads,
                "waiting": state.batcher.waiting(),
            },
            "limits": {
                "max_upload_bytes": state.config.max_upload_bytes,
                "max_pixels": state.config.max_pixels,
                "max_k": state.config.max_k,
                "max_batch_queries": state.config.max_batch_queries,
            },
        })
    };
    HttpResponse::Ok().json(body)
}
