//! F's batch norm while training: statistics, normalisation and the backward pass in two
//! passes over NCHW memory each, as a burn backend extension.
//!
//! Why: burn's generic `batch_norm_train` (which flex uses) reduces over batch and space by
//! swapping the batch and channel axes and copying, twice forward and twice backward, and
//! builds the rest from separate element-wise tensor ops. After the convolutions moved to
//! [`crate::conv`], those copies were the largest item left in the step's profile
//! (`copy_2d_tiled`, 11%). Here each channel's statistics are sums over contiguous H·W runs.
//!
//! The fast path runs only where burn's own layer would take its training path (an autodiff
//! device and a layer not frozen) on the flex backend in f32; [`set_enabled`] switches it. It updates the running statistics exactly as
//! `BatchNorm::forward` does; inference and export use burn's layer unchanged.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::nn::BatchNorm;
use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::conv::{contiguous, f32s};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns this fast path on or off for the whole process (on by default), apart from the
/// convolutions' switch, so the step bench can time what each one buys.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// `bn.forward(x)`, through the fast path while training on flex.
pub fn batch_norm(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    if !takes_fast_path(bn, &x) {
        return bn.forward(x);
    }
    let device = x.device();
    let (y, stats) = <Dispatch as NormOps>::htg_batch_norm_train(
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
        bn.epsilon,
    );
    let (y, stats) = (
        Tensor::<4>::from_dispatch(y),
        Tensor::<2>::from_dispatch(stats).detach(),
    );
    let c = stats.dims()[1];
    let mean = stats.clone().slice([0..1, 0..c]).reshape([c]);
    let var = stats.slice([1..2, 0..c]).reshape([c]);
    // `BatchNorm::forward_train`'s update, with the same momentum convention.
    let m = bn.momentum;
    let running_mean = bn.running_mean.value_sync().to_device(&device);
    let running_var = bn.running_var.value_sync().to_device(&device);
    bn.running_mean.update(
        running_mean
            .mul_scalar(1.0 - m)
            .add(mean.mul_scalar(m))
            .detach(),
    );
    bn.running_var.update(
        running_var
            .mul_scalar(1.0 - m)
            .add(var.mul_scalar(m))
            .detach(),
    );
    y
}

/// Whether [`batch_norm`] computes `bn` on `x` itself (else burn's layer does).
fn takes_fast_path(bn: &BatchNorm, x: &Tensor<4>) -> bool {
    let device = x.device();
    ENABLED.load(Ordering::Relaxed)
        && device.is_autodiff()
        && bn.training.is_enabled()
        && x.dtype() == DType::F32
        && device.inner() == Device::flex()
}

/// Batch norm's training forward as one backend operation.
#[backend_extension(Flex, Autodiff)]
pub trait NormOps: Backend {
    /// Normalises NCHW `x` per channel with the batch's mean and biased variance, then scales
    /// by `gamma` and shifts by `beta`. Returns the output and `[2, C]` statistics (mean,
    /// variance), which carry no gradient.
    fn htg_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// The backward pass of [`NormOps::htg_batch_norm_train`], on the backend that computes it.
pub trait NormGrads: Backend {
    /// Gradients for `x`, `gamma` and `beta` given the output's gradient `dy` and the
    /// forward's statistics.
    fn htg_batch_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        epsilon: f64,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3];
}

fn dims4(t: &FloatTensor<Flex>) -> [usize; 4] {
    let s = t.shape();
    [s[0], s[1], s[2], s[3]]
}

fn flex(data: Vec<f32>, shape: Vec<usize>) -> FloatTensor<Flex> {
    FloatTensor::<Flex>::from_data(TensorData::new(data, shape))
}

impl NormOps for Flex {
    fn htg_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let [n, c, h, w] = dims4(&x);
        let (x, gamma, beta) = (contiguous(&x), contiguous(&gamma), contiguous(&beta));
        let (y, stats) = forward([n, c, h * w], f32s(&x), f32s(&gamma), f32s(&beta), epsilon);
        (flex(y, vec![n, c, h, w]), flex(stats, vec![2, c]))
    }
}

impl NormGrads for Flex {
    fn htg_batch_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        epsilon: f64,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3] {
        let [n, c, h, w] = dims4(&x);
        let (x, gamma, stats, dy) = (
            contiguous(&x),
            contiguous(&gamma),
            contiguous(&stats),
            contiguous(&dy),
        );
        let (dx, dgamma, dbeta) = backward(
            [n, c, h * w],
            f32s(&x),
            f32s(&gamma),
            f32s(&stats),
            epsilon,
            f32s(&dy),
        );
        [
            flex(dx, vec![n, c, h, w]),
            flex(dgamma, vec![c]),
            flex(dbeta, vec![c]),
        ]
    }
}

impl<B: Backend + NormOps + NormGrads, C: CheckpointStrategy> NormOps for Autodiff<B, C> {
    fn htg_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct NormBackward;

        impl<B: Backend + NormGrads> Backward<B, 3> for NormBackward {
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, f64);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_gamma, node_beta] = ops.parents;
                let dy = grads.consume::<B>(&ops.node);
                let (x, gamma, stats, epsilon) = ops.state;
                let [dx, dgamma, dbeta] = B::htg_batch_norm_backward(x, gamma, stats, epsilon, dy);
                for (node, g) in [(node_x, dx), (node_gamma, dgamma), (node_beta, dbeta)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        let guards = [x.node(), gamma.node(), beta.node()];
        let (xp, gp) = (x.primitive().clone(), gamma.primitive().clone());
        let (y, stats) = B::htg_batch_norm_train(
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
            epsilon,
        );
        let y = match NormBackward.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((xp, gp, stats.clone(), epsilon), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        // The statistics leave as a leaf without history: they carry no gradient.
        (y, FloatTensor::<Self>::new(stats))
    }
}

/// Samples per rayon task: one task per thread.
fn per_task(n: usize) -> usize {
    n.div_ceil(rayon::current_num_threads().max(1)).max(1)
}

/// Per-channel sums of `f(x, dy)` over batch and space, in f64, summed per task then combined.
fn channel_sums(
    [n, c, hw]: [usize; 3],
    a: &[f32],
    b: &[f32],
    f: impl Fn(usize, f32, f32) -> (f64, f64) + Sync,
) -> Vec<(f64, f64)> {
    let chunk = per_task(n) * c * hw;
    a.par_chunks(chunk)
        .zip(b.par_chunks(chunk))
        .map(|(xs, ys)| {
            let mut acc = vec![(0.0f64, 0.0f64); c];
            for (xn, yn) in xs.chunks(c * hw).zip(ys.chunks(c * hw)) {
                for (ch, acc) in acc.iter_mut().enumerate() {
                    let (mut s0, mut s1) = (0.0f64, 0.0f64);
                    for (&u, &v) in xn[ch * hw..(ch + 1) * hw]
                        .iter()
                        .zip(&yn[ch * hw..(ch + 1) * hw])
                    {
                        let (p, q) = f(ch, u, v);
                        s0 += p;
                        s1 += q;
                    }
                    acc.0 += s0;
                    acc.1 += s1;
                }
            }
            acc
        })
        .reduce(
            || vec![(0.0, 0.0); c],
            |mut l, r| {
                for (a, b) in l.iter_mut().zip(r) {
                    a.0 += b.0;
                    a.1 += b.1;
                }
                l
            },
        )
}

/// `y = γ·(x − μ)/√(σ² + ε) + β` per channel; returns `y` and `[μ…, σ²…]`.
pub fn forward(
    [n, c, hw]: [usize; 3],
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>) {
    let m = (n * hw) as f64;
    let sums = channel_sums([n, c, hw], x, x, |_, u, _| (u as f64, 0.0));
    let mean: Vec<f64> = sums.iter().map(|s| s.0 / m).collect();
    // Two passes: the variance of centred values, so no cancellation between large sums.
    let sq = channel_sums([n, c, hw], x, x, |ch, u, _| {
        let d = u as f64 - mean[ch];
        (d * d, 0.0)
    });
    let var: Vec<f64> = sq.iter().map(|s| s.0 / m).collect();
    let scale: Vec<f32> = (0..c)
        .map(|ch| (gamma[ch] as f64 / (var[ch] + epsilon).sqrt()) as f32)
        .collect();
    let shift: Vec<f32> = (0..c)
        .map(|ch| (beta[ch] as f64 - mean[ch] * scale[ch] as f64) as f32)
        .collect();
    let mut y = vec![0.0f32; x.len()];
    let chunk = per_task(n) * c * hw;
    y.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .for_each(|(ys, xs)| {
            for (yn, xn) in ys.chunks_mut(c * hw).zip(xs.chunks(c * hw)) {
                for ch in 0..c {
                    let (a, b) = (scale[ch], shift[ch]);
                    for (o, &v) in yn[ch * hw..(ch + 1) * hw]
                        .iter_mut()
                        .zip(&xn[ch * hw..(ch + 1) * hw])
                    {
                        *o = v * a + b;
                    }
                }
            }
        });
    let stats = mean
        .iter()
        .chain(&var)
        .map(|&v| v as f32)
        .collect::<Vec<_>>();
    (y, stats)
}

/// With `x̂ = (x − μ)/s`, `s = √(σ² + ε)`: `dβ = Σ dy`, `dγ = Σ dy·x̂` and
/// `dx = γ/s · (dy − mean(dy) − x̂·mean(dy·x̂))`, sums and means per channel.
pub fn backward(
    [n, c, hw]: [usize; 3],
    x: &[f32],
    gamma: &[f32],
    stats: &[f32],
    epsilon: f64,
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let m = (n * hw) as f64;
    let (mean, var) = stats.split_at(c);
    let inv: Vec<f64> = var
        .iter()
        .map(|&v| 1.0 / (v as f64 + epsilon).sqrt())
        .collect();
    let sums = channel_sums([n, c, hw], x, dy, |ch, u, g| {
        let xhat = (u as f64 - mean[ch] as f64) * inv[ch];
        (g as f64, g as f64 * xhat)
    });
    let dbeta: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
    let dgamma: Vec<f32> = sums.iter().map(|s| s.1 as f32).collect();
    // dx = k·dy + a·x + b per channel, with k = γ/s, a = −k·mean(dy·x̂)/s,
    // b = −k·mean(dy) − a·μ.
    let coef: Vec<(f32, f32, f32)> = (0..c)
        .map(|ch| {
            let k = gamma[ch] as f64 * inv[ch];
            let a = -k * (sums[ch].1 / m) * inv[ch];
            let b = -k * (sums[ch].0 / m) - a * mean[ch] as f64;
            (k as f32, a as f32, b as f32)
        })
        .collect();
    let mut dx = vec![0.0f32; x.len()];
    let chunk = per_task(n) * c * hw;
    dx.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk)))
        .for_each(|(dxs, (xs, dys))| {
            for ((dxn, xn), dyn_) in dxs
                .chunks_mut(c * hw)
                .zip(xs.chunks(c * hw))
                .zip(dys.chunks(c * hw))
            {
                for (ch, &(k, a, b)) in coef.iter().enumerate() {
                    let r = ch * hw..(ch + 1) * hw;
                    for ((o, &u), &g) in dxn[r.clone()].iter_mut().zip(&xn[r.clone()]).zip(&dyn_[r])
                    {
                        *o = k * g + a * u + b;
                    }
                }
            }
        });
    (dx, dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::BatchNormConfig;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + seed) * 2_654_435_761usize) % 2001) as f32 / 500.0 - 1.5)
            .collect()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "at {i}: {x} vs {y}");
        }
    }

    /// Against burn's own layer through autodiff: output, gradients of x, γ and β, and the
    /// running statistics after two steps.
    #[test]
    fn the_fast_path_agrees_with_burns_batch_norm() {
        let device = Device::flex().autodiff();
        for shape in [[4, 3, 5, 5], [2, 6, 1, 1], [3, 2, 8, 4]] {
            let x = values(shape.iter().product(), 1);
            let run = |fast: bool| {
                let mut bn = BatchNormConfig::new(shape[1]).init(&device);
                // Non-trivial γ and β.
                let c = shape[1];
                bn.gamma = Param::from_tensor(Tensor::<1>::from_data(
                    TensorData::new(
                        values(c, 3).iter().map(|v| v + 2.0).collect::<Vec<_>>(),
                        [c],
                    ),
                    &device,
                ));
                bn.beta = Param::from_tensor(Tensor::<1>::from_data(
                    TensorData::new(values(c, 5), [c]),
                    &device,
                ));
                let mut out = Vec::new();
                for step in 0..2 {
                    let xt = Tensor::<4>::from_data(
                        TensorData::new(
                            x.iter().map(|v| v + step as f32).collect::<Vec<_>>(),
                            shape,
                        ),
                        &device,
                    )
                    .require_grad();
                    let y = if fast {
                        assert!(takes_fast_path(&bn, &xt), "fast path not taken");
                        batch_norm(&bn, xt.clone())
                    } else {
                        bn.forward(xt.clone())
                    };
                    let dy = values(shape.iter().product(), 7);
                    let dyt = Tensor::<4>::from_data(TensorData::new(dy, shape), &device);
                    let grads = (y.clone() * dyt).sum().backward();
                    let v4 = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().expect("f32");
                    let v1 = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().expect("f32");
                    out.push((
                        v4(y),
                        v4(xt.grad(&grads).expect("dx")),
                        v1(bn.gamma.val().grad(&grads).expect("dgamma")),
                        v1(bn.beta.val().grad(&grads).expect("dbeta")),
                    ));
                }
                let rm = bn
                    .running_mean
                    .value()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap();
                let rv = bn
                    .running_var
                    .value()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap();
                (out, rm, rv)
            };
            let (fast, rm1, rv1) = run(true);
            let (slow, rm0, rv0) = run(false);
            for ((y1, dx1, g1, b1), (y0, dx0, g0, b0)) in fast.iter().zip(&slow) {
                close(y1, y0, 1e-4);
                close(dx1, dx0, 1e-3);
                close(g1, g0, 1e-3);
                close(b1, b0, 1e-4);
            }
            close(&rm1, &rm0, 1e-5);
            close(&rv1, &rv0, 1e-4);
        }
    }
}
