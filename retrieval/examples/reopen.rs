//! Time to a first answer when opening a saved index (what a restarted server waits before
//! it can search), and resident memory after 1,000 queries against the size of the graph
//! file (vectors and links). `htg bench writes` measures one reopen after building; this
//! repeats the reopen of an existing index (build one with `htg bench writes --dir D`) so
//! that changes to the open path can be compared on the same files, page cache warm as after
//! a save.
//!
//! `cargo run --example reopen -p htg-retrieval -- DIR [TIMES]`: DIR is the index directory
//! (the one holding `CURRENT`).

use std::time::Instant;

use htg_retrieval::{LocalIndex, SearchIndex, SearchOptions};

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |k| k / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: reopen DIR [TIMES]")?;
    let times: usize = args.next().map_or(Ok(5), |t| t.parse())?;
    if times == 0 {
        return Err("TIMES must be at least 1".into());
    }
    let gen = std::fs::read_to_string(std::path::Path::new(&dir).join("CURRENT"))?;
    let graph = std::path::Path::new(&dir)
        .join(gen.trim())
        .join("graph.htg");
    let graph_mib = std::fs::metadata(&graph)?.len() as f64 / 1048576.0;
    let rss_before = rss_mib();
    let mut took = Vec::new();
    let mut last = None;
    for _ in 0..times {
        drop(last.take());
        let t = Instant::now();
        let index = LocalIndex::open(dir.as_ref())?;
        let opened = t.elapsed().as_secs_f64();
        let query = vec![1.0 / (index.dim() as f32).sqrt(); index.dim()];
        index.search(&query, 10, &SearchOptions::default())?;
        let answered = t.elapsed().as_secs_f64();
        println!("opened in {opened:.3} s, first answer at {answered:.3} s");
        took.push(answered);
        last = Some(index);
    }
    took.sort_by(f64::total_cmp);
    println!(
        "first answer: min {:.3} s, median {:.3} s over {times}",
        took[0],
        took[took.len() / 2]
    );
    let index = last.ok_or("no index")?;
    // Queries spread over the space: a fixed-seed xorshift, so runs compare.
    let dim = index.dim();
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..1000 {
        let mut q: Vec<f32> = (0..dim)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let n = q.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        q.iter_mut().for_each(|x| *x /= n);
        index.search(&q, 10, &SearchOptions::default())?;
    }
    let rss = rss_mib();
    println!(
        "after 1000 queries: RSS {rss:.1} MiB ({:.1} over the process's start), graph file {graph_mib:.1} MiB ({:.3}x, {:.3}x over the start)",
        rss - rss_before,
        rss / graph_mib,
        (rss - rss_before) / graph_mib
    );
    Ok(())
}
