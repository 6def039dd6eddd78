//! P×K sampling: the batches every triplet method draws from.

use rand::rngs::StdRng;
use rand::Rng;

use crate::TrainError;

/// Draws P×K batches: P distinct classes, K images each (with replacement only when a class
/// has fewer than K images).
#[derive(Clone, Debug)]
pub struct PkSampler {
    by_class: Vec<Vec<usize>>,
    /// Per image, its vendor (`tag % 4` of [`super::ZeroShotSplit::train_vendor`]) when
    /// sampling should draw a class's images from different vendors.
    vendor: Option<Vec<u8>>,
}

impl PkSampler {
    /// Indexes `labels` by class. Needs at least two classes with two or more images.
    pub fn new(labels: &[usize]) -> Result<PkSampler, TrainError> {
        let classes = labels.iter().max().map_or(0, |m| m + 1);
        let mut by_class = vec![Vec::new(); classes];
        for (i, &l) in labels.iter().enumerate() {
            by_class[l].push(i);
        }
        by_class.retain(|c| c.len() >= 2);
        if by_class.len() < 2 {
            return Err(TrainError::Data(format!(
                "{} class(es) with at least two images; triplets need at least 2",
                by_class.len()
            )));
        }
        Ok(PkSampler {
            by_class,
            vendor: None,
        })
    }

    /// A sampler that draws each class's K images from different vendors while the class
    /// has an unused vendor left (emoji: a Google and a Twitter image, each a base image or
    /// a skin-tone variant, or Apple's and Facebook's where they train), so the positive pair
    /// is a cross-vendor pair like the one the test measures. `vendor` holds
    /// [`super::ZeroShotSplit::train_vendor`]'s tags; the vendor is `tag % 4`.
    pub fn with_vendors(labels: &[usize], vendor: &[u8]) -> Result<PkSampler, TrainError> {
        if vendor.len() != labels.len() {
            return Err(TrainError::Data(format!(
                "{} vendor tags for {} images",
                vendor.len(),
                labels.len()
            )));
        }
        let mut s = PkSampler::new(labels)?;
        s.vendor = Some(vendor.iter().map(|v| v % 4).collect());
        Ok(s)
    }

    /// Number of usable classes.
    pub fn classes(&self) -> usize {
        self.by_class.len()
    }

    /// Indices of one batch, grouped by class (`P = min(p, classes)`).
    pub fn sample(&self, p: usize, k: usize, rng: &mut StdRng) -> Vec<usize> {
        let p = p.min(self.by_class.len());
        let mut out = Vec::with_capacity(p * k);
        for c in rand::seq::index::sample(rng, self.by_class.len(), p) {
            let members = &self.by_class[c];
            if let Some(vendor) = &self.vendor {
                // Each pick prefers a vendor the class's earlier picks do not have yet.
                let start = out.len();
                for _ in 0..k {
                    let taken = &out[start..];
                    let unused_vendor = |j: usize| {
                        !taken.contains(&j) && taken.iter().all(|&t| vendor[t] != vendor[j])
                    };
                    let fresh: Vec<usize> = members
                        .iter()
                        .copied()
                        .filter(|&j| unused_vendor(j))
                        .collect();
                    let unused: Vec<usize> = members
                        .iter()
                        .copied()
                        .filter(|j| !taken.contains(j))
                        .collect();
                    let from = if !fresh.is_empty() {
                        &fresh
                    } else if !unused.is_empty() {
                        &unused
                    } else {
                        members
                    };
                    out.push(from[rng.random_range(0..from.len())]);
                }
            } else if members.len() >= k {
                for j in rand::seq::index::sample(rng, members.len(), k) {
                    out.push(members[j]);
                }
            } else {
                for _ in 0..k {
                    out.push(members[rng.random_range(0..members.len())]);
                }
            }
        }
        out
    }
}
