//! Embedders: an ONNX model behind a runtime, turning image batches into unit vectors.
//!
//! A runtime implements only [`Backend`] (`run_one`: raw output for one batch of the size its
//! graph accepts); one blanket impl makes every backend an [`Embedder`], so chunking, pooling,
//! dimension checks and l2-normalisation are shared and every runtime yields comparable vectors.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::DynamicImage;
use ndarray::{Array2, ArrayD, ArrayView4, Axis, Ix2, Ix4};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
// The direct dependency on tract-linalg exists to turn on `multithread-mm`.
use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;

use crate::preprocess::{batch_shape, preprocess_batch};
use crate::spec::{ModelSpec, Pooling, SpecError};

/// Why embedding failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The spec could not be resolved.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The runtime could not load or prepare the model.
    #[error("cannot load model {path} with {backend}: {reason}")]
    Load {
        /// Model file.
        path: PathBuf,
        /// Backend name.
        backend: &'static str,
        /// Runtime message.
        reason: String,
    },
    /// The runtime failed on a batch: what was being done, and the runtime's own error kept
    /// whole as the source. The message names the cause too, because an HTTP client sees
    /// only the message (a 500 that said just "inference failed" would tell it nothing).
    #[error("inference failed: {what}: {source}")]
    Run {
        /// The step that failed.
        what: &'static str,
        /// The runtime's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The input batch does not match the spec.
    #[error("input batch has shape {got:?}, expected {expected:?}")]
    InputShape {
        /// Shape given.
        got: Vec<usize>,
        /// Shape the spec asks for (batch first).
        expected: Vec<usize>,
    },
    /// The output cannot become a vector of the spec's dimension.
    #[error("model output has shape {got:?}: {reason}")]
    OutputShape {
        /// Output shape.
        got: Vec<usize>,
        /// What was expected.
        reason: String,
    },
}

impl EmbedError {
    /// [`EmbedError::Run`] for step `what`, caused by `source`.
    pub fn run(
        what: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> EmbedError {
        EmbedError::Run {
            what,
            source: source.into(),
        }
    }
}

/// Identity of a model: what an index checks before accepting queries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelId {
    /// sha256 of the ONNX file, hex.
    pub sha256: String,
    /// The resolved spec.
    pub spec: ModelSpec,
}

impl ModelId {
    /// The provenance of an index whose vectors no model made (benchmarks over synthetic or
    /// exported vectors, tests): a zero hash and a 1×1 input, so no image query can match it.
    pub fn synthetic(dim: usize) -> ModelId {
        ModelId {
            sha256: "0".repeat(64),
            spec: ModelSpec {
                input_name: "synthetic".into(),
                output_name: "synthetic".into(),
                layout: crate::spec::Layout::Nchw,
                height: 1,
                width: 1,
                resize: Default::default(),
                color: crate::spec::Color::Rgb,
                scale: 1.0,
                mean: vec![0.0; 3],
                std: vec![1.0; 3],
                pooling: Pooling::None,
                embedding_dim: dim,
            },
        }
    }
}

/// A runtime that maps preprocessed image batches to l2-normalised embeddings.
///
/// Implementations must be usable from several threads at once (servers share one embedder).
pub trait Embedder: Send + Sync {
    /// How inputs are prepared and outputs read.
    fn spec(&self) -> &ModelSpec;
    /// File hash plus spec, for index compatibility checks.
    fn model_id(&self) -> &ModelId;
    /// Short backend name for messages and benchmarks (`tract`, `ort`).
    fn backend(&self) -> &'static str;
    /// Runs the model on one batch in the spec's layout and returns the raw output.
    fn run(&self, input: ArrayView4<f32>) -> Result<ArrayD<f32>, EmbedError>;

    /// Embeds a preprocessed batch: run, pool, check dimension, l2-normalise.
    fn embed_tensor(&self, input: ArrayView4<f32>) -> Result<Array2<f32>, EmbedError> {
        let spec = self.spec();
        let expected = batch_shape(input.shape()[0], spec);
        if input.shape() != expected {
            return Err(EmbedError::InputShape {
                got: input.shape().to_vec(),
                expected: expected.to_vec(),
            });
        }
        if input.shape()[0] == 0 {
            return Ok(Array2::zeros((0, spec.embedding_dim)));
        }
        let raw = self.run(input)?;
        let mut v = to_vectors(raw, spec)?;
        if v.nrows() != input.shape()[0] {
            return Err(EmbedError::OutputShape {
                got: v.shape().to_vec(),
                reason: format!("expected {} rows, one per image", input.shape()[0]),
            });
        }
        l2_normalize_rows(&mut v);
        Ok(v)
    }

    /// Preprocesses and embeds decoded images.
    fn embed_images(&self, images: &[DynamicImage]) -> Result<Array2<f32>, EmbedError> {
        let batch = preprocess_batch(images, self.spec());
        self.embed_tensor(batch.view())
    }
}

/// A runtime's half of an embedder: run one batch of the size the graph accepts. Every
/// [`Backend`] is an [`Embedder`] through one blanket impl, so chunking for fixed-batch graphs,
/// pooling and normalisation cannot differ between runtimes.
pub trait Backend: Send + Sync {
    /// Short backend name for messages and benchmarks (`tract`, `ort`).
    const NAME: &'static str;
    /// File hash plus spec of the loaded model.
    fn id(&self) -> &ModelId;
    /// `Some(b)` when the graph fixes the batch size: inputs are run in chunks of `b`.
    fn fixed_batch(&self) -> Option<usize>;
    /// Runs the graph on one batch (of `fixed_batch` rows when that is set).
    fn run_one(&self, input: ArrayView4<f32>) -> Result<ArrayD<f32>, EmbedError>;
}

impl<B: Backend> Embedder for B {
    fn spec(&self) -> &ModelSpec {
        &self.id().spec
    }

    fn model_id(&self) -> &ModelId {
        self.id()
    }

    fn backend(&self) -> &'static str {
        B::NAME
    }

    fn run(&self, input: ArrayView4<f32>) -> Result<ArrayD<f32>, EmbedError> {
        run_in_fixed_chunks(input, self.fixed_batch(), |chunk| self.run_one(chunk))
    }
}

/// A model file read once and resolved: the start both runtimes share, so that the bytes that
/// are hashed are the bytes whose spec is resolved.
pub struct ModelFile {
    /// The decoded ONNX graph.
    pub proto: tract_onnx::pb::ModelProto,
    /// Hash of the bytes plus the resolved spec.
    pub id: ModelId,
}

impl ModelFile {
    /// Reads `path`, decodes the protobuf and resolves the spec (manifest, metadata, graph).
    pub fn read(path: &Path) -> Result<ModelFile, SpecError> {
        let bytes = std::fs::read(path).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let proto = crate::spec::decode_proto(path, &bytes)?;
        let spec = ModelSpec::resolve_proto(path, &proto)?;
        Ok(ModelFile {
            proto,
            id: ModelId {
                sha256: sha256_hex(&bytes),
                spec,
            },
        })
    }

    /// The batch dimension of the spec's input when the graph fixes it.
    pub fn fixed_batch(&self) -> Option<usize> {
        fixed_batch_of(&self.proto, &self.id.spec.input_name)
    }
}

/// Pools a raw output to `[N, D]` as the spec says and checks `D`.
pub fn to_vectors(raw: ArrayD<f32>, spec: &ModelSpec) -> Result<Array2<f32>, EmbedError> {
    let shape = raw.shape().to_vec();
    let v = match (spec.pooling, raw.ndim()) {
        (_, 2) => raw.into_dimensionality::<Ix2>().expect("rank checked"),
        (Pooling::Gap, 4) => raw
            .into_dimensionality::<Ix4>()
            .expect("rank checked")
            .mean_axis(Axis(3))
            .and_then(|a| a.mean_axis(Axis(2)))
            .ok_or_else(|| EmbedError::OutputShape {
                got: shape.clone(),
                reason: "empty spatial dimensions".into(),
            })?,
        // Sequence outputs `[N, D, L]` (detectors such as YOLOv8): average over positions.
        (Pooling::Gap, 3) => raw
            .into_dimensionality::<ndarray::Ix3>()
            .expect("rank checked")
            .mean_axis(Axis(2))
            .ok_or_else(|| EmbedError::OutputShape {
                got: shape.clone(),
                reason: "empty last dimension".into(),
            })?,
        (Pooling::None, 4) if shape[2] == 1 && shape[3] == 1 => raw
            .into_shape_with_order((shape[0], shape[1]))
            .map_err(|e| EmbedError::OutputShape {
                got: shape.clone(),
                reason: e.to_string(),
            })?,
        (Pooling::None, 4) => {
            return Err(EmbedError::OutputShape {
                got: shape,
                reason: "rank-4 output needs pooling = gap".into(),
            })
        }
        _ => {
            return Err(EmbedError::OutputShape {
                got: shape,
                reason: "expected rank 2 [N, D], or rank 3 [N, D, L] / rank 4 [N, D, H, W] with pooling = gap".into(),
            })
        }
    };
    if v.ncols() != spec.embedding_dim {
        return Err(EmbedError::OutputShape {
            got: shape,
            reason: format!("expected embedding_dim {}", spec.embedding_dim),
        });
    }
    Ok(v)
}

/// Scales each row to unit length (zero rows stay zero).
pub fn l2_normalize_rows(v: &mut Array2<f32>) {
    for mut row in v.rows_mut() {
        let n = row.dot(&row).sqrt();
        if n > 0.0 && n.is_finite() {
            row /= n;
        }
    }
}

/// sha256 of a file's bytes, hex: how models and images are identified.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The batch dimension of `input` when the graph fixes it.
pub(crate) fn fixed_batch_of(proto: &tract_onnx::pb::ModelProto, input: &str) -> Option<usize> {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value;
    use tract_onnx::pb::type_proto;
    let vi = proto
        .graph
        .as_ref()?
        .input
        .iter()
        .find(|i| i.name == input)?;
    let type_proto::Value::TensorType(t) = vi.r#type.as_ref()?.value.as_ref()?;
    match t.shape.as_ref()?.dim.first()?.value {
        Some(Value::DimValue(b)) if b > 0 => Some(b as usize),
        _ => None,
    }
}

// --- The pure-Rust backend (tract) ---
//
// The pure-Rust backend (tract): needs nothing installed, so it is what runs when ONNX Runtime
// is absent.
//
// Two things make tract fast here, both measured with `htg bench embed` (docs/BACKENDS.md):
// - a plan per concrete batch size. A plan optimised for a symbolic batch `N` ran the bundled
// model 1.5-1.8x slower than one for a fixed size (tract picks matmul kernels and packings per
// shape, and a symbolic shape gets the generic ones). Plans are built on first use of a size
// and cached; batches above [`MAX_RUN`] images run in pieces, so at most [`MAX_PLANS`] plans
// exist, and the symbolic plan built at load serves only a size whose plan failed to build.
// - for one image, tract's multithreaded executor (`tract_linalg::multithread`, the
// `multithread-mm` feature), which splits matrix products and element-wise ops over a private
// pool; for more, the batch is split into one part per thread, each run on a single-threaded
// plan beside the others. On the bundled model the executor's hand-offs cost more than they
// gave: quiet, 2 threads, it ran 358 and 331 images/s at batch 8 and 32 against 454 and 376 on
// one thread, and `htg index` of 70,000 images took 211 s where the build before it, which ran
// two single-threaded batches side by side, took 123 s (docs/BACKENDS.md).

/// Plans that get built and cached (a batch size, on one thread or on the executor); past it,
/// runs use the symbolic plan. With runs of at most [`MAX_RUN`] images, every size gets both.
pub const MAX_PLANS: usize = 2 * MAX_RUN;

/// Most images tract runs in one call: bigger batches are split into runs of this size. tract's
/// images/s fall as the batch grows (measured on the bundled model: 852, 862, 551 and 582
/// images/s at batch 1, 8, 32 and 64, one thread; the same shape with two threads), so a batch
/// of 32 runs as four runs of 8, each on its cached plan. Under heavy load the gain was unclear
/// (batch 32 per image at 0.27-0.66x batch 1's rate after, 0.30-0.37x before; docs/BACKENDS.md).
pub const MAX_RUN: usize = 8;

/// How to run tract.
#[derive(Clone, Debug, Default)]
pub struct TractOptions {
    /// Threads per inference call; `None`: one per core (`available_parallelism`). `Some(1)`
    /// runs on the calling thread.
    pub threads: Option<usize>,
}

/// One optimised plan and the run states it has handed out (a state holds the plan's scratch
/// buffers, so reusing one saves their allocation on every call).
struct Plan {
    plan: Arc<TypedSimplePlan>,
    states: Mutex<Vec<TypedSimpleState>>,
}

impl Plan {
    fn new(plan: Arc<TypedSimplePlan>) -> Arc<Plan> {
        Arc::new(Plan {
            plan,
            states: Mutex::new(Vec::new()),
        })
    }

    fn run(&self, input: Tensor) -> TractResult<TVec<TValue>> {
        let state = self.states.lock().pop();
        let mut state = match state {
            Some(s) => s,
            None => self.plan.spawn()?,
        };
        let out = state.run(tvec![input.into()])?;
        self.states.lock().push(state);
        Ok(out)
    }
}

/// Plans by (batch size, on the executor); `None` records a plan that failed to build.
type PlanCache = HashMap<(usize, bool), Option<Arc<Plan>>>;

/// Pure-Rust CPU backend: needs nothing installed.
pub struct TractEmbedder {
    /// The parsed graph with input and outputs selected, batch dimension not yet fixed: the
    /// source of every concrete plan.
    model: InferenceModel,
    /// Plan for any batch size (or the fixed one when the graph fixes it).
    symbolic: Arc<Plan>,
    /// Plans per concrete batch size; `None` records a size whose plan failed to build, which
    /// then runs on the symbolic plan.
    plans: Mutex<PlanCache>,
    /// With the multithreaded executor (when `threads > 1`): for single images.
    options: RunOptions,
    /// On the calling thread: for the parts of a batch that run side by side.
    single: RunOptions,
    threads: usize,
    id: ModelId,
    /// `Some(b)` when the graph fixes the batch size: inputs are run in chunks of `b`.
    fixed_batch: Option<usize>,
}

impl TractEmbedder {
    /// Loads `path` with default options (one thread per core).
    pub fn load(path: &Path) -> Result<TractEmbedder, EmbedError> {
        TractEmbedder::load_with(path, &TractOptions::default())
    }

    /// Loads `path`, resolving its spec (manifest, metadata, graph), and builds the plan for a
    /// symbolic batch size (plans for concrete sizes follow on first use).
    pub fn load_with(path: &Path, opts: &TractOptions) -> Result<TractEmbedder, EmbedError> {
        let ModelFile { proto, id } = ModelFile::read(path)?;
        let spec = id.spec.clone();
        let fixed_batch = fixed_batch_of(&proto, &spec.input_name);
        let load_err = |e: TractError| EmbedError::Load {
            path: path.to_path_buf(),
            backend: "tract",
            reason: format!("{e:#}"),
        };
        let dir = path.parent().and_then(|p| p.to_str());
        // Shapes an exporter recorded for intermediate values and outputs may name symbols
        // (`batch`, `height`) other than the input fact set below, which tract then cannot
        // unify (nudenet's YOLOv8). They are only hints: let tract infer them.
        let mut proto = proto;
        if let Some(g) = proto.graph.as_mut() {
            g.value_info.clear();
            for o in &mut g.output {
                if let Some(tract_onnx::pb::type_proto::Value::TensorType(t)) =
                    o.r#type.as_mut().and_then(|t| t.value.as_mut())
                {
                    t.shape = None;
                }
            }
        }
        let parsed = tract_onnx::onnx().parse(&proto, dir).map_err(load_err)?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(EmbedError::Load {
                path: path.to_path_buf(),
                backend: "tract",
                reason: format!("unresolved inputs {:?}", parsed.unresolved_inputs),
            });
        }
        let mut model = parsed.model;
        model
            .set_input_names([spec.input_name.as_str()])
            .and_then(|_| model.select_outputs_by_name([spec.output_name.as_str()]))
            .map_err(load_err)?;
        let threads = opts
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let options = RunOptions {
            executor: (threads > 1).then(|| Executor::multithread_with_name(threads, "htg-tract")),
            ..RunOptions::default()
        };
        let n: TDim = match fixed_batch {
            Some(b) => b.to_dim(),
            None => model.sym("N").into(),
        };
        let symbolic = build_plan(&model, &spec, n, &options).map_err(load_err)?;
        Ok(TractEmbedder {
            model,
            symbolic: Plan::new(symbolic),
            plans: Mutex::new(HashMap::new()),
            options,
            single: RunOptions::default(),
            threads,
            id,
            fixed_batch,
        })
    }

    /// Threads each inference call uses.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The plan for `n` images, on the executor or on the calling thread: cached, built now,
    /// or the symbolic one.
    fn plan_for(&self, n: usize, executor: bool) -> Arc<Plan> {
        if self.fixed_batch.is_some() {
            return self.symbolic.clone();
        }
        {
            let plans = self.plans.lock();
            match plans.get(&(n, executor)) {
                Some(Some(p)) => return p.clone(),
                Some(None) => return self.symbolic.clone(),
                None if plans.len() >= MAX_PLANS => return self.symbolic.clone(),
                None => {}
            }
        }
        // Built outside the lock: other sizes keep running meanwhile. Two threads may build the
        // same size once; the second insert wins and both plans are equivalent.
        let options = if executor {
            &self.options
        } else {
            &self.single
        };
        let built = build_plan(&self.model, &self.id.spec, n.to_dim(), options)
            .ok()
            .map(Plan::new);
        let mut plans = self.plans.lock();
        plans.insert((n, executor), built.clone());
        built.unwrap_or_else(|| self.symbolic.clone())
    }
}

/// Optimises `model` for batch dimension `n` (a number or a symbol) into a runnable plan.
fn build_plan(
    model: &InferenceModel,
    spec: &crate::spec::ModelSpec,
    n: TDim,
    options: &RunOptions,
) -> TractResult<Arc<TypedSimplePlan>> {
    let mut model = model.clone();
    let s = batch_shape(1, spec);
    let shape: TVec<TDim> = tvec![n, s[1].to_dim(), s[2].to_dim(), s[3].to_dim()];
    model.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))?;
    model.into_optimized()?.into_runnable_with_options(options)
}

impl Backend for TractEmbedder {
    const NAME: &'static str = "tract";

    fn id(&self) -> &ModelId {
        &self.id
    }

    fn fixed_batch(&self) -> Option<usize> {
        self.fixed_batch
    }

    fn run_one(&self, input: ArrayView4<f32>) -> Result<ArrayD<f32>, EmbedError> {
        let n = input.shape()[0];
        let executor = self.threads > 1;
        if self.fixed_batch.is_some() || n == 1 {
            return self.run_plan(input, executor);
        }
        if !executor {
            return self.run_runs(input);
        }
        // One part per thread, each on single-threaded plans, side by side.
        let per = n.div_ceil(self.threads.min(n));
        let parts: Vec<Result<ArrayD<f32>, EmbedError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .step_by(per)
                .map(|start| {
                    let part = input.slice(ndarray::s![start..(start + per).min(n), .., .., ..]);
                    s.spawn(move || self.run_runs(part))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(EmbedError::run("a tract run", "the thread panicked"))
                    })
                })
                .collect()
        });
        let parts = parts.into_iter().collect::<Result<Vec<_>, _>>()?;
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        ndarray::concatenate(ndarray::Axis(0), &views)
            .map_err(|e| EmbedError::run("joining the parts of a batch", e))
    }
}

impl TractEmbedder {
    /// Runs `input` on single-threaded plans, in runs of at most [`MAX_RUN`] images.
    fn run_runs(&self, input: ArrayView4<f32>) -> Result<ArrayD<f32>, EmbedError> {
        let n = input.shape()[0];
        if n <= MAX_RUN {
            return self.run_plan(input, false);
        }
        let mut parts = Vec::with_capacity(n.div_ceil(MAX_RUN));
        for start in (0..n).step_by(MAX_RUN) {
            let end = (start + MAX_RUN).min(n);
            parts.push(self.run_plan(input.slice(ndarray::s![start..end, .., .., ..]), false)?);
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        ndarray::concatenate(ndarray::Axis(0), &views)
            .map_err(|e| EmbedError::run("joining the parts of a batch", e))
    }

    /// Runs one batch on the plan for its size.
    fn run_plan(&self, input: ArrayView4<f32>, executor: bool) -> Result<ArrayD<f32>, EmbedError> {
        let plan = self.plan_for(input.shape()[0], executor);
        let tensor: Tensor = input.to_owned().into_dyn().into();
        let out = plan
            .run(tensor)
            .map_err(|e| EmbedError::run("running the tract plan", e))?;
        let view = out[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| EmbedError::run("reading the output as f32", e))?;
        Ok(view.to_owned())
    }
}

/// Runs `f` on the whole batch, or on zero-padded chunks of `fixed` rows when the graph fixes
/// the batch size, and stacks the outputs. Shared by backends.
pub fn run_in_fixed_chunks(
    input: ArrayView4<f32>,
    fixed: Option<usize>,
    mut f: impl FnMut(ArrayView4<f32>) -> Result<ArrayD<f32>, EmbedError>,
) -> Result<ArrayD<f32>, EmbedError> {
    let Some(b) = fixed else {
        return f(input);
    };
    let n = input.shape()[0];
    let mut parts = Vec::new();
    for start in (0..n).step_by(b) {
        let end = (start + b).min(n);
        let chunk = input.slice(ndarray::s![start..end, .., .., ..]);
        let out = if end - start == b {
            f(chunk)?
        } else {
            let mut shape = chunk.raw_dim();
            shape[0] = b;
            let mut padded = ndarray::Array4::<f32>::zeros(shape);
            padded
                .slice_mut(ndarray::s![..end - start, .., .., ..])
                .assign(&chunk);
            let full = f(padded.view())?;
            full.slice_axis(Axis(0), ndarray::Slice::from(0..end - start))
                .to_owned()
        };
        parts.push(out);
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|e| EmbedError::run("stacking a batch", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Color, Layout};

    fn spec(pooling: Pooling, dim: usize) -> ModelSpec {
        ModelSpec {
            input_name: "x".into(),
            output_name: "y".into(),
            layout: Layout::Nchw,
            height: 8,
            width: 8,
            resize: Default::default(),
            color: Color::Grey,
            scale: 1.0,
            mean: vec![0.0],
            std: vec![1.0],
            pooling,
            embedding_dim: dim,
        }
    }

    #[test]
    fn gap_averages_trailing_axes_of_rank3_and_rank4_outputs() {
        let r3 =
            ndarray::Array3::from_shape_fn((2, 3, 4), |(n, d, l)| (n * 100 + d * 10 + l) as f32);
        let v = to_vectors(r3.into_dyn(), &spec(Pooling::Gap, 3)).unwrap();
        assert_eq!(v.row(1).to_vec(), vec![101.5, 111.5, 121.5]);
        let r4 =
            ndarray::Array4::from_shape_fn((1, 2, 2, 2), |(_, d, h, w)| (d * 8 + h * 2 + w) as f32);
        let v = to_vectors(r4.into_dyn(), &spec(Pooling::Gap, 2)).unwrap();
        assert_eq!(v.row(0).to_vec(), vec![1.5, 9.5]);
    }

    #[test]
    fn wrong_output_shapes_are_errors_not_panics() {
        let r4 = ndarray::Array4::<f32>::zeros((1, 2, 3, 3)).into_dyn();
        assert!(to_vectors(r4, &spec(Pooling::None, 2)).is_err());
        let r2 = ndarray::Array2::<f32>::zeros((1, 5)).into_dyn();
        assert!(to_vectors(r2, &spec(Pooling::None, 4)).is_err());
        let r5 = ndarray::ArrayD::<f32>::zeros(vec![1, 1, 1, 1, 1]);
        assert!(to_vectors(r5, &spec(Pooling::Gap, 1)).is_err());
    }
}

#[cfg(test)]
mod tract_tests {
    use super::*;

    fn tiny() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/tiny.onnx")
    }

    /// Every batch size, run whole or (past `MAX_RUN`) in pieces, and every thread count gives
    /// the same vectors.
    #[test]
    fn per_size_plans_and_threads_agree_with_single_image_runs() {
        let one = TractEmbedder::load_with(&tiny(), &TractOptions { threads: Some(1) }).unwrap();
        let two = TractEmbedder::load_with(&tiny(), &TractOptions { threads: Some(2) }).unwrap();
        let shape = batch_shape(MAX_PLANS + 3, one.spec());
        let input = ndarray::Array4::from_shape_fn(shape, |(n, c, h, w)| {
            ((n * 7 + c * 3 + h * 5 + w) % 17) as f32 / 17.0 - 0.5
        });
        let singles: Vec<_> = (0..shape[0])
            .map(|i| {
                one.embed_tensor(input.slice(ndarray::s![i..i + 1, .., .., ..]))
                    .unwrap()
            })
            .collect();
        for n in 1..=shape[0] {
            let batch = input.slice(ndarray::s![..n, .., .., ..]);
            for e in [&one, &two] {
                let got = e.embed_tensor(batch).unwrap();
                for (i, single) in singles.iter().enumerate().take(n) {
                    let d = (&got.row(i) - &single.row(0))
                        .mapv(f32::abs)
                        .fold(0f32, |a, b| a.max(*b));
                    assert!(
                        d < 1e-5,
                        "batch {n}, image {i}, {} threads: {d}",
                        e.threads()
                    );
                }
            }
        }
        let cached = one.plans.lock();
        assert_eq!(
            cached.len(),
            MAX_RUN,
            "one single-threaded plan per run size"
        );
        assert!(
            cached.values().all(Option::is_some),
            "every size got a plan"
        );
    }
}
