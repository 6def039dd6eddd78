//! Losses and triplet mining.
//!
//! d(x, y) is the squared Euclidean distance, as in the paper. Losses are burn tensor
//! functions (so gradients flow); mining works on a plain distance matrix of the detached
//! embeddings and returns triplet indices, which every method then feeds to the same
//! [`triplet_loss`]. That keeps the baselines and HTG in one code path.

use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::Rng;

use crate::config::Mining;

/// Row-wise squared distances `d(a_i, b_i)`: `[B]`.
pub fn sq_dist(a: Tensor<2>, b: Tensor<2>) -> Tensor<1> {
    (a - b).powi_scalar(2).sum_dim(1).squeeze_dim(1)
}

/// Triplet loss `mean max(d(a,p) − d(a,n) + m, 0)` (scalar tensor of shape `[1]`).
pub fn triplet_loss(a: Tensor<2>, p: Tensor<2>, n: Tensor<2>, margin: f32) -> Tensor<1> {
    let dap = sq_dist(a.clone(), p);
    let dan = sq_dist(a, n);
    relu(dap - dan + margin).mean()
}

/// G's inverted triplet loss `mean max(d(a',n') − d(a',p') + m, 0)`: it falls when the
/// generated negative comes closer to the anchor than the generated positive.
pub fn inverted_triplet_loss(a: Tensor<2>, p: Tensor<2>, n: Tensor<2>, margin: f32) -> Tensor<1> {
    let dap = sq_dist(a.clone(), p);
    let dan = sq_dist(a, n);
    relu(dan - dap + margin).mean()
}

/// Mean softmax cross-entropy of `logits` `[B, C]` at `targets` (scalar tensor).
pub fn cross_entropy(logits: Tensor<2>, targets: &[usize]) -> Tensor<1> {
    let [b, c] = logits.dims();
    let device = logits.device();
    let mut onehot = vec![0f32; b * c];
    for (i, &t) in targets.iter().enumerate() {
        onehot[i * c + t] = 1.0;
    }
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [b, c]), &device);
    (log_softmax(logits, 1) * onehot).sum_dim(1).neg().mean()
}

/// Multi-similarity loss (Wang et al., CVPR 2019) of l2-normalised embeddings `emb` `[B, d]`
/// with their `labels`, with the paper's pair mining: for anchor i a positive j is kept when
/// `S_ij − ε < max S_in` (over negatives n), a negative when `S_ij + ε > min S_ip`. Per anchor
/// `(1/α)·log(1 + Σ_P e^{−α(S−λ)}) + (1/β)·log(1 + Σ_N e^{β(S−λ)})`, averaged over the batch.
/// Mining runs on the host copy of the similarities; the loss keeps the gradient.
pub fn multi_similarity_loss(
    emb: Tensor<2>,
    labels: &[usize],
    alpha: f32,
    beta: f32,
    lambda: f32,
    epsilon: f32,
) -> Tensor<1> {
    let [b, _] = emb.dims();
    let device = emb.device();
    let sim = emb.clone().matmul(emb.transpose());
    let s: Vec<f32> = sim
        .clone()
        .detach()
        .into_data()
        .try_to_vec::<f32>()
        .expect("float tensor");
    let mut pos = vec![0f32; b * b];
    let mut neg = vec![0f32; b * b];
    for i in 0..b {
        let row = &s[i * b..(i + 1) * b];
        let mut min_pos = f32::INFINITY;
        let mut max_neg = f32::NEG_INFINITY;
        for j in 0..b {
            if j == i {
                continue;
            }
            if labels[j] == labels[i] {
                min_pos = min_pos.min(row[j]);
            } else {
                max_neg = max_neg.max(row[j]);
            }
        }
        for j in 0..b {
            if j == i {
                continue;
            }
            if labels[j] == labels[i] {
                if row[j] - epsilon < max_neg {
                    pos[i * b + j] = 1.0;
                }
            } else if row[j] + epsilon > min_pos {
                neg[i * b + j] = 1.0;
            }
        }
    }
    let mask = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [b, b]), &device);
    let (pos, neg) = (mask(pos), mask(neg));
    let pos_term = (sim.clone().sub_scalar(lambda).mul_scalar(-alpha).exp() * pos)
        .sum_dim(1)
        .add_scalar(1.0)
        .log()
        .div_scalar(alpha);
    let neg_term = (sim.sub_scalar(lambda).mul_scalar(beta).exp() * neg)
        .sum_dim(1)
        .add_scalar(1.0)
        .log()
        .div_scalar(beta);
    (pos_term + neg_term).mean()
}

/// Rows `idx` of `x` (gradients flow back to `x`).
pub fn rows(x: Tensor<2>, idx: &[usize]) -> Tensor<2> {
    let device = x.device();
    let v: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
    let t = Tensor::<1, Int>::from_data(TensorData::new(v, [idx.len()]), &device);
    x.select(0, t)
}

/// Triplets as index lists into a batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Triplets {
    /// Anchor indices.
    pub a: Vec<usize>,
    /// Positive indices (same label as the anchor, not the anchor).
    pub p: Vec<usize>,
    /// Negative indices (different label).
    pub n: Vec<usize>,
}

impl Triplets {
    /// Number of triplets.
    pub fn len(&self) -> usize {
        self.a.len()
    }

    /// True when no triplet was found.
    pub fn is_empty(&self) -> bool {
        self.a.is_empty()
    }

    fn push(&mut self, a: usize, p: usize, n: usize) {
        self.a.push(a);
        self.p.push(p);
        self.n.push(n);
    }
}

/// Squared-distance matrix of row-major `[b, d]` embeddings.
pub fn distance_matrix(emb: &[f32], b: usize, d: usize) -> Vec<f32> {
    let mut m = vec![0f32; b * b];
    for i in 0..b {
        for j in (i + 1)..b {
            let s: f32 = emb[i * d..(i + 1) * d]
                .iter()
                .zip(&emb[j * d..(j + 1) * d])
                .map(|(x, y)| (x - y) * (x - y))
                .sum();
            m[i * b + j] = s;
            m[j * b + i] = s;
        }
    }
    m
}

/// Picks triplets from a batch with labels `labels` and distance matrix `dist` (`b × b`).
///
/// - `Random`: per anchor, a uniformly random positive and negative.
/// - `Semihard`: per anchor-positive pair, the nearest negative farther than the positive
///   (`d(a,n) > d(a,p)`, FaceNet's semi-hard rule as in TensorFlow's implementation); if
///   none exists, the farthest negative.
/// - `Batchhard`: per anchor, the farthest positive and the nearest negative.
///
/// Anchors without a positive or a negative in the batch are skipped.
pub fn mine(mining: Mining, labels: &[usize], dist: &[f32], rng: &mut StdRng) -> Triplets {
    let b = labels.len();
    let mut t = Triplets::default();
    for a in 0..b {
        let pos: Vec<usize> = (0..b)
            .filter(|&j| j != a && labels[j] == labels[a])
            .collect();
        let neg: Vec<usize> = (0..b).filter(|&j| labels[j] != labels[a]).collect();
        if pos.is_empty() || neg.is_empty() {
            continue;
        }
        let d = |j: usize| dist[a * b + j];
        match mining {
            Mining::Random => {
                let p = pos[rng.random_range(0..pos.len())];
                let n = neg[rng.random_range(0..neg.len())];
                t.push(a, p, n);
            }
            Mining::Batchhard => {
                let p = *pos
                    .iter()
                    .max_by(|&&x, &&y| d(x).total_cmp(&d(y)))
                    .expect("non-empty");
                let n = *neg
                    .iter()
                    .min_by(|&&x, &&y| d(x).total_cmp(&d(y)))
                    .expect("non-empty");
                t.push(a, p, n);
            }
            Mining::Semihard => {
                for &p in &pos {
                    let dap = d(p);
                    let n = neg
                        .iter()
                        .copied()
                        .filter(|&n| d(n) > dap)
                        .min_by(|&x, &y| d(x).total_cmp(&d(y)))
                        .or_else(|| neg.iter().copied().max_by(|&x, &y| d(x).total_cmp(&d(y))))
                        .expect("non-empty");
                    t.push(a, p, n);
                }
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use rand::SeedableRng;

    fn t2(v: &[[f32; 2]]) -> Tensor<2> {
        let flat: Vec<f32> = v.iter().flatten().copied().collect();
        Tensor::<2>::from_data(TensorData::new(flat, [v.len(), 2]), &Device::flex())
    }

    fn scalar(t: Tensor<1>) -> f32 {
        t.into_data().try_to_vec::<f32>().unwrap()[0]
    }

    // A 3-sample batch, by hand:
    //   a = (0,0),(1,0),(0,1); p = (0,1),(1,0),(1,1); n = (1,0),(3,0),(0,1.5)
    //   d(a,p) = 1, 0, 1;  d(a,n) = 1, 4, 0.25
    fn batch() -> (Tensor<2>, Tensor<2>, Tensor<2>) {
        (
            t2(&[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
            t2(&[[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]),
            t2(&[[1.0, 0.0], [3.0, 0.0], [0.0, 1.5]]),
        )
    }

    #[test]
    fn golden_triplet_loss() {
        // m = 0.5: max(1-1+.5,0)=.5, max(0-4+.5,0)=0, max(1-.25+.5,0)=1.25 -> mean 1.75/3
        let (a, p, n) = batch();
        let v = scalar(triplet_loss(a, p, n, 0.5));
        assert!((v - 1.75 / 3.0).abs() < 1e-6, "{v}");
    }

    #[test]
    fn golden_inverted_triplet_loss() {
        // m = 0.5: max(1-1+.5,0)=.5, max(4-0+.5,0)=4.5, max(.25-1+.5,0)=0 -> mean 5/3
        let (a, p, n) = batch();
        let v = scalar(inverted_triplet_loss(a, p, n, 0.5));
        assert!((v - 5.0 / 3.0).abs() < 1e-6, "{v}");
    }

    #[test]
    fn golden_cross_entropy() {
        // Rows: logits (0,0,0) target 0 -> ln 3; (ln 3, 0, 0) target 0 -> ln 5 - ln 3;
        // (0, 0, ln 2) target 2 -> ln 4 - ln 2 = ln 2. Mean = (ln 3 + ln(5/3) + ln 2)/3 = ln(10)/3.
        let l3 = 3f32.ln();
        let l2 = 2f32.ln();
        let logits = Tensor::<2>::from_data(
            TensorData::new(vec![0.0, 0.0, 0.0, l3, 0.0, 0.0, 0.0, 0.0, l2], [3, 3]),
            &Device::flex(),
        );
        let v = scalar(cross_entropy(logits, &[0, 0, 2]));
        assert!((v - 10f32.ln() / 3.0).abs() < 1e-6, "{v}");
    }

    #[test]
    fn golden_htg_losses() {
        // L_G = L_inv + b·L_cls and L_D = L_real + b·L_fake, composed from the parts above,
        // with D's logits on the 3-sample batch given by hand (K = 2 real classes + fake).
        let (a, p, n) = batch();
        let b = 0.5f32;
        let l3 = 3f32.ln();
        let dev = Device::flex();
        let logits = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [3, 3]), &dev);
        // Generated triplets classified at real labels (0, 1, 1): per-row CE
        //   (0,0,0)@0 = ln 3; (0,ln3,0)@1 = ln5 - ln3; (0,0,0)@1 = ln 3
        let fake_logits = vec![0.0, 0.0, 0.0, 0.0, l3, 0.0, 0.0, 0.0, 0.0];
        let l_cls = (3f32.ln() + (5f32.ln() - l3) + l3) / 3.0;
        let lg = inverted_triplet_loss(a, p, n, 0.5)
            + cross_entropy(logits(fake_logits.clone()), &[0, 1, 1]).mul_scalar(b);
        assert!((scalar(lg) - (5.0 / 3.0 + b * l_cls)).abs() < 1e-5);
        // D: the same logits at "fake" (class 2): every row has CE = ln 3 except row 1
        // (0,ln3,0)@2 = ln 5. Real logits all zero -> ln 3.
        let l_fake = (l3 + 5f32.ln() + l3) / 3.0;
        let ld = cross_entropy(logits(vec![0.0; 9]), &[0, 1, 1])
            + cross_entropy(logits(fake_logits), &[2, 2, 2]).mul_scalar(b);
        assert!((scalar(ld) - (l3 + b * l_fake)).abs() < 1e-5);
    }

    #[test]
    fn golden_multi_similarity() {
        // Unit vectors e0=(1,0), e1=(1,0), e2=(0,1), e3=(0,1); labels 0,0,1,1.
        // S = [[1,1,0,0],[1,1,0,0],[0,0,1,1],[0,0,1,1]]. Anchor 0: positive 1 (S=1), negatives
        // at S=0. Mining: keep positive since 1 − ε < max_neg = 0? No (0.9 > 0) → dropped;
        // negatives kept when 0 + ε > min_pos = 1? No → dropped. Loss 0 for every anchor.
        let e = Tensor::<2>::from_data(
            TensorData::new(vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0], [4, 2]),
            &Device::flex(),
        );
        assert!(scalar(multi_similarity_loss(e, &[0, 0, 1, 1], 2.0, 50.0, 0.5, 0.1)).abs() < 1e-7);
        // Swap the labels of 1 and 2: anchor 0's positive is e2 (S=0), its negative e1 (S=1).
        // Both kept. Per anchor (all four alike by symmetry):
        //   (1/2)·ln(1 + e^{−2(0−0.5)}) + (1/50)·ln(1 + e^{50(1−0.5)}).
        let e = Tensor::<2>::from_data(
            TensorData::new(vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0], [4, 2]),
            &Device::flex(),
        );
        let want = 0.5 * (1.0 + 1f32.exp()).ln() + (1.0 + 25f32.exp()).ln() / 50.0;
        let got = scalar(multi_similarity_loss(e, &[0, 1, 0, 1], 2.0, 50.0, 0.5, 0.1));
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn mining_picks_by_hand() {
        // 1-D points: 0:(0,L0) 1:(1,L0) 2:(3.5,L0) 3:(2,L1) 4:(10,L1)
        let x = [0.0f32, 1.0, 3.5, 2.0, 10.0];
        let emb: Vec<f32> = x.to_vec();
        let labels = [0, 0, 0, 1, 1];
        let dist = distance_matrix(&emb, 5, 1);
        let mut rng = StdRng::seed_from_u64(0);
        let bh = mine(Mining::Batchhard, &labels, &dist, &mut rng);
        // anchor 0: farthest positive 2 (d=12.25), nearest negative 3 (d=4)
        assert_eq!((bh.a[0], bh.p[0], bh.n[0]), (0, 2, 3));
        // anchor 3: only positive 4, nearest negative 1 (d=1; point 2 is at d=2.25)
        assert_eq!((bh.a[3], bh.p[3], bh.n[3]), (3, 4, 1));
        let sh = mine(Mining::Semihard, &labels, &dist, &mut rng);
        // anchor 0, positive 1 (d=1): nearest negative with d>1 is 3 (d=4)
        assert_eq!((sh.a[0], sh.p[0], sh.n[0]), (0, 1, 3));
        // anchor 0, positive 2 (d=12.25): the only negative farther is 4 (d=100)
        assert_eq!((sh.a[1], sh.p[1], sh.n[1]), (0, 2, 4));
        assert_eq!(sh.len(), 3 * 2 + 2);
        let r = mine(Mining::Random, &labels, &dist, &mut rng);
        assert_eq!(r.len(), 5);
        for i in 0..r.len() {
            assert_eq!(labels[r.a[i]], labels[r.p[i]]);
            assert_ne!(r.a[i], r.p[i]);
            assert_ne!(labels[r.a[i]], labels[r.n[i]]);
        }
    }
}
