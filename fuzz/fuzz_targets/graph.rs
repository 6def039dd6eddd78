//! The engine's graph file (vectors, links, codes; memory-mapped and validated on open): any
//! file opens into a graph whose links are valid, or is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("graph.htgg");
    std::fs::write(&path, data).expect("write");
    if let Ok(g) = htg_ann::graph::Graph::open(&path) {
        g.validate().expect("an opened graph validates");
    }
});
