//! `GET /openapi.json`: the hand-written OpenAPI 3 description of this API.

use actix_web::{web, HttpResponse};

use super::resource;

/// The document, embedded in the binary.
pub const OPENAPI: &str = include_str!("../static/openapi.json");

/// Mounts the resource.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/openapi.json").route(web::get().to(openapi)));
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_valid_json_with_every_route() {
        let v: serde_json::Value = serde_json::from_str(super::OPENAPI).expect("valid JSON");
        assert!(v["openapi"].as_str().unwrap().starts_with("3."));
        for path in [
            "/search",
            "/search/vector",
            "/search/batch",
            "/images",
            "/images/{id}",
            "/images/{id}/similar",
            "/images/{id}/file",
            "/stats",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/",
        ] {
            assert!(v["paths"][path].is_object(), "{path} is not documented");
        }
    }
}
