//! HNSW builds and searches, timed the way `htg bench index` reports them: through `hnsw_rs`
//! with a choice of distance kernel, or through the production [`Engine`] on our own
//! [`crate::graph`], so the engines are measured by the same harness on the same data. The
//! timed loops take a [`Searcher`]: one of these, exact search, or any other callable (the
//! persisted index, a remote engine).

use std::path::Path;
use std::time::Instant;

use hnsw_rs::prelude::{AnnT, DistDot, DistL2, Distance, Hnsw};
use rayon::prelude::*;

use crate::engine::{Engine, EngineKind};
use crate::graph::{Distance as GraphDistance, GraphParams};
use crate::npy::Matrix;
use crate::{exact, AnnError};

/// The distance HNSW is built and searched with. On l2-normalised vectors all three rank
/// neighbours identically, so recall is comparable; they differ in cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// `hnsw_rs`'s `DistL2` (SIMD via `simdeez`, then a square root): what `htg index` uses.
    L2,
    /// `hnsw_rs`'s `DistDot` (`1 - a·b`), valid only on unit vectors.
    Dot,
    /// Our squared L2 kernel ([`exact::l2_sq`]): no square root, inlined AVX2 loop.
    #[cfg_attr(feature = "clap", value(name = "l2sq"))]
    L2Sq,
}

impl Metric {
    /// Every metric, in report order.
    pub const ALL: [Metric; 3] = [Metric::L2, Metric::Dot, Metric::L2Sq];

    /// The name used in reports; the same as serde's and clap's (a test holds them equal).
    pub fn name(self) -> &'static str {
        match self {
            Metric::L2 => "l2",
            Metric::Dot => "dot",
            Metric::L2Sq => "l2sq",
        }
    }
}

/// Squared Euclidean distance as an `hnsw_rs` distance: [`exact::l2_sq`].
#[derive(Clone, Copy, Debug, Default)]
pub struct L2Sq;

impl Distance<f32> for L2Sq {
    #[inline]
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        exact::l2_sq(va, vb)
    }
}

/// Build parameters of one sweep point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildParams {
    /// Links per node (hnswlib's M; layer 0 keeps 2M).
    pub m: usize,
    /// Candidate list size while inserting.
    pub ef_construction: usize,
    /// Distance kernel.
    pub metric: Metric,
}

impl BuildParams {
    /// Rejects values `hnsw_rs` answers with `process::exit` (M > 256) or nonsense: the
    /// same ranges as our graph's ([`crate::graph::GraphParams::validate`]).
    pub fn validate(&self) -> Result<(), AnnError> {
        crate::graph::GraphParams {
            m: self.m,
            ef_construction: self.ef_construction,
            ..Default::default()
        }
        .validate()
    }
}

/// A built graph, whichever the distance.
pub enum Index {
    /// Built with `DistL2`.
    L2(Hnsw<'static, f32, DistL2>),
    /// Built with `DistDot`.
    Dot(Hnsw<'static, f32, DistDot>),
    /// Built with [`L2Sq`].
    L2Sq(Hnsw<'static, f32, L2Sq>),
    /// The production engine on our own graph ([`Index::build_htg`]).
    Htg(Box<Engine>),
}

/// Maximum number of layers, as `htg index` builds.
const MAX_LAYER: usize = 16;

fn insert_all<D: Distance<f32> + Send + Sync>(h: &Hnsw<'static, f32, D>, data: &Matrix<f32>) {
    let items: Vec<(&[f32], usize)> = data
        .data
        .chunks_exact(data.cols)
        .enumerate()
        .map(|(i, v)| (v, i))
        .collect();
    // One parallel batch on the current rayon pool, as `LocalIndex::insert_many` does.
    h.parallel_insert_slice(&items);
}

impl Index {
    /// Builds over every row of `data` (ids are row numbers) on the current rayon pool.
    pub fn build(data: &Matrix<f32>, p: BuildParams) -> Result<Index, AnnError> {
        p.validate()?;
        if data.rows == 0 || data.cols == 0 {
            return Err(AnnError::Mismatch("no vectors to index".into()));
        }
        if p.metric == Metric::Dot && !unit_rows(data) {
            return Err(AnnError::Param(
                "distance dot needs l2-normalised vectors; use l2 or l2sq".into(),
            ));
        }
        let n = data.rows;
        Ok(match p.metric {
            Metric::L2 => {
                let h = Hnsw::new(p.m, n, MAX_LAYER, p.ef_construction, DistL2 {});
                insert_all(&h, data);
                Index::L2(h)
            }
            Metric::Dot => {
                let h = Hnsw::new(p.m, n, MAX_LAYER, p.ef_construction, DistDot {});
                insert_all(&h, data);
                Index::Dot(h)
            }
            Metric::L2Sq => {
                let h = Hnsw::new(p.m, n, MAX_LAYER, p.ef_construction, L2Sq);
                insert_all(&h, data);
                Index::L2Sq(h)
            }
        })
    }

    /// Builds our own graph over every row of `data` (ids are row numbers) on the current rayon
    /// pool, with the level draws seeded by `seed`. `L2` and `L2Sq` both build on squared L2
    /// (the same ranking); `Dot` on `1 - a·b` and needs unit vectors, as for `hnsw_rs`.
    pub fn build_htg(data: &Matrix<f32>, p: BuildParams, seed: u64) -> Result<Index, AnnError> {
        p.validate()?;
        if data.rows == 0 || data.cols == 0 {
            return Err(AnnError::Mismatch("no vectors to index".into()));
        }
        if p.metric == Metric::Dot && !unit_rows(data) {
            return Err(AnnError::Param(
                "distance dot needs l2-normalised vectors; use l2 or l2sq".into(),
            ));
        }
        let gp = GraphParams {
            m: p.m,
            ef_construction: p.ef_construction,
            distance: match p.metric {
                Metric::Dot => GraphDistance::Dot,
                Metric::L2 | Metric::L2Sq => GraphDistance::L2Sq,
            },
            seed,
        };
        let engine = Engine::build(EngineKind::Htg, data.cols, gp, data.data.clone())?;
        Ok(Index::Htg(Box::new(engine)))
    }

    /// Ids of the `k` nearest rows found with candidate list `ef`, nearest first.
    ///
    /// Not `#[inline]` on purpose: it must be compiled here, at this crate's opt-level.
    pub fn search(&self, q: &[f32], k: usize, ef: usize) -> Vec<usize> {
        let found = match self {
            Index::L2(h) => h.search(q, k, ef),
            Index::Dot(h) => h.search(q, k, ef),
            Index::L2Sq(h) => h.search(q, k, ef),
            Index::Htg(e) => {
                // A query of the wrong dimension finds nothing, as with `hnsw_rs`.
                return e
                    .search(q, k, ef, None, None)
                    .map(|v| v.into_iter().map(|(id, _)| id as usize).collect())
                    .unwrap_or_default();
            }
        };
        found.into_iter().map(|n| n.d_id).collect()
    }

    /// Writes the graph and data into `dir` as its engine persists them (`hnsw_rs`'s dump, or
    /// the production engine's file); returns the bytes written (the index size on disk).
    pub fn dump(&self, dir: &Path) -> Result<u64, AnnError> {
        std::fs::create_dir_all(dir).map_err(crate::io_err("create", dir))?;
        let r = match self {
            Index::Htg(e) => {
                e.save(dir)?;
                let file = dir.join(e.kind().file_name());
                return Ok(std::fs::metadata(&file)
                    .map_err(crate::io_err("stat", &file))?
                    .len());
            }
            Index::L2(h) => h.file_dump(dir, "bench"),
            Index::Dot(h) => h.file_dump(dir, "bench"),
            Index::L2Sq(h) => h.file_dump(dir, "bench"),
        };
        let base = r.map_err(|e| AnnError::Io {
            op: "dump HNSW into",
            path: dir.to_path_buf(),
            err: std::io::Error::other(format!("{e:#}")),
        })?;
        let mut bytes = 0;
        for entry in std::fs::read_dir(dir).map_err(crate::io_err("list", dir))? {
            let entry = entry.map_err(crate::io_err("list", dir))?;
            if entry.file_name().to_string_lossy().starts_with(&base) {
                bytes += entry.metadata().map_err(crate::io_err("stat", dir))?.len();
            }
        }
        Ok(bytes)
    }
}

fn unit_rows(m: &Matrix<f32>) -> bool {
    m.data
        .chunks_exact(m.cols.max(1))
        .all(|r| (exact::dot(r, r) - 1.0).abs() < 1e-3)
}

/// What answers queries in a timed pass: an HNSW graph at some `ef`, or brute force.
#[derive(Clone, Copy)]
pub enum Searcher<'a> {
    /// HNSW search with this candidate list size.
    Hnsw(&'a Index, usize),
    /// Exact search over these base vectors.
    Exact(&'a Matrix<f32>),
    /// Any other searcher (the production index, a remote engine) over `dim`-dimensional
    /// vectors, timed by the same loops as the others: `(query, k) -> ids`.
    Custom(&'a (dyn Fn(&[f32], usize) -> Vec<usize> + Sync), usize),
}

impl Searcher<'_> {
    /// The `k` nearest ids of `q`; `scratch` is exact search's reusable distance buffer.
    pub fn search(&self, q: &[f32], k: usize, scratch: &mut Vec<(f32, u32)>) -> Vec<usize> {
        match self {
            Searcher::Hnsw(index, ef) => index.search(q, k, *ef),
            Searcher::Exact(base) => exact::knn(base, q, k, scratch)
                .into_iter()
                .map(|i| i as usize)
                .collect(),
            Searcher::Custom(f, _) => f(q, k),
        }
    }

    fn dim(&self) -> usize {
        match self {
            Searcher::Hnsw(index, _) => index_dim(index),
            Searcher::Exact(base) => base.cols,
            Searcher::Custom(_, dim) => *dim,
        }
    }
}

/// What searching every query, serially, gave.
pub struct SerialRun {
    /// Ids found per query (first pass).
    pub found: Vec<Vec<usize>>,
    /// Latency of every query of every pass, nanoseconds.
    pub latencies_ns: Vec<u64>,
    /// Queries answered over all passes.
    pub queries: usize,
    /// Wall time of all passes, seconds.
    pub seconds: f64,
}

/// Searches each query in turn on the calling thread, timing each; repeats the whole query set
/// until `min_seconds` have passed (at least once), after a warm-up of up to 100 queries.
pub fn search_serial(
    searcher: Searcher,
    queries: &Matrix<f32>,
    k: usize,
    min_seconds: f64,
) -> Result<SerialRun, AnnError> {
    check_queries(searcher.dim(), queries)?;
    let mut scratch = Vec::new();
    for i in 0..queries.rows.min(100) {
        std::hint::black_box(searcher.search(queries.row(i), k, &mut scratch));
    }
    let mut found = Vec::with_capacity(queries.rows);
    let mut latencies_ns = Vec::with_capacity(queries.rows);
    let start = Instant::now();
    let mut answered = 0;
    loop {
        for i in 0..queries.rows {
            let t = Instant::now();
            let ids = searcher.search(queries.row(i), k, &mut scratch);
            latencies_ns.push(t.elapsed().as_nanos() as u64);
            if found.len() < queries.rows {
                found.push(ids);
            }
        }
        answered += queries.rows;
        if start.elapsed().as_secs_f64() >= min_seconds {
            break;
        }
    }
    Ok(SerialRun {
        found,
        latencies_ns,
        queries: answered,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Searches all queries spread over the current rayon pool, repeating the set until
/// `min_seconds` have passed; returns queries per second.
pub fn search_parallel(
    searcher: Searcher,
    queries: &Matrix<f32>,
    k: usize,
    min_seconds: f64,
) -> Result<f64, AnnError> {
    check_queries(searcher.dim(), queries)?;
    let start = Instant::now();
    let mut answered = 0;
    loop {
        let total: usize = (0..queries.rows)
            .into_par_iter()
            .map_init(Vec::new, |scratch, i| {
                searcher.search(queries.row(i), k, scratch).len()
            })
            .sum();
        std::hint::black_box(total);
        answered += queries.rows;
        if start.elapsed().as_secs_f64() >= min_seconds {
            break;
        }
    }
    Ok(answered as f64 / start.elapsed().as_secs_f64())
}

fn index_dim(index: &Index) -> usize {
    match index {
        Index::L2(h) => h.get_point_indexation().get_data_dimension(),
        Index::Dot(h) => h.get_point_indexation().get_data_dimension(),
        Index::L2Sq(h) => h.get_point_indexation().get_data_dimension(),
        Index::Htg(e) => e.dim(),
    }
}

fn check_queries(dim: usize, queries: &Matrix<f32>) -> Result<(), AnnError> {
    if dim != 0 && queries.cols != dim {
        return Err(AnnError::Mismatch(format!(
            "queries have dimension {}, the index {dim}",
            queries.cols
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{clustered, SynthParams};
    use crate::{exact, stats};

    #[test]
    fn every_metric_finds_the_exact_neighbours_of_a_small_set() {
        let (base, queries) = clustered(&SynthParams {
            n: 500,
            queries: 20,
            dim: 16,
            clusters: 5,
            spread: 0.5,
            seed: 3,
        })
        .unwrap();
        let gt = exact::ground_truth(&base, &queries, 10).unwrap();
        for metric in Metric::ALL {
            let p = BuildParams {
                m: 16,
                ef_construction: 100,
                metric,
            };
            let idx = Index::build(&base, p).unwrap();
            let run = search_serial(Searcher::Hnsw(&idx, 200), &queries, 10, 0.0).unwrap();
            let r = stats::recall(&run.found, &gt, 10);
            assert!(r > 0.98, "{metric:?}: recall {r}");
        }
        for metric in Metric::ALL {
            let p = BuildParams {
                m: 16,
                ef_construction: 100,
                metric,
            };
            let idx = Index::build_htg(&base, p, 1).unwrap();
            let run = search_serial(Searcher::Hnsw(&idx, 200), &queries, 10, 0.0).unwrap();
            let r = stats::recall(&run.found, &gt, 10);
            assert!(r > 0.98, "htg {metric:?}: recall {r}");
            assert!(search_parallel(Searcher::Hnsw(&idx, 50), &queries, 10, 0.0).unwrap() > 0.0);
            let dir = std::env::temp_dir().join(format!("htg-ann-dump-{}", std::process::id()));
            let bytes = idx.dump(&dir).unwrap();
            assert_eq!(
                bytes,
                std::fs::metadata(dir.join("graph.htg")).unwrap().len()
            );
            assert!(crate::graph::Graph::open(&dir.join("graph.htg")).is_ok());
            std::fs::remove_dir_all(&dir).unwrap();
        }
        let run = search_serial(Searcher::Exact(&base), &queries, 10, 0.0).unwrap();
        assert_eq!(stats::recall(&run.found, &gt, 10), 1.0);
        assert!(search_parallel(Searcher::Exact(&base), &queries, 10, 0.0).unwrap() > 0.0);
    }

    #[test]
    fn bad_parameters_are_errors_not_exits() {
        let data = Matrix {
            rows: 2,
            cols: 2,
            data: vec![3.0, 0.0, 0.0, 2.0],
        };
        let p = |m, metric| BuildParams {
            m,
            ef_construction: 10,
            metric,
        };
        assert!(Index::build(&data, p(257, Metric::L2)).is_err());
        assert!(Index::build(&data, p(1, Metric::L2)).is_err());
        let e = Index::build(&data, p(8, Metric::Dot)).err().unwrap();
        assert!(e.to_string().contains("normalised"), "{e}");
        assert!(Index::build_htg(&data, p(257, Metric::L2), 0).is_err());
        let e = Index::build_htg(&data, p(8, Metric::Dot), 0).err().unwrap();
        assert!(e.to_string().contains("normalised"), "{e}");
    }
}
