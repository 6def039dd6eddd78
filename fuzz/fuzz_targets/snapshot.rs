//! Snapshot files (`POST /snapshots`, `htg snapshot restore`): any file unpacks into named
//! files or is refused; names never escape the directory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("fuzz.htgsnap");
    std::fs::write(&path, data).expect("write");
    if let Ok(files) = htg_retrieval::index::snapshot::read(&path) {
        for (name, _) in files {
            assert!(!name.contains('/') && !name.starts_with('.'), "{name:?}");
        }
    }
});
