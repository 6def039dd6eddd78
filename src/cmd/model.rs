//! Choosing and loading the model a command embeds with, on the chosen backend.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use htg_retrieval::{Embedder, TractEmbedder};

/// Runtime flags shared by every command that embeds (`#[command(flatten)]`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BackendArgs {
    /// Inference runtime.
    #[arg(long, value_enum, default_value_t = Backend::Tract)]
    pub backend: Backend,
}

/// Inference runtimes.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// Pure-Rust CPU runtime; needs nothing installed.
    #[default]
    Tract,
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
            let e = TractEmbedder::load(path)
                .with_context(|| format!("loading model {}", path.display()))?;
            Ok(Box::new(e))
        }
    }
}
