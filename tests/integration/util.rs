//! Shared helpers for the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path under `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// The tiny fixture model with full metadata.
pub fn tiny_model() -> PathBuf {
    fixture("models/tiny.onnx")
}

/// Runs the real `htg` binary.
pub fn htg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_htg"))
        .args(args)
        .output()
        .expect("htg binary runs")
}

/// Runs `htg` and asserts success, returning stdout.
pub fn htg_ok(args: &[&str]) -> String {
    let out = htg(args);
    assert!(
        out.status.success(),
        "htg {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Stderr as a string.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Copies the files (not subfolders) of `from` into `to`.
pub fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Parses `htg search --json` output into (path, distance, id) triples.
pub fn parse_results(json: &str) -> Vec<(String, f64, u64)> {
    let v: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
    v["results"]
        .as_array()
        .expect("results array")
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                r["distance"].as_f64().unwrap(),
                r["id"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A path as a `&str` argument.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
