//! ONNX Runtime backend (through the `ort` crate), for users who want ORT's speed or a GPU.
//!
//! ONNX Runtime is not linked in: it is loaded at run time from a library file the user names
//! (or from the cache that `scripts/fetch-data.sh onnxruntime` and `scripts/setup-gpu.sh` fill),
//! so that htg builds offline and the default tract backend needs nothing installed. Loading goes
//! through `ort::init_from`, which reports a missing or wrong library as an error; plain
//! `ort::init` would panic on a failed `dlopen`.
//!
//! GPU execution providers (CUDA, TensorRT) are best effort: where one cannot be registered the
//! session is built for CPU and [`OrtEmbedder::fallback`] says why, unless the caller set
//! [`OrtOptions::require_gpu`], in which case loading fails with that reason.

use parking_lot::Mutex;
use std::fmt;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, ArrayView4};
use ort::environment::Environment;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{OutputSelector, RunOptions, Session};
use ort::value::{TensorRef, ValueType};

use crate::embed::{Backend, EmbedError, ModelFile, ModelId};
use crate::spec::SpecError;

/// ONNX Runtime version whose library the fetch scripts install (ort rc.15 needs >= 1.31).
pub const ORT_VERSION: &str = "1.31.1";

/// Environment variable naming the ONNX Runtime library (the same one `ort` itself reads).
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// Where ONNX Runtime runs the graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExecutionProvider {
    /// ONNX Runtime's own CPU kernels (always available).
    #[default]
    Cpu,
    /// NVIDIA CUDA (needs the `cuda` cargo feature and the onnxruntime-gpu library).
    Cuda,
    /// NVIDIA TensorRT, with CUDA behind it for unsupported nodes (needs the `tensorrt` feature).
    TensorRt,
}

impl ExecutionProvider {
    /// Whether this provider needs a GPU.
    pub fn is_gpu(self) -> bool {
        !matches!(self, ExecutionProvider::Cpu)
    }
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::TensorRt => "tensorrt",
        })
    }
}

/// How to load ONNX Runtime and build a session.
#[derive(Clone, Debug, Default)]
pub struct OrtOptions {
    /// The ONNX Runtime shared library (`libonnxruntime.so.1.31.1`); see [`default_library`].
    pub library: PathBuf,
    /// Requested execution provider.
    pub provider: ExecutionProvider,
    /// CUDA / TensorRT device ordinal.
    pub device_id: i32,
    /// Let TensorRT build fp16 engines (faster, less exact).
    pub trt_fp16: bool,
    /// Directory where TensorRT keeps built engines, so later runs skip the slow build.
    pub trt_cache: Option<PathBuf>,
    /// Fail instead of falling back to CPU when the GPU provider cannot be used.
    pub require_gpu: bool,
    /// Intra-op threads; `None`: one per core the process may use (`available_parallelism`).
    /// ONNX Runtime's own default counts physical cores only, which leaves hyperthreads and
    /// some containers' CPUs idle.
    pub intra_threads: Option<usize>,
}

/// Why ONNX Runtime could not be set up. Model and inference failures are [`EmbedError`]s.
#[derive(Debug, thiserror::Error)]
pub enum OrtError {
    /// The library file does not exist.
    #[error("ONNX Runtime library not found at {path} (give --ort-lib or set ORT_DYLIB_PATH, or run scripts/fetch-data.sh onnxruntime)")]
    LibraryMissing {
        /// Path tried.
        path: PathBuf,
    },
    /// The file exists but is not a usable ONNX Runtime library.
    #[error("cannot load ONNX Runtime library {path}: {reason}")]
    Library {
        /// Path tried.
        path: PathBuf,
        /// Loader message (one line).
        reason: String,
    },
    /// A different library was already loaded into this process; ONNX Runtime cannot be unloaded.
    #[error("ONNX Runtime is already loaded from {loaded}; cannot also load {requested}")]
    OtherLibraryLoaded {
        /// Library loaded first.
        loaded: PathBuf,
        /// Library asked for now.
        requested: PathBuf,
    },
    /// The GPU provider was required and could not be used.
    #[error("{provider} execution provider unavailable (and --require-gpu was given): {reason}")]
    GpuUnavailable {
        /// Provider asked for.
        provider: ExecutionProvider,
        /// Why it could not be used.
        reason: String,
    },
    /// Loading or running the model failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

impl From<SpecError> for OrtError {
    fn from(e: SpecError) -> Self {
        OrtError::Embed(e.into())
    }
}

/// The cache directory the fetch scripts use: `$HTG_CACHE_DIR`, else `$HOME/.cache/htg`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("HTG_CACHE_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".cache/htg"),
    }
}

/// The library the fetch scripts install: for a GPU provider the onnxruntime-gpu build from
/// `scripts/setup-gpu.sh` (when present), else the CPU build from
/// `scripts/fetch-data.sh onnxruntime`. Callers put `--ort-lib` and `ORT_DYLIB_PATH` first.
pub fn default_library(provider: ExecutionProvider) -> PathBuf {
    let cache = cache_dir();
    let name = format!("libonnxruntime.so.{ORT_VERSION}");
    let gpu = cache.join("gpu/lib").join(&name);
    if provider.is_gpu() && gpu.exists() {
        return gpu;
    }
    cache.join("onnxruntime").join(name)
}

/// Resolves the library path: the explicit one, else `ORT_DYLIB_PATH`, else [`default_library`].
pub fn resolve_library(explicit: Option<&Path>, provider: ExecutionProvider) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    match std::env::var_os(ORT_DYLIB_ENV).filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => default_library(provider),
    }
}

/// The process-wide environment and the library it came from (ONNX Runtime loads once).
static ENVIRONMENT: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

/// Loads ONNX Runtime from `library` (once per process) and returns its environment.
///
/// A second call with another path fails rather than silently using the first library.
pub fn environment(library: &Path) -> Result<Environment, OrtError> {
    let requested = std::path::absolute(library).unwrap_or_else(|_| library.to_path_buf());
    let mut guard = ENVIRONMENT.lock();
    if let Some((loaded, env)) = guard.as_ref() {
        if same_file(loaded, &requested) {
            return Ok(env.clone());
        }
        return Err(OrtError::OtherLibraryLoaded {
            loaded: loaded.clone(),
            requested,
        });
    }
    if !requested.is_file() {
        return Err(OrtError::LibraryMissing { path: requested });
    }
    let builder = ort::init_from(&requested).map_err(|e| OrtError::Library {
        path: requested.clone(),
        reason: load_reason(&e),
    })?;
    let env = builder
        .with_name("htg")
        .with_telemetry(false)
        .build()
        .map_err(|e| OrtError::Library {
            path: requested.clone(),
            reason: one_line(&format!("creating the environment failed: {e}")),
        })?;
    *guard = Some((requested, env.clone()));
    Ok(env)
}

/// Collapses a message to one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The loader's own words (`dlerror`), which libloading keeps in the error's source.
fn dl_reason(e: &(dyn std::error::Error + 'static)) -> String {
    one_line(&e.source().map_or_else(|| e.to_string(), |s| s.to_string()))
}

/// Why `ort::init_from` refused a library, without repeating its path.
fn load_reason(e: &ort::LoadDynamicError) -> String {
    match e {
        ort::LoadDynamicError::Dlopen { error, .. } => dl_reason(error),
        ort::LoadDynamicError::MissingApi { .. } => {
            "it does not export OrtGetApiBase, so it is not ONNX Runtime".into()
        }
        ort::LoadDynamicError::BadVersion { version_str, .. } => format!(
            "it is ONNX Runtime {version_str}, older than this build supports (>= 1.31; \
             scripts/fetch-data.sh onnxruntime installs {ORT_VERSION})"
        ),
        other => one_line(&other.to_string()),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// Libraries the CUDA / TensorRT providers need, in load order (dependencies first). They are
/// preloaded from the ONNX Runtime library's directory when present there (as
/// `scripts/setup-gpu.sh` arranges), so no `LD_LIBRARY_PATH` is needed.
const GPU_DYLIBS: &[&str] = &[
    "libcudart.so.13",
    "libcublasLt.so.13",
    "libcublas.so.13",
    "libnvrtc.so.13",
    "libcurand.so.10",
    "libcufft.so.12",
    "libcudnn.so.9",
    "libcudnn_graph.so.9",
    "libcudnn_ops.so.9",
    "libcudnn_heuristic.so.9",
    "libcudnn_adv.so.9",
    "libcudnn_cnn.so.9",
    "libcudnn_engines_precompiled.so.9",
    "libcudnn_engines_runtime_compiled.so.9",
];

/// TensorRT's libraries, preloaded like [`GPU_DYLIBS`] for the TensorRT provider.
const TRT_DYLIBS: &[&str] = &[
    "libnvinfer.so.10",
    "libnvinfer_plugin.so.10",
    "libnvonnxparser.so.10",
];

/// Preloads the GPU libraries found beside `library`; returns the first failure, if any.
fn preload_gpu_libs(library: &Path, provider: ExecutionProvider) -> Option<String> {
    let dir = library.parent()?;
    let trt: &[&str] = if provider == ExecutionProvider::TensorRt {
        TRT_DYLIBS
    } else {
        &[]
    };
    for name in GPU_DYLIBS.iter().chain(trt) {
        let p = dir.join(name);
        if p.exists() {
            if let Err(e) = ort::util::preload_dylib(&p) {
                return Some(format!("cannot load {}: {}", p.display(), dl_reason(&e)));
            }
        }
    }
    None
}

/// ONNX Runtime backend.
pub struct OrtEmbedder {
    /// `Session::run` needs `&mut`; one session serves all threads (ORT parallelises inside).
    session: Mutex<Session>,
    id: ModelId,
    /// `Some(b)` when the graph fixes the batch size.
    fixed_batch: Option<usize>,
    provider: ExecutionProvider,
    fallback: Option<String>,
}

impl OrtEmbedder {
    /// Loads ONNX Runtime (see [`environment`]) and then `path`, resolving its spec the same
    /// way as tract (manifest, metadata, graph).
    pub fn load(path: &Path, options: &OrtOptions) -> Result<OrtEmbedder, OrtError> {
        let env = environment(&options.library)?;
        let ModelFile { id, .. } = ModelFile::read(path)?;
        let spec = &id.spec;

        let (session, provider, fallback) = if options.provider.is_gpu() {
            match gpu_session(&env, path, options) {
                Ok(s) => (s, options.provider, None),
                Err(reason) if options.require_gpu => {
                    return Err(OrtError::GpuUnavailable {
                        provider: options.provider,
                        reason,
                    })
                }
                Err(reason) => (
                    cpu_session(&env, path, options)?,
                    ExecutionProvider::Cpu,
                    Some(format!(
                        "{} execution provider unavailable, running on CPU: {reason}",
                        options.provider
                    )),
                ),
            }
        } else {
            (
                cpu_session(&env, path, options)?,
                ExecutionProvider::Cpu,
                None,
            )
        };

        let load_err = |reason: String| EmbedError::Load {
            path: path.to_path_buf(),
            backend: "ort",
            reason,
        };
        let input = session
            .inputs()
            .iter()
            .find(|i| i.name() == spec.input_name)
            .ok_or_else(|| load_err(format!("the session has no input {:?}", spec.input_name)))?;
        let fixed_batch = match input.dtype() {
            ValueType::Tensor { shape, .. } => shape.first().copied().filter(|b| *b > 0),
            _ => None,
        }
        .map(|b| b as usize);
        if !session
            .outputs()
            .iter()
            .any(|o| o.name() == spec.output_name)
        {
            return Err(
                load_err(format!("the session has no output {:?}", spec.output_name)).into(),
            );
        }
        Ok(OrtEmbedder {
            session: Mutex::new(session),
            id,
            fixed_batch,
            provider,
            fallback,
        })
    }

    /// The provider the session actually runs on (CPU after a fallback).
    pub fn provider(&self) -> ExecutionProvider {
        self.provider
    }

    /// Why the requested GPU provider was not used, when the session fell back to CPU.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }
}

impl Backend for OrtEmbedder {
    const NAME: &'static str = "ort";

    fn id(&self) -> &ModelId {
        &self.id
    }

    fn fixed_batch(&self) -> Option<usize> {
        self.fixed_batch
    }

    fn run_one(&self, input: ArrayView4<f32>) -> Result<ArrayD<f32>, EmbedError> {
        let run_err = |e: ort::Error| EmbedError::run("running the ONNX Runtime session", e);
        let input = input.as_standard_layout();
        let tensor = TensorRef::from_array_view(input.view()).map_err(run_err)?;
        let spec = &self.id.spec;
        let options = RunOptions::new()
            .map_err(run_err)?
            .with_outputs(OutputSelector::no_default().with(spec.output_name.clone()));
        let mut session = self.session.lock();
        let outputs = session
            .run_with_options(ort::inputs![spec.input_name.as_str() => tensor], &options)
            .map_err(run_err)?;
        let value = outputs.get(spec.output_name.as_str()).ok_or_else(|| {
            EmbedError::run(
                "reading the output",
                format!("no output {:?}", spec.output_name),
            )
        })?;
        let view = value
            .try_extract_array::<f32>()
            .map_err(|e| EmbedError::run("reading the output as f32", e))?;
        Ok(view.to_owned())
    }
}

/// The intra-op thread count a session gets from `options`.
pub fn intra_threads(options: &OrtOptions) -> usize {
    options
        .intra_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

/// Builder with the settings shared by CPU and GPU sessions.
fn base_builder(env: &Environment, options: &OrtOptions) -> ort::Result<SessionBuilder> {
    let mut b = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(ort::Error::<()>::from)?;
    b = b
        .with_intra_threads(intra_threads(options))
        .map_err(ort::Error::<()>::from)?;
    Ok(b)
}

fn cpu_session(
    env: &Environment,
    path: &Path,
    options: &OrtOptions,
) -> Result<Session, EmbedError> {
    let load_err = |e: ort::Error| EmbedError::Load {
        path: path.to_path_buf(),
        backend: "ort",
        reason: e.to_string(),
    };
    let mut b = base_builder(env, options).map_err(load_err)?;
    b.commit_from_file(path).map_err(load_err)
}

/// A session on the requested GPU provider, or the one-line reason it cannot be had.
fn gpu_session(env: &Environment, path: &Path, options: &OrtOptions) -> Result<Session, String> {
    if let Some(reason) = preload_gpu_libs(&options.library, options.provider) {
        return Err(reason);
    }
    let eps = gpu_providers(options)?;
    let mut b = base_builder(env, options).map_err(|e| e.to_string())?;
    b = b
        .with_execution_providers(eps)
        .map_err(|e| format!("registering the provider failed: {e}"))?;
    b.commit_from_file(path)
        .map_err(|e| format!("creating the session failed: {e}"))
}

#[cfg(feature = "cuda")]
fn gpu_providers(options: &OrtOptions) -> Result<Vec<ort::ep::ExecutionProviderDispatch>, String> {
    let cuda = ort::ep::CUDA::default()
        .with_device_id(options.device_id)
        .build()
        .error_on_failure();
    match options.provider {
        ExecutionProvider::Cpu => Ok(vec![]),
        ExecutionProvider::Cuda => Ok(vec![cuda]),
        ExecutionProvider::TensorRt => tensorrt_provider(options).map(|t| vec![t, cuda]),
    }
}

#[cfg(not(feature = "cuda"))]
fn gpu_providers(options: &OrtOptions) -> Result<Vec<ort::ep::ExecutionProviderDispatch>, String> {
    Err(format!(
        "htg was built without the `{}` cargo feature",
        if options.provider == ExecutionProvider::TensorRt {
            "tensorrt"
        } else {
            "cuda"
        }
    ))
}

#[cfg(all(feature = "cuda", feature = "tensorrt"))]
fn tensorrt_provider(options: &OrtOptions) -> Result<ort::ep::ExecutionProviderDispatch, String> {
    let mut trt = ort::ep::TensorRT::default()
        .with_device_id(options.device_id)
        .with_fp16(options.trt_fp16);
    if let Some(dir) = &options.trt_cache {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create TensorRT cache {}: {e}", dir.display()))?;
        trt = trt
            .with_engine_cache(true)
            .with_engine_cache_path(dir.display())
            .with_timing_cache(true)
            .with_timing_cache_path(dir.display());
    }
    Ok(trt.build().error_on_failure())
}

#[cfg(all(feature = "cuda", not(feature = "tensorrt")))]
fn tensorrt_provider(_: &OrtOptions) -> Result<ort::ep::ExecutionProviderDispatch, String> {
    Err("htg was built without the `tensorrt` cargo feature".into())
}
