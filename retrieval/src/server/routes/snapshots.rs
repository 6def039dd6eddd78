//! `POST /snapshots`: a consistent snapshot of the index, written beside it while writes go
//! on (restore it with `htg snapshot restore`).

use std::time::Instant;

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::Endpoint;
use crate::server::error::{ApiError, ErrorBody};
use crate::server::{ms_since, State};
use crate::SearchIndex as _;

/// The resource's endpoint.
pub fn endpoints() -> Vec<Endpoint> {
    Endpoint::documented::<__path_create>(|| web::to(create))
}

/// Answer of `POST /snapshots`.
#[derive(Serialize, ToSchema)]
pub struct Snapshot {
    /// File name under the data directory's `snapshots/`.
    pub name: String,
    /// Its size.
    pub bytes: u64,
    /// Write-ahead log position the snapshot is consistent at.
    pub log_position: u64,
    /// Time spent in the server.
    pub took_ms: f64,
}

/// Writes `snapshots/snap-<unix ms>.htgsnap` under the server's data directory.
#[utoipa::path(
    post,
    path = "/snapshots",
    tag = "index",
    responses(
        (status = 201, description = "Snapshot written.", body = Snapshot),
        (status = 500, description = "Writing failed.", body = ErrorBody),
        (status = 507, description = "The disk is full: no snapshot was written.", body = ErrorBody),
    )
)]
pub(super) async fn create(state: web::Data<State>) -> Result<HttpResponse, ApiError> {
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
        let (bytes, seq) = state2.serving().index.snapshot(&dir.join(&name))?;
        Ok((name, bytes, seq))
    })
    .await??;
    Ok(HttpResponse::Created().json(Snapshot {
        name,
        bytes,
        log_position: seq,
        took_ms: ms_since(start),
    }))
}
