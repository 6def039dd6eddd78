//! `GET /duplicates`: the index's near-duplicate and exact-copy groups, a page at a time
//! ([`crate::duplicates`] finds them; the rule is stated there).

use std::time::Instant;

use actix_web::web::{self, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Endpoint;
use crate::duplicates::{self, DuplicateOptions, Group};
use crate::server::error::{ApiError, ErrorBody};
use crate::server::{ms_since, State};
use crate::IndexError;

/// The resource's endpoint.
pub fn endpoints() -> Vec<Endpoint> {
    Endpoint::documented::<__path_list>(|| web::to(list))
}

/// Largest `page`: far past any index's last page, and small enough to state in the schema.
pub const MAX_PAGE: usize = 1_000_000;
/// Largest `per_page`.
pub const MAX_PER_PAGE: usize = 100;
/// Largest `neighbours`.
pub const MAX_NEIGHBOURS: usize = 100;

/// Query of `GET /duplicates`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DuplicatesParams {
    /// Link images at most this far apart (squared L2 between unit vectors, 0..=4). Default:
    /// the served model's calibrated value (`default_max_distance` in the answer; see
    /// models/README.md), where it has one.
    #[param(minimum = 0.0, maximum = 4.0)]
    pub max_distance: Option<f32>,
    /// Page of groups, from 1 (default 1); a page past the last answers no groups.
    #[param(minimum = 1, maximum = 1_000_000)]
    pub page: Option<usize>,
    /// Groups per page (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub per_page: Option<usize>,
    /// Neighbours searched per image (default 10).
    #[param(minimum = 1, maximum = 100)]
    pub neighbours: Option<usize>,
}

/// Answer of `GET /duplicates`.
#[derive(Serialize, ToSchema)]
pub struct DuplicatesAnswer {
    /// The distance used.
    pub max_distance: f32,
    /// The served model's calibrated distance, if it has one.
    pub default_max_distance: Option<f32>,
    /// Neighbours searched per image.
    pub neighbours: usize,
    /// Images in the index.
    pub images: usize,
    /// Groups of byte-identical files only (`kind: exact`).
    pub exact_groups: usize,
    /// Groups holding different files (`kind: near`).
    pub near_groups: usize,
    /// This page.
    pub page: usize,
    /// Groups per page.
    pub per_page: usize,
    /// Pages in all (0 when there are no groups).
    pub pages: usize,
    /// This page's groups, most members first; each lists its representative (the largest
    /// image) first.
    pub groups: Vec<Group>,
    /// sha256 of the model whose vectors were compared.
    pub model: String,
    /// Time spent in the server.
    pub took_ms: f64,
}

fn in_range(name: &str, v: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match v.unwrap_or(default) {
        n if (1..=max).contains(&n) => Ok(n),
        n => Err(ApiError::BadRequest(format!(
            "{name} = {n} is outside 1..={max}"
        ))),
    }
}

/// Every group of the index, computed on each call (one k-NN search per distinct image,
/// O(N · k)), then paged.
#[utoipa::path(
    get,
    path = "/duplicates",
    tag = "images",
    params(DuplicatesParams),
    responses(
        (status = 200, description = "Groups of near-duplicates and of exact copies (one sha256), a page of them.", body = DuplicatesAnswer),
        (status = 400, description = "Bad parameters, or no `max_distance` for a model without a calibrated one.", body = ErrorBody),
    )
)]
pub(super) async fn list(
    state: web::Data<State>,
    query: web::Query<DuplicatesParams>,
) -> Result<Json<DuplicatesAnswer>, ApiError> {
    let start = Instant::now();
    let page = in_range("page", query.page, 1, MAX_PAGE)?;
    let per_page = in_range("per_page", query.per_page, 20, MAX_PER_PAGE)?;
    let neighbours = in_range(
        "neighbours",
        query.neighbours,
        duplicates::DEFAULT_NEIGHBOURS,
        MAX_NEIGHBOURS,
    )?;
    let serving = state.serving();
    let model = serving.model_sha256();
    let default_max_distance = (state.duplicate_distance)(&model);
    let max_distance = query.max_distance.or(default_max_distance).ok_or_else(|| {
        ApiError::BadRequest(
            "give max_distance: the served model has no calibrated duplicate distance".into(),
        )
    })?;
    crate::index::check_max_distance(max_distance).map_err(|e| match e {
        IndexError::Param(m) => ApiError::BadRequest(m),
        other => ApiError::Index(other),
    })?;
    let opts = DuplicateOptions {
        max_distance,
        neighbours,
        ef: None,
        uploads: Some(state.uploads.clone()),
    };
    let report =
        web::block(move || duplicates::find(serving.index.as_ref(), &opts, &|_, _| {})).await??;
    let total = report.groups.len();
    let groups = report
        .groups
        .into_iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .collect();
    Ok(Json(DuplicatesAnswer {
        max_distance,
        default_max_distance,
        neighbours,
        images: report.images,
        exact_groups: report.exact_groups,
        near_groups: report.near_groups,
        page,
        per_page,
        pages: total.div_ceil(per_page),
        groups,
        model,
        took_ms: ms_since(start),
    }))
}
