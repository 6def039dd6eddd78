//! `POST /images`, `DELETE /images/{id}`, `GET /images/{id}/similar`, `GET /images/{id}/file`.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::web::{self, Json};
use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::json;

use super::resource;
use super::search::SearchAnswer;
use crate::server::error::ApiError;
use crate::server::input::{read_typed, Body, SearchParams};
use crate::server::service::{self, Added, NewImage};
use crate::server::{ms_since, State};

/// Mounts the resources.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/images").route(web::post().to(add)))
        .service(resource("/images/{id}").route(web::delete().to(delete)))
        .service(resource("/images/{id}/similar").route(web::get().to(similar)))
        .service(resource("/images/{id}/file").route(web::get().to(file)));
}

#[derive(Serialize)]
struct AddAnswer {
    added: Vec<Added>,
    took_ms: f64,
}

/// A form of `image` fields, with optional `label` (one, for all) and `path` (one per image,
/// in order). Answers 201 once the index is saved.
async fn add(
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
async fn delete(state: web::Data<State>, id: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    service::remove(&state, id).await?;
    Ok(HttpResponse::Ok().json(json!({ "deleted": id })))
}

/// The images nearest to an indexed one (itself left out).
async fn similar(
    state: web::Data<State>,
    id: web::Path<u64>,
    query: web::Query<SearchParams>,
) -> Result<Json<SearchAnswer>, ApiError> {
    let start = Instant::now();
    let id = id.into_inner();
    let (k, opts) = query.resolve(&state.config)?;
    let vector = service::vector_of(&state, id).await?;
    let results = service::search(&state, vec![vector], k, opts, Some(id)).await?;
    Ok(Json(SearchAnswer {
        results: results.into_iter().next().unwrap_or_default(),
        took_ms: ms_since(start),
    }))
}

/// The image file, for thumbnails.
async fn file(state: web::Data<State>, id: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    let (bytes, mime) = service::file(&state, id.into_inner()).await?;
    Ok(HttpResponse::Ok()
        .content_type(mime)
        .insert_header(("Cache-Control", "private, max-age=3600"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(bytes))
}
