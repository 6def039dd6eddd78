//! `records.bin` (ids, paths, hashes, labels; memory-mapped): any file opens with every record
//! readable, or is refused as corrupt.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("records.bin");
    std::fs::write(&path, data).expect("write");
    if let Ok(r) = htg_retrieval::index::records::Records::open(&path) {
        for i in 0..r.slots().min(4096) as u32 {
            let _ = r.get(i);
            let _ = r.external(i);
        }
        let _ = r.all();
    }
});
