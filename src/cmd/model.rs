//! Choosing and loading the model a command embeds with, on the chosen backend.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use htg_retrieval::ort_backend::{self, ExecutionProvider, OrtEmbedder, OrtOptions};
use htg_retrieval::{Embedder, TractEmbedder};

/// Runtime flags shared by every command that embeds (`#[command(flatten)]`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BackendArgs {
    /// Inference runtime: tract (built in) or ort (ONNX Runtime, loaded from --ort-lib).
    /// [default: tract; for `htg serve`, the config's `backend` key]
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

/// The bundled default model's bytes, when the binary was built with `models/default.onnx`.
#[cfg(htg_default_model)]
const BUNDLED: Option<&[u8]> = Some(include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/default.onnx"
)));
#[cfg(not(htg_default_model))]
const BUNDLED: Option<&[u8]> = None;

/// Writes the bundled model into the cache (once per content hash) and returns its path, so
/// every runtime can load it from a file like any other model.
fn bundled_model_path(bytes: &[u8]) -> Result<PathBuf> {
    let cache = std::env::var_os("HTG_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/htg")))
        .context("neither HTG_CACHE_DIR nor HOME is set, so the bundled model has nowhere to go")?
        .join("models");
    let sha = htg_retrieval::embed::sha256_hex(bytes);
    let path = cache.join(format!("default-{}.onnx", &sha[..16]));
    if !path.is_file() {
        std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
        let tmp = cache.join(format!(
            ".default-{}.{}.tmp",
            &sha[..16],
            std::process::id()
        ));
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(path)
}

/// Picks the model: the `--model` flag, else the one recorded in the index, else the bundled
/// default model.
pub fn choose(flag: Option<&Path>, recorded: Option<&str>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = recorded {
        return Ok(PathBuf::from(p));
    }
    match BUNDLED {
        Some(bytes) => bundled_model_path(bytes),
        None => anyhow::bail!("--model is required (this build has no bundled default model)"),
    }
}

/// Loads `path` on the backend the flags choose.
pub fn load(path: &Path, backend: &BackendArgs) -> Result<Box<dyn Embedder>> {
    match backend.backend.unwrap_or_default() {
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
