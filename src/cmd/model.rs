//! Choosing and loading the model a command embeds with, on the chosen backend.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use htg_retrieval::ort_backend::{self, ExecutionProvider, OrtEmbedder, OrtOptions};
use htg_retrieval::{Embedder, TractEmbedder};

/// Runtime flags shared by every command that embeds (`#[command(flatten)]`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BackendArgs {
    /// Inference runtime: tract (built in) or ort (ONNX Runtime, loaded from --ort-lib).
    #[arg(long, value_enum, default_value_t = Backend::Tract)]
    pub backend: Backend,
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
    /// ONNX Runtime intra-op threads [default: one per physical core].
    #[arg(long, value_name = "N")]
    pub ort_threads: Option<usize>,
}

/// Inference runtimes.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// Pure-Rust CPU runtime; needs nothing installed.
    #[default]
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
            intra_threads: self.ort_threads,
        }
    }
}

/// Picks the model: the `--model` flag, else the one recorded in the index, else an error.
pub fn choose(flag: Option<&Path>, recorded: Option<&str>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = recorded {
        return Ok(PathBuf::from(p));
    }
    anyhow::bail!("--model is required (there is no bundled default model yet)")
}

/// Loads `path` on the backend the flags choose.
pub fn load(path: &Path, backend: &BackendArgs) -> Result<Box<dyn Embedder>> {
    match backend.backend {
        Backend::Tract => {
            if backend.ep != Ep::Cpu || backend.require_gpu {
                anyhow::bail!("--ep and --require-gpu need --backend ort");
            }
            let e = TractEmbedder::load(path)
                .with_context(|| format!("loading model {}", path.display()))?;
            Ok(Box::new(e))
        }
        Backend::Ort => {
            let e = OrtEmbedder::load(path, &backend.ort_options())
                .with_context(|| format!("loading model {} on ort", path.display()))?;
            if let Some(reason) = e.fallback() {
                // Logged once per load, i.e. once per command.
                eprintln!("warning: {reason}");
            }
            Ok(Box::new(e))
        }
    }
}
