//! `GET /metrics`: Prometheus text format.

use std::sync::PoisonError;

use actix_web::{web, HttpResponse};
use htg_retrieval::SearchIndex;

use super::resource;
use crate::server::State;

/// Mounts the resource.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/metrics").route(web::get().to(metrics)));
}

/// Request counts and latencies per route, decode/embed/search time, and gauges.
async fn metrics(state: web::Data<State>) -> HttpResponse {
    let images = state
        .index
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .len() as f64;
    let text = state.metrics.render(&[
        ("htg_index_images", "Live images in the index.", images),
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
