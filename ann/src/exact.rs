//! Distance kernels and brute-force k-NN: the ground truth of every recall figure, and the
//! kernels of our own HNSW distance ([`crate::hnsw::Metric::L2Sq`]).
//!
//! The kernels are plain loops over 8 independent accumulators, which the compiler vectorises;
//! on x86-64 a copy compiled for AVX2+FMA is chosen at run time, as `anndists` does with
//! `simdeez`, but without the square root or a non-inlined call per distance.

use rayon::prelude::*;

use crate::npy::Matrix;
use crate::AnnError;

#[inline(always)]
fn l2_sq_generic(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    let mut s = 0.0;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += (x - y) * (x - y);
    }
    s + acc.iter().sum::<f32>()
}

#[inline(always)]
fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = 0.0;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s + acc.iter().sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn l2_sq_avx2(a: &[f32], b: &[f32]) -> f32 {
    l2_sq_generic(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_generic(a, b)
}

/// Squared Euclidean distance over the common length of `a` and `b`.
#[inline]
pub fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { l2_sq_avx2(a, b) };
    }
    l2_sq_generic(a, b)
}

/// Inner product over the common length of `a` and `b`.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { dot_avx2(a, b) };
    }
    dot_generic(a, b)
}

/// The `k` rows of `base` nearest to `query` by squared L2, nearest first, ties by id.
///
/// `scratch` is reused between calls so a query allocates nothing but its answer.
pub fn knn(base: &Matrix<f32>, query: &[f32], k: usize, scratch: &mut Vec<(f32, u32)>) -> Vec<u32> {
    scratch.clear();
    scratch.extend(
        base.data
            .chunks_exact(base.cols.max(1))
            .enumerate()
            .map(|(i, row)| (l2_sq(query, row), i as u32)),
    );
    let k = k.min(scratch.len());
    if k == 0 {
        return Vec::new();
    }
    let cmp = |a: &(f32, u32), b: &(f32, u32)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    if k < scratch.len() {
        scratch.select_nth_unstable_by(k - 1, cmp);
    }
    let top = &mut scratch[..k];
    top.sort_unstable_by(cmp);
    top.iter().map(|p| p.1).collect()
}

/// Exact top-`k` ids of every query (all threads of the current rayon pool), row-major
/// `queries.rows x k`, as `i32` for the `gt.npy` the peers read.
pub fn ground_truth(
    base: &Matrix<f32>,
    queries: &Matrix<f32>,
    k: usize,
) -> Result<Matrix<i32>, AnnError> {
    if base.cols != queries.cols {
        return Err(AnnError::Mismatch(format!(
            "base vectors have dimension {}, queries {}",
            base.cols, queries.cols
        )));
    }
    if k > base.rows {
        return Err(AnnError::Param(format!(
            "ground truth depth {k} exceeds the {} base vectors",
            base.rows
        )));
    }
    if base.rows > i32::MAX as usize {
        return Err(AnnError::Param("more than 2^31 base vectors".into()));
    }
    let rows: Vec<Vec<i32>> = (0..queries.rows)
        .into_par_iter()
        .map_init(Vec::new, |scratch, i| {
            knn(base, queries.row(i), k, scratch)
                .into_iter()
                .map(|id| id as i32)
                .collect()
        })
        .collect();
    Ok(Matrix {
        rows: queries.rows,
        cols: k,
        data: rows.concat(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_match_the_naive_sums() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let l2: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        let d: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((l2_sq(&a, &b) - l2).abs() < 1e-4);
        assert!((dot(&a, &b) - d).abs() < 1e-4);
    }

    #[test]
    fn knn_is_exact_and_breaks_ties_by_id() {
        let base = Matrix {
            rows: 4,
            cols: 2,
            data: vec![0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 3.0, 3.0],
        };
        let mut s = Vec::new();
        assert_eq!(knn(&base, &[0.1, 0.0], 3, &mut s), vec![0, 1, 2]);
        // 1 and 2 are equally far from (1, 1): the lower id comes first.
        assert_eq!(knn(&base, &[1.0, 1.0], 2, &mut s), vec![1, 2]);
    }
}
