//! Hard Triplet Generation (HTG) training of the feature network F, with triplet-mining
//! baselines in the same code path, zero-shot evaluation and ONNX export.
//!
//! The method follows Zhao et al., "An Adversarial Approach to Hard Triplet Generation"
//! (ECCV 2018): F maps an image to an l2-normalised embedding; G maps a triplet of embeddings
//! (a, p, n) to a harder one (a', p', n'); D is a (K+1)-way classifier over the K training
//! classes plus "fake". Each step updates D, then G, then F, which is trained with the triplet
//! loss on G's triplets (the gradient flows through G into F). The baselines replace G by
//! random, semi-hard or batch-hard mining and share everything else: F, data, batches,
//! augmentation, schedule and evaluation.
//!
//! Modules:
//! - [`backend`]: the one place that picks burn's device (CPU `flex` + autodiff).
//! - [`config`]: the serde config saved beside every artefact.
//! - [`data`]: readers for image folders, IDX, emoji vendor sets and the MNIST-5k CSV, the
//!   zero-shot split, P×K sampling and augmentation.
//! - [`model`]: F (a residual CNN on pixels, or a head on a frozen backbone's features), G
//!   (residual MLP) and D (MLP classifier).
//! - [`features`]: a frozen pretrained backbone (an ONNX file) and its on-disk cache of
//!   feature vectors, keyed by the backbone's and each image's sha256.
//! - [`loss`]: distances, triplet losses, the classification loss and mining.
//! - [`trainer`]: the training steps, checkpoints and resume.
//! - [`export`]: ONNX export with the `htg.*` metadata, and the check against tract.
//! - [`confusion`]: which unseen classes a model confuses with which (hard pairs), per-class
//!   R@1 and two models' per-class R@1 side by side.
//! - [`report`]: `htg eval --hard-pairs`: both models evaluated, the JSON and the
//!   self-contained HTML report with thumbnails.
//! - [`eval`]: embedding an evaluation split and computing the retrieval metrics.
//! - [`metrics`]: Recall@K, NMI and MAP@R, defined once for training, `htg eval` and benches.
//! - [`run`]: a whole run (train, validate, checkpoint, export, evaluate) as the CLI drives it.
//! - [`stats`]: mean ± sd, paired bootstrap intervals and the paired test over queries.

use std::path::PathBuf;

pub mod backend;
pub mod config;
pub mod confusion;
pub mod conv;
pub mod data;
pub mod eval;
pub mod export;
pub mod features;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod norm;
pub mod report;
pub mod run;
pub mod stats;
pub mod trainer;

pub use config::{BackboneConfig, Method, TrainConfig};

/// Everything that can go wrong while loading data, training, exporting or evaluating.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The configuration is invalid (unknown key, bad value).
    #[error("invalid config: {0}")]
    Config(String),
    /// The data set is missing, malformed or unusable for training.
    #[error("data: {0}")]
    Data(String),
    /// Saving or loading a checkpoint failed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// ONNX export or metadata rewriting failed.
    #[error("ONNX export: {0}")]
    Export(String),
    /// Evaluation failed.
    #[error("evaluation: {0}")]
    Eval(String),
    /// A metric could not be computed.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}
