//! One file per resource; [`configure`] mounts them all.
//!
//! Handlers only parse the request, call [`super::service`] and shape the answer; errors go
//! through [`super::error::ApiError`], the single status mapping.
//!
//! Each module lists its [`Endpoint`]s, and an endpoint takes its path and method from the
//! handler's `#[utoipa::path]` attribute: what is mounted is what the OpenAPI document
//! describes, and a test checks that every endpoint is in the document.

pub mod admin;
pub mod duplicates;
pub mod health;
pub mod images;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod search;
pub mod snapshots;
pub mod stats;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse, Route};

use super::error::ApiError;

/// One operation: a path, a method and the handler that answers it.
pub struct Endpoint {
    /// The actix path pattern (`/images/{id}`), the same string OpenAPI uses.
    pub path: String,
    /// The HTTP method.
    pub method: Method,
    /// The handler, as an unguarded route (the method guard is added when mounting).
    route: fn() -> Route,
}

impl Endpoint {
    /// The endpoint documented by `P` (a `#[utoipa::path]` handler's generated type), answered
    /// by `route`; one per method the attribute names.
    pub fn documented<P: utoipa::Path>(route: fn() -> Route) -> Vec<Endpoint> {
        P::methods()
            .into_iter()
            .map(|m| Endpoint {
                path: P::path(),
                method: method_of(&m),
                route,
            })
            .collect()
    }
}

fn method_of(m: &utoipa::openapi::path::HttpMethod) -> Method {
    use utoipa::openapi::path::HttpMethod as H;
    match m {
        H::Get => Method::GET,
        H::Post => Method::POST,
        H::Put => Method::PUT,
        H::Delete => Method::DELETE,
        H::Options => Method::OPTIONS,
        H::Head => Method::HEAD,
        H::Patch => Method::PATCH,
        H::Trace => Method::TRACE,
    }
}

/// Every endpoint of the API, module by module.
pub fn endpoints() -> Vec<Endpoint> {
    [
        search::endpoints(),
        images::endpoints(),
        duplicates::endpoints(),
        stats::endpoints(),
        health::endpoints(),
        metrics::endpoints(),
        openapi::endpoints(),
        page::endpoints(),
        snapshots::endpoints(),
        admin::endpoints(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Mounts every endpoint, one actix resource per path.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let all = endpoints();
    let mut paths: Vec<&str> = Vec::new();
    for e in &all {
        if !paths.contains(&e.path.as_str()) {
            paths.push(&e.path);
        }
    }
    for path in paths {
        let here: Vec<&Endpoint> = all.iter().filter(|e| e.path == path).collect();
        let methods: Vec<Method> = here.iter().map(|e| e.method.clone()).collect();
        let mut res = resource(path, &methods);
        for e in here {
            res = res.route((e.route)().method(e.method.clone()));
        }
        cfg.service(res);
    }
}

/// A resource whose unsupported methods answer 405 in the API's error shape, with the `Allow`
/// header listing `methods` (RFC 9110, section 15.5.6).
pub fn resource(path: &str, methods: &[Method]) -> actix_web::Resource {
    let allow = methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    web::resource(path).default_service(web::to(move |req: HttpRequest| {
        let allow = allow.clone();
        async move { method_not_allowed(req, allow) }
    }))
}

fn method_not_allowed(req: HttpRequest, allow: String) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed {
        method: req.method().to_string(),
        allow,
    })
}

/// Answer for paths no resource matches.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route {} {}",
        req.method(),
        req.path()
    )))
}
