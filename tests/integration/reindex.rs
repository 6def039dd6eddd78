//! Model swaps: `htg reindex` (killed and resumed, missing files listed, ids kept) and
//! `POST /admin/reindex` on a live `htg serve` under concurrent search and add load.
//!
//! The index is built with the tiny fixture model (32-d) and swapped to the bundled model
//! (128-d), so a query embedded by one model and searched among the other's vectors could not
//! even be answered: every answer must name one model and find its query image at distance 0.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::http::{multipart, request, Server};
use crate::util::{htg, htg_ok, parse_results, root, s, stderr, tiny_model};

fn bundled() -> PathBuf {
    root().join("models/emoji-scratch.onnx")
}

/// A distinct 40x40 PNG for `seed`: a few coloured rectangles on a coloured ground.
fn png(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut img = image::RgbImage::new(40, 40);
    let bg = next();
    for p in img.pixels_mut() {
        *p = image::Rgb([bg as u8, (bg >> 8) as u8, (bg >> 16) as u8]);
    }
    for _ in 0..4 {
        let r = next();
        let (x0, y0) = ((r % 30) as u32, ((r >> 8) % 30) as u32);
        let (w, h) = (4 + ((r >> 16) % 10) as u32, 4 + ((r >> 24) % 10) as u32);
        let c = image::Rgb([(r >> 32) as u8, (r >> 40) as u8, (r >> 48) as u8]);
        for y in y0..(y0 + h).min(40) {
            for x in x0..(x0 + w).min(40) {
                img.put_pixel(x, y, c);
            }
        }
    }
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// `n` images in `dir`, named by seed.
fn folder(dir: &Path, seeds: std::ops::Range<u64>) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    seeds
        .map(|i| {
            let p = dir.join(format!("img-{i:05}.png"));
            std::fs::write(&p, png(i)).unwrap();
            p
        })
        .collect()
}

/// `dir` indexed into `idx` with the tiny fixture model (the model every test swaps from).
fn tiny_index(dir: &Path, idx: &Path) -> PathBuf {
    htg_ok(&[
        "index",
        s(dir),
        "--index",
        s(idx),
        "--model",
        s(&tiny_model()),
    ]);
    idx.to_path_buf()
}

/// Path → id of the nearest hit of each image (which must be the image itself).
fn ids_by_search(idx: &Path, images: &[PathBuf]) -> HashMap<String, u64> {
    images
        .iter()
        .map(|img| {
            let out = htg_ok(&["search", "--index", s(idx), s(img), "-k", "1", "--json"]);
            let hits = parse_results(&out);
            assert_eq!(hits[0].0, img.canonicalize().unwrap().to_string_lossy());
            assert!(hits[0].1 < 1e-4, "{hits:?}");
            (hits[0].0.clone(), hits[0].2)
        })
        .collect()
}

#[test]
fn cli_reindex_is_resumable_lists_missing_files_and_keeps_ids() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("imgs");
    let images = folder(&dir, 0..600);
    let idx = tiny_index(&dir, &tmp.path().join("idx"));
    let sample: Vec<PathBuf> = images[..598].iter().step_by(97).cloned().collect();
    let before = ids_by_search(&idx, &sample);

    // Killed after its first durable batch: the live index is untouched.
    let mut child = Command::new(env!("CARGO_BIN_EXE_htg"))
        .args(["reindex", "--index", s(&idx), "--model", s(&bundled())])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a progress line").unwrap();
    assert!(first.starts_with("embedded "), "{first}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!idx.join("ACTIVE").exists(), "no switch after a kill");
    assert_eq!(
        ids_by_search(&idx, &sample),
        before,
        "the old index still serves"
    );

    // One file changed and one gone: listed, and nothing is switched without consent.
    // (The last two: the killed run, stopped after its first batches, never read them.)
    let changed = images[598].clone();
    std::fs::write(&changed, png(10_001)).unwrap();
    let gone = images[599].clone();
    std::fs::remove_file(&gone).unwrap();
    let out = htg(&["reindex", "--index", s(&idx), "--model", s(&bundled())]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let err = stderr(&out);
    let resumed: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("resuming: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume line in {stdout}"));
    assert!(
        resumed >= 32,
        "the killed run's batches were kept: {stdout}"
    );
    assert!(err.contains("changed since it was indexed"), "{err}");
    assert!(err.contains("is gone"), "{err}");
    assert!(
        err.contains("2 image(s) could not be re-read"),
        "one-line reason: {err}"
    );
    assert!(!idx.join("ACTIVE").exists());
    assert_eq!(ids_by_search(&idx, &sample), before);

    // With consent: switched, every kept image keeps its id, searches use the new model.
    let out = htg_ok(&[
        "reindex",
        "--index",
        s(&idx),
        "--model",
        s(&bundled()),
        "--drop-missing",
    ]);
    assert!(out.contains("switched"), "{out}");
    assert!(out.contains("598 images, 2 left out"), "{out}");
    assert!(idx.join("ACTIVE").is_file());
    assert_eq!(ids_by_search(&idx, &sample), before, "ids survive the swap");
    let json = htg_ok(&[
        "search",
        "--index",
        s(&idx),
        s(&images[300]),
        "--json",
        "-k",
        "1000",
    ]);
    assert_eq!(parse_results(&json).len(), 598, "every kept image, no more");
    // The old root's files are gone; uploads and the new root remain.
    for e in std::fs::read_dir(&idx).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(
            !name.starts_with("gen-") && !name.starts_with("wal-") && name != "CURRENT",
            "stale {name}"
        );
    }
    let again = htg(&["reindex", "--index", s(&idx), "--model", s(&bundled())]);
    assert!(stderr(&again).contains("already uses this model"));
}

const KEY: &str = "swap-test-full-key-0123456789";
const READ_KEY: &str = "swap-test-read-key-0123456789";

fn post_image(addr: &str, path: &str, bytes: &[u8]) -> crate::http::Resp {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "image/png"), ("api-key", KEY)],
        bytes,
    )
}

/// One search answer as the load clients record it.
struct Seen {
    status: u16,
    model: String,
    found_self: bool,
    body: String,
}

#[test]
fn a_live_model_swap_under_load_fails_no_request_and_never_mixes_models() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("imgs");
    let images = folder(&dir, 0..1500);
    let idx = tiny_index(&dir, &tmp.path().join("idx"));
    let env = [("HTG__API_KEY", KEY), ("HTG__READ_ONLY_API_KEY", READ_KEY)];
    let server = Server::start(&idx, &env);
    let addr = server.addr.clone();
    let get = |path: &str| request(&addr, "GET", path, &[("api-key", KEY)], b"");
    let stats: Value = serde_json::from_slice(&get("/stats").body).unwrap();
    let old_model = stats["model"]["sha256"].as_str().unwrap().to_string();

    // Refusals first: no key, the read-only key, a bad model, the model already serving.
    let body = json!({"model": s(&bundled())}).to_string();
    let admin = |key: Option<&str>, body: &str| {
        let mut h = vec![("Content-Type", "application/json")];
        if let Some(k) = key {
            h.push(("api-key", k));
        }
        request(&addr, "POST", "/admin/reindex", &h, body.as_bytes())
    };
    assert_eq!(admin(None, &body).status, 401);
    admin(Some(READ_KEY), &body).assert_error(403, "forbidden");
    let bad = json!({"model": s(&tmp.path().join("nope.onnx"))}).to_string();
    admin(Some(KEY), &bad).assert_error(400, "bad_request");
    let same = json!({"model": s(&tiny_model())}).to_string();
    admin(Some(KEY), &same).assert_error(409, "conflict");
    assert_eq!(
        request(
            &addr,
            "GET",
            "/admin/tasks/1",
            &[("api-key", READ_KEY)],
            b""
        )
        .status,
        403,
        "task status needs the full key"
    );

    // Load: two searchers (each query is an indexed image) and one adder.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Vec<Seen>>>> = Arc::new(Mutex::new(Vec::new()));
    let added: Arc<Mutex<Vec<(u64, u64, u16)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for t in 0..2u64 {
        let (stop, seen, addr, images) = (stop.clone(), seen.clone(), addr.clone(), images.clone());
        threads.push(std::thread::spawn(move || {
            let mut mine = Vec::new();
            let mut i = t * 7;
            while !stop.load(Ordering::Relaxed) {
                let img = &images[(i as usize * 31) % images.len()];
                i += 1;
                let r = post_image(&addr, "/search?k=3", &std::fs::read(img).unwrap());
                let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                let want = img.canonicalize().unwrap().to_string_lossy().to_string();
                let found_self = v["results"].as_array().is_some_and(|hits| {
                    hits.iter()
                        .any(|h| h["path"] == want && h["distance"].as_f64().unwrap() < 1e-4)
                });
                mine.push(Seen {
                    status: r.status,
                    model: v["model"].as_str().unwrap_or("").to_string(),
                    found_self,
                    body: if found_self {
                        String::new()
                    } else {
                        format!("{want}: {v}")
                    },
                });
            }
            seen.lock().unwrap().push(mine);
        }));
    }
    {
        let (stop, added, addr) = (stop.clone(), added.clone(), addr.clone());
        threads.push(std::thread::spawn(move || {
            let mut seed = 50_000u64;
            while !stop.load(Ordering::Relaxed) {
                let bytes = png(seed);
                let (ct, form) = multipart(&[("image", Some("new.png"), &bytes)]);
                let r = request(
                    &addr,
                    "POST",
                    "/images",
                    &[("Content-Type", ct.as_str()), ("api-key", KEY)],
                    &form,
                );
                let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                let id = v["added"][0]["id"].as_u64().unwrap_or(u64::MAX);
                added.lock().unwrap().push((seed, id, r.status));
                seed += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let r = admin(Some(KEY), &body);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let task: Value = serde_json::from_slice(&r.body).unwrap();
    let location = r
        .headers
        .iter()
        .find(|(k, _)| k == "location")
        .map(|(_, v)| v.clone())
        .expect("Location");
    assert_eq!(location, format!("/admin/tasks/{}", task["id"]));
    let busy = admin(Some(KEY), &body);
    assert_eq!(busy.status, 409, "a second swap waits for the first");
    let start = Instant::now();
    let done = loop {
        let v: Value = serde_json::from_slice(&get(&location).body).unwrap();
        match v["state"].as_str().unwrap() {
            "succeeded" => break v,
            "failed" => panic!("swap failed: {v}"),
            _ => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "swap too slow: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    eprintln!("task: {done}");
    assert!(
        done["progress"]["caught_up"].as_u64().unwrap() > 0,
        "adds arrived while re-embedding and were carried over: {done}"
    );

    let stats: Value = serde_json::from_slice(&get("/stats").body).unwrap();
    let new_model = stats["model"]["sha256"].as_str().unwrap().to_string();
    assert_ne!(new_model, old_model);
    assert_eq!(stats["model"]["swaps"], 1);
    assert_eq!(stats["dimension"], 128);
    let metrics = String::from_utf8(get("/metrics").body).unwrap();
    assert!(metrics.contains(&format!("htg_model_info{{sha256=\"{new_model}\"}} 1")));

    // Searches: none failed, each found its image, and each client saw old, then new.
    let seen = seen.lock().unwrap();
    let total: usize = seen.iter().map(Vec::len).sum();
    let mut models = HashMap::new();
    for client in seen.iter() {
        let mut switched = false;
        for a in client {
            assert_eq!(a.status, 200, "a search failed during the swap");
            assert!(
                a.found_self,
                "an answer did not find its own image: {}",
                a.body
            );
            *models.entry(a.model.clone()).or_insert(0) += 1;
            if a.model == new_model {
                switched = true;
            } else {
                assert_eq!(a.model, old_model);
                assert!(!switched, "an answer from the old model after the new one");
            }
        }
    }
    eprintln!("{total} searches: {models:?}");
    assert!(models.get(&old_model).copied().unwrap_or(0) > 0);
    assert!(models.get(&new_model).copied().unwrap_or(0) > 0);

    // Adds: none failed, and every one is in the new index, found by its own bytes.
    let added = added.lock().unwrap();
    assert!(added.len() >= 5, "{} adds", added.len());
    for (seed, id, status) in added.iter() {
        assert_eq!(*status, 201, "an add failed during the swap");
        let r = post_image(&addr, "/search?k=3", &png(*seed));
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["model"], new_model.as_str());
        let hits = v["results"].as_array().unwrap();
        assert!(
            hits.iter()
                .any(|h| h["id"] == *id && h["distance"].as_f64().unwrap() < 1e-4),
            "added image {id} is not searchable after the swap: {v}"
        );
    }
    let count = stats["count"].as_u64().unwrap();
    assert_eq!(count, 1500 + added.len() as u64);

    // A restart opens the new model's index with everything acknowledged.
    server.terminate();
    let server = Server::start(&idx, &env);
    let stats: Value = serde_json::from_slice(
        &request(&server.addr, "GET", "/stats", &[("api-key", KEY)], b"").body,
    )
    .unwrap();
    assert_eq!(stats["model"]["sha256"], new_model.as_str());
    assert_eq!(stats["count"], count);
}
