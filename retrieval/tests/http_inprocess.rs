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
    let model = repo().join("models/emoji-scratch.onnx");
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

const FULL_KEY: &str = "full-key-for-tests-0123";
const READ_KEY: &str = "read-key-for-tests-0123";

/// A multipart body of `image` fields.
fn form(images: &[&[u8]], extra: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "htgTestBoundary";
    let mut b = Vec::new();
    for img in images {
        b.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n").as_bytes());
        b.extend_from_slice(img);
        b.extend_from_slice(b"\r\n");
    }
    for (k, v) in extra {
        b.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    b.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), b)
}

#[actix_web::test]
async fn api_keys_cors_and_the_decode_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let (index, embedder) = fixture_index(tmp.path());
    let config = Config {
        api_key: FULL_KEY.into(),
        read_only_api_key: READ_KEY.into(),
        cors: server::config::CorsConfig {
            allowed_origins: vec!["https://app.example.com".into()],
            max_age_s: 60,
        },
        // One 64x64 emoji fits, two do not.
        decode_budget_pixels: 6000,
        ..Config::default()
    };
    let state = server::new_state(
        config,
        Arc::new(index),
        embedder,
        tmp.path().join("uploads"),
    );
    let app = test::init_service(server::app(state)).await;
    let get = |uri: &str, key: Option<(&'static str, String)>| {
        let mut r = test::TestRequest::get().uri(uri);
        if let Some(h) = key {
            r = r.insert_header(h);
        }
        r.to_request()
    };
    let api = |k: &str| Some(("api-key", k.to_string()));
    let bearer = |k: &str| Some(("authorization", format!("Bearer {k}")));

    // Probes and the page are open; everything else needs a key.
    for uri in ["/healthz", "/"] {
        let res = test::call_service(&app, get(uri, None)).await;
        assert_eq!(res.status(), StatusCode::OK, "{uri}");
    }
    for uri in [
        "/stats",
        "/metrics",
        "/openapi.json",
        "/images/1/file",
        "/nope",
    ] {
        let res = test::call_service(&app, get(uri, None)).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{uri}");
        assert!(res.headers().get("www-authenticate").is_some(), "{uri}");
        let body: Value = test::read_body_json(res).await;
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    let res = test::call_service(&app, get("/stats", api("full-key-for-tests-0124"))).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    for key in [
        api(READ_KEY),
        api(FULL_KEY),
        bearer(READ_KEY),
        bearer(FULL_KEY),
    ] {
        let res = test::call_service(&app, get("/stats", key.clone())).await;
        assert_eq!(res.status(), StatusCode::OK, "{key:?}");
    }

    // Searches are reads; adds and deletes need the full key (403 with the read-only one).
    let search = |key: &str| {
        test::TestRequest::post()
            .uri("/search?k=2")
            .insert_header(("content-type", "image/png"))
            .insert_header(("api-key", key.to_string()))
            .set_payload(png("1f49c-google.png"))
            .to_request()
    };
    assert_eq!(
        test::call_service(&app, search(READ_KEY)).await.status(),
        StatusCode::OK
    );
    let add = |key: &str| {
        let (ct, body) = form(&[&png("1f49c-google.png")], &[("label", "added")]);
        test::TestRequest::post()
            .uri("/images")
            .insert_header(("content-type", ct))
            .insert_header(("api-key", key.to_string()))
            .set_payload(body)
            .to_request()
    };
    let res = test::call_service(&app, add(READ_KEY)).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let body: Value = test::read_body_json(res).await;
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let res = test::call_service(&app, add(FULL_KEY)).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = test::read_body_json(res).await;
    let id = body["added"][0]["id"].as_u64().unwrap();
    let delete = |key: &str| {
        test::TestRequest::delete()
            .uri(&format!("/images/{id}"))
            .insert_header(("api-key", key.to_string()))
            .to_request()
    };
    assert_eq!(
        test::call_service(&app, delete(READ_KEY)).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        test::call_service(&app, delete(FULL_KEY)).await.status(),
        StatusCode::OK
    );
    let snap = test::TestRequest::post()
        .uri("/snapshots")
        .insert_header(("api-key", READ_KEY))
        .to_request();
    assert_eq!(
        test::call_service(&app, snap).await.status(),
        StatusCode::FORBIDDEN
    );

    // CORS: the listed origin gets a preflight answer naming it (the key header allowed), even
    // without a key; another origin does not.
    let preflight = |origin: &str| {
        test::TestRequest::default()
            .method(actix_web::http::Method::OPTIONS)
            .uri("/search")
            .insert_header(("origin", origin.to_string()))
            .insert_header(("access-control-request-method", "POST"))
            .insert_header(("access-control-request-headers", "api-key,content-type"))
            .to_request()
    };
    let res = test::call_service(&app, preflight("https://app.example.com")).await;
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(
        res.headers().get("access-control-allow-origin").unwrap(),
        "https://app.example.com"
    );
    let allowed = res
        .headers()
        .get("access-control-allow-headers")
        .unwrap()
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("api-key"), "{allowed}");
    let res = test::call_service(&app, preflight("https://evil.example.com")).await;
    assert!(res.headers().get("access-control-allow-origin").is_none());
    let res = test::call_service(
        &app,
        test::TestRequest::get()
            .uri("/stats")
            .insert_header(("origin", "https://app.example.com"))
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.headers().get("access-control-allow-origin").unwrap(),
        "https://app.example.com",
        "a browser page can read the 401"
    );

    // Decode budget: two 64x64 images (8192 pixels) are over 6000, refused before decoding.
    let batch = |n: usize| {
        let img = png("1f49c-google.png");
        let imgs: Vec<&[u8]> = (0..n).map(|_| &img[..]).collect();
        let (ct, body) = form(&imgs, &[]);
        test::TestRequest::post()
            .uri("/search/batch")
            .insert_header(("content-type", ct))
            .insert_header(("api-key", READ_KEY))
            .set_payload(body)
            .to_request()
    };
    assert_eq!(
        test::call_service(&app, batch(1)).await.status(),
        StatusCode::OK
    );
    let res = test::call_service(&app, batch(2)).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = test::read_body_json(res).await;
    assert_eq!(body["error"]["code"], "decode_budget", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("8192 pixels"),
        "{body}"
    );
}

#[actix_web::test]
async fn cors_is_off_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let (index, embedder) = fixture_index(tmp.path());
    let state = server::new_state(
        Config::default(),
        Arc::new(index),
        embedder,
        tmp.path().join("uploads"),
    );
    let app = test::init_service(server::app(state)).await;
    let res = test::call_service(
        &app,
        test::TestRequest::get()
            .uri("/stats")
            .insert_header(("origin", "https://app.example.com"))
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK, "no key configured: open");
    assert!(res.headers().get("access-control-allow-origin").is_none());
}

/// `GET /healthz` over TLS with a client that trusts only the test CA.
fn https_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let ca = std::fs::read(repo().join("retrieval/tests/fixtures/tls/ca.pem"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
        let cert: rustls::pki_types::CertificateDer = cert.expect("PEM");
        roots.add(cert).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    // A peer that closes without close_notify ends in UnexpectedEof: what was read counts.
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok(String::from_utf8_lossy(&out).to_string())
}

#[actix_web::test]
async fn tls_serves_https_with_the_configured_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let (index, embedder) = fixture_index(tmp.path());
    let dir = repo().join("retrieval/tests/fixtures/tls");
    let tls = server::config::TlsConfig {
        cert: dir.join("server.pem").display().to_string(),
        key: dir.join("server.key").display().to_string(),
    };
    // A missing or mismatched file is refused before listening.
    let missing = server::config::TlsConfig {
        cert: dir.join("absent.pem").display().to_string(),
        key: tls.key.clone(),
    };
    let err = server::tls::server_config(&missing)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tls.cert"), "{err}");
    let swapped = server::config::TlsConfig {
        cert: tls.key.clone(),
        key: tls.cert.clone(),
    };
    assert!(server::tls::server_config(&swapped).is_err());

    let rustls_config = server::tls::server_config(&tls).unwrap().expect("TLS on");
    let config = Config {
        api_key: FULL_KEY.into(),
        tls,
        ..Config::default()
    };
    let state = server::new_state(
        config,
        Arc::new(index),
        embedder,
        tmp.path().join("uploads"),
    );
    let app_state = state.clone();
    let srv = actix_web::HttpServer::new(move || server::app(app_state.clone()))
        .workers(1)
        .disable_signals()
        .bind_rustls_0_23("127.0.0.1:0", rustls_config)
        .unwrap();
    let addr = srv.addrs()[0];
    let running = srv.run();
    let handle = running.handle();
    actix_web::rt::spawn(running);
    let (health, stats, plain) = actix_web::rt::task::spawn_blocking(move || {
        let plain = std::net::TcpStream::connect(addr).and_then(|mut s| {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            Ok(String::from_utf8_lossy(&out).to_string())
        });
        (
            https_get(addr, "/healthz"),
            https_get(addr, "/stats"),
            plain,
        )
    })
    .await
    .unwrap();
    handle.stop(true).await;
    let health = health.expect("TLS handshake with the test CA");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let stats = stats.unwrap();
    assert!(
        stats.starts_with("HTTP/1.1 401"),
        "keys apply over TLS too: {stats}"
    );
    // Plain HTTP on the TLS port gets no HTTP answer.
    assert!(
        !plain.unwrap_or_default().starts_with("HTTP/1.1 200"),
        "plain HTTP must not be served on the TLS port"
    );
}

/// A tmpfs mounted for one test, unmounted (lazily) when dropped, even after a failure.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` at a new directory, or says why it cannot.
    fn mount(bytes: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::Builder::new()
            .prefix("htg-full-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&dir);
            return Err(format!(
                "mount -t tmpfs failed (needs root or CAP_SYS_ADMIN): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Writes zeros into `path` until the filesystem refuses with ENOSPC.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    // Smaller pieces until not even one byte fits.
    while f.write_all(&[0u8; 512]).is_ok() {}
    while f.write_all(&[0u8]).is_ok() {}
    let _ = f.sync_all();
}

#[actix_web::test]
#[ignore = "needs root or CAP_SYS_ADMIN (it mounts a 16 MiB tmpfs to fill)"]
async fn a_full_disk_answers_507_and_loses_no_acknowledged_write() {
    let fs = Tmpfs::mount(16 << 20).unwrap_or_else(|why| panic!("{why}"));
    let dir = fs.0.join("idx");
    let (index, embedder) = fixture_index(&dir);
    let before = htg_retrieval::SearchIndex::len(&index);
    // A second handle on the same index, to make its next write start a checkpoint.
    let handle = index.clone();
    let state = server::new_state(
        Config::default(),
        Arc::new(index),
        Arc::clone(&embedder),
        dir.join("uploads"),
    );
    state.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let app = test::init_service(server::app(state.clone())).await;
    let get = |uri: &str| test::TestRequest::get().uri(uri).to_request();
    let add = |name: &str| {
        let (ct, body) = form(&[&png(name)], &[]);
        test::TestRequest::post()
            .uri("/images")
            .insert_header(("content-type", ct))
            .set_payload(body)
            .to_request()
    };
    let id_of = |v: &Value| v["added"][0]["id"].as_u64().unwrap();

    // Acknowledged before the disk fills.
    let res = test::call_service(&app, add("1f49c-google.png")).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let first = id_of(&test::read_body_json(res).await);

    fill(&fs.0.join("filler"));
    // A new upload cannot be stored: 507 with a clear message, nothing added.
    let res = test::call_service(&app, add("1f999-google.png")).await;
    assert_eq!(res.status(), StatusCode::INSUFFICIENT_STORAGE);
    let body: Value = test::read_body_json(res).await;
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("write was not made"), "{msg}");
    // Re-adding an image already stored needs no new upload file, only a log entry (its
    // vector): those fit while the log file's last page has room (tmpfs allocates pages),
    // then the append is refused with 507. Each 201 is acknowledged and must survive.
    let mut acked = Vec::new();
    let mut refused = false;
    for _ in 0..500 {
        let res = test::call_service(&app, add("1f49c-google.png")).await;
        match res.status() {
            StatusCode::CREATED => acked.push(id_of(&test::read_body_json(res).await)),
            StatusCode::INSUFFICIENT_STORAGE => {
                let body: Value = test::read_body_json(res).await;
                assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
                refused = true;
                break;
            }
            other => panic!(
                "add on a full disk: {other} {:?}",
                test::read_body(res).await
            ),
        }
    }
    assert!(refused, "a full disk refuses a log append eventually");
    // A delete is refused the same way (or, if it still fits, is acknowledged).
    let res = test::call_service(
        &app,
        test::TestRequest::delete()
            .uri(&format!("/images/{first}"))
            .to_request(),
    )
    .await;
    let deleted = match res.status() {
        StatusCode::OK => true,
        StatusCode::INSUFFICIENT_STORAGE => false,
        other => panic!(
            "delete on a full disk: {other} {:?}",
            test::read_body(res).await
        ),
    };
    // Reads still work on a full disk.
    let res = test::call_service(&app, get("/stats")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = test::call_service(&app, get("/readyz")).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "no background task has failed yet"
    );

    // A background checkpoint on the full disk. One page is freed, enough for one more log
    // entry but not for a generation (the graph alone takes several pages), and the write
    // that lands there starts a checkpoint, which fails.
    handle.set_checkpoint_bytes(1);
    let filler = std::fs::OpenOptions::new()
        .write(true)
        .open(fs.0.join("filler"))
        .unwrap();
    let mut freed = filler.metadata().unwrap().len();
    let mut written = false;
    for _ in 0..4 {
        freed = freed.saturating_sub(4096);
        filler.set_len(freed).unwrap();
        let res = test::call_service(&app, add("1f49c-google.png")).await;
        match res.status() {
            StatusCode::CREATED => {
                acked.push(id_of(&test::read_body_json(res).await));
                written = true;
                break;
            }
            StatusCode::INSUFFICIENT_STORAGE => {}
            other => panic!("add with a page free: {other}"),
        }
    }
    assert!(written, "a freed page takes one log entry");
    drop(filler);
    let stats_now = || async {
        let res = test::call_service(&app, get("/stats")).await;
        assert_eq!(res.status(), StatusCode::OK);
        test::read_body_json::<Value, _>(res).await
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let failure = loop {
        let s = stats_now().await;
        if let Some(e) = s["index"]["background_error"].as_str() {
            break e.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no background failure in /stats: {s}"
        );
        actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(failure.contains("checkpoint"), "{failure}");
    assert!(
        failure.contains("No space left") || failure.contains("storage full"),
        "the cause is named: {failure}"
    );
    let res = test::call_service(&app, get("/readyz")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = test::read_body_json(res).await;
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("cannot be made durable"), "{msg}");
    let counter = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("htg_index_background_errors_total "))
            .unwrap_or_else(|| panic!("no background error counter in\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    let metrics = || async {
        let res = test::call_service(&app, get("/metrics")).await;
        assert_eq!(res.status(), StatusCode::OK);
        String::from_utf8(test::read_body(res).await.to_vec()).unwrap()
    };
    let failures = counter(&metrics().await);
    assert!(failures >= 1, "{failures}");

    // Space comes back: writes work again, after the refused ones.
    std::fs::remove_file(fs.0.join("filler")).unwrap();
    let res = test::call_service(&app, add("1f999-google.png")).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let second = id_of(&test::read_body_json(res).await);
    // The checkpoint that write starts (or the retry) succeeds: the failure clears, and
    // the counter keeps what happened.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let res = test::call_service(&app, get("/readyz")).await;
        if res.status() == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz stays {} after space returned",
            res.status()
        );
        actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let s = stats_now().await;
    assert!(s["index"]["background_error"].is_null(), "{s}");
    assert!(
        s["index"]["background_errors"].as_u64().unwrap() >= failures,
        "{s}"
    );
    assert!(counter(&metrics().await) >= failures);
    drop(app);
    drop(state);
    drop(handle);

    // Reopened: every acknowledged write is there, the refused delete did not happen.
    let reopened = htg_retrieval::LocalIndex::open(&dir).expect("the index reopens");
    use htg_retrieval::SearchIndex as _;
    assert_eq!(reopened.record(first).is_none(), deleted);
    assert!(reopened.record(second).is_some());
    for id in &acked {
        assert!(
            reopened.record(*id).is_some(),
            "acknowledged add {id} was lost"
        );
    }
    assert_eq!(
        reopened.len(),
        before + 2 + acked.len() - usize::from(deleted),
        "exactly the acknowledged writes"
    );
}

/// `(status, body as JSON)` of one request to the in-process app (a macro: the app's type
/// cannot be named).
macro_rules! call {
    ($app:expr, $req:expr $(,)?) => {{
        let res = test::call_service($app, $req).await;
        let status = res.status();
        let body = test::read_body(res).await;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, v)
    }};
}

fn distances(results: &Value) -> Vec<f64> {
    results
        .as_array()
        .expect("a results array")
        .iter()
        .map(|h| h["distance"].as_f64().unwrap())
        .collect()
}

#[actix_web::test]
async fn max_distance_cuts_every_search_and_bad_bounds_are_400() {
    let tmp = tempfile::tempdir().unwrap();
    let (index, embedder) = fixture_index(tmp.path());
    let uploads = tmp.path().join("uploads");
    let state = server::new_state(Config::default(), Arc::new(index), embedder, uploads);
    let app = test::init_service(server::app(state)).await;
    let image = |uri: &str| {
        test::TestRequest::post()
            .uri(uri)
            .insert_header(("content-type", "image/png"))
            .set_payload(png("1f49c-google.png"))
            .to_request()
    };

    // Unbounded, for reference: exact, so the cut is compared on the same list.
    let (st, all) = call!(&app, image("/search?k=8&exact=true"));
    assert_eq!(st, StatusCode::OK, "{all}");
    let all_d = distances(&all["results"]);
    assert_eq!(all_d.len(), 8);
    assert!(all_d[3] < all_d[4], "distinct distances: {all_d:?}");
    let bound = (all_d[3] + all_d[4]) / 2.0;

    // Image search: exactly the first four survive, in order.
    let (st, cut) = call!(
        &app,
        image(&format!("/search?k=8&exact=true&max_distance={bound}")),
    );
    assert_eq!(st, StatusCode::OK, "{cut}");
    assert_eq!(
        cut["results"],
        Value::Array(all["results"].as_array().unwrap()[..4].to_vec())
    );

    // More like this, by id.
    let id = all["results"][0]["id"].as_u64().unwrap();
    let (_, v) = call!(
        &app,
        test::TestRequest::get()
            .uri(&format!("/images/{id}/similar?k=8&exact=true"))
            .to_request(),
    );
    let similar_d = distances(&v["results"]);
    assert_eq!(similar_d.len(), 8, "{v}");
    // `similar` leaves the image out, so the bound between its own 3rd and 4th keeps three.
    let sim_bound = (similar_d[2] + similar_d[3]) / 2.0;
    let (st, sim) = call!(
        &app,
        test::TestRequest::get()
            .uri(&format!(
                "/images/{id}/similar?k=8&exact=true&max_distance={sim_bound}"
            ))
            .to_request(),
    );
    assert_eq!(st, StatusCode::OK, "{sim}");
    assert_eq!(distances(&sim["results"]).len(), 3, "{sim}");
    assert!(sim["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["id"] != id));
    // Nothing within 0 of it but itself, and itself is left out: a 200 with [].
    let (st, none) = call!(
        &app,
        test::TestRequest::get()
            .uri(&format!("/images/{id}/similar?max_distance=0"))
            .to_request(),
    );
    assert_eq!(st, StatusCode::OK, "{none}");
    assert!(similar_d[0] > 0.0, "no exact copy among the fixtures");
    assert_eq!(none["results"], serde_json::json!([]), "{none}");

    // A form batch of the same image: the same four.
    let (boundary_ct, body) = form(&[&png("1f49c-google.png")], &[]);
    let (st, b) = call!(
        &app,
        test::TestRequest::post()
            .uri(&format!(
                "/search/batch?k=8&exact=true&max_distance={bound}"
            ))
            .insert_header(("content-type", boundary_ct))
            .set_payload(body)
            .to_request(),
    );
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(distances(&b["queries"][0]["results"]).len(), 4, "{b}");
    let (_, stats) = call!(&app, test::TestRequest::get().uri("/stats").to_request());
    let dim = stats["dimension"]
        .as_u64()
        .expect("stats has the dimension") as usize;
    let vector: Vec<f32> = (0..dim).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
    // A JSON batch and a vector search with the bound in the body (it wins over the query
    // string's 4, which keeps everything): every hit within it.
    let tight = 0.5 * all_d[0] + 0.5 * all_d[7];
    for (uri, body) in [
        (
            "/search/vector?k=8&exact=true&max_distance=4",
            serde_json::json!({ "vector": vector, "max_distance": tight }),
        ),
        (
            "/search/batch?k=8&exact=true&max_distance=4",
            serde_json::json!({ "vectors": [vector], "max_distance": tight }),
        ),
    ] {
        let (st, r) = call!(
            &app,
            test::TestRequest::post()
                .uri(uri)
                .insert_header(("content-type", "application/json"))
                .set_payload(body.to_string())
                .to_request(),
        );
        assert_eq!(st, StatusCode::OK, "{uri}: {r}");
        let results = if r["results"].is_array() {
            &r["results"]
        } else {
            &r["queries"][0]["results"]
        };
        assert!(
            distances(results).iter().all(|&d| d <= tight + 1e-6),
            "{uri}: {r}"
        );
    }
    // The same without the body's bound: more hits (the query string's 4 keeps all 8).
    let (_, r) = call!(
        &app,
        test::TestRequest::post()
            .uri("/search/vector?k=8&exact=true&max_distance=4")
            .insert_header(("content-type", "application/json"))
            .set_payload(serde_json::json!({ "vector": vector }).to_string())
            .to_request(),
    );
    assert_eq!(distances(&r["results"]).len(), 8, "{r}");

    // Bad bounds: 400 in the API's error shape, naming the parameter, on every search.
    for bad in ["-1", "NaN", "inf", "4.5", "near", ""] {
        for req in [
            image(&format!("/search?max_distance={bad}")),
            test::TestRequest::get()
                .uri(&format!("/images/{id}/similar?max_distance={bad}"))
                .to_request(),
        ] {
            let (st, e) = call!(&app, req);
            assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {e}");
            // Numbers out of range name the parameter and the range (text that is no number
            // gets the query-string parser's message).
            if bad.parse::<f32>().is_ok() {
                let m = e["error"]["message"].as_str().unwrap();
                assert!(
                    m.contains("max_distance") && m.contains("0..=4"),
                    "{bad}: {e}"
                );
            }
        }
    }
    for bad in [
        serde_json::json!(-0.1),
        serde_json::json!(4.01),
        serde_json::json!(1e39),
        serde_json::json!("1"),
    ] {
        for (uri, body) in [
            (
                "/search/vector",
                serde_json::json!({ "vector": vector, "max_distance": bad }),
            ),
            (
                "/search/batch",
                serde_json::json!({ "vectors": [vector], "max_distance": bad }),
            ),
        ] {
            let (st, e) = call!(
                &app,
                test::TestRequest::post()
                    .uri(uri)
                    .insert_header(("content-type", "application/json"))
                    .set_payload(body.to_string())
                    .to_request(),
            );
            assert_eq!(st, StatusCode::BAD_REQUEST, "{uri} {bad}: {e}");
        }
    }

    // `k: 3.0` is an integer as JSON Schema counts (the document says `integer`): accepted;
    // `2.5` is not. A value above the per-value bound the document states is a 422.
    for (k, want) in [
        (serde_json::json!(3.0), StatusCode::OK),
        (serde_json::json!(2.5), StatusCode::BAD_REQUEST),
    ] {
        let (st, r) = call!(
            &app,
            test::TestRequest::post()
                .uri("/search/vector")
                .insert_header(("content-type", "application/json"))
                .set_payload(serde_json::json!({ "vector": vector, "k": k }).to_string())
                .to_request(),
        );
        assert_eq!(st, want, "k {k}: {r}");
        if want == StatusCode::OK {
            assert_eq!(distances(&r["results"]).len(), 3, "{r}");
        }
    }
    let max = server::service::max_component(dim);
    let (_, api) = call!(
        &app,
        test::TestRequest::get().uri("/openapi.json").to_request()
    );
    let items = &api["components"]["schemas"]["VectorRequest"]["properties"]["vector"]["items"];
    assert_eq!(items["maximum"].as_f64().unwrap() as f32, max, "{items}");
    assert_eq!(items["minimum"].as_f64().unwrap() as f32, -max, "{items}");
    let mut big = vector.clone();
    big[0] = max * 1.01;
    let (st, r) = call!(
        &app,
        test::TestRequest::post()
            .uri("/search/vector")
            .insert_header(("content-type", "application/json"))
            .set_payload(serde_json::json!({ "vector": big }).to_string())
            .to_request(),
    );
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{r}");
    let mut edge = vec![max; dim];
    edge[1] = -max;
    let (st, r) = call!(
        &app,
        test::TestRequest::post()
            .uri("/search/vector?k=1")
            .insert_header(("content-type", "application/json"))
            .set_payload(serde_json::json!({ "vector": edge }).to_string())
            .to_request(),
    );
    assert_eq!(
        st,
        StatusCode::OK,
        "every value at the bound is still searchable: {r}"
    );

    // The OpenAPI document states the range on each search.
    let (_, api) = call!(
        &app,
        test::TestRequest::get().uri("/openapi.json").to_request()
    );
    for (path, method) in [
        ("/search", "post"),
        ("/search/vector", "post"),
        ("/search/batch", "post"),
        ("/images/{id}/similar", "get"),
    ] {
        let p = api["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "max_distance")
            .unwrap_or_else(|| panic!("{method} {path} documents max_distance"))
            .clone();
        assert_eq!(p["schema"]["minimum"], 0.0, "{p}");
        assert_eq!(p["schema"]["maximum"], 4.0, "{p}");
    }
}
