//! Opening a whole index directory (`LocalIndex::open`: `CURRENT`, `meta.json`, the engine
//! file, `records.bin`, the log) where one file has been replaced by the fuzzer's bytes:
//! it opens and answers searches, or is refused with an error, never a panic.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use htg_retrieval::index::{CreateOptions, LocalIndex};
use htg_retrieval::{ModelId, Record, SearchIndex, SearchOptions};
use libfuzzer_sys::fuzz_target;

const DIM: usize = 8;

/// A small index with a checkpoint and a log tail, built once; each run works on a copy.
fn template() -> &'static (tempfile::TempDir, Vec<PathBuf>) {
    static T: OnceLock<(tempfile::TempDir, Vec<PathBuf>)> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let idx = LocalIndex::create(
            dir.path(),
            ModelId::synthetic(DIM),
            None,
            &CreateOptions::default(),
        )
        .expect("create");
        let item = |i: usize| {
            let mut v = vec![0.0f32; DIM];
            v[i % DIM] = 1.0;
            let r = Record {
                path: format!("img-{i}.png"),
                sha256: format!("{i:064x}"),
                label: (i % 2 == 0).then(|| "even".to_string()),
            };
            (r, v)
        };
        idx.insert_many((0..20).map(item).collect())
            .expect("insert");
        idx.checkpoint().expect("checkpoint");
        idx.insert_many((20..24).map(item).collect())
            .expect("insert after the checkpoint");
        idx.remove(3).expect("remove");
        drop(idx);
        let files = walk(dir.path());
        (dir, files)
    })
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let (tpl, files) = template();
    let work = tempfile::tempdir().expect("temporary directory");
    for f in files {
        let rel = f.strip_prefix(tpl.path()).expect("inside the template");
        let to = work.path().join(rel);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(f, &to).expect("copy");
    }
    let target = files[usize::from(which) % files.len()]
        .strip_prefix(tpl.path())
        .expect("inside the template");
    std::fs::write(work.path().join(target), bytes).expect("write");
    if let Ok(idx) = LocalIndex::open(work.path()) {
        let q = vec![0.5f32; DIM];
        let _ = idx.search(&q, 5, &SearchOptions::default());
        let _ = idx.len();
    }
});
