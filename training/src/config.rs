//! Training configuration: one serde struct, loaded from TOML and saved beside every artefact.
//!
//! Every knob that changes a result lives here (seed included), so a `config.toml` next to a
//! `model.onnx` is enough to reproduce it. Unknown keys are rejected, so a typo cannot silently
//! fall back to a default.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// How F is trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Hard Triplet Generation (Zhao et al., ECCV 2018): G hardens triplets, D keeps labels.
    Htg,
    /// Triplet loss, one random positive and negative per anchor.
    TripletRandom,
    /// Triplet loss, semi-hard negatives for every anchor-positive pair (Schroff et al. 2015).
    TripletSemihard,
    /// Triplet loss, hardest positive and negative per anchor (Hermans et al. 2017).
    TripletBatchhard,
    /// Multi-similarity loss with its pair mining (Wang et al. 2019), a stronger baseline
    /// on the same F, batches and schedule.
    MultiSimilarity,
    /// Normalised softmax over one learned proxy per training class (Zhai & Wu, BMVC 2019):
    /// the proxy-loss baseline, on the same F, batches and schedule.
    NormSoftmax,
}

impl Method {
    /// The name used on the command line and in metadata: serde's, so config files, reports
    /// and flags (clap's kebab-case, the same) never spell a method two ways.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// How F's learning rate changes over the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    /// `lr` at every step.
    Constant,
    /// Linear warm-up over `lr_warmup_steps`, then a cosine decay from `lr` to 0 at `steps`.
    /// Short runs end far from a minimum with a constant rate; decaying it lets the last
    /// steps settle, for every method alike.
    Cosine,
}

/// Which triplets are taken from a P×K batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mining {
    /// One random positive and one random negative per anchor.
    Random,
    /// Every anchor-positive pair with a semi-hard negative (fallback: the easiest negative).
    Semihard,
    /// Hardest positive and hardest negative per anchor.
    Batchhard,
}

/// What produces F's hard triplets in HTG: G as the method trains it, or an ablation of G.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GeneratorMode {
    /// G as trained by the method (inverted triplet loss + b·L_cls against D).
    Learned,
    /// Ablation: G fixed at the identity, so F sees its input triplets unchanged (D and G
    /// are not trained). Separates what G adds from what the input mining gives.
    Identity,
    /// Ablation: each coordinate of the triplet moved by uniform noise in
    /// `±g_max_shift`, then re-normalised. Separates G's learned direction from any
    /// perturbation of the same size.
    Noise,
}

/// Input colour of F.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputColor {
    /// Three channels, RGB (alpha composited on white).
    Rgb,
    /// One luma channel.
    Grey,
}

/// Architecture of F, the feature network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureConfig {
    /// Square input size in pixels; images are resized to it.
    pub input_size: u32,
    /// Input colour.
    pub color: InputColor,
    /// Channels of each residual stage; every stage after the first halves the resolution.
    pub widths: Vec<usize>,
    /// Residual blocks per stage.
    pub blocks_per_stage: usize,
    /// Length of the embedding.
    pub embedding_dim: usize,
    /// Spatial grid kept before the embedding layer: 1 = global average pooling (translation
    /// invariant); g > 1 average-pools the last feature map to g×g and flattens it, keeping
    /// coarse layout (where each colour and shape is), which matters for emoji. The last
    /// stage's resolution must be divisible by g.
    pub pool_grid: usize,
}

impl FeatureConfig {
    /// Side of the last feature map: every stage after the first halves it (rounding up,
    /// as a stride-2 3×3 convolution with padding 1 does).
    pub fn final_resolution(&self) -> usize {
        let mut r = self.input_size as usize;
        for _ in 1..self.widths.len() {
            r = r.div_ceil(2);
        }
        r
    }
}

impl Default for FeatureConfig {
    fn default() -> Self {
        Self {
            input_size: 32,
            color: InputColor::Rgb,
            widths: vec![16, 32, 64],
            blocks_per_stage: 1,
            embedding_dim: 64,
            pool_grid: 4,
        }
    }
}

/// HTG-specific settings: G, D and how their losses are weighted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HtgConfig {
    /// Hidden width of G's residual MLP (it sees the concatenated triplet).
    pub g_hidden: usize,
    /// Hidden width of D's MLP; 0 makes D a single linear layer.
    pub d_hidden: usize,
    /// Weight b of the classification terms: L_G = L_inv + b·L_cls, L_D = L_real + b·L_fake.
    pub cls_weight: f32,
    /// Margin of G's inverted triplet loss.
    pub g_margin: f32,
    /// Weight of the ordinary triplet loss on the real (un-generated) triplets in F's loss.
    pub real_triplet_weight: f32,
    /// Learning rate of G.
    pub lr_g: f64,
    /// Learning rate of D.
    pub lr_d: f64,
    /// How the input triplets of G are taken from the batch.
    pub input_mining: Mining,
    /// Largest shift G may apply to each coordinate (`shift · tanh(·)` on the residual).
    /// D learns a many-way classifier slowly, so early on L_cls barely constrains G; an
    /// unbounded G then inverts every triplet outright and F learns from off-manifold
    /// points. Bounding the residual keeps generated triplets near the data.
    pub g_max_shift: f32,
    /// D updates per step on the same batch. G is trained against the latest D, so with one
    /// update D mostly trails G; a few cheap extra updates (D is tiny next to F) let it
    /// keep up.
    pub d_steps: usize,
    /// Steps at the start in which F learns from the real triplets only, while D and G
    /// already train. Early on D cannot yet name the real classes, so L_cls does not keep
    /// G's triplets label-preserving; this lets D catch up before G's triplets shape F.
    pub warmup_steps: usize,
    /// What produces the triplets F trains on (the G ablations).
    pub g_mode: GeneratorMode,
    /// Weight of a soft penalty `mean ‖G(x) − x‖²` in G's loss. With `g_max_shift = 0`
    /// (no hard cap) this replaces the cap by a penalty (the ablation the issue asks for).
    pub g_penalty: f32,
    /// G's own b (weight of L_cls in L_G), when it should differ from D's; `None` = `cls_weight`.
    /// `Some(0.0)` is "G without D".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub g_cls_weight: Option<f32>,
    /// D's own b (weight of L_fake in L_D); `None` = `cls_weight`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d_fake_weight: Option<f32>,
}

impl HtgConfig {
    /// b in G's loss.
    pub fn b_g(&self) -> f32 {
        self.g_cls_weight.unwrap_or(self.cls_weight)
    }

    /// b in D's loss.
    pub fn b_d(&self) -> f32 {
        self.d_fake_weight.unwrap_or(self.cls_weight)
    }
}

impl Default for HtgConfig {
    fn default() -> Self {
        Self {
            g_hidden: 256,
            d_hidden: 256,
            cls_weight: 1.0,
            g_margin: 0.2,
            real_triplet_weight: 1.0,
            lr_g: 1e-3,
            lr_d: 1e-2,
            input_mining: Mining::Random,
            g_max_shift: 0.1,
            d_steps: 3,
            warmup_steps: 0,
            g_mode: GeneratorMode::Learned,
            g_penalty: 0.0,
            g_cls_weight: None,
            d_fake_weight: None,
        }
    }
}

/// Multi-similarity loss settings (Wang et al. 2019, on cosine similarities of the
/// l2-normalised embeddings); defaults are the paper's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MsConfig {
    /// Scale of the positive term (α).
    pub alpha: f32,
    /// Scale of the negative term (β).
    pub beta: f32,
    /// Similarity threshold (λ).
    pub lambda: f32,
    /// Mining margin (ε): a negative is kept when it is within ε of the hardest positive, a
    /// positive when it is within ε of the hardest negative.
    pub epsilon: f32,
}

impl Default for MsConfig {
    fn default() -> Self {
        Self {
            alpha: 2.0,
            beta: 50.0,
            lambda: 0.5,
            epsilon: 0.1,
        }
    }
}

/// Normalised-softmax settings (Zhai & Wu 2019): logits are the cosine similarities of an
/// embedding to each class's proxy divided by the temperature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Softmax temperature (the paper's 0.05).
    pub temperature: f32,
    /// Learning rate of the proxies (Adam); proxy losses train them faster than F.
    pub lr: f64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            temperature: 0.05,
            lr: 1e-2,
        }
    }
}

/// Training-time augmentation, applied to normalised tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Random translation by up to this many pixels (pad-and-crop, edge pixels replicated).
    pub crop_pad: usize,
    /// Random horizontal flip. Off by default: it is not label-safe for every class (arrows,
    /// text, digits).
    pub hflip: bool,
    /// Colour jitter strength: each channel is scaled by `1 ± jitter` and shifted by
    /// `± jitter` (in normalised units) at random.
    pub jitter: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            crop_pad: 2,
            hflip: false,
            jitter: 0.1,
        }
    }
}

/// Everything a training run depends on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Seed of every random choice: initialisation, batches, mining, augmentation, k-means.
    pub seed: u64,
    /// Training method.
    pub method: Method,
    /// Number of optimisation steps (one step = one P×K batch; for HTG one D, G and F update).
    pub steps: usize,
    /// Classes per batch (P); clamped to the number of training classes.
    pub classes_per_batch: usize,
    /// Images per class in a batch (K); drawn with replacement when a class has fewer.
    pub images_per_class: usize,
    /// Margin m of F's triplet loss (on squared distances of unit vectors, range 0..4).
    pub margin: f32,
    /// Learning rate of F (Adam).
    pub lr: f64,
    /// How F's learning rate changes over the run.
    pub lr_schedule: LrSchedule,
    /// Steps of linear warm-up of F's learning rate (cosine schedule only).
    pub lr_warmup_steps: usize,
    /// Architecture of F.
    pub feature: FeatureConfig,
    /// HTG settings (ignored by the triplet baselines).
    pub htg: HtgConfig,
    /// Multi-similarity settings (used by `multi-similarity` only).
    pub ms: MsConfig,
    /// Proxy settings (used by `norm-softmax` only).
    pub proxy: ProxyConfig,
    /// Augmentation.
    pub augment: AugmentConfig,
    /// Save a checkpoint every this many steps (and at the end); 0 = only at the end.
    pub checkpoint_every: usize,
    /// Cut-offs K of Recall@K in the evaluation.
    pub recall_ks: Vec<usize>,
    /// Training classes held out as a class-disjoint validation split (0 = none). Every
    /// setting and the step count are chosen on it; the unseen test classes are evaluated
    /// once, on the model validation picked. The held-out classes are drawn with
    /// `val_split_seed`, not `seed`, so every seed and method shares one split.
    pub val_classes: usize,
    /// Seed of the validation split's class draw.
    pub val_split_seed: u64,
    /// Validate every this many steps (and at the end); the best step's F is the one
    /// exported. 0 = validate only at the end.
    pub val_every: usize,
    /// Stop after this many validations in a row without a better validation R@1
    /// (0 = never stop early).
    pub patience: usize,
    /// Draw a class's K images from different vendors where the data set has vendors
    /// (emoji: a Google and a Twitter image, base or skin-tone variant), so the positive
    /// pair is the cross-vendor pair that the test measures.
    pub cross_vendor: bool,
    /// What the emoji training classes hold (`[emoji]`). The other data sets have no
    /// vendors or categories, so they refuse anything but the default.
    pub emoji: EmojiConfig,
    /// The frozen pretrained backbone F starts from (`[backbone]`), as in the paper; absent,
    /// F is the CNN of `[feature]`, trained from scratch on pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backbone: Option<BackboneConfig>,
}

/// A frozen ONNX backbone under a trained head. It is named by its file's sha256, so a
/// config reproduces a run only with the very backbone it was trained on, and features cached
/// for another file are never read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneConfig {
    /// What the user called it (`efficientnet-lite0`, a file name), for messages.
    pub name: String,
    /// sha256 of the ONNX file, hex.
    pub sha256: String,
    /// 0 or 1: the backbone's own (globally pooled) features; g > 1: its last feature map
    /// pooled to a g×g grid (`htg_training::features::grid_features`).
    #[serde(default)]
    pub grid: usize,
    /// sha256 of the file that computes the features (the ONNX file itself, or its grid
    /// version): what the feature cache is keyed by.
    #[serde(default)]
    pub features_sha256: String,
    /// Width of the backbone's feature vector (the head's input).
    pub features: usize,
    /// Hidden ReLU units of the head; 0 makes the head one linear layer.
    #[serde(default)]
    pub head_hidden: usize,
    /// How the head's weights start. `identity` (one linear layer as wide as the features)
    /// starts F at the raw backbone, so training can only move away from that floor as far as
    /// the triplets pull it; `random` is burn's default initialisation.
    #[serde(default, skip_serializing_if = "HeadInit::is_random")]
    pub head_init: HeadInit,
}

/// The head's starting weights (`[backbone] head_init`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadInit {
    /// burn's default (Kaiming-uniform) initialisation.
    #[default]
    Random,
    /// The identity matrix and a zero bias: F starts as the backbone's own features.
    Identity,
}

impl HeadInit {
    fn is_random(&self) -> bool {
        *self == HeadInit::Random
    }
}

/// Which emoji images and classes train. The unseen test classes and their protocol
/// (Google query → Twitter gallery) never change with these; validation is carved from
/// whatever training classes remain.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmojiConfig {
    /// Vendors besides Google and Twitter whose images join the training classes
    /// (`"apple"`, `"facebook"`): more drawings of each training emoji, so F may learn the
    /// shape more than two vendors' styles.
    pub extra_vendors: Vec<String>,
    /// `emoji.json` categories whose classes are left out of training (e.g. `"Flags"`):
    /// the split by codepoint puts 269 of the 955 training classes, and 1 of the 956 test
    /// classes, in Flags, so a batch spends a quarter of its classes on a kind the test
    /// hardly has.
    pub exclude_categories: Vec<String>,
}

impl EmojiConfig {
    /// Whether the data are the default two-vendor emoji, every training class kept.
    pub fn is_default(&self) -> bool {
        self.extra_vendors.is_empty() && self.exclude_categories.is_empty()
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            method: Method::Htg,
            steps: 300,
            classes_per_batch: 32,
            images_per_class: 2,
            margin: 0.2,
            lr: 1e-3,
            lr_schedule: LrSchedule::Constant,
            lr_warmup_steps: 0,
            feature: FeatureConfig::default(),
            htg: HtgConfig::default(),
            ms: MsConfig::default(),
            proxy: ProxyConfig::default(),
            augment: AugmentConfig::default(),
            checkpoint_every: 100,
            recall_ks: vec![1, 2, 4, 8],
            val_classes: 0,
            val_split_seed: 0,
            val_every: 0,
            patience: 0,
            cross_vendor: false,
            emoji: EmojiConfig::default(),
            backbone: None,
        }
    }
}

impl TrainConfig {
    /// Defaults suited to a named data set: 28 px grey and 5 classes × 12 images for the
    /// MNIST-like sets (only 5 training classes), 32 px RGB and 32 × 2 for emoji and folders.
    pub fn default_for(data: &str) -> TrainConfig {
        let mut c = TrainConfig::default();
        if matches!(data, "fashion-mnist" | "mnist5k") {
            c.feature.input_size = 28;
            c.feature.color = InputColor::Grey;
            c.feature.pool_grid = 1;
            c.classes_per_batch = 5;
            c.images_per_class = 12;
        }
        c
    }

    /// `self` on top of `backbone`: F becomes a head to `embedding_dim` dimensions (its
    /// hidden width kept from the config's own `[backbone]`, if it has one), and pixel
    /// augmentation is turned off, because the backbone's features are computed once per
    /// image and cached rather than drawn anew at every step.
    pub fn on_backbone(mut self, mut backbone: BackboneConfig) -> TrainConfig {
        if let Some(old) = &self.backbone {
            backbone.head_hidden = old.head_hidden;
            backbone.head_init = old.head_init;
        }
        self.augment = AugmentConfig {
            crop_pad: 0,
            hflip: false,
            jitter: 0.0,
        };
        self.backbone = Some(backbone);
        self
    }

    /// F's learning rate at `step` (1-based) under the schedule.
    pub fn lr_at(&self, step: usize) -> f64 {
        match self.lr_schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Cosine => {
                let w = self.lr_warmup_steps;
                if step <= w {
                    return self.lr * step as f64 / w as f64;
                }
                let span = self.steps.saturating_sub(w).max(1) as f64;
                let t = ((step - w) as f64 / span).min(1.0);
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }

    /// Parses TOML, rejecting unknown keys, then validates.
    pub fn from_toml_str(s: &str) -> Result<TrainConfig, TrainError> {
        let c: TrainConfig = toml::from_str(s).map_err(|e| {
            // One line: toml's Display draws a multi-line source excerpt.
            let line = e
                .span()
                .map(|r| s[..r.start.min(s.len())].matches('\n').count() + 1);
            TrainError::Config(match line {
                Some(l) => format!("line {l}: {}", e.message()),
                None => e.message().to_string(),
            })
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Loads and validates a TOML file.
    pub fn load(path: &Path) -> Result<TrainConfig, TrainError> {
        let s = std::fs::read_to_string(path).map_err(|e| TrainError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::from_toml_str(&s).map_err(|e| match e {
            TrainError::Config(m) => TrainError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// The TOML text of this config.
    pub fn to_toml_string(&self) -> Result<String, TrainError> {
        toml::to_string_pretty(self).map_err(|e| TrainError::Config(e.to_string()))
    }

    /// Writes this config as TOML.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let s = self.to_toml_string()?;
        std::fs::write(path, s).map_err(|e| TrainError::Io {
            path: path.to_path_buf(),
            source: e,
        })
    }

    /// Rejects values that parse but cannot train.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Config(m.to_string()));
        if self.steps == 0 {
            return bad("steps must be at least 1");
        }
        if self.classes_per_batch < 2 {
            return bad("classes_per_batch must be at least 2 (triplets need a negative class)");
        }
        if self.images_per_class < 2 {
            return bad("images_per_class must be at least 2 (triplets need a positive)");
        }
        if self.feature.embedding_dim == 0 {
            return bad("feature.embedding_dim must be positive");
        }
        if let Some(b) = &self.backbone {
            if b.features == 0 || b.sha256.len() != 64 {
                return bad("backbone: features must be positive and sha256 64 hex digits");
            }
            if b.head_init == HeadInit::Identity
                && (b.head_hidden != 0 || self.feature.embedding_dim != b.features)
            {
                return Err(TrainError::Config(format!(
                    "backbone.head_init = \"identity\" needs one linear layer as wide as the \
                     features: head_hidden = 0 and feature.embedding_dim = {} (the backbone's \
                     width), not head_hidden = {} and embedding_dim = {}",
                    b.features, b.head_hidden, self.feature.embedding_dim
                )));
            }
            let a = &self.augment;
            if a.crop_pad != 0 || a.hflip || a.jitter != 0.0 {
                return bad(
                    "[augment] acts on pixels, but with a [backbone] F trains on features \
                     cached once per image: set crop_pad = 0, hflip = false, jitter = 0.0",
                );
            }
        } else if self.feature.widths.is_empty() || self.feature.widths.contains(&0) {
            return bad("feature.widths must be non-empty and positive");
        } else if self.feature.input_size < 8 {
            return bad("feature.input_size must be at least 8");
        }
        let last = self.feature.final_resolution();
        if self.backbone.is_none()
            && (self.feature.pool_grid == 0 || !last.is_multiple_of(self.feature.pool_grid))
        {
            return Err(TrainError::Config(format!(
                "feature.pool_grid {} must divide the last feature map size {last}",
                self.feature.pool_grid
            )));
        }
        if !(self.margin.is_finite() && self.margin >= 0.0) {
            return bad("margin must be finite and non-negative");
        }
        if !(self.lr > 0.0 && self.htg.lr_g > 0.0 && self.htg.lr_d > 0.0) {
            return bad("learning rates must be positive");
        }
        if !(self.proxy.lr.is_finite() && self.proxy.lr > 0.0) {
            return bad("proxy.lr must be positive");
        }
        if !(self.proxy.temperature.is_finite() && self.proxy.temperature > 0.0) {
            return bad("proxy.temperature must be finite and positive");
        }
        if self.lr_schedule == LrSchedule::Cosine && self.lr_warmup_steps >= self.steps {
            return bad("lr_warmup_steps must be below steps");
        }
        if !(self.htg.g_max_shift.is_finite() && self.htg.g_max_shift >= 0.0) {
            return bad("htg.g_max_shift must be finite and non-negative (0 = no hard cap)");
        }
        if self.htg.g_mode == GeneratorMode::Noise && self.htg.g_max_shift == 0.0 {
            return bad("htg.g_mode = \"noise\" needs htg.g_max_shift > 0 (the noise bound)");
        }
        let weights = [
            self.htg.cls_weight,
            self.htg.g_penalty,
            self.htg.b_g(),
            self.htg.b_d(),
            self.htg.real_triplet_weight,
        ];
        if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
            return bad("htg loss weights must be finite and non-negative");
        }
        if self.recall_ks.is_empty() || self.recall_ks.contains(&0) {
            return bad("recall_ks must be non-empty and >= 1");
        }
        let vendors = &self.emoji.extra_vendors;
        for (i, v) in vendors.iter().enumerate() {
            if !matches!(v.as_str(), "apple" | "facebook") {
                return Err(TrainError::Config(format!(
                    "emoji.extra_vendors: {v:?} is not an extra emoji vendor (apple or facebook)"
                )));
            }
            if vendors[..i].contains(v) {
                return Err(TrainError::Config(format!(
                    "emoji.extra_vendors names {v:?} twice"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unknown_keys() {
        let c = TrainConfig::default_for("fashion-mnist");
        let s = c.to_toml_string().unwrap();
        assert_eq!(TrainConfig::from_toml_str(&s).unwrap(), c);
        let e = TrainConfig::from_toml_str("seed = 1\nlearning_rat = 0.1\n").unwrap_err();
        assert!(e.to_string().contains("learning_rat"), "{e}");
        assert!(
            e.to_string().contains("line 2") && !e.to_string().contains('\n'),
            "{e}"
        );
        let e = TrainConfig::from_toml_str("[htg]\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let c = TrainConfig::from_toml_str("method = \"triplet-batchhard\"\nsteps = 5\n").unwrap();
        assert_eq!(c.method, Method::TripletBatchhard);
        assert_eq!(c.steps, 5);
        assert!(TrainConfig::from_toml_str("steps = 0\n").is_err());
    }

    #[test]
    fn an_identity_head_must_be_one_layer_as_wide_as_the_features() {
        let backbone = "[backbone]\nname = \"b\"\nsha256 = \"{sha}\"\nfeatures = 8\nhead_init = \"identity\"\n"
            .replace("{sha}", &"0".repeat(64));
        let ok = format!("[feature]\nembedding_dim = 8\n[augment]\ncrop_pad = 0\nhflip = false\njitter = 0.0\n{backbone}");
        let c = TrainConfig::from_toml_str(&ok).unwrap();
        assert_eq!(c.backbone.unwrap().head_init, HeadInit::Identity);
        let narrow = ok.replace("embedding_dim = 8", "embedding_dim = 4");
        let e = TrainConfig::from_toml_str(&narrow).unwrap_err();
        assert!(e.to_string().contains("head_init"), "{e}");
        let hidden = format!("{ok}head_hidden = 16\n");
        assert!(TrainConfig::from_toml_str(&hidden).is_err());
    }

    #[test]
    fn bundled_configs_load() {
        // The protocol's grids (margin, learning rate) live one folder down.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/configs");
        let mut n = 0;
        for d in [
            dir.clone(),
            dir.join("grid"),
            dir.join("backbone"),
            dir.join("backbone/grid"),
        ] {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "toml") {
                    TrainConfig::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                    n += 1;
                }
            }
        }
        assert!(n >= 20, "{n} configs in {}", dir.display());
        let e = TrainConfig::from_toml_str("[htg]\ng_mode = \"noise\"\ng_max_shift = 0.0\n")
            .unwrap_err();
        assert!(e.to_string().contains("g_max_shift"), "{e}");
    }

    #[test]
    fn cosine_schedule_warms_up_then_decays_to_zero() {
        let c = TrainConfig::from_toml_str(
            "steps = 110\nlr = 0.01\nlr_schedule = \"cosine\"\nlr_warmup_steps = 10\n",
        )
        .unwrap();
        assert!((c.lr_at(5) - 0.005).abs() < 1e-12);
        assert!((c.lr_at(10) - 0.01).abs() < 1e-12);
        assert!((c.lr_at(60) - 0.005).abs() < 1e-12, "{}", c.lr_at(60));
        assert!(c.lr_at(110).abs() < 1e-12);
        assert!(c.lr_at(80) < c.lr_at(40));
        assert_eq!(TrainConfig::default().lr_at(7), TrainConfig::default().lr);
        let e = TrainConfig::from_toml_str(
            "steps = 10\nlr_schedule = \"cosine\"\nlr_warmup_steps = 10\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("lr_warmup_steps"), "{e}");
    }
}
