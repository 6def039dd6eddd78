//! `GET /stats`: what is indexed and how.

use std::sync::PoisonError;

use actix_web::{web, HttpResponse};
use htg_retrieval::SearchIndex;
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
        let index = state.index.read().unwrap_or_else(PoisonError::into_inner);
        let params = index.params();
        json!({
            "count": index.len(),
            "dimension": index.dim(),
            "model": {
                "sha256": index.model().sha256,
                "spec": index.model().spec,
            },
            "index": {
                "kind": "hnsw",
                "m": params.m,
                "ef_construction": params.ef_construction,
                "deleted_pending_compaction": index.tombstone_count(),
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
