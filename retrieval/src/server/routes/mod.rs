//! One file per resource; [`configure`] mounts them all.
//!
//! Handlers only parse the request, call [`super::service`] and shape the answer; errors go
//! through [`super::error::ApiError`], the single status mapping.

pub mod health;
pub mod images;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod search;
pub mod snapshots;
pub mod stats;

use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;

/// Mounts every resource.
pub fn configure(cfg: &mut web::ServiceConfig) {
    search::configure(cfg);
    images::configure(cfg);
    stats::configure(cfg);
    health::configure(cfg);
    metrics::configure(cfg);
    openapi::configure(cfg);
    page::configure(cfg);
    snapshots::configure(cfg);
}

/// A resource whose unsupported methods answer 405 in the API's error shape.
pub fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(req.method().to_string()))
}

/// Answer for paths no resource matches.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route {} {}",
        req.method(),
        req.path()
    )))
}
