//! Loading the model a command or the server embeds with, on the runtime the user chose: the
//! one place that turns "this file, on that backend" into an [`Embedder`], so the CLI, the
//! server and the benches cannot load models differently.

use std::path::{Path, PathBuf};

use crate::embed::{EmbedError, Embedder, TractEmbedder, TractOptions};
use crate::ort_backend::{ExecutionProvider, OrtEmbedder, OrtError, OrtOptions};

/// Inference runtimes, by one set of names (`auto`, `tract`, `ort`) for flags (clap's
/// `ValueEnum`, feature `clap`) and config files (serde).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// ONNX Runtime when its library is where [`OrtOptions::library`] says (flag,
    /// `ORT_DYLIB_PATH` or the fetch scripts' cache), else tract: a user who installed ONNX
    /// Runtime gets its speed (about 10x tract's on the bundled model) without asking.
    #[default]
    Auto,
    /// Pure-Rust CPU runtime; needs nothing installed.
    Tract,
    /// ONNX Runtime through the `ort` crate; needs its shared library.
    Ort,
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
    /// `--model` is neither a bundled model's name nor an existing file.
    #[error("--model {given}: no such file, and no bundled model of that name (bundled: {names}; `htg models` lists them)")]
    UnknownModel {
        /// What the user gave.
        given: String,
        /// The bundled names, comma separated.
        names: String,
    },
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
    /// For [`Runtime::Auto`]: which runtime was chosen and why (to print once).
    pub choice: Option<String>,
}

/// Loads `path` on `runtime`; `tract` and `ort` carry each runtime's options (tract refuses GPU
/// requests instead of silently running on CPU). [`Runtime::Auto`] takes ONNX Runtime when its
/// library file exists, and tract when it does not or when it cannot be loaded.
pub fn load(
    path: &Path,
    runtime: Runtime,
    tract: &TractOptions,
    ort: &OrtOptions,
) -> Result<Loaded, LoadError> {
    match runtime {
        // GPU requests only make sense on ONNX Runtime: its errors say what is missing.
        Runtime::Auto if ort.provider.is_gpu() || ort.require_gpu => {
            load(path, Runtime::Ort, tract, ort)
        }
        Runtime::Auto => {
            let lib = ort.library.display();
            if !ort.library.is_file() {
                let mut l = load(path, Runtime::Tract, tract, ort)?;
                l.choice = Some(format!(
                    "backend: tract (no ONNX Runtime library at {lib}; --backend ort needs one)"
                ));
                return Ok(l);
            }
            match load(path, Runtime::Ort, tract, ort) {
                Ok(mut l) => {
                    l.choice = Some(format!("backend: ort (ONNX Runtime from {lib})"));
                    Ok(l)
                }
                // The library exists but is unusable (wrong version, not ONNX Runtime): tract
                // still runs the model. Model errors are reported as they are.
                Err(LoadError::Ort {
                    source: e @ (OrtError::Library { .. } | OrtError::OtherLibraryLoaded { .. }),
                    ..
                }) => {
                    let mut l = load(path, Runtime::Tract, tract, ort)?;
                    l.choice = Some(format!("backend: tract (ONNX Runtime unusable: {e})"));
                    Ok(l)
                }
                Err(e) => Err(e),
            }
        }
        Runtime::Tract => {
            if ort.provider != ExecutionProvider::Cpu || ort.require_gpu {
                return Err(LoadError::GpuOnTract);
            }
            let e = TractEmbedder::load_with(path, tract).map_err(|source| LoadError::Tract {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(Loaded {
                embedder: Box::new(e),
                warning: None,
                choice: None,
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
                choice: None,
            })
        }
    }
}

/// A model compiled into the binary, chosen by name (`--model photo`). The first of a list is
/// the default.
#[derive(Clone, Copy, Debug)]
pub struct BundledModel {
    /// What `--model` takes and `htg models` lists.
    pub name: &'static str,
    /// The ONNX file.
    pub bytes: &'static [u8],
    /// One line of its model card: what it is, where it comes from, what it is good at.
    pub summary: &'static str,
    /// The `max_distance` below which two of its embeddings are near-duplicates (`htg
    /// duplicates`, `GET /duplicates`): measured on modified copies against different images,
    /// as models/README.md says for each model; `None` where nothing was measured.
    pub duplicate_distance: Option<f32>,
}

/// The calibrated duplicate distance of the bundled model whose bytes hash to `sha256`:
/// what `htg duplicates` and `GET /duplicates` use when no `max_distance` is given.
pub fn duplicate_distance(bundled: &[BundledModel], sha256: &str) -> Option<f32> {
    bundled
        .iter()
        .find(|b| crate::embed::sha256_hex(b.bytes) == sha256)
        .and_then(|b| b.duplicate_distance)
}

/// The model an index recorded when it was built.
#[derive(Clone, Copy, Debug)]
pub struct Recorded<'a> {
    /// The file's path then.
    pub path: &'a str,
    /// Its sha256 (hex).
    pub sha256: &'a str,
}

/// Picks the model file: the one named explicitly (a bundled model's name or a path), else the
/// one an index recorded, else the first bundled model. A bundled model's bytes are written
/// once per content hash into the cache, so every runtime loads it from a file like any other.
///
/// An index records its model's path and hash. Where that path is gone (another machine, a
/// cleared cache) or now holds other bytes (a checkout's `models/emoji.onnx` after the bundled
/// `emoji` model changed) but the hash is a bundled model's, that model is used: so indexes
/// built with an earlier bundled model keep working after the bundle changed, as long as the
/// binary still bundles it (`emoji-scratch` is the earlier `emoji`).
pub fn choose(
    explicit: Option<&str>,
    recorded: Option<Recorded<'_>>,
    bundled: &[BundledModel],
) -> Result<PathBuf, LoadError> {
    choose_in(explicit, recorded, bundled, &models_cache)
}

/// [`choose`], writing bundled models under the folder `cache` names.
fn choose_in(
    explicit: Option<&str>,
    recorded: Option<Recorded<'_>>,
    bundled: &[BundledModel],
    cache: &dyn Fn() -> Result<PathBuf, LoadError>,
) -> Result<PathBuf, LoadError> {
    let materialise = |b| materialise(b, &cache()?);
    if let Some(given) = explicit {
        if let Some(b) = bundled.iter().find(|b| b.name == given) {
            return materialise(b);
        }
        let path = Path::new(given);
        let looks_like_a_name = !given.contains(std::path::MAIN_SEPARATOR)
            && !given.contains('/')
            && path.extension().is_none();
        if !path.exists() && looks_like_a_name {
            return Err(LoadError::UnknownModel {
                given: given.to_string(),
                names: bundled
                    .iter()
                    .map(|b| b.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        return Ok(path.to_path_buf());
    }
    if let Some(r) = recorded {
        let path = PathBuf::from(r.path);
        // Reading the file for its hash costs one pass over it, as loading it will anyway.
        let same = std::fs::read(&path)
            .map(|bytes| crate::embed::sha256_hex(&bytes) == r.sha256)
            .unwrap_or(false);
        if !same {
            if let Some(b) = bundled
                .iter()
                .find(|b| crate::embed::sha256_hex(b.bytes) == r.sha256)
            {
                return materialise(b);
            }
        }
        return Ok(path);
    }
    materialise(bundled.first().ok_or(LoadError::NoModel)?)
}

/// Where bundled models are written: `$HTG_CACHE_DIR/models`, else `~/.cache/htg/models`.
fn models_cache() -> Result<PathBuf, LoadError> {
    Ok(std::env::var_os("HTG_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/htg")))
        .ok_or(LoadError::NoCache)?
        .join("models"))
}

/// Writes a bundled model into `cache` (once per content hash) and returns its path.
fn materialise(model: &BundledModel, cache: &Path) -> Result<PathBuf, LoadError> {
    let bytes = model.bytes;
    let sha = crate::embed::sha256_hex(bytes);
    let path = cache.join(format!("{}-{}.onnx", model.name, &sha[..16]));
    if !path.is_file() {
        let err = |source| LoadError::Bundled {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(cache).map_err(err)?;
        crate::fsio::write_atomic(&path, bytes).map_err(err)?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/tiny.onnx")
    }

    #[test]
    fn auto_without_an_ort_library_runs_tract_and_says_so() {
        let ort = OrtOptions {
            library: PathBuf::from("/nonexistent/libonnxruntime.so.1.31.1"),
            ..OrtOptions::default()
        };
        let l = load(&tiny(), Runtime::Auto, &TractOptions::default(), &ort).unwrap();
        assert_eq!(l.embedder.backend(), "tract");
        let choice = l.choice.expect("auto says what it chose");
        assert!(choice.starts_with("backend: tract"), "{choice}");
        assert!(choice.contains("/nonexistent/"), "{choice}");
        // An explicit choice is not announced.
        let l = load(&tiny(), Runtime::Tract, &TractOptions::default(), &ort).unwrap();
        assert!(l.choice.is_none());
    }

    #[test]
    fn auto_with_a_gpu_request_reports_the_missing_library() {
        let ort = OrtOptions {
            library: PathBuf::from("/nonexistent/libonnxruntime.so.1.31.1"),
            provider: ExecutionProvider::Cuda,
            ..OrtOptions::default()
        };
        let err = load(&tiny(), Runtime::Auto, &TractOptions::default(), &ort)
            .err()
            .expect("no library, GPU asked");
        assert!(err.to_string().contains("not found"), "{err}");
    }

    #[test]
    fn runtime_names_parse() {
        let parse = |s: &str| serde_json::from_value::<Runtime>(serde_json::json!(s)).ok();
        assert_eq!(parse("auto"), Some(Runtime::Auto));
        assert_eq!(parse("ort"), Some(Runtime::Ort));
        assert_eq!(parse("onnx"), None);
    }

    #[test]
    fn a_recorded_path_that_now_holds_other_bytes_finds_the_bundled_model_of_the_recorded_hash() {
        let dir = tempfile::TempDir::new().unwrap();
        let cache = dir.path().join("cache");
        let old: &'static [u8] = b"the earlier bytes";
        let bundled = [BundledModel {
            name: "earlier",
            bytes: old,
            summary: "",
            duplicate_distance: None,
        }];
        let choose = |r| choose_in(None, Some(r), &bundled, &|| Ok(cache.clone()));
        let sha = crate::embed::sha256_hex(old);
        let path = dir.path().join("m.onnx");
        let rec = Recorded {
            path: path.to_str().unwrap(),
            sha256: &sha,
        };
        // The same bytes at the recorded path: that path.
        std::fs::write(&path, old).unwrap();
        assert_eq!(choose(rec).unwrap(), path);
        // Other bytes there now: the bundled model of the recorded hash.
        std::fs::write(&path, b"a newer model").unwrap();
        let got = choose(rec).unwrap();
        assert_ne!(got, path);
        assert_eq!(std::fs::read(&got).unwrap(), old);
        // Other bytes and no bundled model of that hash: the path, for the model check to refuse.
        let other = crate::embed::sha256_hex(b"unknown");
        let r = Recorded {
            path: path.to_str().unwrap(),
            sha256: &other,
        };
        assert_eq!(choose(r).unwrap(), path);
    }
}
