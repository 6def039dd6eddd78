//! `POST /search` (an image), `POST /search/vector` and `POST /search/batch`.

use std::time::Instant;

use actix_web::web::{self, Bytes, Json};
use actix_web::{HttpMessage, HttpRequest};
use serde::{Deserialize, Serialize};

use utoipa::ToSchema;

use super::Endpoint;
use crate::server::error::{ApiError, ErrorBody};
use crate::server::input::{
    parse_json, read_body, read_typed, BatchForm, Body, ImageForm, Part, RawImage, SearchParams,
};
use crate::server::service::{self, check_finite, HitOut};
use crate::server::{ms_since, Config, State};

/// The resources' endpoints.
pub fn endpoints() -> Vec<Endpoint> {
    [
        Endpoint::documented::<__path_search_image>(|| web::to(search_image)),
        Endpoint::documented::<__path_search_vector>(|| web::to(search_vector)),
        Endpoint::documented::<__path_search_batch>(|| web::to(search_batch)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Answer of a single search.
#[derive(Serialize, ToSchema)]
pub struct SearchAnswer {
    /// Nearest first.
    pub results: Vec<HitOut>,
    /// sha256 of the model that embedded the query and the images (changes with a model
    /// swap, `POST /admin/reindex`).
    pub model: String,
    /// Time spent in the server.
    pub took_ms: f64,
}

/// Answer of a batch search: one result list per query, in order.
#[derive(Serialize, ToSchema)]
pub struct BatchAnswer {
    /// One entry per query, in the order sent.
    pub queries: Vec<QueryAnswer>,
    /// sha256 of the model whose vectors were searched.
    pub model: String,
    /// Time spent in the server.
    pub took_ms: f64,
}

/// The results of one query of a batch.
#[derive(Serialize, ToSchema)]
pub struct QueryAnswer {
    /// Nearest first.
    pub results: Vec<HitOut>,
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

/// The image in the body (multipart `image` field or a raw image body). The bytes must decode
/// as PNG, JPEG, GIF, BMP, WebP or TIFF, which no schema can say: other bytes answer 400
/// `bad_image`.
#[utoipa::path(
    post,
    path = "/search",
    tag = "search",
    params(SearchParams),
    request_body(
        description = "One image: a raw `image/*` (or `application/octet-stream`) body, or a form with one `image` field.",
        content(
            (RawImage = "image/*"),
            (RawImage = "application/octet-stream"),
            (ImageForm = "multipart/form-data"),
        )
    ),
    responses(
        (status = 200, description = "Nearest images first, none past `max_distance` (an empty list when none is that close).", body = SearchAnswer),
        (status = 400, description = "Undecodable image (`bad_image`), above the pixel limit (`image_too_large`), bad parameters or form (`bad_request`).", body = ErrorBody),
        (status = 413, description = "Body above `max_upload_bytes`.", body = ErrorBody),
        (status = 415, description = "Not an image or a form.", body = ErrorBody),
        (status = 503, description = "Inference queue full (`Retry-After`).", body = ErrorBody),
    )
)]
pub(super) async fn search_image(
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
    let serving = state.serving();
    let vectors = service::embed(&state, &serving, vec![image]).await?;
    let model = serving.model_sha256();
    let results = service::search(&state, serving, vectors, k, opts, None).await?;
    Ok(Json(SearchAnswer {
        results: results.into_iter().next().unwrap_or_default(),
        model,
        took_ms: ms_since(start),
    }))
}

/// Body of `POST /search/vector`; its fields win over the query string's.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VectorRequest {
    /// The query, of the index's dimension (`/stats` `dimension`; 422 otherwise).
    #[schema(min_items = 1)]
    pub vector: Vec<f32>,
    /// Neighbours wanted (1..=`max_k`).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "integer")]
    pub k: Option<usize>,
    /// HNSW candidate list size.
    #[schema(minimum = 1, maximum = 10_000)]
    #[serde(default, deserialize_with = "integer")]
    pub ef: Option<usize>,
    /// Brute force instead of HNSW.
    pub exact: Option<bool>,
    /// Only images with this label.
    #[schema(
        min_length = 1,
        max_length = 4096,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub label: Option<String>,
    /// Only images whose path starts with this.
    #[schema(
        min_length = 1,
        max_length = 4096,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub path_prefix: Option<String>,
    /// Only images at most this far from the query (squared L2 between unit vectors).
    #[schema(minimum = 0.0, maximum = 4.0)]
    pub max_distance: Option<f32>,
}

/// Body of `POST /search/batch` as JSON; its fields win over the query string's.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The queries (1..=`max_batch_queries`), each of the index's dimension.
    #[schema(min_items = 1, max_items = 4096)]
    pub vectors: Vec<QueryVector>,
    /// Neighbours wanted (1..=`max_k`).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "integer")]
    pub k: Option<usize>,
    /// HNSW candidate list size.
    #[schema(minimum = 1, maximum = 10_000)]
    #[serde(default, deserialize_with = "integer")]
    pub ef: Option<usize>,
    /// Brute force instead of HNSW.
    pub exact: Option<bool>,
    /// Only images with this label.
    #[schema(
        min_length = 1,
        max_length = 4096,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub label: Option<String>,
    /// Only images whose path starts with this.
    #[schema(
        min_length = 1,
        max_length = 4096,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub path_prefix: Option<String>,
    /// Only images at most this far from the query (squared L2 between unit vectors).
    #[schema(minimum = 0.0, maximum = 4.0)]
    pub max_distance: Option<f32>,
}

/// An optional non-negative integer from JSON, where `543.0` is an integer as JSON Schema
/// counts (and so as the OpenAPI document's `integer` promises), which serde's `usize` refuses.
fn integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=9.0e15).contains(f))
                .map(|f| f as u64)
        })
        .and_then(|u| usize::try_from(u).ok())
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!("expected a non-negative integer, got {n}"))
        })
}

/// One query vector of a batch, of the index's dimension.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct QueryVector(pub Vec<f32>);

/// Written out because utoipa's derive takes no `min_items` on a newtype.
impl utoipa::PartialSchema for QueryVector {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
        ArrayBuilder::new()
            .items(ObjectBuilder::new().schema_type(Type::Number).format(Some(
                utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Float),
            )))
            .min_items(Some(1))
            .into()
    }
}

impl ToSchema for QueryVector {}

/// Fields given in a JSON body (`body`) win over the query string.
/// The query string is checked on its own first: a bad value there is refused even when the
/// body gives the same parameter (which wins).
fn merge(
    query: &SearchParams,
    body: SearchParams,
    config: &Config,
) -> Result<SearchParams, ApiError> {
    query.resolve(config)?;
    Ok(SearchParams {
        k: body.k.or(query.k),
        ef: body.ef.or(query.ef),
        exact: body.exact.or(query.exact),
        label: body.label.or_else(|| query.label.clone()),
        path_prefix: body.path_prefix.or_else(|| query.path_prefix.clone()),
        max_distance: body.max_distance.or(query.max_distance),
    })
}

/// JSON bodies must say so (or say nothing).
pub(super) fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
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
#[utoipa::path(
    post,
    path = "/search/vector",
    tag = "search",
    params(SearchParams),
    request_body(content = VectorRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Nearest images first, none past `max_distance` (an empty list when none is that close).", body = SearchAnswer),
        (status = 400, description = "Malformed JSON, unknown fields or bad parameters.", body = ErrorBody),
        (status = 413, description = "Body above `max_upload_bytes`.", body = ErrorBody),
        (status = 415, description = "Not JSON.", body = ErrorBody),
        (status = 422, description = "Wrong dimension (`wrong_dimension`) or non-finite values (`invalid_vector`).", body = ErrorBody),
    )
)]
pub(super) async fn search_vector(
    state: web::Data<State>,
    req: HttpRequest,
    payload: web::Payload,
    query: web::Query<SearchParams>,
) -> Result<Json<SearchAnswer>, ApiError> {
    let start = Instant::now();
    require_json(&req)?;
    let body = read_body(&req, payload, state.config.max_upload_bytes).await?;
    let r: VectorRequest = parse_json(&body)?;
    let body = SearchParams {
        k: r.k,
        ef: r.ef,
        exact: r.exact,
        label: r.label,
        path_prefix: r.path_prefix,
        max_distance: r.max_distance,
    };
    let (k, opts) = merge(&query, body, &state.config)?.resolve(&state.config)?;
    check_finite(&r.vector)?;
    let serving = state.serving();
    let model = serving.model_sha256();
    let results = service::search(&state, serving, vec![r.vector], k, opts, None).await?;
    Ok(Json(SearchAnswer {
        results: results.into_iter().next().unwrap_or_default(),
        model,
        took_ms: ms_since(start),
    }))
}

/// Several queries: JSON `{"vectors": [...]}` or a form with several `image` fields. Each
/// image must decode (PNG, JPEG, GIF, BMP, WebP or TIFF), which no schema can say: other bytes
/// answer 400 `bad_image`.
#[utoipa::path(
    post,
    path = "/search/batch",
    tag = "search",
    params(SearchParams),
    request_body(
        description = "JSON vectors, or a form of 1..=`max_batch_queries` `image` fields.",
        content(
            (BatchRequest = "application/json"),
            (BatchForm = "multipart/form-data"),
        )
    ),
    responses(
        (status = 200, description = "One result list per query, in order, each without hits past `max_distance`.", body = BatchAnswer),
        (status = 400, description = "Malformed body or parameters, too many queries, or an undecodable image (`bad_image`, prefixed `image N: `).", body = ErrorBody),
        (status = 413, description = "Body above `max_upload_bytes`.", body = ErrorBody),
        (status = 415, description = "Neither JSON nor a form.", body = ErrorBody),
        (status = 422, description = "Wrong dimension or non-finite values.", body = ErrorBody),
        (status = 503, description = "Inference queue full (`Retry-After`).", body = ErrorBody),
    )
)]
pub(super) async fn search_batch(
    state: web::Data<State>,
    req: HttpRequest,
    payload: web::Payload,
    query: web::Query<SearchParams>,
) -> Result<Json<BatchAnswer>, ApiError> {
    let start = Instant::now();
    let serving = state.serving();
    let (vectors, params) = match read_typed(&req, payload, &state.config, true).await? {
        Body::Json(body) => {
            let r: BatchRequest = parse_json(&body)?;
            let vectors: Vec<Vec<f32>> = r.vectors.into_iter().map(|v| v.0).collect();
            for v in &vectors {
                check_finite(v)?;
            }
            let body = SearchParams {
                k: r.k,
                ef: r.ef,
                exact: r.exact,
                label: r.label,
                path_prefix: r.path_prefix,
                max_distance: r.max_distance,
            };
            let params = merge(&query, body, &state.config)?;
            (vectors, params)
        }
        Body::Form(parts) => {
            let images = images_of(parts, &[])?;
            check_count(images.len(), &state)?;
            query.resolve(&state.config)?;
            let vectors = service::embed(&state, &serving, images).await?;
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
    let model = serving.model_sha256();
    let results = service::search(&state, serving, vectors, k, opts, None).await?;
    Ok(Json(BatchAnswer {
        queries: results
            .into_iter()
            .map(|results| QueryAnswer { results })
            .collect(),
        model,
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
