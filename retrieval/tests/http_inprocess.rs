//! The HTTP service driven in-process with `actix_web::test`: the same application the
//! listener runs (`server::app`), over a real index of real PNGs embedded by the bundled ONNX
//! model on tract, without spawning a binary or opening a socket. The spawned-binary tests in
//! `tests/integration/http.rs` cover the listener, signals and the process around it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::test;
use htg_retrieval::index::CreateOptions;
use htg_retrieval::ingest::{index_folder, IngestOptions};
use htg_retrieval::server::{self, Config};
use htg_retrieval::{Embedder, LocalIndex, TractEmbedder};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// An index of the fixture images in a temporary directory, and the model that built it.
fn fixture_index(dir: &Path) -> (LocalIndex, Arc<dyn Embedder>) {
    let model = repo().join("models/default.onnx");
    let embedder = TractEmbedder::load(&model).expect("bundled model loads on tract");
    let index = LocalIndex::create(
        dir,
        embedder.model_id().clone(),
        Some(model.display().to_string()),
        &CreateOptions::default(),
    )
    .unwrap();
    let report = index_folder(
        &index,
        &embedder,
        &repo().join("tests/fixtures/images"),
        &IngestOptions::default(),
        &|_, _| {},
    )
    .unwrap();
    assert!(
        report.embedded > 10,
        "fixture images were indexed: {report:?}"
    );
    (index, Arc::new(embedder))
}

fn png(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/fixtures/images").join(name)).unwrap()
}

#[actix_web::test]
async fn search_and_error_shapes_in_process() {
    let tmp = tempfile::tempdir().unwrap();
    let (index, embedder) = fixture_index(tmp.path());
    let uploads = tmp.path().join("uploads");
    let state = server::new_state(Config::default(), Arc::new(index), embedder, uploads);
    let app = test::init_service(server::app(state)).await;

    // A raw PNG finds itself first (distance ~0): the whole path decode → embed → search.
    let req = test::TestRequest::post()
        .uri("/search?k=3")
        .insert_header(("content-type", "image/png"))
        .set_payload(png("1f49c-google.png"))
        .to_request();
    let res = test::call_service(&app, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = test::read_body_json(res).await;
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{body}");
    assert!(
        results[0]["path"]
            .as_str()
            .unwrap()
            .ends_with("1f49c-google.png"),
        "{body}"
    );
    assert!(results[0]["distance"].as_f64().unwrap() < 1e-4, "{body}");

    // Bytes that are not an image: 4xx in the API's error shape, never a 5xx.
    let req = test::TestRequest::post()
        .uri("/search")
        .insert_header(("content-type", "image/png"))
        .set_payload(&b"not a png at all"[..])
        .to_request();
    let res = test::call_service(&app, req).await;
    assert!(res.status().is_client_error(), "{}", res.status());
    let body: Value = test::read_body_json(res).await;
    assert_eq!(body["error"]["status"], res_status_code(&body));
    assert!(
        body["error"]["message"].as_str().unwrap().len() > 5,
        "{body}"
    );

    // An out-of-range ef is refused with 400 and says which range.
    let req = test::TestRequest::post()
        .uri("/search?ef=0")
        .insert_header(("content-type", "image/png"))
        .set_payload(png("1f49c-google.png"))
        .to_request();
    let res = test::call_service(&app, req).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = test::read_body_json(res).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ef = 0"),
        "{body}"
    );

    // Unknown routes and wrong methods answer in the same shape.
    let res = test::call_service(&app, test::TestRequest::get().uri("/nope").to_request()).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = test::call_service(
        &app,
        test::TestRequest::delete().uri("/search").to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    // RFC 9110: a 405 lists the resource's methods in `Allow`.
    assert_eq!(res.headers().get("allow").unwrap(), "POST");
    let body: Value = test::read_body_json(res).await;
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    for (method, uri, allow) in [
        (actix_web::http::Method::GET, "/images/1", "DELETE"),
        (actix_web::http::Method::PUT, "/stats", "GET"),
        (actix_web::http::Method::POST, "/images/1/similar", "GET"),
        (actix_web::http::Method::GET, "/images", "POST"),
    ] {
        let res = test::call_service(
            &app,
            test::TestRequest::default()
                .method(method.clone())
                .uri(uri)
                .to_request(),
        )
        .await;
        assert_eq!(
            res.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}"
        );
        assert_eq!(res.headers().get("allow").unwrap(), allow, "{method} {uri}");
    }

    // Every endpoint `routes::configure` mounts answers its method (never "no route" or 405).
    for e in server::routes::endpoints() {
        let uri = e.path.replace("{id}", "999999");
        let res = test::call_service(
            &app,
            test::TestRequest::default()
                .method(e.method.clone())
                .uri(&uri)
                .to_request(),
        )
        .await;
        let status = res.status();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{} {uri}", e.method);
        let body = test::read_body(res).await;
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("no route"),
            "{} {uri}: {status} {text}",
            e.method
        );
        // 503 only from /readyz: this state never listened, so it is not ready.
        assert!(
            !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
            "{} {uri}: {status} {text}",
            e.method
        );
    }

    // The OpenAPI document is served, generated from the handlers.
    let res = test::call_service(
        &app,
        test::TestRequest::get().uri("/openapi.json").to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let api: Value = test::read_body_json(res).await;
    assert!(
        api["paths"]["/images/{id}/similar"]["get"].is_object(),
        "{api}"
    );

    // Stats count what the index holds.
    let res = test::call_service(&app, test::TestRequest::get().uri("/stats").to_request()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let stats: Value = test::read_body_json(res).await;
    let count = stats["count"].as_u64().expect("stats has a count");
    assert!(count > 10, "{stats}");
}

fn res_status_code(body: &Value) -> Value {
    // The status inside the body must be a 4xx number.
    let s = body["error"]["status"].as_u64().unwrap_or(0);
    assert!((400..500).contains(&s), "{body}");
    body["error"]["status"].clone()
}
