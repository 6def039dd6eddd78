//! `GET /healthz` (the process answers) and `GET /readyz` (it can serve searches).

use std::sync::atomic::Ordering;

use actix_web::web::{self, Json};
use serde::Serialize;
use utoipa::ToSchema;

use super::Endpoint;
use crate::server::error::{ApiError, ErrorBody};
use crate::server::State;
use crate::SearchIndex as _;

/// The resources' endpoints.
pub fn endpoints() -> Vec<Endpoint> {
    [
        Endpoint::documented::<__path_healthz>(|| web::to(healthz)),
        Endpoint::documented::<__path_readyz>(|| web::to(readyz)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Answer of the health checks.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` (liveness) or `ready` (readiness).
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: answering at all is the signal.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "The process answers.", body = Health))
)]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: listening, not shutting down, every inference thread alive, and no background
/// failure of the index outstanding (a checkpoint that cannot be written means the log only
/// grows, and a full disk will refuse the next write).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready to search.", body = Health),
        (status = 503, description = "Starting, shutting down, an inference thread stopped, or a background checkpoint or indexing failed (the message says which).", body = ErrorBody),
    )
)]
pub(super) async fn readyz(state: web::Data<State>) -> Result<Json<Health>, ApiError> {
    if !state.ready.load(Ordering::SeqCst) {
        return Err(ApiError::Unavailable(
            "not ready: starting or shutting down".into(),
        ));
    }
    if !state.serving().batcher.alive() {
        return Err(ApiError::Unavailable(
            "not ready: an inference thread stopped".into(),
        ));
    }
    if let Some(e) = state.serving().index.stats().background_error {
        return Err(ApiError::Unavailable(format!(
            "not ready: writes cannot be made durable: {e}"
        )));
    }
    Ok(Json(Health { status: "ready" }))
}
