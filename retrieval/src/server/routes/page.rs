//! `GET /`: the search page, a single HTML file embedded in the binary (no CDN, no build step).

use actix_web::{web, HttpResponse};

use super::resource;

/// The page.
const PAGE: &str = include_str!("../static/index.html");

/// Mounts the resource.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/").route(web::get().to(page)));
}

async fn page() -> HttpResponse {
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
