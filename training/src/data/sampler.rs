//! P×K sampling: the batches every triplet method draws from.

use rand::rngs::StdRng;
use rand::Rng;

use crate::TrainError;

/// Draws P×K batches: P distinct classes, K images each (with replacement only when a class
/// has fewer than K images).
#[derive(Clone, Debug)]
pub struct PkSampler {
    by_class: Vec<Vec<usize>>,
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
        Ok(PkSampler { by_class })
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
            if members.len() >= k {
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
