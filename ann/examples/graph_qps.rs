//! One-thread search speed of [`htg_ann::graph::Graph`] on a data set directory, for profiling
//! and for trying engine changes without rebuilding the crates above this one.
//!
//! `cargo run -p htg-ann --example graph_qps -- DATASET_DIR [EF,EF..] [SECONDS] [GRAPH_FILE] [int8]`
//!
//! With `int8` the graph is quantised after loading (traversal on 8-bit codes, `f32` rescoring),
//! and the heap bytes it holds are printed.
//! With `GRAPH_FILE` the graph is built once, saved there, and opened from it on later runs
//! (copied into memory), so repeated runs measure the same graph. Speed claims come from
//! `htg bench index` beside the peers, not from this.

use std::path::Path;
use std::time::Instant;

use htg_ann::dataset::Dataset;
use htg_ann::graph::{Graph, GraphParams};
use htg_ann::stats;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(
        args.get(1)
            .ok_or("usage: graph_qps DATASET_DIR [EFS] [SECONDS] [FILE]")?,
    );
    let efs: Vec<usize> = args
        .get(2)
        .map_or("16,32,48,64", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let seconds: f64 = args.get(3).map_or(Ok(3.0), |s| s.parse())?;
    let data = Dataset::load(dir)?;
    let file = args.get(4).map(Path::new);
    let t = Instant::now();
    let mut graph = match file {
        Some(f) if f.exists() => {
            let mut g = Graph::open(f)?;
            g.reserve(0)?;
            eprintln!(
                "opened {} in {:.2} s",
                f.display(),
                t.elapsed().as_secs_f64()
            );
            g
        }
        _ => {
            let g = Graph::build(&data.base, GraphParams::default())?;
            eprintln!("built in {:.2} s", t.elapsed().as_secs_f64());
            if let Some(f) = file {
                g.save(f)?;
            }
            g
        }
    };
    if args.get(5).is_some_and(|a| a == "int8") {
        graph.quantize()?;
    }
    eprintln!(
        "graph heap {:.1} MiB",
        graph.heap_bytes() as f64 / (1 << 20) as f64
    );
    for &ef in &efs {
        for i in 0..data.queries.rows.min(100) {
            std::hint::black_box(graph.search(data.queries.row(i), 10, ef, None)?);
        }
        let start = Instant::now();
        let mut found = Vec::with_capacity(data.queries.rows);
        let mut n = 0usize;
        while start.elapsed().as_secs_f64() < seconds {
            for i in 0..data.queries.rows {
                let r = graph.search(data.queries.row(i), 10, ef, None)?;
                if found.len() < data.queries.rows {
                    found.push(r.into_iter().map(|(id, _)| id as usize).collect());
                }
            }
            n += data.queries.rows;
        }
        let qps = n as f64 / start.elapsed().as_secs_f64();
        println!(
            "htg ef={ef} R@10={:.4} qps={qps:.0}",
            stats::recall(&found, &data.gt, 10)
        );
    }
    Ok(())
}
