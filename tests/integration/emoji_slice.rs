//! A real slice: 100 emoji classes from both vendors, fetched by `scripts/fetch-data.sh` into a
//! cache outside the clone. Fails with the reason when the data cannot be fetched: a test
//! that did not run must not pass.

use std::path::PathBuf;
use std::process::Command;

use htg_retrieval::{Embedder, LocalIndex, SearchIndex, SearchOptions, TractEmbedder};
use tempfile::TempDir;

use crate::util::{htg_ok, parse_results, root, s};

fn emoji_dir() -> Result<PathBuf, String> {
    let cache = std::env::var("HTG_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/htg"));
    let data = cache.join("data");
    let out = Command::new("bash")
        .arg(root().join("scripts/fetch-data.sh"))
        .arg("emoji")
        .env("HTG_DATA_DIR", &data)
        .env("HTG_CACHE_DIR", &cache)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    Ok(data.join("emoji"))
}

#[test]
fn hundred_classes_both_vendors() {
    let emoji = emoji_dir().unwrap_or_else(|why| panic!("cannot fetch the emoji data: {why}"));
    let tmp = TempDir::new().unwrap();
    let gallery = tmp.path().join("gallery");
    let mut names: Vec<String> = std::fs::read_dir(emoji.join("google/64"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| emoji.join("twitter/64").join(n).is_file() && !n.contains("1f3f"))
        .collect();
    names.sort();
    let step = names.len() / 100;
    let names: Vec<String> = names.into_iter().step_by(step).take(100).collect();
    assert_eq!(names.len(), 100);
    for vendor in ["google", "twitter"] {
        std::fs::create_dir_all(gallery.join(vendor)).unwrap();
        for n in &names {
            std::fs::copy(
                emoji.join(vendor).join("64").join(n),
                gallery.join(vendor).join(n),
            )
            .unwrap();
        }
    }
    let idx = tmp.path().join("idx");
    // The bundled emoji model, by name; its bytes are models/emoji.onnx.
    let model = root().join("models/emoji.onnx");
    let out = htg_ok(&[
        "index",
        s(&gallery),
        "--index",
        s(&idx),
        "--model",
        "emoji",
        "--label-from-parent",
    ]);
    assert!(out.contains("embedded 200 new"), "{out}");

    // The Google image of an emoji finds itself first.
    for n in names.iter().step_by(25) {
        let q = gallery.join("google").join(n);
        let hits = parse_results(&htg_ok(&["search", "--index", s(&idx), s(&q), "--json"]));
        assert!(hits[0].0.ends_with(&format!("google/{n}")), "{n}: {hits:?}");
        assert!(hits[0].1 < 1e-6, "{n}: {hits:?}");
    }

    // HNSW top-10 agrees with exact top-10 (recall >= 0.95) over all 200 images as queries.
    let index = LocalIndex::open(&idx).unwrap();
    let e = TractEmbedder::load(&model).unwrap();
    index.check_model(e.model_id()).unwrap();
    let (mut found, mut total) = (0usize, 0usize);
    for (id, _) in index.records() {
        let q = index.vector(id).unwrap();
        let exact = index
            .search(
                &q,
                10,
                &SearchOptions {
                    exact: true,
                    ..Default::default()
                },
            )
            .unwrap();
        let approx = index.search(&q, 10, &SearchOptions::default()).unwrap();
        let approx_ids: Vec<u64> = approx.iter().map(|h| h.id).collect();
        found += exact.iter().filter(|h| approx_ids.contains(&h.id)).count();
        total += exact.len();
    }
    let recall = found as f64 / total as f64;
    eprintln!("emoji slice: HNSW recall@10 vs exact = {recall:.4}");
    assert!(recall >= 0.95, "recall {recall}");

    // Labels from the parent folder filter results.
    let q = index.vector(index.records()[0].0).unwrap();
    let only = SearchOptions {
        label: Some("twitter".into()),
        ..Default::default()
    };
    let hits = index.search(&q, 10, &only).unwrap();
    assert_eq!(hits.len(), 10);
    assert!(hits
        .iter()
        .all(|h| h.record.label.as_deref() == Some("twitter")));
}
