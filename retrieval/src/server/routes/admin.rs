//! `POST /admin/reindex` (swap the served model while serving) and `GET /admin/tasks/{id}`
//! (its progress). Both need the full API key; see [`crate::server::admin`] for the swap.

use actix_web::http::header;
use actix_web::web::{self, Json};
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use super::Endpoint;
use crate::server::admin::{start_reindex, TaskStatus};
use crate::server::error::{ApiError, ErrorBody};
use crate::server::input::{parse_json, read_body};
use crate::server::State;

/// The resource's endpoints.
pub fn endpoints() -> Vec<Endpoint> {
    [
        Endpoint::documented::<__path_reindex>(|| web::to(reindex)),
        Endpoint::documented::<__path_task>(|| web::to(task)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Body of `POST /admin/reindex`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReindexRequest {
    /// Path of the new ONNX model on the server's machine (its spec comes from its metadata
    /// or a `<model>.json` manifest beside it).
    #[schema(min_length = 1, max_length = 4096)]
    pub model: String,
    /// Switch even if some images cannot be re-read from their stored bytes (they are
    /// listed in the task status and left out of the new index). Default: refuse.
    #[serde(default)]
    pub drop_missing: bool,
}

/// Re-embeds every image with another model in the background and switches to it
/// atomically; the old model answers until then, and writes made meanwhile reach the new
/// index. Poll the task for progress. `model` must name an ONNX file that exists on the server
/// and loads; any other string is schema-valid but answers 400.
#[utoipa::path(
    post,
    path = "/admin/reindex",
    tag = "admin",
    request_body(content = ReindexRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Started; `Location` names the task.", body = TaskStatus),
        (status = 400, description = "Malformed body, or a model that cannot be loaded.", body = ErrorBody),
        (status = 403, description = "Swaps are off on this server (no `api_key` configured, or a remote index).", body = ErrorBody),
        (status = 409, description = "A swap is running, or the index already uses this model.", body = ErrorBody),
        (status = 413, description = "Body above `max_upload_bytes`.", body = ErrorBody),
        (status = 415, description = "Not JSON.", body = ErrorBody),
        (status = 500, description = "The shadow index could not be created.", body = ErrorBody),
        (status = 507, description = "The disk is full.", body = ErrorBody),
    )
)]
pub(super) async fn reindex(
    state: web::Data<State>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    super::search::require_json(&req)?;
    let body = read_body(&req, payload, state.config.max_upload_bytes).await?;
    let r: ReindexRequest = parse_json(&body)?;
    if r.model.is_empty() || r.model.contains('\0') {
        return Err(ApiError::BadRequest("`model` must be a file path".into()));
    }
    let status = start_reindex(&state, r.model, r.drop_missing).await?;
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/admin/tasks/{}", status.id)))
        .json(status))
}

/// A task's progress: images embedded, writes carried over, images that could not be
/// re-read, and how it ended.
#[utoipa::path(
    get,
    path = "/admin/tasks/{id}",
    tag = "admin",
    params(("id" = u64, Path, description = "Task id.")),
    responses(
        (status = 200, description = "The task's status.", body = TaskStatus),
        (status = 404, description = "No such task (only the newest 16 are kept).", body = ErrorBody),
    )
)]
pub(super) async fn task(
    state: web::Data<State>,
    id: web::Path<u64>,
) -> Result<Json<TaskStatus>, ApiError> {
    let id = id.into_inner();
    state
        .tasks
        .get(id)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no task with id {id}")))
}
