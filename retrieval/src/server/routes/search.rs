//! `POST /search` (an image), `POST /search/vector` and `POST /search/batch`.

use std::time::Instant;

use actix_web::web::{self, Bytes, Json};
use actix_web::{HttpMessage, HttpRequest};
use serde::{Deserialize, Serialize};

use super::resource;
use crate::server::error::ApiError;
use crate::server::input::{parse_json, read_body, read_typed, Body, Part, SearchParams};
use crate::server::service::{self, check_finite, HitOut};
use crate::server::{ms_since, State};

/// Mounts the resources.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/search").route(web::post().to(search_image)))
        .service(resource("/search/vector").route(web::post().to(search_vector)))
        .service(resource("/search/batch").route(web::post().to(search_batch)));
}

/// Answer of a single search.
#[derive(Serialize)]
pub struct SearchAnswer {
    /// Nearest first.
    pub results: Vec<HitOut>,
    /// Time spent in the server.
    pub took_ms: f64,
}

/// Answer of a batch search: one result list per query, in order.
#[derive(Serialize)]
struct BatchAnswer {
    queries: Vec<QueryAnswer>,
    took_ms: f64,
}

#[derive(Serialize)]
struct QueryAnswer {
    results: Vec<HitOut>,
}

/// The image parts of a form; other fields are refused so that typos do not pass silently.
pub fn images_of(parts: Vec<Part>, allowed_text: &[&str]) -> Result<Vec<Bytes>, ApiError> {
    let mut images = Vec::new();
    for p in parts {
        match p.name.as_str() {
            "image" => images.push(p.data),
            n if allowed_text.contains(&n) => {}
            n => {
                return Err(ApiError::BadRequest(format!(
                    "unexpected form field `{n}` (expected `image`)"
                )))
            }
        }
    }
    if images.is_empty() {
        return Err(ApiError::BadRequest("the form has no `image` field".into()));
    }
    Ok(images)
}

/// The image in the body (multipart `image` field or a raw image body).
async fn search_image(
    state: web::Data<State>,
    req: HttpRequest,
    payload: web::Payload,
    query: web::Query<SearchParams>,
) -> Result<Json<SearchAnswer>, ApiError> {
    let start = Instant::now();
    let (k, opts) = query.resolve(&state.config)?;
    let image = match read_typed(&req, payload, &state.config, false).await? {
        Body::Image(bytes) => bytes,
        Body::Form(parts) => {
            let mut images = images_of(parts, &[])?;
            if images.len() != 1 {
                return Err(ApiError::BadRequest(format!(
                    "send one `image` field (got {}); use /search/batch for several",
                    images.len()
                )));
            }
            images.remove(0)
        }
        Body::Json(_) => return Err(ApiError::BadRequest("send an image, not JSON".into())),
    };
    let vectors = service::embed(&state, vec![image]).await?;
    let results = service::search(&state, vectors, k, opts, None).await?;
    Ok(Json(SearchAnswer {
        results: results.into_iter().next().unwrap_or_default(),
        took_ms: ms_since(start),
    }))
}

/// Body of `POST /search/vector`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorRequest {
    vector: Vec<f32>,
    k: Option<usize>,
    ef: Option<usize>,
    exact: Option<bool>,
    label: Option<String>,
    path_prefix: Option<String>,
}

/// Body of `POST /search/batch` as JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    vectors: Vec<Vec<f32>>,
    k: Option<usize>,
    ef: Option<usize>,
    exact: Option<bool>,
    label: Option<String>,
    path_prefix: Option<String>,
}

/// Fields given in a JSON body win over the query string.
fn merge(
    query: &SearchParams,
    k: Option<usize>,
    ef: Option<usize>,
    exact: Option<bool>,
    label: Option<String>,
    path_prefix: Option<String>,
) -> SearchParams {
    SearchParams {
        k: k.or(query.k),
        ef: ef.or(query.ef),
        exact: exact.or(query.exact),
        label: label.or_else(|| query.label.clone()),
        path_prefix: path_prefix.or_else(|| query.path_prefix.clone()),
    }
}

/// JSON bodies must say so (or say nothing).
fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    match req.mime_type() {
        Ok(None) => Ok(()),
        Ok(Some(m)) if m.essence_str() == "application/json" => Ok(()),
        Ok(Some(m)) => Err(ApiError::UnsupportedMediaType {
            got: m.essence_str().to_string(),
            expected: "send application/json",
        }),
        Err(_) => Err(ApiError::UnsupportedMediaType {
            got: "unparsable".into(),
            expected: "send application/json",
        }),
    }
}

/// A query vector (dimension checked by the index: 422 when wrong).
async fn search_vector(
    state: web::Data<State>,
    req: HttpRequest,
    payload: web::Payload,
    query: web::Query<SearchParams>,
) -> Result<Json<SearchAnswer>, ApiError> {
    let start = Instant::now();
    require_json(&req)?;
    let body = read_body(&req, payload, state.config.max_upload_bytes).await?;
    let r: VectorRequest = parse_json(&body)?;
    let (k, opts) =
        merge(&query, r.k, r.ef, r.exact, r.label, r.path_prefix).resolve(&state.config)?;
    check_finite(&r.vector)?;
    let results = service::search(&state, vec![r.vector], k, opts, None).await?;
    Ok(Json(SearchAnswer {
        results: results.into_iter().next().unwrap_or_default(),
        took_ms: ms_since(start),
    }))
}

/// Several queries: JSON `{"vectors": [...]}` or a form with several `image` fields.
async fn search_batch(
    state: web::Data<State>,
    req: HttpRequest,
    payload: web::Payload,
    query: web::Query<SearchParams>,
) -> Result<Json<BatchAnswer>, ApiError> {
    let start = Instant::now();
    let (vectors, params) = match read_typed(&req, payload, &state.config, true).await? {
        Body::Json(body) => {
            let r: BatchRequest = parse_json(&body)?;
            for v in &r.vectors {
                check_finite(v)?;
            }
            let params = merge(&query, r.k, r.ef, r.exact, r.label, r.path_prefix);
            (r.vectors, params)
        }
        Body::Form(parts) => {
            let images = images_of(parts, &[])?;
            check_count(images.len(), &state)?;
            query.resolve(&state.config)?;
            let vectors = service::embed(&state, images).await?;
            (vectors, query.into_inner())
        }
        Body::Image(_) => {
            return Err(ApiError::BadRequest(
                "send several images as multipart `image` fields, or JSON vectors".into(),
            ))
        }
    };
    check_count(vectors.len(), &state)?;
    let (k, opts) = params.resolve(&state.config)?;
    let results = service::search(&state, vectors, k, opts, None).await?;
    Ok(Json(BatchAnswer {
        queries: results
            .into_iter()
            .map(|results| QueryAnswer { results })
            .collect(),
        took_ms: ms_since(start),
    }))
}

fn check_count(n: usize, state: &State) -> Result<(), ApiError> {
    let max = state.config.max_batch_queries;
    if n == 0 || n > max {
        return Err(ApiError::BadRequest(format!(
            "a batch holds 1..={max} queries, got {n}"
        )));
    }
    Ok(())
}
