//! An index written by an earlier release opens with today's code, byte formats and all:
//! `tests/fixtures/index-0.1.0` was made by `htg` 0.1.0 (main at 6675c67, before the byte
//! codec, the engine and the log moved into their present modules; its README says how): a
//! checkpoint (graph file, records, metadata) and a log it never checkpointed (an add and a
//! delete over HTTP, then SIGKILL).

use std::path::Path;

use htg_retrieval::index::{self, Location};
use htg_retrieval::{Record, SearchIndex, SearchOptions};
use tempfile::TempDir;

use crate::util::fixture;

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn an_index_written_by_release_0_1_0_opens_replays_its_log_and_takes_new_writes() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("idx");
    copy_tree(&fixture("index-0.1.0"), &dir);
    let idx = index::open(Location::Dir(dir.clone())).expect("the 0.1.0 index opens");
    // 23 photos checkpointed as ids 1..=23 (ids start at 1); the log adds id 24 and deletes id 3.
    assert_eq!(idx.len(), 23);
    assert_eq!(idx.dim(), 128);
    assert!(idx.record(3).is_none(), "the logged delete was replayed");
    let added = idx.record(24).expect("the logged add was replayed");
    assert!(added.path.starts_with("idx/uploads/"), "{}", added.path);
    let first = idx.record(1).expect("a checkpointed record");
    assert!(first.path.starts_with("/srv/photos/"), "{}", first.path);
    assert_eq!(first.sha256.len(), 64);
    // Every stored vector finds itself first, on the graph file's links.
    for id in [1u64, 10, 23, 24] {
        let v = idx.vector(id).expect("stored vector");
        let hits = idx.search(&v, 3, &SearchOptions::default()).unwrap();
        assert_eq!(hits[0].id, id);
        assert!(hits[0].distance < 1e-5, "{}", hits[0].distance);
    }
    // Today's writes go into the same index and survive a reopen.
    let v = idx.vector(5).unwrap();
    let new = idx
        .insert(
            Record {
                path: "new.png".into(),
                sha256: "0".repeat(64),
                label: None,
            },
            &v,
        )
        .unwrap();
    idx.flush().unwrap();
    drop(idx);
    let idx = index::open(Location::Dir(dir)).unwrap();
    assert_eq!(idx.len(), 24);
    assert_eq!(idx.record(new).unwrap().path, "new.png");
    assert_eq!(idx.record(24).unwrap().path, added.path);
}
