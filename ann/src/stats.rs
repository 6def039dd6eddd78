//! Recall and latency percentiles, defined once for htg's points (the Python peers implement
//! the same definitions in `benches/peers/ann_peers.py`).

use crate::npy::Matrix;

/// Mean over queries of |found\[..k\] ∩ truth\[..k\]| / k: recall@k by ids, as ann-benchmarks
/// computes it without distance ties.
pub fn recall(found: &[Vec<usize>], truth: &Matrix<i32>, k: usize) -> f64 {
    let k = k.min(truth.cols);
    if found.is_empty() || k == 0 {
        return 0.0;
    }
    let mut hits = 0usize;
    for (i, f) in found.iter().enumerate().take(truth.rows) {
        let t = &truth.row(i)[..k];
        hits += f
            .iter()
            .take(k)
            .filter(|id| t.contains(&(**id as i32)))
            .count();
    }
    hits as f64 / (found.len().min(truth.rows) * k) as f64
}

/// The `p`-th percentile (0..=100) of `values` by nearest rank; 0 for no values.
pub fn percentile(values: &[u64], p: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_and_percentiles_by_hand() {
        let truth = Matrix {
            rows: 2,
            cols: 2,
            data: vec![0, 1, 2, 3],
        };
        let found = vec![vec![1, 0], vec![2, 9]];
        assert_eq!(recall(&found, &truth, 2), 0.75);
        assert_eq!(recall(&found, &truth, 1), 0.5);
        let lat: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&lat, 50.0), 50);
        assert_eq!(percentile(&lat, 99.0), 99);
        assert_eq!(percentile(&lat, 100.0), 100);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
