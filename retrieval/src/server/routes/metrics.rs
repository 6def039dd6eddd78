//! `GET /metrics`: Prometheus text format (from `metrics-exporter-prometheus`).

use actix_web::{web, HttpResponse};

use super::Endpoint;
use crate::server::metrics::Sampled;
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
    responses((status = 200, description = "Prometheus text exposition (format 0.0.4).", body = String, content_type = "text/plain"))
)]
pub(super) async fn metrics(state: web::Data<State>) -> HttpResponse {
    let stats = state.index.stats();
    let text = state.metrics.render(Sampled {
        images: stats.count as u64,
        tombstones: stats.tombstones as u64,
        log_bytes: stats.log_bytes,
        checkpoints: stats.checkpoints,
        queue: state.batcher.waiting() as u64,
    });
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}
