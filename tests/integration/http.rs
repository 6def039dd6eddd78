//! `htg serve` over real HTTP: the binary on a free loopback port, every endpoint, every bad
//! input the API promises an answer for, persistence across a restart, graceful SIGTERM.
//!
//! The client is a few lines over `TcpStream` (one request per connection) so that tests can
//! also send what a well-behaved client library would refuse to: malformed forms, lying
//! content types, oversized bodies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::util::{copy_files, fixture, htg, htg_ok, s, stderr, tiny_model};

/// An answer.
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Resp {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    /// Asserts an error answer: status, the API's JSON shape and its code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        let v = self.json();
        assert_eq!(v["error"]["status"], status, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        v["error"]["message"]
            .as_str()
            .expect("error message")
            .to_string()
    }
}

/// Sends one request on a fresh connection and reads the answer to EOF.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    try_request(addr, method, path, headers, body).expect("a complete answer from the server")
}

/// [`request`], but `None` when the server is unreachable or closes without a whole answer
/// (the crash tests kill it mid-request).
pub fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Resp> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    // The server may answer (413) and close before reading a large body: not an error here.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    if !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        return None;
    }
    Some(parse_response(&raw))
}

fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = raw[split + 4..].to_vec();
    assert!(
        !headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")),
        "answers are sized"
    );
    Resp {
        status,
        headers,
        body,
    }
}

/// A `multipart/form-data` body: (content type, bytes).
pub fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "htg-test-boundary-7d1f";
    let mut b = Vec::new();
    for (name, filename, data) in parts {
        b.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => b.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => b.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), b)
}

/// A running `htg serve`, killed on drop.
pub struct Server {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    stderr: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `htg serve --index <idx> --addr 127.0.0.1:0` with extra `env`, and waits for the
    /// line that names the port the OS chose.
    pub fn start(idx: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_with(idx, &[], env)
    }

    /// [`Server::start`] with extra command-line arguments.
    pub fn start_with(idx: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_htg"))
            .args(["serve", "--index", s(idx), "--addr", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("htg serve starts");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(a) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(a.trim().to_string());
                }
            }
        });
        let (etx, erx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = etx.send(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let lines: Vec<String> = erx.try_iter().collect();
                panic!("htg serve did not start: {}", lines.join("\n"));
            }
        };
        Server {
            child: Some(child),
            addr,
            stderr: erx,
        }
    }

    /// GET.
    pub fn get(&self, path: &str) -> Resp {
        request(&self.addr, "GET", path, &[], b"")
    }

    /// POST with a content type.
    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Resp {
        request(
            &self.addr,
            "POST",
            path,
            &[("Content-Type", content_type)],
            body,
        )
    }

    /// POST JSON.
    pub fn post_json(&self, path: &str, v: &Value) -> Resp {
        self.post(path, "application/json", v.to_string().as_bytes())
    }

    /// DELETE.
    pub fn delete(&self, path: &str) -> Resp {
        request(&self.addr, "DELETE", path, &[], b"")
    }

    /// Sends SIGTERM and waits for a clean exit; returns what it wrote on stderr.
    pub fn terminate(mut self) -> String {
        let mut child = self.child.take().unwrap();
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(ok.success());
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("htg serve did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_millis(100));
        let lines: Vec<String> = self.stderr.try_iter().collect();
        assert!(status.success(), "exit {status:?}: {}", lines.join("\n"));
        lines.join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Fixture images copied into a temporary folder and indexed with the tiny model.
pub fn indexed_fixtures() -> (TempDir, PathBuf, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let images = tmp.path().join("images");
    copy_files(&fixture("images"), &images);
    let idx = tmp.path().join("idx");
    htg_ok(&[
        "index",
        s(&images),
        "--index",
        s(&idx),
        "--model",
        s(&tiny_model()),
    ]);
    (tmp, images, idx)
}

fn ids(results: &Value) -> Vec<u64> {
    results
        .as_array()
        .expect("results array")
        .iter()
        .map(|h| h["id"].as_u64().unwrap())
        .collect()
}

/// A PNG whose header promises `w`x`h` pixels: small to send, large to decode.
fn large_png(w: u32, h: u32) -> Vec<u8> {
    let img = image::GrayImage::new(w, h);
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn every_endpoint_answers_and_every_bad_input_gets_its_status() {
    let (_tmp, images, idx) = indexed_fixtures();
    let srv = Server::start(
        &idx,
        &[
            ("HTG__MAX_UPLOAD_BYTES", "200000"),
            ("HTG__MAX_PIXELS", "1000000"),
            ("HTG__MAX_BATCH_QUERIES", "4"),
        ],
    );

    // Health, readiness, stats.
    assert_eq!(srv.get("/healthz").json()["status"], "ok");
    assert_eq!(srv.get("/readyz").json()["status"], "ready");
    let stats = srv.get("/stats").json();
    assert_eq!(stats["count"], 24, "{stats}");
    let dim = stats["dimension"].as_u64().unwrap() as usize;
    assert!(dim > 1, "{stats}");
    assert_eq!(stats["model"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(stats["model"]["spec"]["embedding_dim"], dim as u64);
    assert_eq!(stats["index"]["m"], 16);
    assert_eq!(
        stats["limits"]["max_upload_bytes"], 200000,
        "env layer applied"
    );

    // POST /search with a raw body: the query image itself comes first, at distance ~0.
    let query_path = images.join("1f999-google.png");
    let query = std::fs::read(&query_path).unwrap();
    let r = srv.post("/search?k=5", "image/png", &query);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let hits = v["results"].as_array().unwrap().clone();
    assert_eq!(hits.len(), 5);
    assert!(
        hits[0]["path"]
            .as_str()
            .unwrap()
            .ends_with("1f999-google.png"),
        "{v}"
    );
    assert!(hits[0]["distance"].as_f64().unwrap() < 1e-6, "{v}");
    assert!(
        hits.windows(2)
            .all(|w| w[0]["distance"].as_f64() <= w[1]["distance"].as_f64()),
        "nearest first: {v}"
    );
    assert!(v["took_ms"].as_f64().unwrap() > 0.0);
    let self_id = hits[0]["id"].as_u64().unwrap();

    // The same as a multipart form, exact and with ef; default k is 10.
    let (ct, form) = multipart(&[("image", Some("q.png"), &query)]);
    let m = srv.post("/search?exact=true&ef=50", &ct, &form).json();
    assert_eq!(m["results"].as_array().unwrap().len(), 10, "{m}");
    assert_eq!(m["results"][0]["id"], self_id);
    // The `application/octet-stream` type is accepted as a raw image too.
    let o = srv
        .post("/search?k=1", "application/octet-stream", &query)
        .json();
    assert_eq!(o["results"][0]["id"], self_id);

    // Path-prefix filter: only the twitter images when the prefix names them... by folder.
    let prefix = format!("{}/1f9", s(&images));
    let f = srv
        .post(
            &format!("/search?k=24&path_prefix={}", urlencode(&prefix)),
            "image/png",
            &query,
        )
        .json();
    let paths: Vec<&str> = f["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["path"].as_str().unwrap())
        .collect();
    assert!(!paths.is_empty() && paths.len() < 24, "{paths:?}");
    assert!(paths.iter().all(|p| p.starts_with(&prefix)), "{paths:?}");
    // Label filter: nothing in the fixture index has a label yet.
    let l = srv.post("/search?label=cats", "image/png", &query).json();
    assert_eq!(l["results"].as_array().unwrap().len(), 0, "{l}");

    // GET /images/{id}/similar leaves the image itself out.
    let sim = srv.get(&format!("/images/{self_id}/similar?k=3")).json();
    let sim_ids = ids(&sim["results"]);
    assert_eq!(sim_ids.len(), 3);
    assert!(!sim_ids.contains(&self_id), "{sim}");
    assert_eq!(
        sim_ids,
        ids(&m["results"])[1..4].to_vec(),
        "same neighbours as by image"
    );

    // POST /search/vector: a unit vector of the right dimension; wrong dimension is 422.
    let mut unit = vec![0.0f32; dim];
    unit[0] = 1.0;
    let vr = srv.post_json("/search/vector", &json!({ "vector": unit, "k": 4 }));
    assert_eq!(vr.status, 200, "{}", vr.text());
    assert_eq!(vr.json()["results"].as_array().unwrap().len(), 4);
    let msg = srv
        .post_json("/search/vector", &json!({ "vector": [1.0, 0.0], "k": 4 }))
        .assert_error(422, "wrong_dimension");
    assert!(msg.contains(&format!("expects {dim}")), "{msg}");
    // Finite but overflowing when squared, and beyond f32 (parsed as infinity): 422.
    let mut huge = unit.clone();
    huge[1] = f32::MAX;
    srv.post_json("/search/vector", &json!({ "vector": huge }))
        .assert_error(422, "invalid_vector");
    let mut parts = vec!["0".to_string(); dim];
    parts[0] = "1e39".into();
    let text = format!("{{\"vector\": [{}]}}", parts.join(","));
    srv.post("/search/vector", "application/json", text.as_bytes())
        .assert_error(422, "invalid_vector");

    // POST /search/batch: JSON vectors, and a form of images.
    let b = srv
        .post_json("/search/batch", &json!({ "vectors": [unit, unit], "k": 2 }))
        .json();
    assert_eq!(b["queries"].as_array().unwrap().len(), 2, "{b}");
    assert_eq!(b["queries"][0]["results"], b["queries"][1]["results"]);
    let other = std::fs::read(images.join("26fa-twitter.png")).unwrap();
    let (ct, form) = multipart(&[
        ("image", Some("a.png"), &query),
        ("image", Some("b.png"), &other),
    ]);
    let bi = srv.post("/search/batch?k=1", &ct, &form).json();
    assert_eq!(bi["queries"][0]["results"][0]["id"], self_id, "{bi}");
    assert!(bi["queries"][1]["results"][0]["path"]
        .as_str()
        .unwrap()
        .ends_with("26fa-twitter.png"));

    // GET /images/{id}/file: the indexed bytes, with an image type.
    let file = srv.get(&format!("/images/{self_id}/file"));
    assert_eq!(file.status, 200);
    assert_eq!(file.header("content-type"), Some("image/png"));
    assert_eq!(file.body, query);

    // GET /images/{id}/thumb: a JPEG no larger than asked, tagged, 304 when the tag is current.
    let thumb = srv.get(&format!("/images/{self_id}/thumb?size=24"));
    assert_eq!(thumb.status, 200, "{}", thumb.text());
    assert_eq!(thumb.header("content-type"), Some("image/jpeg"));
    let t = image::load_from_memory(&thumb.body).expect("the thumbnail decodes");
    // 24 is served as 16, the power of two below it.
    assert!(
        t.width().max(t.height()) <= 16,
        "{}x{}",
        t.width(),
        t.height()
    );
    let etag = thumb.header("etag").expect("an ETag").to_string();
    let again = request(
        &srv.addr,
        "GET",
        &format!("/images/{self_id}/thumb?size=24"),
        &[("If-None-Match", &etag)],
        b"",
    );
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    srv.get(&format!("/images/{self_id}/thumb?size=8"))
        .assert_error(400, "bad_request");
    srv.get(&format!("/images/{self_id}/thumb?width=8"))
        .assert_error(400, "bad_request");
    srv.get("/images/999999/thumb")
        .assert_error(404, "not_found");

    // POST /images: added with a label, saved, searchable and served.
    let new_img = std::fs::read(fixture("images/formats/rgb.jpg")).unwrap();
    let (ct, form) = multipart(&[
        ("image", Some("n.jpg"), &new_img),
        ("label", None, b"added"),
    ]);
    let add = srv.post("/images", &ct, &form);
    assert_eq!(add.status, 201, "{}", add.text());
    let added = add.json();
    let new_id = added["added"][0]["id"].as_u64().unwrap();
    assert_eq!(added["added"][0]["label"], "added");
    let found = srv
        .post("/search?k=5&label=added", "image/jpeg", &new_img)
        .json();
    assert_eq!(ids(&found["results"]), vec![new_id], "{found}");
    assert_eq!(srv.get(&format!("/images/{new_id}/file")).body, new_img);
    assert_eq!(srv.get("/stats").json()["count"], 25);

    // A client-chosen `path` is recorded, but the file served is the uploaded one: a made-up
    // path never makes the server read a file the index did not store.
    let (ct, form) = multipart(&[
        ("image", Some("x.png"), &other),
        ("path", None, b"/etc/passwd"),
    ]);
    let sneaky = srv.post("/images", &ct, &form).json();
    let sneaky_id = sneaky["added"][0]["id"].as_u64().unwrap();
    assert_eq!(sneaky["added"][0]["path"], "/etc/passwd");
    let served = srv.get(&format!("/images/{sneaky_id}/file"));
    assert_eq!(served.status, 200);
    assert_eq!(served.body, other, "the upload, never /etc/passwd");
    for traversal in [
        "/images/..%2F..%2Fetc%2Fpasswd/file",
        "/images/../../etc/passwd",
    ] {
        let r = srv.get(traversal);
        assert_eq!(r.status, 404, "{traversal}: {}", r.text());
    }

    // DELETE /images/{id}: gone from results; a second delete is 404.
    assert_eq!(
        srv.delete(&format!("/images/{new_id}")).json()["deleted"],
        new_id
    );
    let after = srv.post("/search?k=30", "image/jpeg", &new_img).json();
    assert!(!ids(&after["results"]).contains(&new_id), "{after}");
    srv.delete(&format!("/images/{new_id}"))
        .assert_error(404, "not_found");

    // Undecodable images: 400 with the reason.
    for (file, reason) in [
        ("bad/corrupt.png", "cannot decode image"),
        ("bad/empty.png", "empty file"),
        ("bad/notanimage.jpg", "not a supported image"),
    ] {
        let bytes = std::fs::read(fixture(file)).unwrap();
        let msg = srv
            .post("/search", "image/png", &bytes)
            .assert_error(400, "bad_image");
        assert!(msg.contains(reason), "{file}: {msg}");
    }
    // One bad image in a batch names its position.
    let (ct, form) = multipart(&[("image", None, &query), ("image", None, b"garbage")]);
    let msg = srv
        .post("/search/batch", &ct, &form)
        .assert_error(400, "bad_image");
    assert!(msg.starts_with("image 2: "), "{msg}");
    // Above the pixel limit (2000x2000 > 1e6), though small on the wire.
    let big = large_png(2000, 2000);
    assert!(big.len() < 200_000);
    let msg = srv
        .post("/search", "image/png", &big)
        .assert_error(400, "image_too_large");
    assert!(msg.contains("2000x2000"), "{msg}");
    // Above the upload limit: 413, declared or streamed.
    let fat = vec![0u8; 300_000];
    srv.post("/search", "image/png", &fat)
        .assert_error(413, "payload_too_large");
    let (ct, form) = multipart(&[("image", None, &fat)]);
    srv.post("/images", &ct, &form)
        .assert_error(413, "payload_too_large");
    let chunked = chunked_request(&srv.addr, "/search", "image/png", &fat);
    chunked.assert_error(413, "payload_too_large");

    // Malformed JSON, unknown fields and wrong types: 400.
    for body in [
        "{\"vector\": [1, 2",
        "[]",
        "{\"vector\": [1], \"kk\": 3}",
        "{\"vector\": \"x\"}",
    ] {
        let msg = srv
            .post("/search/vector", "application/json", body.as_bytes())
            .assert_error(400, "bad_request");
        assert!(msg.contains("malformed JSON"), "{body}: {msg}");
    }
    srv.post("/search/batch", "application/json", b"{not json")
        .assert_error(400, "bad_request");
    // Bad parameters: 400.
    for q in [
        "k=0",
        "k=abc",
        "k=1000000",
        "ef=0",
        "exact=maybe",
        "colour=red",
    ] {
        srv.post(&format!("/search?{q}"), "image/png", &query)
            .assert_error(400, "bad_request");
    }
    // Batch size limits.
    srv.post_json("/search/batch", &json!({ "vectors": [] }))
        .assert_error(400, "bad_request");
    srv.post_json(
        "/search/batch",
        &json!({ "vectors": vec![unit.clone(); 5] }),
    )
    .assert_error(400, "bad_request");
    // Malformed forms: no boundary, broken body, no image field, unknown field.
    srv.post("/search", "multipart/form-data", b"--x\r\n")
        .assert_error(400, "bad_request");
    srv.post(
        "/search",
        "multipart/form-data; boundary=zzzz",
        b"--zzzz\r\nnope",
    )
    .assert_error(400, "bad_request");
    // A boundary too short for the parser to take safely (it panicked on some bodies).
    let msg = srv
        .post(
            "/search",
            "multipart/form-data; boundary=zz",
            b"--zz\r\nnope",
        )
        .assert_error(400, "bad_request");
    assert!(msg.contains("boundary"), "{msg}");
    // A form cut inside its image part: the parser used to wait for more forever.
    let (ct, form) = multipart(&[("image", Some("q.png"), &query)]);
    let msg = srv
        .post("/search", &ct, &form[..form.len() - 40])
        .assert_error(400, "bad_request");
    assert!(msg.contains("multipart"), "{msg}");
    let (ct, form) = multipart(&[("label", None, b"x")]);
    srv.post("/search", &ct, &form)
        .assert_error(400, "bad_request");
    let (ct, form) = multipart(&[("image", None, &query), ("imagee", None, &query)]);
    let msg = srv
        .post("/images", &ct, &form)
        .assert_error(400, "bad_request");
    assert!(msg.contains("imagee"), "{msg}");
    // Wrong content types: 415.
    srv.post("/search", "text/plain", b"hello")
        .assert_error(415, "unsupported_media_type");
    request(&srv.addr, "POST", "/search", &[], &query).assert_error(415, "unsupported_media_type");
    srv.post("/images", "image/png", &query)
        .assert_error(415, "unsupported_media_type");
    srv.post("/search/vector", "text/csv", b"1,2")
        .assert_error(415, "unsupported_media_type");
    // Unknown ids, routes and methods.
    srv.get("/images/999999/similar")
        .assert_error(404, "not_found");
    srv.get("/images/999999/file")
        .assert_error(404, "not_found");
    srv.get("/images/abc/file").assert_error(404, "not_found");
    srv.get("/images/99999999999999999999999/similar")
        .assert_error(404, "not_found");
    srv.delete("/images/999999").assert_error(404, "not_found");
    srv.get("/nope").assert_error(404, "not_found");
    srv.get("/search").assert_error(405, "method_not_allowed");
    srv.delete("/stats").assert_error(405, "method_not_allowed");
    // RFC 9110: a 405 names the methods the resource has.
    assert_eq!(srv.get("/search").header("allow"), Some("POST"));
    assert_eq!(srv.get("/images/1").header("allow"), Some("DELETE"));

    // Nothing above got a worker stuck: the server still answers searches.
    assert_eq!(srv.get("/readyz").status, 200);
    let again = srv.post("/search?k=1", "image/png", &query).json();
    assert_eq!(again["results"][0]["id"], self_id);

    // Metrics: per-route counts by status, latency histograms, embed and search time.
    let metrics = srv.get("/metrics");
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.text();
    for want in [
        "htg_http_requests_total{method=\"POST\",route=\"/search\",status=\"200\"}",
        "htg_http_requests_total{method=\"POST\",route=\"/search\",status=\"400\"}",
        "htg_http_requests_total{method=\"POST\",route=\"/search\",status=\"413\"}",
        "htg_http_requests_total{method=\"GET\",route=\"/images/{id}/similar\",status=\"404\"}",
        "htg_http_request_duration_seconds_bucket{method=\"POST\",route=\"/search\",le=\"+Inf\"}",
        "htg_embed_duration_seconds_count",
        "htg_embed_batch_size_bucket",
        "htg_search_duration_seconds_count",
        "htg_decode_duration_seconds_count",
        "htg_index_images 25",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let ok_searches = metric(
        &text,
        "htg_http_requests_total{method=\"POST\",route=\"/search\",status=\"200\"}",
    );
    assert!(ok_searches >= 8.0, "{ok_searches}");
    assert!(metric(&text, "htg_search_duration_seconds_count") >= ok_searches);

    // OpenAPI and the page.
    let api = srv.get("/openapi.json").json();
    assert!(api["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/search",
        "/search/vector",
        "/search/batch",
        "/images",
        "/images/{id}/file",
        "/images/{id}/thumb",
    ] {
        assert!(api["paths"][path].is_object(), "{path}");
    }
    let page = srv.get("/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let html = page.text();
    assert!(
        html.contains("id=\"file\"") && html.contains("/search?"),
        "page has the form"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external resources"
    );
}

/// A request with a chunked body (no `Content-Length`): the limit must hold while streaming.
fn chunked_request(addr: &str, path: &str, content_type: &str, body: &[u8]) -> Resp {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    for chunk in body.chunks(16 * 1024) {
        let mut c = format!("{:x}\r\n", chunk.len()).into_bytes();
        c.extend_from_slice(chunk);
        c.extend_from_slice(b"\r\n");
        if stream.write_all(&c).is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_response(&raw)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn writes_survive_a_restart_and_sigterm_stops_cleanly() {
    let (_tmp, images, idx) = indexed_fixtures();
    let query = std::fs::read(images.join("1f600-google.png")).unwrap();
    let srv = Server::start(&idx, &[]);
    let first = srv.post("/search?k=2", "image/png", &query).json();
    let gone = first["results"][0]["id"].as_u64().unwrap();
    assert_eq!(srv.delete(&format!("/images/{gone}")).status, 200);
    let (ct, form) = multipart(&[("image", None, &query), ("label", None, b"kept")]);
    let added = srv.post("/images", &ct, &form).json();
    let kept = added["added"][0]["id"].as_u64().unwrap();
    let log = srv.terminate();
    assert!(log.contains("stopped"), "{log}");

    let srv = Server::start(&idx, &[]);
    srv.get(&format!("/images/{gone}/similar"))
        .assert_error(404, "not_found");
    let after = srv.post("/search?k=30", "image/png", &query).json();
    let found = ids(&after["results"]);
    assert!(!found.contains(&gone), "deleted id came back: {after}");
    assert_eq!(found[0], kept, "the added copy is the nearest: {after}");
    assert_eq!(srv.get(&format!("/images/{kept}/file")).body, query);
    assert_eq!(srv.get("/stats").json()["count"], 24);
}

#[test]
fn bad_configuration_and_a_mismatched_model_refuse_to_start() {
    let (tmp, _images, idx) = indexed_fixtures();
    let serve = |extra: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_htg"))
            .args(["serve", "--index", s(&idx), "--addr", "127.0.0.1:0"])
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "started with {extra:?} {env:?}");
        stderr(&out)
    };
    let cfg = tmp.path().join("serve.toml");
    std::fs::write(&cfg, "[batch]\nmax_sise = 4\n").unwrap();
    let err = serve(&["--config", s(&cfg)], &[]);
    assert!(err.contains("unknown config key `batch.max_sise`"), "{err}");
    let err = serve(&[], &[("HTG__BATCH__MAX_SIZE", "0")]);
    assert!(err.contains("batch.max_size"), "{err}");
    let err = serve(&[], &[("HTG__MAX_K", "lots")]);
    assert!(
        err.contains("HTG__MAX_K") && err.contains("not an integer"),
        "{err}"
    );
    let err = serve(&["--model", s(&fixture("models/tiny_nhwc_gap.onnx"))], &[]);
    assert!(err.contains("index was built with model"), "{err}");
    let out = htg(&[
        "serve",
        "--index",
        s(&tmp.path().join("none")),
        "--addr",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no index at"), "{}", stderr(&out));
}
