//! `POST /snapshots`: a consistent snapshot of the index, written beside it while writes go
//! on (restore it with `htg snapshot restore`).

use std::time::Instant;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::resource;
use crate::server::error::ApiError;
use crate::server::{ms_since, State};

/// Mounts the resource.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/snapshots").route(web::post().to(create)));
}

/// Writes `snapshots/snap-<unix ms>.htgsnap` under the server's data directory.
async fn create(state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    let start = Instant::now();
    let state2 = state.clone();
    let (name, bytes, seq) = web::block(move || -> Result<_, ApiError> {
        let dir = &state2.snapshots;
        std::fs::create_dir_all(dir)
            .map_err(|e| ApiError::Internal(format!("creating {}: {e}", dir.display())))?;
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let name = format!("snap-{ms}.htgsnap");
        let (bytes, seq) = state2.index.snapshot(&dir.join(&name))?;
        Ok((name, bytes, seq))
    })
    .await??;
    Ok(HttpResponse::Created().json(json!({
        "name": name,
        "bytes": bytes,
        "log_position": seq,
        "took_ms": ms_since(start),
    })))
}
