//! F's convolutions while training: im2col and one matrix product per sample, forward and
//! backward, as a burn backend extension with its own backward pass.
//!
//! Why: burn-flex runs 2-D convolutions through its 3-D path, computes the input gradient as
//! a transposed 3-D convolution and the weight gradient as a convolution whose kernel is the
//! whole output map. A profile of the training step put over half of its time in that glue
//! and under a third in matrix products (models/README.md, "Benchmark: one training step").
//! Here every convolution, forward or backward, is an im2col (or its adjoint, col2im) around
//! one GEMM per sample, with the samples split across rayon's threads.
//!
//! The fast path covers what F uses: no bias, no groups, no dilation, the same stride and
//! padding on every side, f32 on the flex backend (with or without autodiff). Anything else,
//! and every non-flex device (the ONNX exporter traces on its own capture device), goes
//! through burn's `Conv2d::forward`, so the exported graph is unchanged.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the fast path on or off for the whole process (on by default). The step bench uses
/// it to time burn's own convolution beside this one in one run; results agree to rounding.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether [`conv2d`] takes the fast path where it can.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `conv.forward(x)`, through the fast path when the device, dtype and options allow it.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    match fast_options(conv, &x) {
        Some((stride, pad)) => {
            let w = conv.weight.val();
            let y = <Dispatch as ConvOps>::htg_conv2d(
                x.into_dispatch(),
                w.into_dispatch(),
                stride,
                pad,
            );
            Tensor::from_dispatch(y)
        }
        None => conv.forward(x),
    }
}

/// `(stride, padding)` when the fast path applies to `conv` on `x`.
fn fast_options(conv: &Conv2d, x: &Tensor<4>) -> Option<(usize, usize)> {
    if !enabled()
        || conv.bias.is_some()
        || conv.groups != 1
        || conv.dilation != [1, 1]
        || conv.stride[0] != conv.stride[1]
        || x.dtype() != DType::F32
        || x.device().inner() != Device::flex()
    {
        return None;
    }
    let pad = match conv.padding {
        PaddingConfig2d::Valid => 0,
        PaddingConfig2d::Explicit(top, left, bottom, right)
            if top == left && top == bottom && top == right =>
        {
            top
        }
        // `Same` and asymmetric padding: burn's path computes them.
        _ => return None,
    };
    let [_, _, h, w] = x.dims();
    let [kh, kw] = conv.kernel_size;
    (h + 2 * pad >= kh && w + 2 * pad >= kw).then_some((conv.stride[0], pad))
}

/// The convolution as a backend operation, so autodiff can carry a backward pass of its own.
#[backend_extension(Flex, Autodiff)]
pub trait ConvOps: Backend {
    /// NCHW `x` convolved with OIHW `w` at `stride` with `pad` zeros on every side.
    fn htg_conv2d(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        stride: usize,
        pad: usize,
    ) -> FloatTensor<Self>;
}

/// The two gradients of [`ConvOps::htg_conv2d`], on the backend that computes them.
pub trait ConvGrads: Backend {
    /// Gradient with respect to `x`, given the output's gradient `dy`.
    fn htg_conv2d_dx(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: usize,
        pad: usize,
    ) -> FloatTensor<Self>;
    /// Gradient with respect to `w`, given the output's gradient `dy`.
    fn htg_conv2d_dw(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: usize,
        pad: usize,
    ) -> FloatTensor<Self>;
}

fn geom(x: &FloatTensor<Flex>, w: &FloatTensor<Flex>, stride: usize, pad: usize) -> Geom {
    let xs = x.shape();
    let ws = w.shape();
    Geom::new(
        [xs[0], xs[1], xs[2], xs[3]],
        [ws[0], ws[1], ws[2], ws[3]],
        stride,
        pad,
    )
}

/// A contiguous f32 copy-free view where the tensor allows it.
pub(crate) fn contiguous(t: &FloatTensor<Flex>) -> FloatTensor<Flex> {
    if t.is_contiguous() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

fn flex_tensor(data: Vec<f32>, shape: [usize; 4]) -> FloatTensor<Flex> {
    FloatTensor::<Flex>::from_data(TensorData::new(data, shape))
}

impl ConvOps for Flex {
    fn htg_conv2d(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        stride: usize,
        pad: usize,
    ) -> FloatTensor<Self> {
        let g = geom(&x, &w, stride, pad);
        let (x, w) = (contiguous(&x), contiguous(&w));
        let y = forward(&g, f32s(&x), f32s(&w));
        flex_tensor(y, [g.n, g.co, g.oh, g.ow])
    }
}

impl ConvGrads for Flex {
    fn htg_conv2d_dx(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: usize,
        pad: usize,
    ) -> FloatTensor<Self> {
        let g = geom(&x, &w, stride, pad);
        let (w, dy) = (contiguous(&w), contiguous(&dy));
        let dx = backward_x(&g, f32s(&w), f32s(&dy));
        flex_tensor(dx, [g.n, g.ci, g.h, g.w])
    }

    fn htg_conv2d_dw(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: usize,
        pad: usize,
    ) -> FloatTensor<Self> {
        let g = geom(&x, &w, stride, pad);
        let (x, dy) = (contiguous(&x), contiguous(&dy));
        let dw = backward_w(&g, f32s(&x), f32s(&dy));
        flex_tensor(dw, [g.co, g.ci, g.kh, g.kw])
    }
}

pub(crate) fn f32s(t: &FloatTensor<Flex>) -> &[f32] {
    t.as_slice::<f32>()
        .expect("the fast path only takes contiguous f32 tensors")
}

impl<B: Backend + ConvOps + ConvGrads, C: CheckpointStrategy> ConvOps for Autodiff<B, C> {
    fn htg_conv2d(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        stride: usize,
        pad: usize,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct ConvBackward;

        impl<B: Backend + ConvGrads> Backward<B, 2> for ConvBackward {
            type State = (FloatTensor<B>, FloatTensor<B>, usize, usize);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_w] = ops.parents;
                let dy = grads.consume::<B>(&ops.node);
                let (x, w, stride, pad) = ops.state;
                if let Some(node) = node_w {
                    let dw = B::htg_conv2d_dw(x.clone(), w.clone(), dy.clone(), stride, pad);
                    grads.register::<B>(node.id, dw);
                }
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, B::htg_conv2d_dx(x, w, dy, stride, pad));
                }
            }
        }

        let guards = [x.node(), w.node()];
        let (xp, wp) = (x.primitive().clone(), w.primitive().clone());
        let y = B::htg_conv2d(x.into_primitive(), w.into_primitive(), stride, pad);
        match ConvBackward.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((xp, wp, stride, pad), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}

/// Shapes of one convolution: input `[n, ci, h, w]`, weight `[co, ci, kh, kw]`, output
/// `[n, co, oh, ow]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geom {
    n: usize,
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    /// The geometry of `x: [n, ci, h, w]` convolved with `w: [co, ci, kh, kw]`.
    ///
    /// # Panics
    /// When the channels disagree, the stride is 0 or the kernel is larger than the padded
    /// input: callers reach here only through `Conv2d`, which has checked all three.
    pub fn new(x: [usize; 4], w: [usize; 4], stride: usize, pad: usize) -> Self {
        let [n, ci, h, wd] = x;
        let [co, wci, kh, kw] = w;
        assert_eq!(ci, wci, "input has {ci} channels, the weight expects {wci}");
        assert!(stride > 0, "stride 0");
        assert!(
            h + 2 * pad >= kh && wd + 2 * pad >= kw,
            "kernel larger than the padded input"
        );
        Self {
            n,
            ci,
            h,
            w: wd,
            co,
            kh,
            kw,
            stride,
            pad,
            oh: (h + 2 * pad - kh) / stride + 1,
            ow: (wd + 2 * pad - kw) / stride + 1,
        }
    }

    /// Rows of the im2col matrix (the GEMM's inner dimension).
    fn k(&self) -> usize {
        self.ci * self.kh * self.kw
    }

    /// Output positions per sample (columns of the im2col matrix).
    fn p(&self) -> usize {
        self.oh * self.ow
    }

    /// Output columns `ox` whose input column `ox·stride + j − pad` is inside the image.
    fn valid_cols(&self, j: usize) -> (usize, usize) {
        let lo = self.pad.saturating_sub(j).div_ceil(self.stride);
        // ox·s + j − pad ≤ w − 1  ⇔  ox ≤ (w − 1 + pad − j) / s
        let hi = if self.w + self.pad > j {
            ((self.w - 1 + self.pad - j) / self.stride + 1).min(self.ow)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// Input row of output row `oy` at kernel row `i`, if inside the image.
    fn in_row(&self, oy: usize, i: usize) -> Option<usize> {
        (oy * self.stride + i)
            .checked_sub(self.pad)
            .filter(|&y| y < self.h)
    }
}

/// One sample's im2col: `col[(c·kh + i)·kw + j][oy·ow + ox] = x[c][oy·s + i − pad][ox·s + j − pad]`.
fn im2col(g: &Geom, x: &[f32], col: &mut [f32]) {
    let p = g.p();
    for c in 0..g.ci {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &mut col[((c * g.kh + i) * g.kw + j) * p..][..p];
                let (lo, hi) = g.valid_cols(j);
                for oy in 0..g.oh {
                    let out = &mut row[oy * g.ow..(oy + 1) * g.ow];
                    let Some(y) = g.in_row(oy, i) else {
                        out.fill(0.0);
                        continue;
                    };
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    let src = &plane[y * g.w..(y + 1) * g.w];
                    let x0 = lo * g.stride + j - g.pad;
                    if g.stride == 1 {
                        out[lo..hi].copy_from_slice(&src[x0..x0 + (hi - lo)]);
                    } else {
                        for (k, o) in out[lo..hi].iter_mut().enumerate() {
                            *o = src[x0 + k * g.stride];
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds every column entry back onto the input pixel it came from.
fn col2im_add(g: &Geom, col: &[f32], dx: &mut [f32]) {
    let p = g.p();
    for c in 0..g.ci {
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &col[((c * g.kh + i) * g.kw + j) * p..][..p];
                let (lo, hi) = g.valid_cols(j);
                for oy in 0..g.oh {
                    let Some(y) = g.in_row(oy, i) else { continue };
                    let src = &row[oy * g.ow + lo..oy * g.ow + hi];
                    let x0 = lo * g.stride + j - g.pad;
                    let dst = &mut plane[y * g.w..(y + 1) * g.w];
                    if g.stride == 1 {
                        for (d, s) in dst[x0..x0 + (hi - lo)].iter_mut().zip(src) {
                            *d += s;
                        }
                    } else {
                        for (k, s) in src.iter().enumerate() {
                            dst[x0 + k * g.stride] += s;
                        }
                    }
                }
            }
        }
    }
}

/// A row-major or transposed view of a matrix for [`sgemm`]: element (r, c) is at
/// `r·rs + c·cs`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl Mat<'_> {
    /// The transposed view: no copy, swapped strides.
    fn t(self) -> Self {
        Mat {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// `dst[m×n] (row-major) = (accumulate ? dst : 0) + a[m×k] · b[k×n]`, on this thread.
fn sgemm(m: usize, n: usize, k: usize, dst: &mut [f32], accumulate: bool, a: Mat, b: Mat) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |v: Mat, rows: usize, cols: usize| (rows - 1) * v.rs + (cols - 1) * v.cs;
    assert!(dst.len() >= m * n, "GEMM output too small");
    if k > 0 {
        assert!(
            last(a, m, k) < a.data.len(),
            "GEMM left operand out of bounds"
        );
        assert!(
            last(b, k, n) < b.data.len(),
            "GEMM right operand out of bounds"
        );
    }
    // SAFETY: every index the product reads or writes was bounds-checked above; `dst` does
    // not alias `a` or `b` (it is a unique borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// How many samples each rayon task takes: one task per thread.
fn per_task(n: usize) -> usize {
    n.div_ceil(rayon::current_num_threads().max(1)).max(1)
}

/// `y[n][co][P] = W[co][K] · col_n[K][P]`.
pub fn forward(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (k, p) = (g.k(), g.p());
    let in_len = g.ci * g.h * g.w;
    let out_len = g.co * p;
    let mut y = vec![0.0f32; g.n * out_len];
    let chunk = per_task(g.n);
    y.par_chunks_mut(chunk * out_len)
        .zip(x.par_chunks(chunk * in_len))
        .for_each(|(ys, xs)| {
            let mut col = vec![0.0f32; k * p];
            for (yn, xn) in ys.chunks_mut(out_len).zip(xs.chunks(in_len)) {
                im2col(g, xn, &mut col);
                let a = Mat {
                    data: w,
                    rs: k,
                    cs: 1,
                };
                let b = Mat {
                    data: &col,
                    rs: p,
                    cs: 1,
                };
                sgemm(g.co, p, k, yn, false, a, b);
            }
        });
    y
}

/// `dx_n = col2im(Wᵀ[K][co] · dy_n[co][P])`.
pub fn backward_x(g: &Geom, w: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, p) = (g.k(), g.p());
    let in_len = g.ci * g.h * g.w;
    let out_len = g.co * p;
    let mut dx = vec![0.0f32; g.n * in_len];
    let chunk = per_task(g.n);
    dx.par_chunks_mut(chunk * in_len)
        .zip(dy.par_chunks(chunk * out_len))
        .for_each(|(dxs, dys)| {
            let mut col = vec![0.0f32; k * p];
            for (dxn, dyn_) in dxs.chunks_mut(in_len).zip(dys.chunks(out_len)) {
                let a = Mat {
                    data: w,
                    rs: 1,
                    cs: k,
                };
                let b = Mat {
                    data: dyn_,
                    rs: p,
                    cs: 1,
                };
                sgemm(k, p, g.co, &mut col, false, a, b);
                col2im_add(g, &col, dxn);
            }
        });
    dx
}

/// Output channels up to which [`backward_w`] accumulates dWᵀ instead of dW. Measured per
/// layer of the default F (one thread, 64 samples): at 16 channels (32×32) dWᵀ took 19 ms
/// against 39 ms; at 32 and 64 channels it was slower (22 against 16 ms, 17 against 13 ms).
/// The GEMM crate packs whichever operand its layout rules pick; with dWᵀ that is the
/// narrow `dy`, not the im2col matrix, while `co` is small.
const DW_TRANSPOSED_MAX_CO: usize = 16;

/// `dW[co][K] = Σ_n dy_n[co][P] · col_nᵀ[P][K]`, accumulated per task as dW or, for narrow
/// layers, as dWᵀ[K][co] = Σ_n col_n · dy_nᵀ.
pub fn backward_w(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, p) = (g.k(), g.p());
    let in_len = g.ci * g.h * g.w;
    let out_len = g.co * p;
    let chunk = per_task(g.n);
    let transposed = g.co <= DW_TRANSPOSED_MAX_CO;
    let parts: Vec<Vec<f32>> = x
        .par_chunks(chunk * in_len)
        .zip(dy.par_chunks(chunk * out_len))
        .map(|(xs, dys)| {
            let mut col = vec![0.0f32; k * p];
            let mut acc = vec![0.0f32; g.co * k];
            for (i, (xn, dyn_)) in xs.chunks(in_len).zip(dys.chunks(out_len)).enumerate() {
                im2col(g, xn, &mut col);
                let dy_n = Mat {
                    data: dyn_,
                    rs: p,
                    cs: 1,
                };
                let col_n = Mat {
                    data: &col,
                    rs: p,
                    cs: 1,
                };
                if transposed {
                    sgemm(k, g.co, p, &mut acc, i > 0, col_n, dy_n.t());
                } else {
                    sgemm(g.co, k, p, &mut acc, i > 0, dy_n, col_n.t());
                }
            }
            acc
        })
        .collect();
    let mut dw = vec![0.0f32; g.co * k];
    for part in parts {
        if transposed {
            for (r, row) in part.chunks(g.co).enumerate() {
                for (o, v) in row.iter().enumerate() {
                    dw[o * k + r] += v;
                }
            }
        } else {
            for (d, v) in dw.iter_mut().zip(&part) {
                *d += v;
            }
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;

    /// The definition, one output at a time.
    fn naive(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
        let mut y = vec![0.0f32; g.n * g.co * g.p()];
        for n in 0..g.n {
            for o in 0..g.co {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut s = 0.0f64;
                        for c in 0..g.ci {
                            for i in 0..g.kh {
                                for j in 0..g.kw {
                                    let iy = (oy * g.stride + i) as isize - g.pad as isize;
                                    let ix = (ox * g.stride + j) as isize - g.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv =
                                        x[((n * g.ci + c) * g.h + iy as usize) * g.w + ix as usize];
                                    let wv = w[((o * g.ci + c) * g.kh + i) * g.kw + j];
                                    s += (xv * wv) as f64;
                                }
                            }
                        }
                        y[((n * g.co + o) * g.oh + oy) * g.ow + ox] = s as f32;
                    }
                }
            }
        }
        y
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + seed) * 2_654_435_761usize) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "at {i}: {x} vs {y}");
        }
    }

    /// The last case has more output channels than `DW_TRANSPOSED_MAX_CO`, so both weight
    /// gradient layouts are checked.
    const CASES: [([usize; 4], [usize; 4], usize, usize); 7] = [
        ([3, 3, 8, 8], [4, 3, 3, 3], 1, 1),
        ([2, 4, 9, 7], [5, 4, 3, 3], 2, 1),
        ([5, 2, 6, 6], [3, 2, 1, 1], 2, 0),
        ([1, 2, 5, 5], [2, 2, 3, 3], 1, 0),
        ([2, 1, 4, 4], [2, 1, 3, 3], 3, 2),
        ([4, 3, 7, 10], [6, 3, 1, 1], 1, 0),
        ([3, 5, 6, 7], [20, 5, 3, 3], 1, 1),
    ];

    #[test]
    fn forward_matches_the_definition() {
        for (xs, ws, s, p) in CASES {
            let g = Geom::new(xs, ws, s, p);
            let x = values(xs.iter().product(), 1);
            let w = values(ws.iter().product(), 7);
            close(&forward(&g, &x, &w), &naive(&g, &x, &w), 1e-5);
        }
    }

    /// ⟨dy, conv(x, w)⟩ is bilinear, so its gradients are the adjoints: checks `backward_x`
    /// and `backward_w` against the forward by ⟨dx, x'⟩ = ⟨dy, conv(x', w)⟩ and likewise for w.
    #[test]
    fn backward_is_the_adjoint_of_forward() {
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>();
        for (xs, ws, s, p) in CASES {
            let g = Geom::new(xs, ws, s, p);
            let x = values(xs.iter().product(), 3);
            let w = values(ws.iter().product(), 11);
            let dy = values(g.n * g.co * g.p(), 5);
            let dx = backward_x(&g, &w, &dy);
            let dw = backward_w(&g, &x, &dy);
            let lhs_x = dot(&dx, &x);
            let lhs_w = dot(&dw, &w);
            let rhs = dot(&dy, &naive(&g, &x, &w));
            assert!(
                (lhs_x - rhs).abs() < 1e-3 * (1.0 + rhs.abs()),
                "{lhs_x} vs {rhs}"
            );
            assert!(
                (lhs_w - rhs).abs() < 1e-3 * (1.0 + rhs.abs()),
                "{lhs_w} vs {rhs}"
            );
            // Each coordinate, not only the sums: perturb one input and one weight.
            for idx in [0, x.len() / 2, x.len() - 1] {
                let mut e = vec![0.0f32; x.len()];
                e[idx] = 1.0;
                let want = dot(&dy, &naive(&g, &e, &w));
                assert!((dx[idx] as f64 - want).abs() < 1e-4, "dx[{idx}]");
            }
            for idx in [0, w.len() / 2, w.len() - 1] {
                let mut e = vec![0.0f32; w.len()];
                e[idx] = 1.0;
                let want = dot(&dy, &naive(&g, &x, &e));
                assert!((dw[idx] as f64 - want).abs() < 1e-3, "dw[{idx}]");
            }
        }
    }

    /// Through burn's autodiff: the fast path and burn's own convolution give the same output
    /// and the same gradients for x and w.
    #[test]
    fn the_fast_path_agrees_with_burns_conv_through_autodiff() {
        let device = Device::flex().autodiff();
        for (xs, ws, s, p) in CASES {
            let conv = Conv2dConfig::new([ws[1], ws[0]], [ws[2], ws[3]])
                .with_stride([s, s])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .with_bias(false)
                .init(&device);
            let x = values(xs.iter().product(), 2);
            let run = |fast: bool| {
                let xt =
                    Tensor::<4>::from_data(TensorData::new(x.clone(), xs), &device).require_grad();
                let y = if fast {
                    assert!(fast_options(&conv, &xt).is_some(), "fast path not taken");
                    conv2d(&conv, xt.clone())
                } else {
                    conv.forward(xt.clone())
                };
                let dy = values(y.dims().iter().product(), 9);
                let dyt = Tensor::<4>::from_data(TensorData::new(dy, y.dims()), &device);
                let grads = (y.clone() * dyt).sum().backward();
                let gx = xt.grad(&grads).expect("x has a gradient");
                let gw = conv.weight.val().grad(&grads).expect("w has a gradient");
                let v = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().expect("f32");
                (v(y), v(gx), v(gw))
            };
            let (y1, gx1, gw1) = run(true);
            let (y0, gx0, gw0) = run(false);
            close(&y1, &y0, 1e-5);
            close(&gx1, &gx0, 1e-4);
            close(&gw1, &gw0, 1e-4);
        }
    }

    #[test]
    fn bias_and_other_devices_take_burns_path() {
        let device = Device::flex();
        let conv = Conv2dConfig::new([2, 3], [3, 3]).init(&device);
        let x = Tensor::<4>::zeros([1, 2, 5, 5], &device);
        assert!(
            fast_options(&conv, &x).is_none(),
            "bias is not on the fast path"
        );
        let conv = Conv2dConfig::new([2, 3], [3, 3])
            .with_bias(false)
            .with_padding(PaddingConfig2d::Explicit(1, 0, 1, 0))
            .init(&device);
        assert!(fast_options(&conv, &x).is_none(), "asymmetric padding");
    }
}
