//! `POST /images`, `DELETE /images/{id}`, `GET /images/{id}/similar`, `GET /images/{id}/file`,
//! `GET /images/{id}/thumb`.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::web::{self, Json};
use actix_web::{HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::search::SearchAnswer;
use super::Endpoint;
use crate::server::error::{ApiError, ErrorBody};
use crate::server::input::{read_typed, AddForm, Body, RawImage, SearchParams};
use crate::server::service::{self, Added, NewImage};
use crate::server::{ms_since, State};

/// The resources' endpoints.
pub fn endpoints() -> Vec<Endpoint> {
    [
        Endpoint::documented::<__path_add>(|| web::to(add)),
        Endpoint::documented::<__path_delete>(|| web::to(delete)),
        Endpoint::documented::<__path_similar>(|| web::to(similar)),
        Endpoint::documented::<__path_file>(|| web::to(file)),
        Endpoint::documented::<__path_thumb>(|| web::to(thumb)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Answer of `POST /images`.
#[derive(Serialize, ToSchema)]
pub struct AddAnswer {
    /// The images added, in the order sent.
    pub added: Vec<Added>,
    /// Time spent in the server.
    pub took_ms: f64,
}

/// Answer of `DELETE /images/{id}`.
#[derive(Serialize, ToSchema)]
pub struct Deleted {
    /// The id removed.
    pub deleted: u64,
}

/// A form of `image` fields, with optional `label` (one, for all) and `path` (one per image,
/// in order). Answers 201 once the index is saved. Multipart parts carry no types: `label` and
/// `path` are read as UTF-8 text, so any text is a path (a JSON `{}` arrives as the text `{}`).
/// Two rules no schema can say answer 400: each image must decode (PNG, JPEG, GIF, BMP, WebP or
/// TIFF), and the `path` fields, if any, number one per image.
#[utoipa::path(
    post,
    path = "/images",
    tag = "images",
    request_body(content = AddForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Added and durable.", body = AddAnswer),
        (status = 400, description = "Malformed form, unknown field, 0 or too many images, or an undecodable image.", body = ErrorBody),
        (status = 413, description = "Body above `max_upload_bytes`.", body = ErrorBody),
        (status = 415, description = "Not a multipart form.", body = ErrorBody),
        (status = 503, description = "Inference queue full (`Retry-After`).", body = ErrorBody),
        (status = 507, description = "The disk is full: nothing was added.", body = ErrorBody),
    )
)]
pub(super) async fn add(
    state: web::Data<State>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let start = Instant::now();
    let parts =
        match read_typed(&req, payload, &state.config, false).await? {
            Body::Form(parts) => parts,
            Body::Image(_) | Body::Json(_) => return Err(ApiError::UnsupportedMediaType {
                got: "a raw body".into(),
                expected:
                    "send multipart/form-data with `image` fields and optional `path` and `label`",
            }),
        };
    let mut images = Vec::new();
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    for p in parts {
        match p.name.as_str() {
            "image" => images.push(p.data),
            "path" => paths.push(p.text()?),
            "label" => labels.push(p.text()?),
            n => {
                return Err(ApiError::BadRequest(format!(
                    "unexpected form field `{n}` (expected `image`, `path`, `label`)"
                )))
            }
        }
    }
    let max = state.config.max_batch_queries;
    if images.is_empty() || images.len() > max {
        return Err(ApiError::BadRequest(format!(
            "send 1..={max} `image` fields, got {}",
            images.len()
        )));
    }
    if !paths.is_empty() && paths.len() != images.len() {
        return Err(ApiError::BadRequest(format!(
            "{} `path` fields for {} images: give none or one per image",
            paths.len(),
            images.len()
        )));
    }
    if labels.len() > 1 {
        return Err(ApiError::BadRequest(
            "give at most one `label` field".into(),
        ));
    }
    let label = labels.pop();
    let mut paths = paths.into_iter();
    let items = images
        .into_iter()
        .map(|bytes| NewImage {
            bytes,
            path: paths.next(),
            label: label.clone(),
        })
        .collect();
    let added = service::add(&state, items).await?;
    Ok(HttpResponse::build(StatusCode::CREATED).json(AddAnswer {
        added,
        took_ms: ms_since(start),
    }))
}

/// Removes an image; the index is saved before the answer.
#[utoipa::path(
    delete,
    path = "/images/{id}",
    tag = "images",
    params(("id" = u64, Path, description = "Image id.")),
    responses(
        (status = 200, description = "Removed and durable.", body = Deleted),
        (status = 404, description = "No such image.", body = ErrorBody),
        (status = 507, description = "The disk is full: nothing was removed.", body = ErrorBody),
    )
)]
pub(super) async fn delete(
    state: web::Data<State>,
    id: web::Path<u64>,
) -> Result<Json<Deleted>, ApiError> {
    let id = id.into_inner();
    service::remove(&state, id).await?;
    Ok(Json(Deleted { deleted: id }))
}

/// The images nearest to an indexed one (itself left out).
#[utoipa::path(
    get,
    path = "/images/{id}/similar",
    tag = "images",
    params(("id" = u64, Path, description = "Image id."), SearchParams),
    responses(
        (status = 200, description = "Nearest images first, the image itself left out, none past `max_distance`.", body = SearchAnswer),
        (status = 400, description = "Bad parameters.", body = ErrorBody),
        (status = 404, description = "No such image.", body = ErrorBody),
    )
)]
pub(super) async fn similar(
    state: web::Data<State>,
    id: web::Path<u64>,
    query: web::Query<SearchParams>,
) -> Result<Json<SearchAnswer>, ApiError> {
    let start = Instant::now();
    let id = id.into_inner();
    let (k, opts) = query.resolve(&state.config)?;
    let serving = state.serving();
    let model = serving.model_sha256();
    let vector = service::vector_of(serving.clone(), id).await?;
    let results = service::search(&state, serving, vec![vector], k, opts, Some(id)).await?;
    Ok(Json(SearchAnswer {
        results: results.into_iter().next().unwrap_or_default(),
        model,
        took_ms: ms_since(start),
    }))
}

/// The image file, for thumbnails.
#[utoipa::path(
    get,
    path = "/images/{id}/file",
    tag = "images",
    params(("id" = u64, Path, description = "Image id.")),
    responses(
        (status = 200, description = "The image bytes, as indexed.", content((RawImage = "image/*"), (RawImage = "application/octet-stream"))),
        (status = 404, description = "No such image, or its file is gone or changed.", body = ErrorBody),
    )
)]
pub(super) async fn file(
    state: web::Data<State>,
    id: web::Path<u64>,
) -> Result<HttpResponse, ApiError> {
    let (bytes, mime) = service::file(&state, id.into_inner()).await?;
    Ok(HttpResponse::Ok()
        .content_type(mime)
        .insert_header(("Cache-Control", "private, max-age=3600"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(bytes))
}

/// Smallest thumbnail side.
pub const MIN_THUMB: u32 = 16;
/// Largest thumbnail side: past it, `GET /images/{id}/file` is the honest request.
pub const MAX_THUMB: u32 = 1024;
/// Thumbnail side without `size`: the page's grid.
pub const DEFAULT_THUMB: u32 = 256;

/// Query of `GET /images/{id}/thumb`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ThumbParams {
    /// Longest side in pixels (default 256), served at the largest of 16, 32, 64, …, 1024 not
    /// above it, so one image has at most seven thumbnails to make; a smaller image is served
    /// at its own size.
    #[param(minimum = 16, maximum = 1024)]
    pub size: Option<u32>,
}

/// A JPEG thumbnail, upright, for result grids: kilobytes where `/file` sends the whole photo.
/// Made once per file and size, then served from memory; the `ETag` is the file's sha256 and
/// size, so a browser revalidates with `If-None-Match` and gets 304.
#[utoipa::path(
    get,
    path = "/images/{id}/thumb",
    tag = "images",
    params(("id" = u64, Path, description = "Image id."), ThumbParams),
    responses(
        (status = 200, description = "JPEG, at most `size` pixels on its long side (`size` rounded down to a power of two).", content((RawImage = "image/jpeg"))),
        (status = 304, description = "The `If-None-Match` tag is current."),
        (status = 400, description = "`size` outside 16..=1024.", body = ErrorBody),
        (status = 404, description = "No such image, or its file is gone or changed.", body = ErrorBody),
    )
)]
pub(super) async fn thumb(
    state: web::Data<State>,
    req: HttpRequest,
    id: web::Path<u64>,
    query: web::Query<ThumbParams>,
) -> Result<HttpResponse, ApiError> {
    let size = query.size.unwrap_or(DEFAULT_THUMB);
    if !(MIN_THUMB..=MAX_THUMB).contains(&size) {
        return Err(ApiError::BadRequest(format!(
            "size {size} is outside {MIN_THUMB}..={MAX_THUMB}"
        )));
    }
    // Powers of two only: a client cycling through every size cannot make the server decode
    // a photo a thousand times over, nor crowd the cache.
    let size = 1u32 << size.ilog2();
    let (bytes, sha256) = service::thumb(&state, id.into_inner(), size).await?;
    let etag = format!("\"{}-{size}\"", &sha256[..sha256.len().min(32)]);
    let fresh = req
        .headers()
        .get(actix_web::http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header(("ETag", etag))
        .insert_header(("Cache-Control", "private, max-age=3600"))
        .insert_header(("X-Content-Type-Options", "nosniff"));
    if fresh {
        return Ok(res.finish());
    }
    Ok(res.content_type("image/jpeg").body(bytes))
}
