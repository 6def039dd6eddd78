//! Loading the model a command or the server embeds with, on the runtime the user chose: the
//! one place that turns "this file, on that backend" into an [`Embedder`], so the CLI, the
//! server and the benches cannot load models differently.

use std::path::{Path, PathBuf};

use crate::embed::{EmbedError, Embedder, TractEmbedder};
use crate::ort_backend::{ExecutionProvider, OrtEmbedder, OrtError, OrtOptions};

/// Inference runtimes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Runtime {
    /// Pure-Rust CPU runtime; needs nothing installed.
    #[default]
    Tract,
    /// ONNX Runtime through the `ort` crate; needs its shared library.
    Ort,
}

impl Runtime {
    /// Parses the names used in flags and config files (`tract`, `ort`).
    pub fn parse(s: &str) -> Option<Runtime> {
        match s {
            "tract" => Some(Runtime::Tract),
            "ort" => Some(Runtime::Ort),
            _ => None,
        }
    }
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// tract could not load the model.
    #[error("loading model {path}: {source}")]
    Tract {
        /// Model file.
        path: PathBuf,
        /// What tract said.
        source: EmbedError,
    },
    /// ONNX Runtime could not be set up or could not load the model.
    #[error("loading model {path} on ort: {source}")]
    Ort {
        /// Model file.
        path: PathBuf,
        /// What ONNX Runtime said.
        source: OrtError,
    },
    /// GPU options were given for a runtime without GPUs.
    #[error("--ep and --require-gpu need --backend ort")]
    GpuOnTract,
    /// The bundled model could not be written to the cache.
    #[error("cannot write the bundled model to {path}: {source}")]
    Bundled {
        /// Target path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// No model was named and none is bundled.
    #[error("--model is required (this build has no bundled default model)")]
    NoModel,
    /// Neither `HTG_CACHE_DIR` nor `HOME` is set.
    #[error("neither HTG_CACHE_DIR nor HOME is set, so the bundled model has nowhere to go")]
    NoCache,
}

/// A loaded embedder and, when a GPU provider fell back to CPU, why (to print once).
pub struct Loaded {
    /// The model on its runtime.
    pub embedder: Box<dyn Embedder>,
    /// Why the requested GPU provider is not used, if it is not.
    pub warning: Option<String>,
}

/// Loads `path` on `runtime`; `ort` carries the ONNX Runtime options (ignored by tract, which
/// refuses GPU requests instead of silently running on CPU).
pub fn load(path: &Path, runtime: Runtime, ort: &OrtOptions) -> Result<Loaded, LoadError> {
    match runtime {
        Runtime::Tract => {
            if ort.provider != ExecutionProvider::Cpu || ort.require_gpu {
                return Err(LoadError::GpuOnTract);
            }
            let e = TractEmbedder::load(path).map_err(|source| LoadError::Tract {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(Loaded {
                embedder: Box::new(e),
                warning: None,
            })
        }
        Runtime::Ort => {
            let e = OrtEmbedder::load(path, ort).map_err(|source| LoadError::Ort {
                path: path.to_path_buf(),
                source,
            })?;
            let warning = e.fallback().map(str::to_string);
            Ok(Loaded {
                embedder: Box::new(e),
                warning,
            })
        }
    }
}

/// Picks the model file: the one named explicitly, else the one an index recorded, else the
/// bundled default (`bundled`: its bytes, written once per content hash into the cache so
/// every runtime can load it from a file like any other model).
pub fn choose(
    explicit: Option<&Path>,
    recorded: Option<&str>,
    bundled: Option<&[u8]>,
) -> Result<PathBuf, LoadError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = recorded {
        return Ok(PathBuf::from(p));
    }
    let bytes = bundled.ok_or(LoadError::NoModel)?;
    let cache = std::env::var_os("HTG_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/htg")))
        .ok_or(LoadError::NoCache)?
        .join("models");
    let sha = crate::embed::sha256_hex(bytes);
    let path = cache.join(format!("default-{}.onnx", &sha[..16]));
    if !path.is_file() {
        let err = |source| LoadError::Bundled {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&cache).map_err(err)?;
        crate::fsio::write_atomic(&path, bytes).map_err(err)?;
    }
    Ok(path)
}
