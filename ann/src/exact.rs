//! Brute-force k-NN: the ground truth of every recall figure. The distance kernels live in
//! [`crate::kernels`]; `l2_sq` and `dot` are re-exported here for existing callers.

use rayon::prelude::*;

use crate::npy::Matrix;
use crate::AnnError;

/// Squared Euclidean distance over the common length of `a` and `b`; kept here for the
/// callers that predate [`crate::kernels`].
pub use crate::kernels::l2_sq;

/// Inner product over the common length of `a` and `b`; kept here as [`l2_sq`] is.
pub use crate::kernels::dot;

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
