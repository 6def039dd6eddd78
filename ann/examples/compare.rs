//! Our graph against `hnsw_rs` on the seeded clustered set: build time on the current rayon
//! pool, memory, and one-thread QPS and recall@10 over a range of `ef`.
//!
//! `cargo run --release -p htg-ann --example compare -- [N] [THREADS] [DIR]`
//! (defaults 100000 and 2; with DIR the data set is also written there for the Python peers).

use std::time::Instant;

use htg_ann::dataset::{clustered, Dataset, SynthParams};
use htg_ann::engine::Engine;
use htg_ann::graph::Graph;
use htg_ann::hnsw::{search_serial, BuildParams, Index, Metric, Searcher};
use htg_ann::{exact, stats};

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn sweep(
    name: &str,
    idx: &Index,
    queries: &htg_ann::npy::Matrix<f32>,
    gt: &htg_ann::npy::Matrix<i32>,
) {
    for ef in [10, 16, 24, 32, 48, 64, 96, 128] {
        let run = search_serial(Searcher::Hnsw(idx, ef), queries, 10, 1.0).unwrap();
        let r = stats::recall(&run.found, gt, 10);
        let qps = run.queries as f64 / run.seconds;
        let p50 = stats::percentile(&run.latencies_ns, 50.0) as f64 / 1e3;
        println!("{name:>12} ef={ef:<4} recall@10={r:.4} qps={qps:>8.0} p50={p50:.1}us");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map_or(100_000, |s| s.parse().unwrap());
    let threads: usize = args.get(2).map_or(2, |s| s.parse().unwrap());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let (base, queries) = clustered(&SynthParams {
        n,
        ..SynthParams::default()
    })
    .unwrap();
    let gt = pool
        .install(|| exact::ground_truth(&base, &queries, 10))
        .unwrap();
    if let Some(dir) = args.get(3) {
        let ds = Dataset {
            base: base.clone(),
            queries: queries.clone(),
            gt: pool
                .install(|| exact::ground_truth(&base, &queries, 100))
                .unwrap(),
        };
        ds.save(std::path::Path::new(dir)).unwrap();
    }
    println!(
        "{n} x {} clustered, M=16 efc=200, build on {threads} threads, search on one; kernels {:?}",
        base.cols,
        htg_ann::kernels::best().level()
    );
    let p = BuildParams {
        m: 16,
        ef_construction: 200,
        metric: Metric::L2Sq,
    };
    let dir = std::env::temp_dir().join(format!("htg-compare-{}", std::process::id()));

    let rss0 = rss_bytes();
    let t = Instant::now();
    let ours = pool.install(|| Index::build_htg(&base, p, 1)).unwrap();
    let build = t.elapsed().as_secs_f64();
    let rss1 = rss_bytes();
    let Index::Htg(e) = &ours else { unreachable!() };
    let Engine::Htg(g) = e.as_ref() else {
        unreachable!()
    };
    let file = ours.dump(&dir).unwrap();
    println!(
        "htg: build {build:.1} s, heap {:.1} MB (RSS +{:.1} MB), file {:.1} MB",
        g.heap_bytes() as f64 / 1e6,
        (rss1 - rss0) as f64 / 1e6,
        file as f64 / 1e6
    );
    sweep("htg", &ours, &queries, &gt);

    // Quantised, reopened from the file: f32 vectors stay in the page cache.
    let mut q = Graph::open(&dir.join("graph.htg")).unwrap();
    q.reserve(0).unwrap();
    q.quantize().unwrap();
    let qpath = dir.join("quant.htg");
    q.save(&qpath).unwrap();
    drop(q);
    let qm = Graph::open(&qpath).unwrap();
    println!(
        "htg int8 (mapped): heap {:.1} MB, codes+links in the map {:.1} MB",
        qm.heap_bytes() as f64 / 1e6,
        (n * (128 + 33 * 4)) as f64 / 1e6
    );
    let qi = Index::Htg(Box::new(Engine::Htg(qm)));
    sweep("htg-int8", &qi, &queries, &gt);
    drop(qi);
    drop(ours);

    let rss0 = rss_bytes();
    let t = Instant::now();
    let theirs = pool.install(|| Index::build(&base, p)).unwrap();
    let build = t.elapsed().as_secs_f64();
    let rss1 = rss_bytes();
    println!(
        "hnsw_rs: build {build:.1} s, RSS +{:.1} MB",
        rss1.saturating_sub(rss0) as f64 / 1e6
    );
    sweep("hnsw_rs", &theirs, &queries, &gt);
    let _ = std::fs::remove_dir_all(&dir);
}
