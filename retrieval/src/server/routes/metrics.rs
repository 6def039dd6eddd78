//! `GET /metrics`: Prometheus text format.

use actix_web::{web, HttpResponse};

use super::resource;
use crate::server::State;

/// Mounts the resource.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/metrics").route(web::get().to(metrics)));
}

/// Request counts and latencies per route, decode/embed/search time, and gauges.
async fn metrics(state: web::Data<State>) -> HttpResponse {
    let stats = state.index.stats();
    let text = state.metrics.render(&[
        (
            "htg_index_images",
            "Live images in the index.",
            stats.count as f64,
        ),
        (
            "htg_index_tombstones",
            "Deleted images still in the graph, waiting for compaction.",
            stats.tombstones as f64,
        ),
        (
            "htg_index_log_bytes",
            "Write-ahead log bytes not yet covered by a checkpoint.",
            stats.log_bytes as f64,
        ),
        (
            "htg_index_checkpoints",
            "Checkpoints written since the server started.",
            stats.checkpoints as f64,
        ),
        (
            "htg_inference_queue_images",
            "Images waiting for an inference batch.",
            state.batcher.waiting() as f64,
        ),
    ]);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}
