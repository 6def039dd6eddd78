//! One-thread QPS and recall@10 of a saved index file over a data set directory, for tuning
//! the search loop without rebuilding: `search_file INDEX DATASET_DIR [EF,...]`.
//! With `--build`, first builds INDEX from the data set (M=16, efc=200, all threads); with
//! `--quantize`, searches an 8-bit copy of INDEX (written beside it) instead. Prints the
//! resident set size after the searches (mapped pages touched included).

use std::path::Path;
use std::time::Instant;

use htg_ann::dataset::Dataset;
use htg_ann::graph::{Graph, GraphParams};
use htg_ann::stats;

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| !a.starts_with("--")).collect();
    let build = std::env::args().any(|a| a == "--build");
    let quantize = std::env::args().any(|a| a == "--quantize");
    let (index, dir) = (Path::new(&args[1]), Path::new(&args[2]));
    let efs: Vec<usize> = args
        .get(3)
        .map_or("10,16,32,64,128".into(), |s| s.clone())
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let ds = Dataset::load(dir).unwrap();
    if build {
        let t = Instant::now();
        let g = Graph::build(
            &ds.base,
            GraphParams {
                seed: 1,
                ..GraphParams::default()
            },
        )
        .unwrap();
        println!("build {:.1} s", t.elapsed().as_secs_f64());
        g.save(index).unwrap();
    }
    let mut path = index.to_path_buf();
    if quantize {
        let mut g = Graph::open(index).unwrap();
        g.reserve(0).unwrap();
        g.quantize().unwrap();
        path = index.with_extension("int8.htg");
        g.save(&path).unwrap();
    }
    let rss0 = rss_bytes("VmRSS:");
    let anon0 = rss_bytes("RssAnon:");
    let g = Graph::open(&path).unwrap();
    for ef in efs {
        let mut found = Vec::new();
        for i in 0..ds.queries.rows.min(200) {
            std::hint::black_box(g.search(ds.queries.row(i), 10, ef, None).unwrap());
        }
        let t = Instant::now();
        let mut n = 0;
        while t.elapsed().as_secs_f64() < 2.0 {
            for i in 0..ds.queries.rows {
                let r = g.search(ds.queries.row(i), 10, ef, None).unwrap();
                if found.len() < ds.queries.rows {
                    found.push(r.into_iter().map(|p| p.0 as usize).collect::<Vec<_>>());
                }
            }
            n += ds.queries.rows;
        }
        let qps = n as f64 / t.elapsed().as_secs_f64();
        let r = stats::recall(&found, &ds.gt, 10);
        println!("ef={ef:<4} recall@10={r:.4} qps={qps:.0}");
    }
    println!(
        "heap {:.1} MB; while open and searched, RSS grew {:.1} MB, of it anonymous {:.1} MB \
         (the rest is file pages of the map, reclaimable)",
        g.heap_bytes() as f64 / 1e6,
        rss_bytes("VmRSS:").saturating_sub(rss0) as f64 / 1e6,
        rss_bytes("RssAnon:").saturating_sub(anon0) as f64 / 1e6
    );
}

fn rss_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
