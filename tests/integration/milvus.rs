//! The index contract, run against both backends: a local directory and a Milvus collection
//! (Milvus Lite, started here on a free loopback port from the venv `scripts/setup-milvus.sh`
//! makes; the test runs that script when the venv is missing). Then the CLI over Milvus:
//! `htg index` (incremental by sha256), `htg serve` answering `POST /search` with the same
//! top-1 as the local index, and `htg migrate` both ways.
//!
//! Milvus Lite is a Python re-implementation of Milvus's gRPC API: green here proves our
//! wiring (schema, expressions, escaping, provenance, ids), not a cluster's behaviour.
//! `HTG_MILVUS_ADDR=HOST:PORT` runs the suite against an existing server instead.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use htg_retrieval::index::{self, CreateOptions, IndexError, SearchOptions};
use htg_retrieval::SearchIndex as _;
use htg_retrieval::{ModelId, Record};
use tempfile::TempDir;

use crate::http::Server;
use crate::util::{copy_files, fixture, htg, htg_ok, root, s, stderr, tiny_model};

/// A Milvus Lite server for the whole test binary, started once and stopped when the test
/// process exits.
struct Lite {
    addr: String,
    _child: Option<Child>,
    _data: Option<TempDir>,
}

fn lite() -> &'static Lite {
    static LITE: OnceLock<Lite> = OnceLock::new();
    LITE.get_or_init(|| {
        if let Ok(addr) = std::env::var("HTG_MILVUS_ADDR") {
            return Lite {
                addr,
                _child: None,
                _data: None,
            };
        }
        let cache = std::env::var_os("HTG_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/htg")
            });
        let python = cache.join("milvus-venv/bin/python");
        if !python.exists() {
            let out = Command::new("bash")
                .arg(root().join("scripts/setup-milvus.sh"))
                .output()
                .expect("bash runs");
            assert!(
                out.status.success(),
                "scripts/setup-milvus.sh failed (Milvus Lite is needed for these tests): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let data = TempDir::new().unwrap();
        // A shell holds the server and kills it when our end of its stdin closes, which
        // happens when the test process exits (the child handle lives in a static).
        let child = Command::new("sh")
            .args([
                "-c",
                "\"$0\" -m milvus_lite server --data-dir \"$1\" --host 127.0.0.1 --port \"$2\" \
                 >/dev/null 2>&1 & p=$!; read _; kill $p",
            ])
            .arg(&python)
            .arg(data.path())
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Milvus Lite starts");
        let addr = format!("127.0.0.1:{port}");
        let start = Instant::now();
        while TcpStream::connect(&addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "Milvus Lite did not listen on {addr} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Lite {
            addr,
            _child: Some(child),
            _data: Some(data),
        }
    })
}

/// A fresh collection name per call, so tests sharing the server never collide.
fn collection(tag: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!(
        "milvus://{}/htg_{tag}_{}_{n}",
        lite().addr,
        std::process::id()
    )
}

fn model(dim: usize) -> ModelId {
    ModelId::synthetic(dim)
}

/// Deterministic unit vectors (xorshift), spread enough that each is its own nearest.
fn unit(seed: u64, dim: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<f32> = (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= n);
    v
}

const QUOTED: &str = r#"q"b\c"#;

fn item(i: usize, dim: usize) -> (Record, Vec<f32>) {
    let half = if i.is_multiple_of(2) { "even" } else { "odd" };
    (
        Record {
            path: format!("img/{half}/{i}.png"),
            sha256: format!("{i:064x}"),
            label: match i % 3 {
                0 => Some("a".into()),
                1 => Some(QUOTED.into()),
                _ => None,
            },
        },
        unit(i as u64, dim),
    )
}

/// What every index must do, whichever engine or machine holds it.
fn contract(location: &str) {
    let dim = 16;
    let n = 600; // above one Milvus insert batch (512)
    let idx = index::create(
        location,
        model(dim),
        Some("models/x.onnx".into()),
        &CreateOptions::default(),
    )
    .unwrap_or_else(|e| panic!("create {location}: {e}"));
    let items: Vec<_> = (0..n).map(|i| item(i, dim)).collect();
    let ids = idx.insert_many(items.clone()).unwrap();
    assert_eq!(ids.len(), n);
    let mut uniq = ids.clone();
    uniq.sort_unstable();
    uniq.dedup();
    assert_eq!(uniq.len(), n, "ids are unique");
    assert_eq!(idx.len(), n);

    // Add and search: each probe finds itself first; distances are squared L2, ascending.
    let at = |id: u64| ids.iter().position(|&x| x == id).expect("a known id");
    for i in (0..n).step_by(37) {
        let hits = idx
            .search(&items[i].1, 5, &SearchOptions::default())
            .unwrap();
        assert_eq!(hits.len(), 5, "{location}");
        assert_eq!(hits[0].id, ids[i], "{location}: probe {i}");
        assert_eq!(hits[0].record, items[i].0);
        assert!(hits[0].distance.abs() < 1e-4, "{}", hits[0].distance);
        for w in hits.windows(2) {
            assert!(w[0].distance <= w[1].distance);
        }
        for h in &hits {
            let want = index::squared_l2(&items[i].1, &items[at(h.id)].1);
            assert!(
                (h.distance - want).abs() < 1e-3,
                "{location}: distance {} vs squared L2 {want}",
                h.distance
            );
        }
    }
    assert_eq!(idx.record(ids[7]).as_ref(), Some(&items[7].0));
    let v = idx.vector(ids[7]).unwrap();
    assert!(index::squared_l2(&v, &items[7].1) < 1e-8);

    // Filters, including hostile label text that must neither break nor widen the
    // expression.
    let q = &items[1].1;
    let with = |label: Option<&str>, prefix: Option<&str>| {
        idx.search(
            q,
            40,
            &SearchOptions {
                ef: Some(n),
                label: label.map(str::to_string),
                path_prefix: prefix.map(str::to_string),
                ..SearchOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{location}: filter {label:?} {prefix:?}: {e}"))
    };
    let a = with(Some("a"), None);
    assert_eq!(a.len(), 40);
    assert!(a.iter().all(|h| h.record.label.as_deref() == Some("a")));
    let quoted = with(Some(QUOTED), None);
    assert_eq!(
        quoted[0].id, ids[1],
        "{location}: the label with quotes matches"
    );
    assert!(quoted
        .iter()
        .all(|h| h.record.label.as_deref() == Some(QUOTED)));
    for hostile in [
        r#"x" || label != ""#,
        r#"a" or label like "%"#,
        r#"\"#,
        r#"""#,
        "a\nb",
        "%",
        "a%",
        "q\"b\\\\c",
    ] {
        let hits = with(Some(hostile), None);
        assert!(
            hits.is_empty(),
            "{location}: label {hostile:?} matched {} records",
            hits.len()
        );
    }
    let even = with(None, Some("img/even/"));
    assert_eq!(even.len(), 40);
    assert!(even.iter().all(|h| h.record.path.starts_with("img/even/")));
    for wild in ["img/%", "img/ev_n/", "img/\"", "IMG/"] {
        assert!(
            with(None, Some(wild)).is_empty(),
            "{location}: prefix {wild:?} matched"
        );
    }
    let both = with(Some("a"), Some("img/odd/"));
    assert!(!both.is_empty());
    assert!(both
        .iter()
        .all(|h| h.record.label.as_deref() == Some("a") && h.record.path.starts_with("img/odd/")));

    // Delete.
    assert_eq!(
        idx.remove_many(&[ids[0], ids[1], 999_999_999]).unwrap(),
        vec![true, true, false]
    );
    assert!(
        !idx.remove(ids[0]).unwrap(),
        "a second delete finds nothing"
    );
    assert_eq!(idx.len(), n - 2);
    assert_eq!(idx.record(ids[0]), None);
    let hits = idx
        .search(&items[0].1, 3, &SearchOptions::default())
        .unwrap();
    assert!(hits.iter().all(|h| h.id != ids[0] && h.id != ids[1]));

    // Refusals.
    assert!(matches!(
        idx.search(&[0.0; 3], 1, &SearchOptions::default()),
        Err(IndexError::Dimension { .. })
    ));
    assert!(matches!(
        idx.insert(items[2].0.clone(), &[0.5; 3]),
        Err(IndexError::Dimension { .. })
    ));
    idx.flush().unwrap();
    drop(idx);

    // Re-open: the same records, the same answers, the same provenance.
    let idx = index::open(location).unwrap_or_else(|e| panic!("reopen {location}: {e}"));
    assert_eq!(idx.len(), n - 2);
    assert_eq!(idx.dim(), dim);
    assert_eq!(idx.model(), model(dim));
    assert_eq!(idx.model_path().as_deref(), Some("models/x.onnx"));
    let recs = idx.records();
    assert_eq!(recs.len(), n - 2);
    assert!(recs.iter().all(|(id, r)| r == &items[at(*id)].0));
    let hits = idx
        .search(&items[5].1, 1, &SearchOptions::default())
        .unwrap();
    assert_eq!(hits[0].id, ids[5]);

    // Provenance: a query from another model is refused.
    idx.check_model(&model(dim)).unwrap();
    let mut other = model(dim);
    other.sha256 = "1".repeat(64);
    assert!(matches!(
        idx.check_model(&other),
        Err(IndexError::ModelMismatch { .. })
    ));

    // New ids after re-open never reuse old ones.
    let fresh = idx.insert(items[0].0.clone(), &items[0].1).unwrap();
    assert!(!ids.contains(&fresh), "{location}: id {fresh} reused");
    assert_eq!(idx.len(), n - 1);
    drop(idx);

    // Creating over an existing index is refused.
    assert!(index::create(location, model(dim), None, &CreateOptions::default()).is_err());
}

#[test]
fn contract_local_directory() {
    let tmp = TempDir::new().unwrap();
    contract(s(&tmp.path().join("idx")));
}

#[test]
#[ignore = "needs Milvus Lite (scripts/setup-milvus.sh, or HTG_MILVUS_ADDR=HOST:PORT)"]
fn contract_milvus_collection() {
    contract(&collection("contract"));
}

#[test]
#[ignore = "needs Milvus Lite (scripts/setup-milvus.sh, or HTG_MILVUS_ADDR=HOST:PORT)"]
fn milvus_errors_name_the_problem() {
    // Missing collection.
    let missing = collection("missing");
    let e = index::open(&missing)
        .err()
        .expect("missing collection refused");
    assert!(e.to_string().contains("does not exist"), "{e}");
    // Unreachable server: a closed port.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let t = Instant::now();
    let e = index::open(format!("milvus://127.0.0.1:{port}/x"))
        .err()
        .expect("unreachable server refused");
    assert!(matches!(e, IndexError::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains("cannot reach Milvus"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(40), "{:?}", t.elapsed());
    // Bad locations.
    for bad in ["milvus://127.0.0.1/x", "milvus://127.0.0.1:1/bad-name"] {
        let e = index::open(bad).err().expect("bad location refused");
        assert!(matches!(e, IndexError::Location { .. }), "{bad}: {e}");
    }
    // A collection htg did not make: same name, another schema.
    let foreign = collection("foreign");
    let (host, name) = foreign
        .trim_start_matches("milvus://")
        .split_once('/')
        .unwrap();
    let made = Command::new(lite_python())
        .args([
            "-c",
            &format!(
                "from pymilvus import MilvusClient; c = MilvusClient('http://{host}'); \
                 c.create_collection('{name}', dimension=4)"
            ),
        ])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let e = index::open(&foreign).err().expect("foreign schema refused");
    assert!(e.to_string().contains("was not made by htg"), "{e}");
}

fn lite_python() -> PathBuf {
    let cache = std::env::var_os("HTG_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/htg"));
    cache.join("milvus-venv/bin/python")
}

fn top1(srv: &Server, image: &Path) -> (String, f64) {
    let body = std::fs::read(image).unwrap();
    let r = srv.post("/search?k=3", "image/png", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let first = &v["results"][0];
    (
        first["path"].as_str().unwrap().to_string(),
        first["distance"].as_f64().unwrap(),
    )
}

#[test]
#[ignore = "needs Milvus Lite (scripts/setup-milvus.sh, or HTG_MILVUS_ADDR=HOST:PORT)"]
fn cli_index_serve_and_migrate_over_milvus() {
    let tmp = TempDir::new().unwrap();
    let images = tmp.path().join("images");
    copy_files(&fixture("images"), &images);
    let local = tmp.path().join("idx");
    let remote = collection("cli");
    let model = tiny_model();
    for at in [s(&local), remote.as_str()] {
        let out = htg_ok(&["index", s(&images), "--index", at, "--model", s(&model)]);
        assert!(out.contains("index holds 24 images"), "{at}: {out}");
    }
    // Incremental by sha256: a second run embeds nothing.
    let again = htg_ok(&["index", s(&images), "--index", &remote]);
    assert!(again.contains("embedded 0 new or changed"), "{again}");
    assert!(again.contains("unchanged 24"), "{again}");

    // The same top-1 from both backends over HTTP.
    let uploads = tmp.path().join("uploads");
    let a = Server::start(&local, &[]);
    let b = Server::start_with(Path::new(&remote), &["--uploads", s(&uploads)], &[]);
    let stats = b.get("/stats").json();
    assert_eq!(stats["count"], 24, "{stats}");
    // A snapshot is what only a local index has: the Milvus-backed server says so with 501,
    // not 400 (the client sent nothing wrong), and names the reason.
    let r = b.post("/snapshots", "application/json", b"");
    assert_eq!(r.status, 501, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "not_supported", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("Milvus"),
        "{v}"
    );
    for name in ["1f999-google.png", "1f49c-twitter.png", "1f507-google.png"] {
        let img = images.join(name);
        let (pa, da) = top1(&a, &img);
        let (pb, db) = top1(&b, &img);
        assert_eq!(pa, pb, "top-1 for {name}");
        assert!((da - db).abs() < 1e-4, "{da} vs {db}");
    }
    // A model mismatch is refused like locally: search with another model's index.
    drop(b);
    drop(a);

    // Migrate local -> Milvus and Milvus -> local: same answers, nothing re-embedded.
    let moved = collection("moved");
    let out = htg_ok(&["migrate", "--from", s(&local), "--to", &moved]);
    assert!(out.contains("copied 24 records"), "{out}");
    let back = tmp.path().join("back");
    let out = htg_ok(&["migrate", "--from", &moved, "--to", s(&back)]);
    assert!(out.contains("copied 24 records"), "{out}");
    let query = images.join("1f46f-google.png");
    let mut tops = Vec::new();
    for at in [s(&local), moved.as_str(), s(&back)] {
        let out = htg_ok(&["search", s(&query), "--index", at, "-k", "1", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        tops.push(v["results"][0]["path"].as_str().unwrap().to_string());
    }
    assert!(tops[0].contains("1f46f-google.png"), "{tops:?}");
    assert_eq!(tops[0], tops[1]);
    assert_eq!(tops[0], tops[2]);
    // Migrating onto an existing index is refused.
    let out = htg(&["migrate", "--from", s(&local), "--to", &moved]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already holds an index"),
        "{}",
        stderr(&out)
    );
}
