//! `GET /healthz` (the process answers) and `GET /readyz` (it can serve searches).

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::resource;
use crate::server::error::ApiError;
use crate::server::State;

/// Mounts the resources.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz").route(web::get().to(healthz)))
        .service(resource("/readyz").route(web::get().to(readyz)));
}

/// Liveness: answering at all is the signal.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Readiness: listening, not shutting down, and every inference thread alive.
async fn readyz(state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    if !state.ready.load(Ordering::SeqCst) {
        return Err(ApiError::Unavailable(
            "not ready: starting or shutting down".into(),
        ));
    }
    if !state.batcher.alive() {
        return Err(ApiError::Unavailable(
            "not ready: an inference thread stopped".into(),
        ));
    }
    Ok(HttpResponse::Ok().json(json!({ "status": "ready" })))
}
