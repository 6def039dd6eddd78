//! The three networks: F (feature CNN), G (triplet generator), D (discriminator).
//!
//! F uses only operations that burn-onnx exports (conv, batch norm, ReLU, add, adaptive
//! average pooling, flatten, linear), so the exported file is the whole model and needs no
//! hand-written ONNX. F's output is not normalised in the graph: htg's embedders l2-normalise
//! every model's output, and training normalises in [`l2_normalize`].

use std::f64::consts::SQRT_2;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, AvgPool2d, AvgPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d, Relu,
};
use burn::tensor::activation::tanh;
use burn::tensor::{Device, Tensor};
use htg_retrieval::spec::{Color, Layout, ModelSpec, Pooling};

use crate::config::{FeatureConfig, InputColor};
use crate::conv::conv2d;
use crate::norm::batch_norm;

/// Input name written into the spec before export replaces it with the graph's actual name.
pub const INPUT_NAME: &str = "image";
/// Output name written into the spec before export replaces it with the graph's actual name.
pub const OUTPUT_NAME: &str = "embedding";

/// The preprocessing spec of F: pixels scaled to 0..1, then `(v - 0.5) / 0.5` per channel.
pub fn input_spec(cfg: &FeatureConfig) -> ModelSpec {
    let (color, c) = match cfg.color {
        InputColor::Rgb => (Color::Rgb, 3),
        InputColor::Grey => (Color::Grey, 1),
    };
    ModelSpec {
        input_name: INPUT_NAME.into(),
        output_name: OUTPUT_NAME.into(),
        layout: Layout::Nchw,
        height: cfg.input_size,
        width: cfg.input_size,
        resize: Default::default(),
        color,
        scale: 1.0 / 255.0,
        mean: vec![0.5; c],
        std: vec![0.5; c],
        pooling: Pooling::None,
        embedding_dim: cfg.embedding_dim,
    }
}

fn kaiming() -> Initializer {
    Initializer::KaimingNormal {
        gain: SQRT_2,
        fan_out_only: true,
    }
}

fn conv3(cin: usize, cout: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .with_initializer(kaiming())
        .init(device)
}

/// A 1×1 projection on the shortcut where the shape changes.
#[derive(Module, Debug)]
pub struct Shortcut {
    conv: Conv2d,
    bn: BatchNorm,
}

/// A ResNet basic block: two 3×3 convolutions with batch norm and an identity shortcut.
#[derive(Module, Debug)]
pub struct Block {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    relu: Relu,
    shortcut: Option<Shortcut>,
}

impl Block {
    fn new(cin: usize, cout: usize, stride: usize, device: &Device) -> Self {
        let shortcut = (cin != cout || stride != 1).then(|| Shortcut {
            conv: Conv2dConfig::new([cin, cout], [1, 1])
                .with_stride([stride, stride])
                .with_bias(false)
                .with_initializer(kaiming())
                .init(device),
            bn: BatchNormConfig::new(cout).init(device),
        });
        Self {
            conv1: conv3(cin, cout, stride, device),
            bn1: BatchNormConfig::new(cout).init(device),
            conv2: conv3(cout, cout, 1, device),
            bn2: BatchNormConfig::new(cout).init(device),
            relu: Relu::new(),
            shortcut,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self
            .relu
            .forward(batch_norm(&self.bn1, conv2d(&self.conv1, x.clone())));
        let y = batch_norm(&self.bn2, conv2d(&self.conv2, y));
        let s = match &self.shortcut {
            Some(s) => batch_norm(&s.bn, conv2d(&s.conv, x)),
            None => x,
        };
        self.relu.forward(y + s)
    }
}

/// F trained from scratch: a small residual CNN for 28–64 px inputs: a 3×3 stem, one stage
/// per width (each after the first halves the resolution), pooling to a g×g grid (g = 1:
/// global average pooling), flattening and a linear embedding.
#[derive(Module, Debug)]
pub struct Cnn {
    stem: Conv2d,
    stem_bn: BatchNorm,
    relu: Relu,
    blocks: Vec<Block>,
    gap: Option<AdaptiveAvgPool2d>,
    grid: Option<AvgPool2d>,
    head: Linear,
}

impl Cnn {
    /// Builds the CNN as configured, with Kaiming-normal convolutions.
    pub fn new(cfg: &FeatureConfig, device: &Device) -> Self {
        let cin = match cfg.color {
            InputColor::Rgb => 3,
            InputColor::Grey => 1,
        };
        let w0 = cfg.widths[0];
        let mut blocks = Vec::new();
        let mut c = w0;
        for (i, &w) in cfg.widths.iter().enumerate() {
            for j in 0..cfg.blocks_per_stage.max(1) {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                blocks.push(Block::new(c, w, stride, device));
                c = w;
            }
        }
        let g = cfg.pool_grid.max(1);
        let k = (cfg.final_resolution() / g).max(1);
        Self {
            stem: conv3(cin, w0, 1, device),
            stem_bn: BatchNormConfig::new(w0).init(device),
            relu: Relu::new(),
            blocks,
            gap: (g == 1).then(|| AdaptiveAvgPool2dConfig::new([1, 1]).init()),
            grid: (g > 1).then(|| AvgPool2dConfig::new([k, k]).with_strides([k, k]).init()),
            head: LinearConfig::new(c * g * g, cfg.embedding_dim).init(device),
        }
    }

    /// Raw (un-normalised) embedding of an NCHW batch: `[N, embedding_dim]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self
            .relu
            .forward(batch_norm(&self.stem_bn, conv2d(&self.stem, x)));
        for b in &self.blocks {
            x = b.forward(x);
        }
        let x = match (&self.gap, &self.grid) {
            (Some(p), _) => p.forward(x),
            (None, Some(p)) => p.forward(x),
            (None, None) => x,
        };
        let x = x.flatten(1, 3);
        self.head.forward(x)
    }
}

/// F's trained part on a frozen, pretrained backbone: an MLP (or one linear layer) from the
/// backbone's features to the embedding. Its input is `[N, D, 1, 1]`, the cached backbone
/// features in the layout every [`crate::data::ImageSet`] has, so the trainer, the mining and
/// the evaluation see F through the same `forward` whatever F is.
#[derive(Module, Debug)]
pub struct Head {
    hidden: Option<Linear>,
    out: Linear,
    relu: Relu,
}

/// One linear layer of a [`Head`] as plain numbers, for writing it into an ONNX graph:
/// `y = x · weight + bias`, `weight` row-major `[inputs, outputs]`.
#[derive(Clone, Debug)]
pub struct DenseLayer {
    /// Row-major `[inputs, outputs]`.
    pub weight: Vec<f32>,
    /// `[outputs]`.
    pub bias: Vec<f32>,
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
}

impl Head {
    /// A head from `features` backbone features to `dim`, with one hidden ReLU layer of
    /// `hidden` units (0: a single linear layer). `identity` starts a single square layer at
    /// the identity (the config's validation guarantees the shape).
    pub fn new(
        features: usize,
        hidden: usize,
        dim: usize,
        identity: bool,
        device: &Device,
    ) -> Self {
        let (hidden, din) = if hidden > 0 {
            (
                Some(LinearConfig::new(features, hidden).init(device)),
                hidden,
            )
        } else {
            (None, features)
        };
        let mut out = LinearConfig::new(din, dim).init(device);
        if identity && hidden.is_none() && din == dim {
            out.weight = burn::module::Param::from_tensor(Tensor::eye(dim, device));
            out.bias = Some(burn::module::Param::from_tensor(Tensor::zeros(
                [dim],
                device,
            )));
        }
        Self {
            hidden,
            out,
            relu: Relu::new(),
        }
    }

    /// Raw (un-normalised) embedding of `[N, D, 1, 1]` features: `[N, dim]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = x.flatten(1, 3);
        let x = match &self.hidden {
            Some(h) => self.relu.forward(h.forward(x)),
            None => x,
        };
        self.out.forward(x)
    }

    /// The layers in order; a ReLU follows every layer but the last.
    pub fn layers(&self) -> Vec<DenseLayer> {
        let dense = |l: &Linear| {
            let w = l.weight.val();
            let [inputs, outputs] = w.dims();
            let weight = w.into_data().try_to_vec::<f32>().expect("float weights");
            let bias = l.bias.as_ref().map_or_else(
                || vec![0.0; outputs],
                |b| b.val().into_data().try_to_vec::<f32>().expect("float bias"),
            );
            DenseLayer {
                weight,
                bias,
                inputs,
                outputs,
            }
        };
        self.hidden.iter().chain([&self.out]).map(dense).collect()
    }
}

/// F, the network whose embeddings are trained: a CNN from pixels, or a head on a frozen
/// pretrained backbone's cached features (`[backbone]` in the config).
// One F per trainer (and one copy of the best): the variants' size difference costs nothing,
// and burn's Module derive does not see through a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum FeatureNet {
    /// From scratch, on pixels.
    Cnn(Cnn),
    /// On a frozen backbone's features.
    Head(Head),
}

impl FeatureNet {
    /// F as `cfg` describes it: a head when it names a backbone, else the CNN.
    pub fn new(cfg: &crate::TrainConfig, device: &Device) -> Self {
        match &cfg.backbone {
            Some(b) => FeatureNet::Head(Head::new(
                b.features,
                b.head_hidden,
                cfg.feature.embedding_dim,
                b.head_init == crate::config::HeadInit::Identity,
                device,
            )),
            None => FeatureNet::Cnn(Cnn::new(&cfg.feature, device)),
        }
    }

    /// Raw (un-normalised) embedding of a batch: `[N, embedding_dim]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            FeatureNet::Cnn(c) => c.forward(x),
            FeatureNet::Head(h) => h.forward(x),
        }
    }
}

/// Rows divided by their l2 norm (with a small floor so a zero row stays finite).
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).add_scalar(1e-12).sqrt();
    x / norm
}

/// G: a residual MLP on the concatenated triplet `[a, p, n]` (3·d wide). Its last layer
/// starts at zero, so G starts as the identity and HTG starts as plain triplet training;
/// outputs are l2-normalised like F's.
#[derive(Module, Debug)]
pub struct Generator {
    fc1: Linear,
    fc2: Linear,
    relu: Relu,
    max_shift: f32,
}

impl Generator {
    /// G for embeddings of length `dim` with a hidden layer of `hidden` units; each residual
    /// coordinate is bounded by `max_shift` (`max_shift · tanh`); `max_shift = 0` leaves the
    /// residual unbounded (for the soft-penalty ablation).
    pub fn new(dim: usize, hidden: usize, max_shift: f32, device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(3 * dim, hidden).init(device),
            fc2: LinearConfig::new(hidden, 3 * dim)
                .with_initializer(Initializer::Zeros)
                .init(device),
            relu: Relu::new(),
            max_shift,
        }
    }

    /// `(a, p, n)` → `(a', p', n')`, each `[B, d]` and unit length.
    pub fn forward(
        &self,
        a: Tensor<2>,
        p: Tensor<2>,
        n: Tensor<2>,
    ) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
        let d = a.dims()[1];
        let x = Tensor::cat(vec![a, p, n], 1);
        let r = self
            .fc2
            .forward(self.relu.forward(self.fc1.forward(x.clone())));
        let y = if self.max_shift > 0.0 {
            x + tanh(r).mul_scalar(self.max_shift)
        } else {
            x + r
        };
        let part = |i: usize| l2_normalize(y.clone().narrow(1, i * d, d));
        (part(0), part(1), part(2))
    }
}

/// D: a (K+1)-way classifier on embeddings; class K means "generated by G".
#[derive(Module, Debug)]
pub struct Discriminator {
    hidden: Option<Linear>,
    out: Linear,
    relu: Relu,
}

impl Discriminator {
    /// D for `classes` real classes (plus one fake class); `hidden` = 0 makes it linear.
    pub fn new(dim: usize, hidden: usize, classes: usize, device: &Device) -> Self {
        let (h, din) = if hidden > 0 {
            (Some(LinearConfig::new(dim, hidden).init(device)), hidden)
        } else {
            (None, dim)
        };
        Self {
            hidden: h,
            out: LinearConfig::new(din, classes + 1).init(device),
            relu: Relu::new(),
        }
    }

    /// Logits `[B, K+1]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = match &self.hidden {
            Some(h) => self.relu.forward(h.forward(x)),
            None => x,
        };
        self.out.forward(x)
    }
}

/// One learned proxy per training class, for the normalised-softmax baseline: logits are the
/// cosine similarities of l2-normalised embeddings to the l2-normalised proxies over a
/// temperature, so the loss pulls each embedding towards its class's direction.
#[derive(Module, Debug)]
pub struct Proxies {
    /// `[dim, classes]`: column c is class c's proxy (a linear map without bias).
    weights: Linear,
}

impl Proxies {
    /// Random proxies for `classes` classes in `dim` dimensions.
    pub fn new(dim: usize, classes: usize, device: &Device) -> Self {
        Self {
            weights: LinearConfig::new(dim, classes)
                .with_bias(false)
                .init(device),
        }
    }

    /// Logits `[B, classes]` of l2-normalised embeddings `emb` `[B, dim]`.
    pub fn forward(&self, emb: Tensor<2>, temperature: f32) -> Tensor<2> {
        let w = self.weights.weight.val();
        let norm = w.clone().powi_scalar(2).sum_dim(0).sqrt().clamp_min(1e-12);
        emb.matmul(w / norm).div_scalar(temperature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn an_identity_head_starts_as_the_backbone_features_and_trains() {
        let dev = crate::backend::train_device();
        let x: Vec<f32> = (0..8).map(|i| i as f32 * 0.25 - 1.0).collect();
        let input = Tensor::<4>::from_data(TensorData::new(x.clone(), [2, 4, 1, 1]), &dev);
        let head = Head::new(4, 0, 4, true, &dev);
        let y = head.forward(input.clone());
        let got = y.clone().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(got, x);
        // Its weights are parameters like any other: the loss reaches them.
        let grads = y.powi_scalar(2).sum().backward();
        let layers = head.out.weight.grad(&grads);
        assert!(layers.is_some(), "the identity weight takes gradients");
        // A random head does not start at the identity.
        let random = Head::new(4, 0, 4, false, &dev).forward(input);
        assert_ne!(random.into_data().try_to_vec::<f32>().unwrap(), x);
    }
}
