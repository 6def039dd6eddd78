//! The engine's graph file (vectors, links, codes; memory-mapped and validated on open): any
//! file opens into a graph that can be searched and read, or is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("graph.htgg");
    std::fs::write(&path, data).expect("write");
    if let Ok(g) = htg_ann::graph::Graph::open(&path) {
        // An opened graph is trusted by search: walking its links must stay in bounds.
        let q = vec![0.5f32; g.dim()];
        let _ = g.search(&q, 10, 32, None);
        for id in 0..g.len().min(64) as u32 {
            let _ = g.vector(id);
            let _ = g.is_deleted(id);
        }
    }
});
