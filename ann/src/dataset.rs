//! Data set directories: `base.npy` (f32, N x D), `queries.npy` (f32, Q x D) and `gt.npy`
//! (i32, Q x K: exact nearest base rows by L2, nearest first). htg and the Python peers read the
//! same three files, so every library is measured on the same vectors, queries and truth.

use std::path::Path;

use crate::npy::{self, Matrix};
use crate::{io_err, AnnError};

/// File names inside a data set directory.
pub const BASE: &str = "base.npy";
/// Query vectors.
pub const QUERIES: &str = "queries.npy";
/// Exact ground-truth ids.
pub const GT: &str = "gt.npy";

/// Base vectors, queries and their exact neighbours.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Vectors to index.
    pub base: Matrix<f32>,
    /// Vectors to search for.
    pub queries: Matrix<f32>,
    /// Exact nearest base rows of each query, nearest first.
    pub gt: Matrix<i32>,
}

impl Dataset {
    /// Reads and cross-checks the three files of `dir`.
    pub fn load(dir: &Path) -> Result<Dataset, AnnError> {
        if !dir.is_dir() {
            return Err(AnnError::Mismatch(format!(
                "data set directory {} does not exist (make one with `htg bench dataset`)",
                dir.display()
            )));
        }
        let base: Matrix<f32> = npy::read(&dir.join(BASE))?;
        let queries: Matrix<f32> = npy::read(&dir.join(QUERIES))?;
        let gt: Matrix<i32> = npy::read(&dir.join(GT))?;
        let d = Dataset { base, queries, gt };
        d.validate()?;
        Ok(d)
    }

    /// Checks that the shapes agree and every truth id names a base row.
    pub fn validate(&self) -> Result<(), AnnError> {
        let (b, q, g) = (&self.base, &self.queries, &self.gt);
        if b.rows == 0 || b.cols == 0 {
            return Err(AnnError::Mismatch("the base set is empty".into()));
        }
        if q.rows == 0 {
            return Err(AnnError::Mismatch("there are no queries".into()));
        }
        if b.cols != q.cols {
            return Err(AnnError::Mismatch(format!(
                "base vectors have dimension {}, queries {}",
                b.cols, q.cols
            )));
        }
        if g.rows != q.rows {
            return Err(AnnError::Mismatch(format!(
                "{} has {} rows for {} queries",
                GT, g.rows, q.rows
            )));
        }
        if let Some(bad) = g.data.iter().find(|&&id| id < 0 || id as usize >= b.rows) {
            return Err(AnnError::Mismatch(format!(
                "{GT} names row {bad}, outside the {} base vectors",
                b.rows
            )));
        }
        if let Some(i) = b.data.iter().chain(&q.data).position(|x| !x.is_finite()) {
            return Err(AnnError::Mismatch(format!(
                "a vector holds a non-finite value (element {i})"
            )));
        }
        Ok(())
    }

    /// Writes the three files into `dir` (created if absent).
    pub fn save(&self, dir: &Path) -> Result<(), AnnError> {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let (b, q, g) = (&self.base, &self.queries, &self.gt);
        npy::write(&dir.join(BASE), b.rows, b.cols, &b.data)?;
        npy::write(&dir.join(QUERIES), q.rows, q.cols, &q.data)?;
        npy::write(&dir.join(GT), g.rows, g.cols, &g.data)
    }

    /// True when every base and query vector has unit length (within 1e-3), which lets a
    /// dot-product distance rank exactly as L2 does.
    pub fn normalized(&self) -> bool {
        let unit = |m: &Matrix<f32>| {
            m.data
                .chunks_exact(m.cols.max(1))
                .all(|r| (r.iter().map(|x| x * x).sum::<f32>().sqrt() - 1.0).abs() < 1e-3)
        };
        unit(&self.base) && unit(&self.queries)
    }
}

/// SplitMix64: a tiny seeded generator, so a data set depends on its seed and nothing else
/// (not on the version of a random-number crate).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Uniform integer in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }
}

/// Scales every row of `m` to unit length (zero rows stay zero).
pub fn normalize_rows(m: &mut Matrix<f32>) {
    let cols = m.cols.max(1);
    for r in m.data.chunks_exact_mut(cols) {
        let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 0.0 {
            r.iter_mut().for_each(|x| *x /= n);
        }
    }
}

/// Parameters of the clustered synthetic set.
#[derive(Clone, Copy, Debug)]
pub struct SynthParams {
    /// Base vectors.
    pub n: usize,
    /// Query vectors (drawn from the same mixture, not from the base set).
    pub queries: usize,
    /// Dimension.
    pub dim: usize,
    /// Gaussian clusters.
    pub clusters: usize,
    /// Norm of a point's offset from its cluster centre, relative to the centre's (unit) norm.
    pub spread: f64,
    /// Seed of everything.
    pub seed: u64,
}

impl Default for SynthParams {
    fn default() -> Self {
        SynthParams {
            n: 100_000,
            queries: 1_000,
            dim: 128,
            clusters: 100,
            spread: 0.6,
            seed: 1,
        }
    }
}

/// A seeded mixture of isotropic Gaussian clusters around random unit centres, every vector
/// l2-normalised (as htg's embeddings are): returns `(base, queries)`.
pub fn clustered(p: &SynthParams) -> Result<(Matrix<f32>, Matrix<f32>), AnnError> {
    if p.n == 0 || p.dim == 0 || p.clusters == 0 || p.queries == 0 {
        return Err(AnnError::Param(
            "n, queries, dim and clusters must all be at least 1".into(),
        ));
    }
    if !(p.spread.is_finite() && p.spread >= 0.0) {
        return Err(AnnError::Param(format!("spread {} is not >= 0", p.spread)));
    }
    let mut rng = Rng::new(p.seed);
    let mut centres = Matrix {
        rows: p.clusters,
        cols: p.dim,
        data: (0..p.clusters * p.dim)
            .map(|_| rng.normal() as f32)
            .collect(),
    };
    normalize_rows(&mut centres);
    let sigma = p.spread / (p.dim as f64).sqrt();
    let draw = |rows: usize, rng: &mut Rng| {
        let mut m = Matrix {
            rows,
            cols: p.dim,
            data: Vec::with_capacity(rows * p.dim),
        };
        for _ in 0..rows {
            let c = rng.below(p.clusters);
            for j in 0..p.dim {
                let x = centres.data[c * p.dim + j] as f64 + sigma * rng.normal();
                m.data.push(x as f32);
            }
        }
        normalize_rows(&mut m);
        m
    };
    let base = draw(p.n, &mut rng);
    let queries = draw(p.queries, &mut rng);
    Ok((base, queries))
}

/// Splits `vectors` into `(base, queries)`, holding out `queries` rows chosen by `seed`
/// (the rest keep their order), as ann-benchmarks does for sets without separate queries.
pub fn hold_out(
    vectors: &Matrix<f32>,
    queries: usize,
    seed: u64,
) -> Result<(Matrix<f32>, Matrix<f32>), AnnError> {
    if queries == 0 || queries >= vectors.rows {
        return Err(AnnError::Param(format!(
            "cannot hold out {queries} queries from {} vectors (need 1..{})",
            vectors.rows, vectors.rows
        )));
    }
    let mut order: Vec<usize> = (0..vectors.rows).collect();
    let mut rng = Rng::new(seed);
    for i in 0..queries {
        let j = i + rng.below(vectors.rows - i);
        order.swap(i, j);
    }
    let mut picked = order[..queries].to_vec();
    picked.sort_unstable();
    let mut is_query = vec![false; vectors.rows];
    for &i in &picked {
        is_query[i] = true;
    }
    let take = |rows: &mut dyn Iterator<Item = usize>| {
        let mut data = Vec::new();
        let mut n = 0;
        for i in rows {
            data.extend_from_slice(vectors.row(i));
            n += 1;
        }
        Matrix {
            rows: n,
            cols: vectors.cols,
            data,
        }
    };
    let q = take(&mut picked.iter().copied());
    let b = take(&mut (0..vectors.rows).filter(|i| !is_query[*i]));
    Ok((b, q))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_set_is_seeded_and_normalised() {
        let p = SynthParams {
            n: 200,
            queries: 10,
            dim: 16,
            clusters: 4,
            spread: 0.5,
            seed: 7,
        };
        let (b1, q1) = clustered(&p).unwrap();
        let (b2, _) = clustered(&p).unwrap();
        assert_eq!(b1, b2);
        assert_eq!((b1.rows, b1.cols, q1.rows), (200, 16, 10));
        let n: f32 = b1.row(3).iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-5);
        let (b3, _) = clustered(&SynthParams { seed: 8, ..p }).unwrap();
        assert_ne!(b1, b3);
    }

    #[test]
    fn hold_out_partitions_the_rows() {
        let m = Matrix {
            rows: 10,
            cols: 1,
            data: (0..10).map(|i| i as f32).collect(),
        };
        let (b, q) = hold_out(&m, 3, 1).unwrap();
        assert_eq!((b.rows, q.rows), (7, 3));
        let mut all: Vec<f32> = b.data.iter().chain(&q.data).copied().collect();
        all.sort_by(f32::total_cmp);
        assert_eq!(all, m.data);
        assert!(hold_out(&m, 10, 1).is_err());
    }
}
