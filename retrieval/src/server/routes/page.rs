//! `GET /`: the search page, a single HTML file embedded in the binary (no CDN, no build step).

use actix_web::{web, HttpResponse};

use super::Endpoint;

/// The page.
const PAGE: &str = include_str!("../static/index.html");

/// The resource's endpoint.
pub fn endpoints() -> Vec<Endpoint> {
    Endpoint::documented::<__path_page>(|| web::to(page))
}

/// The search page.
#[utoipa::path(
    get,
    path = "/",
    tag = "page",
    responses((status = 200, description = "The search page.", body = String, content_type = "text/html"))
)]
pub(super) async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        // Everything comes from this origin: the policy makes a stray CDN link fail loudly.
        .insert_header((
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; \
             script-src 'self' 'unsafe-inline'",
        ))
        .body(PAGE)
}
