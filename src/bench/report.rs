//! The JSON report of `htg bench index`, written identically by `benches/peers/ann_peers.py`
//! so one plot and one ratio table cover htg and its peers, and its terminal tables.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::machine::Machine;

/// Schema tag; readers refuse other values.
pub const SCHEMA: &str = "htg-bench-index/1";

/// One whole run: a data set, a machine, and the build points measured on them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IndexReport {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// What was indexed.
    pub dataset: DatasetInfo,
    /// Where it ran.
    pub machine: Machine,
    /// How it ran.
    pub run: RunInfo,
    /// One entry per (library, distance, M, ef_construction).
    pub builds: Vec<BuildResult>,
}

/// The data set of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// Short name (from `dataset.json`, else the directory name).
    pub name: String,
    /// Base vectors.
    pub n: usize,
    /// Dimension.
    pub dim: usize,
    /// Queries.
    pub queries: usize,
    /// True when every vector has unit length.
    pub normalized: bool,
}

/// How a run was made.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    /// Program that measured: `htg` or `ann_peers.py`.
    pub tool: String,
    /// Its version (library versions are in each build's `library_version`).
    pub version: String,
    /// Commit of the htg checkout, when known.
    pub git_commit: Option<String>,
    /// Seed of the data set and query split.
    pub seed: u64,
    /// Neighbours asked per query.
    pub k: usize,
    /// Threads for building and for the all-threads search pass.
    pub threads: usize,
    /// Seconds each timed search pass lasts at least (repeating the queries).
    pub min_seconds: f64,
    /// The command line.
    pub command: Vec<String>,
    /// Start time, seconds since the Unix epoch.
    pub unix_time: u64,
}

/// One built index and its searches.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BuildResult {
    /// `htg` (our engine), `hnsw_rs`, `hnswlib`, `faiss`, `usearch` or `exact` (brute force).
    pub library: String,
    /// Version of the library.
    pub library_version: String,
    /// The Rust type that answered the searches, so a report says whether it measured what
    /// production runs (`htg_ann::engine::Engine` behind `LocalIndex`) or a bench-only build;
    /// for a peer, the peer's own class. Empty in reports written before it existed.
    #[serde(default)]
    pub engine: String,
    /// Distance kernel, e.g. `l2`, `dot`, `l2sq`.
    pub distance: String,
    /// Links per node (0 for exact).
    pub m: usize,
    /// Build candidate list size (0 for exact).
    pub ef_construction: usize,
    /// Build wall time in seconds.
    pub build_s: f64,
    /// Size of the persisted index in bytes (0 when nothing is persisted).
    pub index_bytes: u64,
    /// Peak resident memory of the process that loaded the data, built and searched, in MiB.
    pub peak_rss_mib: f64,
    /// Resident memory just before building (data set loaded), in MiB.
    pub rss_before_build_mib: f64,
    /// One entry per query-time ef.
    pub searches: Vec<SearchResult>,
}

/// One query-time setting of a build.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchResult {
    /// Query-time candidate list size (0 for exact).
    pub ef: usize,
    /// Fraction of queries whose first result is the true nearest neighbour.
    pub recall_at_1: f64,
    /// Mean overlap of the first 10 results with the true 10 nearest.
    pub recall_at_10: f64,
    /// Queries per second, one thread, one query at a time.
    pub qps_1t: f64,
    /// Queries per second with all threads searching different queries.
    pub qps_all: f64,
    /// Median latency of one query on one thread, microseconds.
    pub p50_us: f64,
    /// 95th percentile latency, microseconds.
    pub p95_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
}

impl IndexReport {
    /// Reads and checks a report (htg's or a peer's).
    pub fn load(path: &Path) -> Result<IndexReport> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let r: IndexReport = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not an htg bench index report", path.display()))?;
        if r.schema != SCHEMA {
            anyhow::bail!(
                "{}: schema {:?}, this htg reads {SCHEMA:?}",
                path.display(),
                r.schema
            );
        }
        Ok(r)
    }
}

/// Memory the build added: peak RSS minus RSS before building (the data set loaded), MiB. Takes
/// out each runtime's baseline (a Python interpreter is larger than htg), leaving the index.
pub fn build_mib(b: &BuildResult) -> f64 {
    (b.peak_rss_mib - b.rss_before_build_mib).max(0.0)
}

/// Label of a build in tables and legends.
pub fn label(b: &BuildResult) -> String {
    if b.library == "exact" {
        return format!("exact/{}", b.distance);
    }
    format!(
        "{}/{} M={} efc={}",
        b.library, b.distance, b.m, b.ef_construction
    )
}

/// The per-point table printed on the terminal (and pasted into docs/BENCHMARKS.md).
pub fn table(builds: &[BuildResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| library | dist | M | efc | ef | R@1 | R@10 | QPS 1t | QPS all | p50 us | p95 us | p99 us | build s | disk MiB | peak MiB |"
    );
    let _ = writeln!(s, "|{}", "---|".repeat(15));
    for b in builds {
        for q in &b.searches {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.4} | {:.4} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} | {:.0} |",
                b.library,
                b.distance,
                b.m,
                b.ef_construction,
                q.ef,
                q.recall_at_1,
                q.recall_at_10,
                q.qps_1t,
                q.qps_all,
                q.p50_us,
                q.p95_us,
                q.p99_us,
                b.build_s,
                b.index_bytes as f64 / (1024.0 * 1024.0),
                b.peak_rss_mib
            );
        }
    }
    s
}

/// For each library/distance: the fastest single-thread point with recall@10 >= `target`, and
/// the build that gave it.
pub fn best_at_recall(
    builds: &[BuildResult],
    target: f64,
) -> Vec<(String, &BuildResult, &SearchResult)> {
    let mut best: Vec<(String, &BuildResult, &SearchResult)> = Vec::new();
    for b in builds {
        let key = format!("{}/{}", b.library, b.distance);
        for q in b.searches.iter().filter(|q| q.recall_at_10 >= target) {
            match best.iter_mut().find(|e| e.0 == key) {
                Some(e) if e.2.qps_1t >= q.qps_1t => {}
                Some(e) => *e = (key.clone(), b, q),
                None => best.push((key.clone(), b, q)),
            }
        }
    }
    best
}

/// Ratios of every htg engine (`htg`, ours, and `hnsw_rs`, the design card's) to every peer at
/// recall@10 >= `target`: QPS (one thread and all threads) at each side's fastest qualifying
/// point, and the build time and memory of those builds.
pub fn ratio_table(builds: &[BuildResult], target: f64) -> String {
    let best = best_at_recall(builds, target);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Fastest point with recall@10 >= {target} per library (single-thread QPS):\n"
    );
    let _ = writeln!(
        s,
        "| library | M | efc | ef | R@10 | QPS 1t | QPS all | build s | peak MiB | build MiB |"
    );
    let _ = writeln!(s, "|{}", "---|".repeat(10));
    for (key, b, q) in &best {
        let _ = writeln!(
            s,
            "| {key} | {} | {} | {} | {:.4} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} |",
            b.m,
            b.ef_construction,
            q.ef,
            q.recall_at_10,
            q.qps_1t,
            q.qps_all,
            b.build_s,
            b.peak_rss_mib,
            build_mib(b)
        );
    }
    let is_ours = |l: &str| l == "htg" || l == "hnsw_rs";
    let ours: Vec<_> = best.iter().filter(|e| is_ours(&e.1.library)).collect();
    let peers: Vec<_> = best
        .iter()
        .filter(|e| !is_ours(&e.1.library) && e.1.library != "exact")
        .collect();
    if !ours.is_empty() && !peers.is_empty() {
        let _ = writeln!(
            s,
            "\nhtg engine / peer at recall@10 >= {target} (QPS above 1: htg faster; build time and memory above 1: htg slower, larger):\n"
        );
        let _ = writeln!(
            s,
            "| htg | peer | QPS 1t ratio | QPS all ratio | build time ratio | peak RSS ratio | build memory ratio |"
        );
        let _ = writeln!(s, "|{}", "---|".repeat(7));
        for (ok, ob, oq) in &ours {
            for (pk, pb, pq) in &peers {
                let _ = writeln!(
                    s,
                    "| {ok} | {pk} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    oq.qps_1t / pq.qps_1t,
                    oq.qps_all / pq.qps_all,
                    ob.build_s / pb.build_s,
                    ob.peak_rss_mib / pb.peak_rss_mib,
                    build_mib(ob) / build_mib(pb).max(0.1)
                );
            }
        }
    }
    if best.is_empty() {
        let _ = writeln!(s, "(no point reached recall@10 >= {target})");
    }
    s
}
