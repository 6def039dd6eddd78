//! `GET /metrics`: Prometheus text format.

use actix_web::{web, HttpResponse};

use super::Endpoint;
use crate::server::State;

/// The resource's endpoint.
pub fn endpoints() -> Vec<Endpoint> {
    Endpoint::documented::<__path_metrics>(|| web::to(metrics))
}

/// Request counts and latencies per route, decode/embed/search time, and gauges.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text exposition.", body = String, content_type = "text/plain"))
)]
pub(super) async fn metrics(state: web::Data<State>) -> HttpResponse {
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
