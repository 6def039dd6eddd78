//! `GET /openapi.json`: the OpenAPI 3.1 description of this API, derived by `utoipa` from the
//! handlers' `#[utoipa::path]` attributes and the request and answer types, so it cannot
//! drift from the code.

use actix_web::web::{self, Json};
use serde_json::Value;
use utoipa::OpenApi;

use super::Endpoint;
use crate::server::{Config, State};
use crate::SearchIndex as _;

/// The API's document: every handler, and through them every schema.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "htg",
        description = "Similar-image search over an HNSW index of image embeddings. Every error answers `{\"error\": {\"status\", \"code\", \"message\"}}`; a wrong method answers 405 with an `Allow` header."
    ),
    paths(
        super::search::search_image,
        super::search::search_vector,
        super::search::search_batch,
        super::images::add,
        super::images::delete,
        super::images::similar,
        super::images::file,
        super::images::thumb,
        super::duplicates::list,
        super::stats::stats,
        super::health::healthz,
        super::health::readyz,
        super::metrics::metrics,
        openapi,
        super::page::page,
        super::snapshots::create,
        super::admin::reindex,
        super::admin::task,
    )
)]
pub struct ApiDoc;

/// The resource's endpoint.
pub fn endpoints() -> Vec<Endpoint> {
    Endpoint::documented::<__path_openapi>(|| web::to(openapi))
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    responses((status = 200, description = "The OpenAPI document.", body = Object, content_type = "application/json"))
)]
pub(super) async fn openapi(state: web::Data<State>) -> Json<Value> {
    Json(document(&state.config, state.serving().index.dim()))
}

/// [`ApiDoc`] with the limits this server runs with: `k` up to `max_k`, vectors of the
/// index's dimension, at most `max_batch_queries` queries or images. Those are configuration
/// and data, not types, so they are filled in here; everything else comes from the derive.
pub fn document(config: &Config, dim: usize) -> Value {
    let mut v = serde_json::to_value(ApiDoc::openapi()).expect("the document serialises");
    if let Some(paths) = v["paths"].as_object_mut() {
        for op in paths.values_mut().filter_map(Value::as_object_mut) {
            for op in op.values_mut() {
                // `get_mut`, not indexing: indexing a missing key would insert `null`, and
                // `parameters: null` is not a valid document.
                let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
                    continue;
                };
                for p in params.iter_mut().filter(|p| p["name"] == "k") {
                    p["schema"]["maximum"] = config.max_k.into();
                }
            }
        }
    }
    if !config.api_key.is_empty() {
        secure(&mut v, config);
    }
    let schemas = &mut v["components"]["schemas"];
    for name in ["VectorRequest", "BatchRequest"] {
        schemas[name]["properties"]["k"]["maximum"] = config.max_k.into();
    }
    let max = f64::from(crate::server::service::max_component(dim));
    for vector in ["/VectorRequest/properties/vector", "/QueryVector"] {
        if let Some(vector) = schemas.pointer_mut(vector) {
            vector["minItems"] = dim.into();
            vector["maxItems"] = dim.into();
            vector["items"]["minimum"] = (-max).into();
            vector["items"]["maximum"] = max.into();
        }
    }
    for (name, field) in [
        ("BatchRequest", "vectors"),
        ("BatchForm", "image"),
        ("AddForm", "image"),
    ] {
        schemas[name]["properties"][field]["maxItems"] = config.max_batch_queries.into();
    }
    v
}

/// With keys configured: the two ways to send a key as security schemes, and on every
/// operation that needs one its `security` and its 401 (and 403, for writes) answers, so
/// that clients and conformance tools know which operations are open.
fn secure(v: &mut Value, config: &Config) {
    use crate::server::auth::{access, Access, API_KEY_HEADER};
    use serde_json::json;
    v["components"]["securitySchemes"] = json!({
        "api_key": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER,
            "description": "`api_key` for every operation; `read_only_api_key` for reads."},
        "bearer": {"type": "http", "scheme": "bearer",
            "description": "The same keys as `Authorization: Bearer <key>`."},
    });
    let error = json!({"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}});
    let Some(paths) = v["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            let Ok(m) = actix_web::http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            else {
                continue;
            };
            let need = access(&m, path, !config.metrics_require_key);
            if need == Access::Open {
                continue;
            }
            op["security"] = json!([{"api_key": []}, {"bearer": []}]);
            op["responses"]["401"] = json!({
                "description": "No API key, or an unknown one (`WWW-Authenticate: Bearer`).",
                "content": error.clone(),
            });
            if need == Access::Write {
                op["responses"]["403"] = json!({
                    "description": "The read-only key cannot write.",
                    "content": error.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::openapi::path::HttpMethod;

    fn method_name(m: &actix_web::http::Method) -> String {
        m.as_str().to_ascii_lowercase()
    }

    #[test]
    fn the_document_is_valid_json_with_every_route() {
        let v = serde_json::to_value(ApiDoc::openapi()).expect("serialises");
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

    #[test]
    fn every_mounted_endpoint_is_documented_with_its_method_and_nothing_else() {
        let doc = ApiDoc::openapi();
        let mounted = super::super::endpoints();
        assert!(mounted.len() >= 14, "{} endpoints", mounted.len());
        for e in &mounted {
            let item = doc
                .paths
                .paths
                .get(&e.path)
                .unwrap_or_else(|| panic!("{} is mounted but not documented", e.path));
            let v = serde_json::to_value(item).unwrap();
            assert!(
                v[method_name(&e.method)].is_object(),
                "{} {} is mounted but not documented",
                e.method,
                e.path
            );
        }
        // And the reverse: every documented operation is mounted.
        for (path, item) in &doc.paths.paths {
            let v = serde_json::to_value(item).unwrap();
            for m in [
                HttpMethod::Get,
                HttpMethod::Post,
                HttpMethod::Put,
                HttpMethod::Delete,
                HttpMethod::Patch,
                HttpMethod::Head,
                HttpMethod::Options,
                HttpMethod::Trace,
            ] {
                let name = serde_json::to_value(&m).unwrap();
                let name = name.as_str().unwrap();
                if v[name].is_object() {
                    assert!(
                        mounted
                            .iter()
                            .any(|e| &e.path == path && method_name(&e.method) == name),
                        "{name} {path} is documented but not mounted"
                    );
                }
            }
        }
    }

    #[test]
    fn served_document_carries_the_configured_limits() {
        let config = Config {
            max_k: 77,
            max_batch_queries: 5,
            ..Config::default()
        };
        let v = document(&config, 32);
        let s = &v["components"]["schemas"];
        assert_eq!(s["VectorRequest"]["properties"]["vector"]["minItems"], 32);
        assert_eq!(s["VectorRequest"]["properties"]["vector"]["maxItems"], 32);
        assert_eq!(s["QueryVector"]["maxItems"], 32);
        assert_eq!(s["BatchRequest"]["properties"]["vectors"]["maxItems"], 5);
        assert_eq!(s["AddForm"]["properties"]["image"]["maxItems"], 5);
        assert_eq!(s["VectorRequest"]["properties"]["k"]["maximum"], 77);
        let similar = &v["paths"]["/images/{id}/similar"]["get"]["parameters"];
        let k = similar
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "k")
            .unwrap();
        assert_eq!(k["schema"]["maximum"], 77);
    }

    #[test]
    fn with_keys_the_document_says_which_operations_need_one() {
        let config = Config {
            api_key: "full-key-0123456789".into(),
            ..Config::default()
        };
        let v = document(&config, 8);
        assert_eq!(
            v["components"]["securitySchemes"]["api_key"]["name"],
            "api-key"
        );
        let op = |p: &str, m: &str| v["paths"][p][m].clone();
        assert!(op("/healthz", "get")["security"].is_null());
        assert!(op("/", "get")["security"].is_null());
        assert!(op("/stats", "get")["responses"]["401"].is_object());
        assert!(op("/stats", "get")["responses"]["403"].is_null());
        assert!(op("/images", "post")["responses"]["403"].is_object());
        assert!(op("/metrics", "get")["security"].is_array());
        let open = document(&Config::default(), 8);
        assert!(open["components"]["securitySchemes"].is_null());
        assert!(open["paths"]["/stats"]["get"]["responses"]["401"].is_null());
        // No operation gets a `parameters: null` (schemathesis refuses the document).
        for v in [&v, &open] {
            for (path, item) in v["paths"].as_object().unwrap() {
                for (m, op) in item.as_object().unwrap() {
                    assert!(
                        op.get("parameters").is_none_or(Value::is_array),
                        "{m} {path}"
                    );
                }
            }
        }
    }

    #[test]
    fn schemas_state_what_the_server_refuses() {
        let v = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let s = &v["components"]["schemas"];
        assert_eq!(
            s["VectorRequest"]["properties"]["vector"]["minItems"], 1,
            "{}",
            s["VectorRequest"]
        );
        assert_eq!(s["BatchRequest"]["properties"]["vectors"]["minItems"], 1);
        assert_eq!(s["AddForm"]["properties"]["image"]["minItems"], 1);
        assert_eq!(s["BatchForm"]["properties"]["image"]["minItems"], 1);
        assert!(s["ImageForm"]["required"]
            .as_array()
            .unwrap()
            .contains(&"image".into()));
        assert_eq!(s["VectorRequest"]["additionalProperties"], false);
        let codes = &s["ErrorCode"]["enum"];
        for code in [
            "bad_image",
            "image_too_large",
            "payload_too_large",
            "method_not_allowed",
        ] {
            assert!(codes.as_array().unwrap().contains(&code.into()), "{codes}");
        }
        let search = &v["paths"]["/search"]["post"];
        let params = search["parameters"].as_array().unwrap();
        let label = params
            .iter()
            .find(|p| p["name"] == "label")
            .expect("label parameter");
        assert_eq!(label["schema"]["minLength"], 1, "{label}");
        let k = params
            .iter()
            .find(|p| p["name"] == "k")
            .expect("k parameter");
        assert_eq!(k["schema"]["minimum"], 1, "{k}");
        let ef = params
            .iter()
            .find(|p| p["name"] == "ef")
            .expect("ef parameter");
        assert_eq!(ef["schema"]["maximum"], crate::index::MAX_EF, "{ef}");
        assert_eq!(
            s["VectorRequest"]["properties"]["ef"]["maximum"],
            crate::index::MAX_EF
        );
        for ct in ["image/*", "application/octet-stream", "multipart/form-data"] {
            assert!(search["requestBody"]["content"][ct].is_object(), "{ct}");
        }
    }
}
