//! Statistics for comparing methods over paired seeds (Musgrave et al. 2020's protocol):
//! mean ± sd, the paired difference with a bootstrap confidence interval, and a paired test
//! over the test queries.
//!
//! "Paired" means run i of method A and run i of method B share the seed (so the data order,
//! the validation split and F's initialisation match as far as the methods allow).

use crate::metrics::{MetricsError, SplitMix64};

/// Mean and sample standard deviation (n − 1; 0 for a single value).
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (m, 0.0);
    }
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, var.sqrt())
}

/// A mean difference with a two-sided confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Interval {
    /// Point estimate (mean of the differences).
    pub mean: f64,
    /// Lower end of the interval.
    pub lo: f64,
    /// Upper end of the interval.
    pub hi: f64,
}

/// Percentile bootstrap of the mean of `d`: `iters` resamples with replacement, seeded; the
/// interval at `level` (e.g. 0.95).
pub fn bootstrap_mean(
    d: &[f64],
    level: f64,
    iters: usize,
    seed: u64,
) -> Result<Interval, MetricsError> {
    if d.is_empty() {
        return Err(MetricsError::Empty {
            what: "differences to bootstrap",
        });
    }
    let mut rng = SplitMix64(seed);
    let n = d.len();
    let mut means: Vec<f64> = (0..iters.max(1))
        .map(|_| (0..n).map(|_| d[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let q = |p: f64| means[((p * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)];
    let tail = (1.0 - level) / 2.0;
    Ok(Interval {
        mean: d.iter().sum::<f64>() / n as f64,
        lo: q(tail),
        hi: q(1.0 - tail),
    })
}

/// Paired difference `a[i] − b[i]` over seeds with its 95% bootstrap interval.
pub fn paired_difference(a: &[f64], b: &[f64], seed: u64) -> Result<Interval, MetricsError> {
    if a.len() != b.len() {
        return Err(MetricsError::Empty {
            what: "paired runs (the two methods have different seed counts)",
        });
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    bootstrap_mean(&d, 0.95, 10_000, seed)
}

/// Paired test over queries: per query, A's hit rate over its runs minus B's; returns the
/// mean difference with a 95% bootstrap interval over queries, and the two-sided p-value of a
/// sign-flip permutation test (`iters` random flips, seeded). `a` and `b` hold one hit
/// vector per run, all of one length.
pub fn paired_query_test(
    a: &[Vec<bool>],
    b: &[Vec<bool>],
    iters: usize,
    seed: u64,
) -> Result<(Interval, f64), MetricsError> {
    let nq = a.first().map_or(0, Vec::len);
    if nq == 0 || b.is_empty() || a.iter().chain(b).any(|h| h.len() != nq) {
        return Err(MetricsError::Empty {
            what: "per-query hits of equal length for both methods",
        });
    }
    let rate = |runs: &[Vec<bool>], q: usize| {
        runs.iter().filter(|h| h[q]).count() as f64 / runs.len() as f64
    };
    let d: Vec<f64> = (0..nq).map(|q| rate(a, q) - rate(b, q)).collect();
    let ci = bootstrap_mean(&d, 0.95, 10_000, seed)?;
    let observed = ci.mean.abs();
    let mut rng = SplitMix64(seed ^ 0xA5A5_A5A5);
    let mut extreme = 0usize;
    let iters = iters.max(1);
    for _ in 0..iters {
        let s: f64 = d
            .iter()
            .map(|&x| if rng.next_u64() & 1 == 0 { x } else { -x })
            .sum::<f64>()
            / nq as f64;
        if s.abs() >= observed - 1e-12 {
            extreme += 1;
        }
    }
    Ok((ci, (extreme + 1) as f64 / (iters + 1) as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_sd_by_hand() {
        let (m, s) = mean_sd(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m - 2.5).abs() < 1e-12);
        assert!((s - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_sd(&[7.0]), (7.0, 0.0));
    }

    #[test]
    fn bootstrap_covers_a_clear_effect_and_a_null() {
        // Differences all positive: the interval excludes 0.
        let d: Vec<f64> = (0..10).map(|i| 0.02 + 0.001 * i as f64).collect();
        let ci = bootstrap_mean(&d, 0.95, 2000, 1).unwrap();
        assert!(
            ci.lo > 0.0 && ci.lo <= ci.mean && ci.mean <= ci.hi,
            "{ci:?}"
        );
        // Symmetric around zero: the interval straddles it.
        let d = [-0.03, 0.03, -0.01, 0.01, -0.02, 0.02];
        let ci = bootstrap_mean(&d, 0.95, 2000, 1).unwrap();
        assert!(ci.lo < 0.0 && ci.hi > 0.0, "{ci:?}");
        assert!(bootstrap_mean(&[], 0.95, 10, 1).is_err());
        assert!(paired_difference(&[1.0], &[1.0, 2.0], 1).is_err());
    }

    #[test]
    fn query_test_detects_a_real_difference_only() {
        // A hits every query, B half of them: a clear, significant difference.
        let a = vec![vec![true; 200]];
        let b = vec![(0..200).map(|i| i % 2 == 0).collect::<Vec<_>>()];
        let (ci, p) = paired_query_test(&a, &b, 2000, 3).unwrap();
        assert!((ci.mean - 0.5).abs() < 1e-12 && ci.lo > 0.4, "{ci:?}");
        assert!(p < 0.01, "{p}");
        // Identical runs: no difference, p = 1.
        let (ci, p) = paired_query_test(&b, &b, 500, 3).unwrap();
        assert_eq!(ci.mean, 0.0);
        assert!(p > 0.99, "{p}");
        assert!(paired_query_test(&a, &[vec![true; 3]], 10, 1).is_err());
    }
}
