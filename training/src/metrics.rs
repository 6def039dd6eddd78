//! Retrieval and clustering metrics for zero-shot evaluation of embeddings.
//!
//! They are defined once, here, so that `htg train`, `htg eval` and `htg bench` report the
//! same numbers for the same embeddings. Definitions follow Musgrave, Belongie and Lim,
//! "A Metric Learning Reality Check" (ECCV 2020):
//!
//! - **Recall@K**: the fraction of queries whose K nearest gallery items contain at least one
//!   item of the query's class (the convention of the deep-metric-learning literature, which
//!   is precision@K's "hit rate", not the information-retrieval recall).
//! - **R-precision**: for a query with R relevant gallery items, the fraction of the R nearest
//!   that are relevant.
//! - **MAP@R**: for a query with R relevant gallery items,
//!   `(1/R) * sum_{i=1..R} P(i) * rel(i)`, where `P(i)` is the precision of the first `i`
//!   results and `rel(i)` is 1 when the `i`-th result is relevant.
//! - **NMI**: normalised mutual information `2 I(Y;C) / (H(Y) + H(C))` between the labels `Y`
//!   and the assignment `C` of k-means (k = number of classes, k-means++ initialisation,
//!   seeded), on all evaluated embeddings.
//!
//! Distances are squared Euclidean on the embeddings as given (htg's embeddings are
//! l2-normalised, where this ranks exactly like cosine similarity). Ties are broken by gallery
//! index, so results are deterministic. Queries without any relevant gallery item are left out
//! of every average (and counted in [`RetrievalMetrics::queries_without_match`]).

use ndarray::{ArrayView1, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

/// Why a metric could not be computed. Metrics never panic on bad input.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    /// No rows were given where at least one (or two) is needed.
    #[error("{what} is empty")]
    Empty {
        /// Which input was empty.
        what: &'static str,
    },
    /// The number of labels differs from the number of embedding rows.
    #[error("{what}: {rows} embedding rows but {labels} labels")]
    LabelCount {
        /// Which input.
        what: &'static str,
        /// Rows of the embedding matrix.
        rows: usize,
        /// Length of the label slice.
        labels: usize,
    },
    /// Query and gallery embeddings have different dimensions.
    #[error("query dimension {query} differs from gallery dimension {gallery}")]
    Dimension {
        /// Query dimension.
        query: usize,
        /// Gallery dimension.
        gallery: usize,
    },
    /// A cut-off K of 0 was asked for.
    #[error("Recall@K needs K >= 1")]
    ZeroK,
    /// No query has a relevant item in the gallery, so no average exists.
    #[error("no query has a same-class item in the gallery")]
    NoRelevant,
    /// A value is NaN or infinite.
    #[error("{what} contains a non-finite value")]
    NonFinite {
        /// Which input.
        what: &'static str,
    },
}

/// Recall@K, MAP@R and R-precision of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalMetrics {
    /// `(K, Recall@K)` in the order the Ks were asked for.
    pub recall_at: Vec<(usize, f64)>,
    /// Mean average precision at R.
    pub map_at_r: f64,
    /// Mean R-precision.
    pub r_precision: f64,
    /// Queries that were averaged (those with at least one relevant gallery item).
    pub queries: usize,
    /// Queries left out because no gallery item shares their label.
    pub queries_without_match: usize,
}

impl RetrievalMetrics {
    /// Recall@K for one K, if it was computed.
    pub fn recall(&self, k: usize) -> Option<f64> {
        self.recall_at
            .iter()
            .find(|(kk, _)| *kk == k)
            .map(|(_, r)| *r)
    }
}

fn check(
    what: &'static str,
    emb: &ArrayView2<'_, f32>,
    labels: &[usize],
) -> Result<(), MetricsError> {
    if emb.nrows() == 0 {
        return Err(MetricsError::Empty { what });
    }
    if emb.nrows() != labels.len() {
        return Err(MetricsError::LabelCount {
            what,
            rows: emb.nrows(),
            labels: labels.len(),
        });
    }
    if emb.iter().any(|v| !v.is_finite()) {
        return Err(MetricsError::NonFinite { what });
    }
    Ok(())
}

fn sq_dist(a: ArrayView1<'_, f32>, b: ArrayView1<'_, f32>) -> f32 {
    a.iter().zip(b.iter()).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Per-query accumulators shared by the query/gallery and leave-one-out variants.
#[derive(Default)]
struct Acc {
    hits: Vec<usize>,
    ap: f64,
    rp: f64,
    queries: usize,
    without: usize,
}

impl Acc {
    fn new(ks: usize) -> Self {
        Self {
            hits: vec![0; ks],
            ..Self::default()
        }
    }

    /// `ranked_rel`: relevance of the gallery in rank order; `r`: number of relevant items.
    fn add(&mut self, ranked_rel: &[bool], r: usize, ks: &[usize]) {
        if r == 0 {
            self.without += 1;
            return;
        }
        self.queries += 1;
        for (h, &k) in self.hits.iter_mut().zip(ks) {
            if ranked_rel.iter().take(k).any(|&x| x) {
                *h += 1;
            }
        }
        let mut found = 0usize;
        let mut ap = 0.0f64;
        for (i, &rel) in ranked_rel.iter().take(r).enumerate() {
            if rel {
                found += 1;
                ap += found as f64 / (i + 1) as f64;
            }
        }
        self.ap += ap / r as f64;
        self.rp += found as f64 / r as f64;
    }

    fn finish(self, ks: &[usize]) -> Result<RetrievalMetrics, MetricsError> {
        if self.queries == 0 {
            return Err(MetricsError::NoRelevant);
        }
        let n = self.queries as f64;
        Ok(RetrievalMetrics {
            recall_at: ks
                .iter()
                .zip(&self.hits)
                .map(|(&k, &h)| (k, h as f64 / n))
                .collect(),
            map_at_r: self.ap / n,
            r_precision: self.rp / n,
            queries: self.queries,
            queries_without_match: self.without,
        })
    }
}

/// Ranks `gallery` for every query (skipping `skip(q)` if given) and accumulates the metrics.
fn rank_all(
    query: &ArrayView2<'_, f32>,
    query_labels: &[usize],
    gallery: &ArrayView2<'_, f32>,
    gallery_labels: &[usize],
    ks: &[usize],
    leave_one_out: bool,
) -> Result<RetrievalMetrics, MetricsError> {
    if ks.contains(&0) {
        return Err(MetricsError::ZeroK);
    }
    let mut acc = Acc::new(ks.len());
    let mut order: Vec<(f32, usize)> = Vec::with_capacity(gallery.nrows());
    let mut rel: Vec<bool> = Vec::with_capacity(gallery.nrows());
    for (qi, q) in query.axis_iter(Axis(0)).enumerate() {
        order.clear();
        for (gi, g) in gallery.axis_iter(Axis(0)).enumerate() {
            if leave_one_out && gi == qi {
                continue;
            }
            order.push((sq_dist(q, g), gi));
        }
        order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        rel.clear();
        rel.extend(
            order
                .iter()
                .map(|&(_, gi)| gallery_labels[gi] == query_labels[qi]),
        );
        let r = rel.iter().filter(|&&x| x).count();
        acc.add(&rel, r, ks);
    }
    acc.finish(ks)
}

/// Recall@K (for each K in `ks`), MAP@R and R-precision of `query` rows searched in `gallery`.
///
/// Used where queries and gallery are different sets, e.g. Google emoji searched among
/// Twitter emoji.
pub fn evaluate_query_gallery(
    query: ArrayView2<'_, f32>,
    query_labels: &[usize],
    gallery: ArrayView2<'_, f32>,
    gallery_labels: &[usize],
    ks: &[usize],
) -> Result<RetrievalMetrics, MetricsError> {
    check("query", &query, query_labels)?;
    check("gallery", &gallery, gallery_labels)?;
    if query.ncols() != gallery.ncols() {
        return Err(MetricsError::Dimension {
            query: query.ncols(),
            gallery: gallery.ncols(),
        });
    }
    rank_all(&query, query_labels, &gallery, gallery_labels, ks, false)
}

/// Recall@K, MAP@R and R-precision with every row as a query against all other rows
/// (leave-one-out), the usual protocol for a single test set such as Fashion-MNIST.
pub fn evaluate_leave_one_out(
    embeddings: ArrayView2<'_, f32>,
    labels: &[usize],
    ks: &[usize],
) -> Result<RetrievalMetrics, MetricsError> {
    check("embeddings", &embeddings, labels)?;
    if embeddings.nrows() < 2 {
        return Err(MetricsError::Empty {
            what: "embeddings (leave-one-out needs two rows)",
        });
    }
    rank_all(&embeddings, labels, &embeddings, labels, ks, true)
}

/// Recall@K of `query` against `gallery` for each K in `ks`.
pub fn recall_at_k(
    query: ArrayView2<'_, f32>,
    query_labels: &[usize],
    gallery: ArrayView2<'_, f32>,
    gallery_labels: &[usize],
    ks: &[usize],
) -> Result<Vec<f64>, MetricsError> {
    let m = evaluate_query_gallery(query, query_labels, gallery, gallery_labels, ks)?;
    Ok(m.recall_at.into_iter().map(|(_, r)| r).collect())
}

/// Small deterministic PRNG (SplitMix64) so k-means and the report statistics
/// (the `stats` module) are seeded without extra dependencies.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (modulo bias is negligible for the small `n` used here).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// k-means (Lloyd) with k-means++ initialisation, seeded. Returns the cluster of each row.
///
/// Stops when no assignment changes or after `max_iter` iterations. An empty cluster is
/// re-seeded with the point farthest from its centre, so exactly `k` clusters are used when
/// there are at least `k` distinct points.
pub fn kmeans(
    data: ArrayView2<'_, f32>,
    k: usize,
    seed: u64,
    max_iter: usize,
) -> Result<Vec<usize>, MetricsError> {
    let n = data.nrows();
    if n == 0 {
        return Err(MetricsError::Empty {
            what: "k-means data",
        });
    }
    if k == 0 {
        return Err(MetricsError::Empty {
            what: "k-means cluster count",
        });
    }
    if data.iter().any(|v| !v.is_finite()) {
        return Err(MetricsError::NonFinite {
            what: "k-means data",
        });
    }
    let k = k.min(n);
    let dim = data.ncols();
    let mut rng = SplitMix64(seed);
    // k-means++: first centre uniform, then proportional to squared distance to the nearest.
    let mut centres: Vec<Vec<f32>> = Vec::with_capacity(k);
    let first = (rng.next_u64() % n as u64) as usize;
    centres.push(data.row(first).to_vec());
    let mut nearest: Vec<f64> = data
        .axis_iter(Axis(0))
        .map(|x| sq_dist(x, ArrayView1::from(&centres[0][..])) as f64)
        .collect();
    while centres.len() < k {
        let total: f64 = nearest.iter().sum();
        let pick = if total <= 0.0 {
            (rng.next_u64() % n as u64) as usize
        } else {
            let mut t = rng.next_f64() * total;
            let mut pick = n - 1;
            for (i, &d) in nearest.iter().enumerate() {
                if t < d {
                    pick = i;
                    break;
                }
                t -= d;
            }
            pick
        };
        let c = data.row(pick).to_vec();
        for (i, x) in data.axis_iter(Axis(0)).enumerate() {
            let d = sq_dist(x, ArrayView1::from(&c[..])) as f64;
            if d < nearest[i] {
                nearest[i] = d;
            }
        }
        centres.push(c);
    }
    let mut assign = vec![usize::MAX; n];
    for _ in 0..max_iter.max(1) {
        let mut changed = false;
        let mut dist_to_centre = vec![0f32; n];
        for (i, x) in data.axis_iter(Axis(0)).enumerate() {
            let (best, d) = centres
                .iter()
                .enumerate()
                .map(|(j, c)| (j, sq_dist(x, ArrayView1::from(&c[..]))))
                .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
                .unwrap_or((0, 0.0));
            if assign[i] != best {
                assign[i] = best;
                changed = true;
            }
            dist_to_centre[i] = d;
        }
        if !changed {
            break;
        }
        let mut sums = vec![vec![0f64; dim]; k];
        let mut counts = vec![0usize; k];
        for (i, x) in data.axis_iter(Axis(0)).enumerate() {
            counts[assign[i]] += 1;
            for (s, v) in sums[assign[i]].iter_mut().zip(x.iter()) {
                *s += *v as f64;
            }
        }
        for j in 0..k {
            if counts[j] == 0 {
                // Re-seed an empty cluster at the worst-fitted point.
                let far = (0..n)
                    .max_by(|&a, &b| dist_to_centre[a].total_cmp(&dist_to_centre[b]))
                    .unwrap_or(0);
                centres[j] = data.row(far).to_vec();
                dist_to_centre[far] = 0.0;
            } else {
                centres[j] = sums[j]
                    .iter()
                    .map(|s| (*s / counts[j] as f64) as f32)
                    .collect();
            }
        }
    }
    Ok(assign)
}

/// Normalised mutual information `2 I(A;B) / (H(A) + H(B))` of two labelings (natural log;
/// the base cancels). Two constant labelings give 1; one constant labeling gives 0.
pub fn nmi(a: &[usize], b: &[usize]) -> Result<f64, MetricsError> {
    if a.is_empty() {
        return Err(MetricsError::Empty { what: "labels" });
    }
    if a.len() != b.len() {
        return Err(MetricsError::LabelCount {
            what: "NMI",
            rows: a.len(),
            labels: b.len(),
        });
    }
    use std::collections::HashMap;
    let n = a.len() as f64;
    let mut ca: HashMap<usize, f64> = HashMap::new();
    let mut cb: HashMap<usize, f64> = HashMap::new();
    let mut cab: HashMap<(usize, usize), f64> = HashMap::new();
    for (&x, &y) in a.iter().zip(b) {
        *ca.entry(x).or_default() += 1.0;
        *cb.entry(y).or_default() += 1.0;
        *cab.entry((x, y)).or_default() += 1.0;
    }
    let h = |c: &HashMap<usize, f64>| -> f64 {
        c.values()
            .map(|&v| {
                let p = v / n;
                -p * p.ln()
            })
            .sum()
    };
    let (ha, hb) = (h(&ca), h(&cb));
    let mi: f64 = cab
        .iter()
        .map(|(&(x, y), &v)| {
            let pxy = v / n;
            pxy * (pxy / ((ca[&x] / n) * (cb[&y] / n))).ln()
        })
        .sum();
    if ha + hb <= 0.0 {
        return Ok(1.0);
    }
    Ok((2.0 * mi / (ha + hb)).clamp(0.0, 1.0))
}

/// NMI of a seeded k-means clustering (k = number of distinct labels) against the labels.
pub fn clustering_nmi(
    embeddings: ArrayView2<'_, f32>,
    labels: &[usize],
    seed: u64,
) -> Result<f64, MetricsError> {
    check("embeddings", &embeddings, labels)?;
    let k = labels
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len();
    let clusters = kmeans(embeddings, k, seed, 100)?;
    nmi(&clusters, labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn recall_map_rprecision_by_hand() {
        // Gallery on a line: g0=0 (A), g1=1 (B), g2=2 (A), g3=10 (B).
        let gallery = array![[0.0f32], [1.0], [2.0], [10.0]];
        let gl = [0, 1, 0, 1];
        // q0 at 0.9, label A: ranking g1(0.01) g0(0.81) g2(1.21) g3 -> rel = [0,1,1,0], R=2.
        //   R@1 miss, R@2 hit; AP@R = (0 + 1/2)/2 = 0.25; R-prec = 1/2.
        // q1 at 9, label B: ranking g3, g2, g1, g0 -> rel = [1,0,1,0], R=2.
        //   R@1 hit; AP@R = (1/1 + 0)/2 = 0.5; R-prec = 1/2.
        let query = array![[0.9f32], [9.0]];
        let ql = [0, 1];
        let m = evaluate_query_gallery(query.view(), &ql, gallery.view(), &gl, &[1, 2]).unwrap();
        assert_eq!(m.recall(1), Some(0.5));
        assert_eq!(m.recall(2), Some(1.0));
        assert!((m.map_at_r - 0.375).abs() < 1e-12, "{}", m.map_at_r);
        assert!((m.r_precision - 0.5).abs() < 1e-12);
        assert_eq!(m.queries, 2);
    }

    #[test]
    fn leave_one_out_excludes_self() {
        // Two tight pairs far apart: every item's nearest other item is its pair.
        let e = array![[0.0f32, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]];
        let l = [0, 0, 1, 1];
        let m = evaluate_leave_one_out(e.view(), &l, &[1]).unwrap();
        assert_eq!(m.recall(1), Some(1.0));
        assert_eq!(m.map_at_r, 1.0);
        // Swap labels so each nearest neighbour is wrong: R@1 = 0, R=1 so MAP@R = 0.
        let l = [0, 1, 0, 1];
        let m = evaluate_leave_one_out(e.view(), &l, &[1, 2]).unwrap();
        assert_eq!(m.recall(1), Some(0.0));
        // Rank 2 is the nearer item of the far pair: a hit for items 0 and 3
        // (distances 50 < 51.01), a miss for items 1 and 2 (49.01 < 50).
        assert_eq!(m.recall(2), Some(0.5));
        assert_eq!(m.map_at_r, 0.0);
    }

    #[test]
    fn queries_without_match_are_left_out() {
        let g = array![[0.0f32], [1.0]];
        let q = array![[0.0f32], [1.0]];
        let m = evaluate_query_gallery(q.view(), &[0, 7], g.view(), &[0, 1], &[1]).unwrap();
        assert_eq!(m.queries, 1);
        assert_eq!(m.queries_without_match, 1);
        assert_eq!(m.recall(1), Some(1.0));
        let e = evaluate_query_gallery(q.view(), &[5, 7], g.view(), &[0, 1], &[1]);
        assert_eq!(e, Err(MetricsError::NoRelevant));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let e = array![[0.0f32], [1.0]];
        let empty = ndarray::Array2::<f32>::zeros((0, 1));
        assert!(matches!(
            evaluate_leave_one_out(empty.view(), &[], &[1]),
            Err(MetricsError::Empty { .. })
        ));
        assert!(matches!(
            evaluate_leave_one_out(e.view(), &[0], &[1]),
            Err(MetricsError::LabelCount { .. })
        ));
        assert_eq!(
            evaluate_leave_one_out(e.view(), &[0, 0], &[0]),
            Err(MetricsError::ZeroK)
        );
        let e3 = array![[0.0f32, 1.0]];
        assert!(matches!(
            evaluate_query_gallery(e3.view(), &[0], e.view(), &[0, 0], &[1]),
            Err(MetricsError::Dimension { .. })
        ));
        let nan = array![[f32::NAN], [1.0]];
        assert!(matches!(
            evaluate_leave_one_out(nan.view(), &[0, 0], &[1]),
            Err(MetricsError::NonFinite { .. })
        ));
        assert!(nmi(&[], &[]).is_err());
        assert!(nmi(&[0], &[0, 1]).is_err());
    }

    #[test]
    fn nmi_by_hand() {
        // Identical partitions (up to renaming): 1.
        assert!((nmi(&[0, 0, 1, 1], &[1, 1, 0, 0]).unwrap() - 1.0).abs() < 1e-12);
        // Independent: A = [0,0,1,1], B = [0,1,0,1] -> I = 0.
        assert!(nmi(&[0, 0, 1, 1], &[0, 1, 0, 1]).unwrap().abs() < 1e-12);
        // A = [0,0,0,1], B = [0,0,1,1]: H(A) = -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.562335,
        // H(B) = ln 2 = 0.693147, I = sum p(x,y) ln(p(x,y)/(p(x)p(y))):
        //   (0,0): 1/2 ln((1/2)/(3/4*1/2)) = 0.5 ln(4/3) = 0.143841
        //   (0,1): 1/4 ln((1/4)/(3/4*1/2)) = 0.25 ln(2/3) = -0.101366
        //   (1,1): 1/4 ln((1/4)/(1/4*1/2)) = 0.25 ln 2 = 0.173287
        //   I = 0.215762; NMI = 2I/(H(A)+H(B)) = 0.431523/1.255482 = 0.343712
        let v = nmi(&[0, 0, 0, 1], &[0, 0, 1, 1]).unwrap();
        assert!((v - 0.343712).abs() < 1e-5, "{v}");
    }

    #[test]
    fn kmeans_separates_clear_clusters_and_is_seeded() {
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for c in 0..3 {
            for i in 0..10 {
                rows.push([c as f32 * 10.0 + i as f32 * 0.01, (c * c) as f32]);
                labels.push(c);
            }
        }
        let data = ndarray::Array2::from_shape_vec((30, 2), rows.concat()).unwrap();
        let a = kmeans(data.view(), 3, 7, 50).unwrap();
        let b = kmeans(data.view(), 3, 7, 50).unwrap();
        assert_eq!(a, b);
        assert!((nmi(&a, &labels).unwrap() - 1.0).abs() < 1e-12);
        assert!((clustering_nmi(data.view(), &labels, 1).unwrap() - 1.0).abs() < 1e-12);
    }
}
