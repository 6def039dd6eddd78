//! Bad input yields a precise message and loses nothing.

use htg_retrieval::{LocalIndex, SearchIndex};
use tempfile::TempDir;

use crate::util::{copy_files, fixture, htg, htg_ok, s, stderr, tiny_model};

#[test]
fn bad_files_are_skipped_named_and_counted() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("bad");
    copy_files(&fixture("bad"), &dir);
    std::fs::write(dir.join("notes.txt"), "not an image extension").unwrap();
    let idx = tmp.path().join("idx");
    let out = htg(&[
        "index",
        s(&dir),
        "--index",
        s(&idx),
        "--model",
        s(&tiny_model()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    for bad in ["corrupt.png", "notanimage.jpg", "empty.png"] {
        assert!(
            err.lines()
                .any(|l| l.starts_with("skipped ") && l.contains(bad)),
            "{bad} not named: {err}"
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("embedded 1 new"), "{stdout}");
    assert!(stdout.contains("skipped 3 bad"), "{stdout}");
    assert!(stdout.contains("ignored 1 non-image"), "{stdout}");
    assert_eq!(LocalIndex::open(&idx).unwrap().len(), 1);
}

/// Indexes `tests/fixtures/bad` (one good image) with the tiny model into `idx`.
fn index_bad_folder(idx: &std::path::Path) {
    htg_ok(&[
        "index",
        s(&fixture("bad")),
        "--index",
        s(idx),
        "--model",
        s(&tiny_model()),
    ]);
}

fn one_line_error(args: &[&str], needle: &str) {
    let out = htg(args);
    assert!(!out.status.success(), "{args:?} should fail");
    // `--backend auto` names its choice on a line of its own first; the error is one line.
    let e: String = stderr(&out)
        .lines()
        .filter(|l| !l.starts_with("backend: "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(e.trim_end().lines().count(), 1, "one line expected: {e}");
    assert!(e.starts_with("error: "), "{e}");
    assert!(e.contains(needle), "{needle:?} not in {e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn missing_things_give_one_line_errors() {
    let tmp = TempDir::new().unwrap();
    let idx = tmp.path().join("idx");
    one_line_error(
        &[
            "index",
            s(&fixture("images")),
            "--index",
            s(&idx),
            "--model",
            "/nonexistent/m.onnx",
        ],
        "/nonexistent/m.onnx",
    );
    if crate::util::root()
        .join("models/emoji-scratch.onnx")
        .is_file()
    {
        // Without --model the bundled default model is used.
        let out = htg_ok(&["index", s(&fixture("bad")), "--index", s(&idx)]);
        assert!(out.contains("embedded 1 new"), "{out}");
        std::fs::remove_dir_all(&idx).unwrap();
    } else {
        one_line_error(
            &["index", s(&fixture("images")), "--index", s(&idx)],
            "--model is required",
        );
    }
    one_line_error(
        &[
            "index",
            "/nonexistent/dir",
            "--index",
            s(&idx),
            "--model",
            s(&tiny_model()),
        ],
        "/nonexistent/dir",
    );
    one_line_error(
        &[
            "search",
            "--index",
            s(&idx),
            s(&fixture("images/26fa-google.png")),
        ],
        "no index at",
    );
    // A text file passed as a model.
    one_line_error(
        &["inspect-model", s(&fixture("bad/notanimage.jpg"))],
        "not a valid ONNX model",
    );
}

#[test]
fn query_with_another_model_is_refused() {
    let tmp = TempDir::new().unwrap();
    let idx = tmp.path().join("idx");
    index_bad_folder(&idx);
    one_line_error(
        &[
            "search",
            "--index",
            s(&idx),
            s(&fixture("bad/good-google.png")),
            "--model",
            s(&fixture("models/tiny_nhwc_gap.onnx")),
        ],
        "index was built with model",
    );
    one_line_error(
        &["search", "--index", s(&idx), s(&fixture("bad/corrupt.png"))],
        "corrupt.png",
    );
}

#[test]
fn an_interrupted_save_leaves_the_previous_index_readable() {
    let tmp = TempDir::new().unwrap();
    let idx = tmp.path().join("idx");
    index_bad_folder(&idx);
    // Simulate a crash mid-save: a half-written generation and a torn CURRENT temp file.
    let torn = idx.join(".tmp-gen-999-1");
    std::fs::create_dir_all(&torn).unwrap();
    std::fs::write(torn.join("meta.json"), "{\"format_vers").unwrap();
    std::fs::write(idx.join(".CURRENT.tmp"), "gen-9").unwrap();
    let i = LocalIndex::open(&idx).unwrap();
    assert_eq!(i.len(), 1);
    // The next save cleans the leftovers.
    htg_ok(&["index", s(&fixture("images")), "--index", s(&idx)]);
    assert!(!torn.exists());
}

#[test]
fn killing_the_indexer_mid_run_never_corrupts_the_index() {
    let tmp = TempDir::new().unwrap();
    let idx = tmp.path().join("idx");
    index_bad_folder(&idx);
    let images = tmp.path().join("many");
    for i in 0..20 {
        copy_files(&fixture("images"), &images.join(format!("{i}")));
    }
    for delay_ms in [5u64, 40, 120, 300] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_htg"))
            .args(["index", s(&images), "--index", s(&idx)])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let i = LocalIndex::open(&idx).expect("index readable after kill");
        // Every batch is durable once logged, so a kill keeps what was embedded so far.
        assert!((1..=1 + 480).contains(&i.len()), "len {}", i.len());
    }
    // A rerun completes the index without duplicating what the killed runs kept.
    htg_ok(&["index", s(&images), "--index", s(&idx)]);
    assert_eq!(LocalIndex::open(&idx).unwrap().len(), 1 + 480);
}
