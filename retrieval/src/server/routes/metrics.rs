//! `GET /metrics`: Prometheus text format (from `metrics-exporter-prometheus`).

use actix_web::{web, HttpResponse};

use super::Endpoint;
use crate::server::metrics::Sampled;
use crate::server::State;
use crate::SearchIndex as _;

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
    let serving = state.serving();
    let stats = serving.index.stats();
    let mut text = state.metrics.render(Sampled {
        images: stats.count as u64,
        tombstones: stats.tombstones as u64,
        log_bytes: stats.log_bytes,
        checkpoints: stats.checkpoints,
        compactions: stats.compactions,
        queue: serving.batcher.waiting() as u64,
    });
    // Which model serves, as an info-style gauge (the sha256 is hex: no escaping needed).
    text.push_str(&format!(
        "# HELP htg_model_info The model now serving (1), by sha256.\n# TYPE htg_model_info gauge\nhtg_model_info{{sha256=\"{}\"}} 1\n# HELP htg_model_swaps_total Model swaps completed since start.\n# TYPE htg_model_swaps_total counter\nhtg_model_swaps_total {}\n# HELP htg_index_background_errors_total Background checkpoint and indexing failures since the index was opened.\n# TYPE htg_index_background_errors_total counter\nhtg_index_background_errors_total {}\n",
        serving.model_sha256(),
        state.tasks.swaps(),
        stats.background_errors
    ));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}
