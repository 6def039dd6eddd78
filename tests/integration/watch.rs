//! Folders that index themselves: `htg serve --watch` and `htg index --watch` on real files,
//! with the real server over a socket.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::http::Server;
use crate::util::{copy_files, fixture, htg_ok, s, tiny_model};

/// The promise the issue makes: a change is searchable (or gone) within this.
const WITHIN: Duration = Duration::from_secs(5);

fn watch_status(srv: &Server) -> Value {
    let st = srv.get("/stats").json();
    st["watch"].clone()
}

/// Polls until `f` holds, returning how long it took; panics with `what` past `limit`.
fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The paths of the `k` nearest images to `file`'s bytes.
fn nearest(srv: &Server, file: &Path, k: usize) -> Vec<(String, f64)> {
    let bytes = std::fs::read(file).unwrap();
    let r = srv.post(&format!("/search?k={k}"), "image/png", &bytes);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["path"].as_str().unwrap().to_string(),
                h["distance"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn count(srv: &Server) -> u64 {
    srv.get("/stats").json()["count"].as_u64().unwrap()
}

/// Indexes five fixture images into `tmp/images` and returns (images, index, spare files).
fn setup(tmp: &TempDir) -> (PathBuf, PathBuf, Vec<PathBuf>) {
    let all = tmp.path().join("all");
    copy_files(&fixture("images"), &all);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&all)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for f in &files[..5] {
        std::fs::copy(f, images.join(f.file_name().unwrap())).unwrap();
    }
    let idx = tmp.path().join("idx");
    htg_ok(&[
        "index",
        s(&images),
        "--index",
        s(&idx),
        "--model",
        s(&tiny_model()),
    ]);
    (images.canonicalize().unwrap(), idx, files[5..].to_vec())
}

#[test]
fn a_watched_folder_follows_adds_deletes_and_slow_writes_and_a_kill_loses_nothing() {
    let tmp = TempDir::new().unwrap();
    let (images, idx, spare) = setup(&tmp);
    let args = ["--watch", s(&images), "--watch-settle-ms", "300"];
    let srv = Server::start_with(&idx, &args, &[]);

    // A restart over an indexed folder re-reads each file's sha256 and embeds nothing.
    wait_for(Duration::from_secs(30), "the first walk", || {
        let w = watch_status(&srv);
        w["scans"].as_u64() >= Some(1) && w["queued"] == 0 && w["unchanged"] == 5
    });
    let w = watch_status(&srv);
    assert_eq!(w["indexed"], 0, "{w}");
    assert_eq!(w["events"], true, "{w}");
    assert_eq!(count(&srv), 5);

    // A file copied in is searchable within 5 s, under its own path.
    let new = images.join(spare[0].file_name().unwrap());
    std::fs::copy(&spare[0], &new).unwrap();
    let took = wait_for(WITHIN, "a copied file becomes searchable", || {
        nearest(&srv, &new, 1)
            .first()
            .is_some_and(|(p, d)| Path::new(p) == new && *d < 1e-4)
    });
    eprintln!("copied file searchable after {took:?}");
    assert_eq!(count(&srv), 6);

    // A deleted file leaves within 5 s.
    let gone = images.join(
        std::fs::read_dir(&images)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| *p != new)
            .min()
            .unwrap(),
    );
    std::fs::remove_file(&gone).unwrap();
    wait_for(WITHIN, "a deleted file leaves the index", || {
        count(&srv) == 5
    });
    assert!(nearest(&srv, &spare[0], 10)
        .iter()
        .all(|(p, _)| Path::new(p) != gone));

    // A file written in two halves, with a pause longer than the settle time between them,
    // is indexed once, complete: the first half does not decode and is retried.
    let slow = images.join("slow-copy.png");
    let bytes = std::fs::read(&spare[1]).unwrap();
    let half = bytes.len() / 2;
    {
        let mut f = std::fs::File::create(&slow).unwrap();
        f.write_all(&bytes[..half]).unwrap();
        f.sync_all().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        f.write_all(&bytes[half..]).unwrap();
        f.sync_all().unwrap();
    }
    wait_for(WITHIN, "the slowly written file is indexed", || {
        count(&srv) == 6
    });
    let hits = nearest(&srv, &spare[1], 6);
    assert!(
        Path::new(&hits[0].0) == slow && hits[0].1 < 1e-4,
        "the complete file is what was indexed: {hits:?}"
    );
    assert_eq!(
        hits.iter().filter(|(p, _)| Path::new(p) == slow).count(),
        1,
        "indexed once: {hits:?}"
    );
    let w = watch_status(&srv);
    assert_eq!(w["failed"], 0, "{w}");
    assert_eq!(w["indexed"], 2, "{w}");
    assert_eq!(w["removed"], 1, "{w}");

    // SIGKILL: everything the server reported is still there after a restart, and the
    // restarted watcher embeds nothing again.
    let before = count(&srv);
    drop(srv);
    let srv = Server::start_with(&idx, &args, &[]);
    assert_eq!(count(&srv), before, "acknowledged writes survive a kill");
    wait_for(
        Duration::from_secs(30),
        "the walk after the restart",
        || {
            let w = watch_status(&srv);
            w["scans"].as_u64() >= Some(1) && w["queued"] == 0 && w["unchanged"] == 6
        },
    );
    let w = watch_status(&srv);
    assert_eq!(
        (w["indexed"].clone(), w["removed"].clone()),
        (0.into(), 0.into()),
        "{w}"
    );
    assert!(nearest(&srv, &new, 1)
        .first()
        .is_some_and(|(p, _)| Path::new(p) == new));
    srv.terminate();
}

#[test]
fn index_watch_keeps_a_folder_indexed_until_it_is_stopped() {
    let tmp = TempDir::new().unwrap();
    let (images, idx, spare) = setup(&tmp);
    let mut child = Command::new(env!("CARGO_BIN_EXE_htg"))
        .args(["index", s(&images), "--index", s(&idx), "--model"])
        .arg(tiny_model())
        .args(["--watch", "--watch-settle-ms", "300"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send(l);
        }
    });
    let mut lines = Vec::new();
    let mut expect = |what: &str, limit: Duration| {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                let hit = l.contains(what);
                lines.push(l);
                if hit {
                    return;
                }
            }
        }
        panic!("no line with {what:?} within {limit:?}: {lines:#?}");
    };
    expect("watching", Duration::from_secs(60));
    let new = images.join("added.png");
    std::fs::copy(&spare[0], &new).unwrap();
    expect("watch: indexed 1 (+1)", WITHIN);
    std::fs::remove_file(&new).unwrap();
    expect("removed 1 (+1)", WITHIN);
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    expect(
        "stopped watching: 1 indexed, 1 removed, 0 failed",
        Duration::from_secs(30),
    );
    assert!(child.wait().unwrap().success());
    let found = htg_ok(&["search", "--index", s(&idx), s(&spare[0]), "-k", "10"]);
    assert!(!found.contains("added.png"), "{found}");
    assert!(found.contains(&images.display().to_string()), "{found}");
}
