//! `htg bench`: a tiny sweep gives a valid report and plots; bad input is one clear line with
//! exit status 1, never a panic; embed and data set commands; the Python peers' report (when
//! scripts/setup-peers.sh has installed them) has the same schema.

use std::path::Path;

use htg_ann::npy;
use tempfile::TempDir;

use crate::util::{fixture, htg, htg_ok, s, stderr, tiny_model};

fn synth(dir: &Path, n: usize) {
    htg_ok(&[
        "bench",
        "dataset",
        "synth",
        "--out",
        s(dir),
        "--n",
        &n.to_string(),
        "--queries",
        "40",
        "--dim",
        "16",
        "--clusters",
        "8",
        "--seed",
        "3",
    ]);
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON report")
}

/// Asserts a failed run: status 1, one `error:` line, no panic.
fn assert_clean_failure(args: &[&str], expect: &str) {
    let out = htg(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "htg {args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{err}");
    assert!(last.contains(expect), "expected {expect:?} in {last:?}");
}

#[test]
fn tiny_sweep_reports_recall_qps_latency_memory_and_plots() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    synth(&data, 1500);
    for f in ["base.npy", "queries.npy", "gt.npy", "dataset.json"] {
        assert!(data.join(f).is_file(), "{f}");
    }
    let json = tmp.path().join("out/r.json");
    let plots = tmp.path().join("plots");
    let table = htg_ok(&[
        "bench",
        "index",
        "--dataset",
        s(&data),
        "--m",
        "8,12",
        "--ef-construction",
        "40",
        "--ef",
        "10,64",
        "--engine",
        "hnsw_rs",
        "--distance",
        "l2,dot,l2sq",
        "--min-seconds",
        "0",
        "--json",
        s(&json),
        "--plots",
        s(&plots),
    ]);
    assert!(
        table.contains("| hnsw_rs | dot | 12 | 40 | 64 |"),
        "{table}"
    );
    let r = report(&json);
    assert_eq!(r["schema"], "htg-bench-index/1");
    assert_eq!(r["dataset"]["n"], 1500);
    assert_eq!(r["dataset"]["normalized"], true);
    assert!(r["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(r["run"]["command"].as_array().unwrap().len() > 3);
    let builds = r["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 1 + 3 * 2, "exact + 3 distances x 2 M");
    let exact = &builds[0];
    assert_eq!(exact["library"], "exact");
    assert_eq!(exact["searches"][0]["recall_at_10"], 1.0);
    assert_eq!(exact["searches"][0]["recall_at_1"], 1.0);
    for b in builds {
        assert!(b["peak_rss_mib"].as_f64().unwrap() > 1.0, "{b}");
        if b["library"] == "hnsw_rs" {
            assert!(b["build_s"].as_f64().unwrap() > 0.0);
            assert!(b["index_bytes"].as_u64().unwrap() > 1500 * 16 * 4);
        }
        for q in b["searches"].as_array().unwrap() {
            for key in ["recall_at_1", "recall_at_10"] {
                let v = q[key].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&v), "{key} {v}");
            }
            assert!(q["qps_1t"].as_f64().unwrap() > 0.0);
            assert!(q["qps_all"].as_f64().unwrap() > 0.0);
            let (p50, p99) = (q["p50_us"].as_f64().unwrap(), q["p99_us"].as_f64().unwrap());
            assert!(p50 > 0.0 && p50 <= p99, "{q}");
        }
    }
    let best = builds
        .iter()
        .filter(|b| b["library"] == "hnsw_rs")
        .flat_map(|b| b["searches"].as_array().unwrap())
        .map(|q| q["recall_at_10"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(best > 0.9, "HNSW at ef=64 on 1500 points: {best}");
    for f in ["r-recall-qps.svg", "r-latency.svg"] {
        let svg = std::fs::read_to_string(plots.join(f)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("hnsw_rs/dot"),
            "{f}"
        );
    }

    // A peer report in the same schema is plotted and compared with htg's.
    let mut peer = r.clone();
    peer["run"]["tool"] = "ann_peers.py".into();
    for b in peer["builds"].as_array_mut().unwrap() {
        b["library"] = "hnswlib".into();
    }
    let peer_json = tmp.path().join("peer.json");
    std::fs::write(&peer_json, peer.to_string()).unwrap();
    let out = htg_ok(&[
        "bench",
        "plot",
        s(&json),
        s(&peer_json),
        "--out",
        s(&plots),
        "--prefix",
        "both",
    ]);
    assert!(out.contains("| hnsw_rs/l2 | hnswlib/l2 |"), "{out}");
    assert!(plots.join("both-recall-qps.svg").is_file());
}

#[test]
fn vectors_and_index_sources_hold_out_queries() {
    let tmp = TempDir::new().unwrap();
    // Unnormalised vectors: l2 works, dot is refused before anything runs.
    let v: Vec<f32> = (0..300 * 8)
        .map(|i| ((i * 37 % 101) as f32) - 50.0)
        .collect();
    let vf = tmp.path().join("v.npy");
    npy::write(&vf, 300, 8, &v).unwrap();
    let json = tmp.path().join("v.json");
    let saved = tmp.path().join("saved");
    htg_ok(&[
        "bench",
        "index",
        "--vectors",
        s(&vf),
        "--holdout",
        "30",
        "--m",
        "8",
        "--ef",
        "32",
        "--min-seconds",
        "0",
        "--json",
        s(&json),
        "--plots",
        "-",
        "--save-dataset",
        s(&saved),
    ]);
    let r = report(&json);
    assert_eq!(
        (r["dataset"]["n"].as_u64(), r["dataset"]["queries"].as_u64()),
        (Some(270), Some(30))
    );
    assert!(saved.join("gt.npy").is_file());
    assert_clean_failure(
        &[
            "bench",
            "index",
            "--vectors",
            s(&vf),
            "--holdout",
            "30",
            "--distance",
            "dot",
            "--json",
            s(&json),
        ],
        "l2-normalised",
    );

    // The vectors stored in an htg index.
    let idx = tmp.path().join("idx");
    htg_ok(&[
        "index",
        s(&fixture("images")),
        "--index",
        s(&idx),
        "--model",
        s(&tiny_model()),
    ]);
    let json = tmp.path().join("i.json");
    htg_ok(&[
        "bench",
        "index",
        "--index",
        s(&idx),
        "--holdout",
        "4",
        "--m",
        "4",
        "--ef",
        "10",
        "--min-seconds",
        "0",
        "--json",
        s(&json),
        "--plots",
        "-",
    ]);
    let r = report(&json);
    assert_eq!(r["dataset"]["queries"], 4);
    assert!(
        r["dataset"]["n"].as_u64().unwrap() >= 20,
        "{}",
        r["dataset"]
    );
    assert_eq!(r["builds"][0]["searches"][0]["recall_at_10"], 1.0);
}

#[test]
fn bad_input_is_one_line_and_status_1() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    synth(&data, 200);
    let json = tmp.path().join("r.json");
    let j = s(&json);
    assert_clean_failure(
        &[
            "bench",
            "index",
            "--dataset",
            s(&tmp.path().join("missing")),
            "--json",
            j,
        ],
        "missing",
    );
    assert_clean_failure(
        &[
            "bench",
            "index",
            "--dataset",
            s(&data),
            "--m",
            "300",
            "--json",
            j,
        ],
        "M = 300 is outside 2..=256",
    );
    assert_clean_failure(
        &[
            "bench",
            "index",
            "--dataset",
            s(&data),
            "--ef",
            "0",
            "--json",
            j,
        ],
        "ef = 0",
    );
    assert_clean_failure(
        &[
            "bench",
            "index",
            "--dataset",
            s(&data),
            "--distance",
            "cosine",
            "--json",
            j,
        ],
        "unknown distance",
    );
    assert_clean_failure(
        &[
            "bench",
            "index",
            "--vectors",
            s(&tmp.path().join("nope.npy")),
            "--json",
            j,
        ],
        "nope.npy",
    );

    // Queries of another dimension than the base.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for f in ["base.npy", "gt.npy"] {
        std::fs::copy(data.join(f), bad.join(f)).unwrap();
    }
    npy::write(&bad.join("queries.npy"), 40, 3, &[0.5f32; 120]).unwrap();
    assert_clean_failure(
        &["bench", "index", "--dataset", s(&bad), "--json", j],
        "dimension",
    );
    // A 1-D array where a matrix belongs.
    let mut one_d = std::fs::read(data.join("queries.npy")).unwrap();
    let shape_at = one_d.windows(8).position(|w| w == b"(40, 16)").unwrap();
    one_d.splice(shape_at..shape_at + 8, b"(640,)  ".iter().copied());
    std::fs::write(bad.join("queries.npy"), &one_d).unwrap();
    assert_clean_failure(
        &["bench", "index", "--dataset", s(&bad), "--json", j],
        "expected 2",
    );
    // Not an npy file at all.
    std::fs::write(bad.join("queries.npy"), b"hello").unwrap();
    assert_clean_failure(
        &["bench", "index", "--dataset", s(&bad), "--json", j],
        "not a .npy file",
    );
    // Truth too shallow for recall@10.
    std::fs::copy(data.join("queries.npy"), bad.join("queries.npy")).unwrap();
    npy::write(&bad.join("gt.npy"), 40, 5, &[1i32; 200]).unwrap();
    assert_clean_failure(
        &["bench", "index", "--dataset", s(&bad), "--json", j],
        "recall@10 needs 10",
    );
    // Truth ids outside the base set.
    std::fs::copy(data.join("queries.npy"), bad.join("queries.npy")).unwrap();
    npy::write(&bad.join("gt.npy"), 40, 10, &[500i32; 400]).unwrap();
    assert_clean_failure(
        &["bench", "index", "--dataset", s(&bad), "--json", j],
        "names row 500",
    );
    assert_clean_failure(
        &["bench", "plot", s(&data.join("base.npy"))],
        "not an htg bench index report",
    );
}

#[test]
fn embed_reports_images_per_second_by_stage() {
    let tmp = TempDir::new().unwrap();
    let json = tmp.path().join("e.json");
    let out = htg_ok(&[
        "bench",
        "embed",
        "--model",
        s(&tiny_model()),
        "--images",
        s(&fixture("images")),
        "--batches",
        "1,4",
        "--limit",
        "8",
        "--json",
        s(&json),
    ]);
    assert!(out.contains("| 4 |"), "{out}");
    let r = report(&json);
    assert_eq!(r["schema"], "htg-bench-embed/2");
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row["images"], 8);
        assert!(row["images_per_s"].as_f64().unwrap() > 0.0);
        assert!(row["inference_s"].as_f64().unwrap() > 0.0);
    }
    assert_clean_failure(
        &[
            "bench",
            "embed",
            "--model",
            s(&tiny_model()),
            "--images",
            s(&fixture("images")),
            "--batches",
            "0",
        ],
        "--batches",
    );
    assert_clean_failure(
        &[
            "bench",
            "embed",
            "--model",
            s(&tiny_model()),
            "--images",
            s(&tmp.path().join("none")),
        ],
        "no image folder",
    );
}

#[test]
#[cfg_attr(
    not(feature = "train"),
    ignore = "needs a build with --features train (the README's test command has it)"
)]
fn dataset_embed_embeds_a_class_folder_as_training_loads_it() {
    let tmp = TempDir::new().unwrap();
    let classes = tmp.path().join("classes");
    let mut pngs: Vec<_> = std::fs::read_dir(fixture("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    pngs.sort();
    for (i, p) in pngs.iter().take(16).enumerate() {
        let dir = classes.join(format!("c{}", i % 4));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let out = tmp.path().join("ds");
    htg_ok(&[
        "bench",
        "dataset",
        "embed",
        "--data",
        s(&classes),
        "--model",
        s(&tiny_model()),
        "--out",
        s(&out),
        "--holdout",
        "4",
    ]);
    let base: npy::Matrix<f32> = npy::read(&out.join("base.npy")).unwrap();
    let gt: npy::Matrix<i32> = npy::read(&out.join("gt.npy")).unwrap();
    assert_eq!(base.rows, 12);
    assert_eq!((gt.rows, gt.cols), (4, 12));
    let meta = report(&out.join("dataset.json"));
    assert!(
        meta["name"].as_str().unwrap().contains("tiny.onnx"),
        "{meta}"
    );
    assert_clean_failure(
        &[
            "bench",
            "dataset",
            "embed",
            "--data",
            "no-such-set",
            "--model",
            s(&tiny_model()),
            "--out",
            s(&out),
        ],
        "no-such-set",
    );
}

/// The peers' Python (scripts/setup-peers.sh), when installed: `$HTG_PEERS_PYTHON`, else the
/// venv under `$HTG_CACHE_DIR` (default ~/.cache/htg).
fn peers_python() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("HTG_PEERS_PYTHON") {
        return Some(p.into());
    }
    let cache = std::env::var_os("HTG_CACHE_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/htg")))?;
    let py = cache.join("peers-venv/bin/python");
    py.is_file().then_some(py)
}

#[test]
#[ignore = "needs the benchmark peers' venv (scripts/setup-peers.sh; torch alone is 5.4 GB)"]
fn peers_script_writes_the_same_schema_when_installed() {
    let py = peers_python().expect("no peers venv (run scripts/setup-peers.sh)");
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    synth(&data, 800);
    let ours = tmp.path().join("htg.json");
    htg_ok(&[
        "bench",
        "index",
        "--dataset",
        s(&data),
        "--m",
        "8",
        "--ef-construction",
        "40",
        "--ef",
        "10,32",
        "--no-exact",
        "--min-seconds",
        "0",
        "--json",
        s(&ours),
        "--plots",
        "-",
    ]);
    let theirs = tmp.path().join("peers.json");
    let out = std::process::Command::new(py)
        .arg(crate::util::root().join("benches/peers/ann_peers.py"))
        .args([
            "--dataset",
            s(&data),
            "--libraries",
            "hnswlib,faiss,usearch",
            "--m",
            "8",
        ])
        .args([
            "--ef-construction",
            "40",
            "--ef",
            "10,32",
            "--min-seconds",
            "0",
        ])
        .args(["--json", s(&theirs)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r = report(&theirs);
    assert_eq!(r["schema"], "htg-bench-index/1");
    assert_eq!(r["builds"].as_array().unwrap().len(), 3);
    for b in r["builds"].as_array().unwrap() {
        let best = b["searches"][1]["recall_at_10"].as_f64().unwrap();
        assert!(best > 0.9 && best <= 1.0, "{b}");
    }
    let table = htg_ok(&[
        "bench",
        "plot",
        s(&ours),
        s(&theirs),
        "--out",
        s(tmp.path()),
    ]);
    for peer in ["hnswlib/l2sq", "faiss/l2sq", "usearch/l2sq"] {
        assert!(
            // htg's default engine is ours now (`--engine htg`), compared with each peer.
            table.contains(&format!("| htg/l2sq | {peer} |")),
            "{table}"
        );
    }
}

#[test]
fn index_sweep_quantises_the_htg_index_to_int8_and_keeps_recall() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    synth(&data, 1500);
    let json = tmp.path().join("int8.json");
    let table = htg_ok(&[
        "bench",
        "index",
        "--dataset",
        s(&data),
        "--engine",
        "htg",
        "--quantize",
        "int8",
        "--m",
        "12",
        "--ef-construction",
        "60",
        "--ef",
        "64",
        "--no-exact",
        "--min-seconds",
        "0",
        "--json",
        s(&json),
        "--plots",
        "-",
    ]);
    assert!(table.contains("| htg | int8 | 12 | 60 | 64 |"), "{table}");
    let r = report(&json);
    let b = &r["builds"][0];
    assert_eq!(b["distance"], "int8", "{b}");
    let recall = b["searches"][0]["recall_at_10"].as_f64().unwrap();
    assert!(recall > 0.9, "int8 at ef=64 on 1500 points: {recall}");
}

#[test]
fn index_sweep_measures_the_production_index_on_both_engines() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    synth(&data, 1500);
    let json = tmp.path().join("engines.json");
    let table = htg_ok(&[
        "bench",
        "index",
        "--dataset",
        s(&data),
        "--engine",
        "htg,hnsw_rs",
        "--m",
        "12",
        "--ef-construction",
        "60",
        "--ef",
        "16,64",
        "--no-exact",
        "--min-seconds",
        "0",
        "--json",
        s(&json),
        "--plots",
        "-",
    ]);
    assert!(table.contains("| htg | l2sq | 12 | 60 | 64 |"), "{table}");
    let r = report(&json);
    let builds = r["builds"].as_array().unwrap();
    let libs: Vec<&str> = builds
        .iter()
        .map(|b| b["library"].as_str().unwrap())
        .collect();
    assert_eq!(libs, ["htg", "hnsw_rs"]);
    for b in builds {
        // The production index keeps vectors, graph, records and metadata on disk.
        assert!(b["index_bytes"].as_u64().unwrap() > 1500 * 16 * 4, "{b}");
        let best = b["searches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["recall_at_10"].as_f64().unwrap())
            .fold(0.0, f64::max);
        assert!(
            best > 0.9,
            "{} at ef=64 on 1500 points: {best}",
            b["library"]
        );
    }
    assert_clean_failure(
        &["bench", "index", "--dataset", s(&data), "--engine", "faiss"],
        "unknown engine",
    );
}
