//! The pure-Rust backend (tract): needs nothing installed, so it is what runs when ONNX Runtime
//! is absent.
//!
//! Two things make tract fast here, both measured with `htg bench embed` (docs/BACKENDS.md):
//! - a plan per concrete batch size. A plan optimised for a symbolic batch `N` ran the bundled
//!   model 1.5-1.8x slower than one for a fixed size (tract picks matmul kernels and packings per
//!   shape, and a symbolic shape gets the generic ones). Plans are built on first use of a size
//!   and cached; the symbolic plan built at load serves sizes beyond [`MAX_PLANS`].
//! - tract's multithreaded executor (`tract_linalg::multithread`, the `multithread-mm` feature),
//!   which splits matrix products and element-wise ops over a private pool; without it tract runs
//!   a whole batch on the calling thread.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ndarray::{ArrayD, ArrayView4};
use tract_onnx::prelude::*;
// The direct dependency on tract-linalg exists to turn on `multithread-mm`.
use tract_linalg::multithread::Executor;

use crate::embed::{fixed_batch_of, Backend, EmbedError, ModelFile, ModelId};
use crate::preprocess::batch_shape;

/// Batch sizes that get their own optimised plan; others run on the symbolic plan. A server's
/// batcher or an indexer uses a handful of sizes (its batch size and the last, shorter batch),
/// and a plan of the bundled model is about a megabyte.
pub const MAX_PLANS: usize = 8;

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
        let state = self.states.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut state = match state {
            Some(s) => s,
            None => self.plan.spawn()?,
        };
        let out = state.run(tvec![input.into()])?;
        self.states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(state);
        Ok(out)
    }
}

/// Pure-Rust CPU backend: needs nothing installed.
pub struct TractEmbedder {
    /// The parsed graph with input and outputs selected, batch dimension not yet fixed: the
    /// source of every concrete plan.
    model: InferenceModel,
    /// Plan for any batch size (or the fixed one when the graph fixes it).
    symbolic: Arc<Plan>,
    /// Plans per concrete batch size; `None` records a size whose plan failed to build, which
    /// then runs on the symbolic plan.
    plans: Mutex<HashMap<usize, Option<Arc<Plan>>>>,
    options: RunOptions,
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
            threads,
            id,
            fixed_batch,
        })
    }

    /// Threads each inference call uses.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The plan for `n` images: cached, built now, or the symbolic one.
    fn plan_for(&self, n: usize) -> Arc<Plan> {
        if self.fixed_batch.is_some() {
            return self.symbolic.clone();
        }
        {
            let plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
            match plans.get(&n) {
                Some(Some(p)) => return p.clone(),
                Some(None) => return self.symbolic.clone(),
                None if plans.len() >= MAX_PLANS => return self.symbolic.clone(),
                None => {}
            }
        }
        // Built outside the lock: other sizes keep running meanwhile. Two threads may build the
        // same size once; the second insert wins and both plans are equivalent.
        let built = build_plan(&self.model, &self.id.spec, n.to_dim(), &self.options)
            .ok()
            .map(Plan::new);
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        plans.insert(n, built.clone());
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
        let plan = self.plan_for(input.shape()[0]);
        let tensor: Tensor = input.to_owned().into_dyn().into();
        let out = plan
            .run(tensor)
            .map_err(|e| EmbedError::Run(format!("{e:#}")))?;
        let view = out[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| EmbedError::Run(format!("output is not f32: {e:#}")))?;
        Ok(view.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::Embedder;

    fn tiny() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/tiny.onnx")
    }

    /// Every batch size, whether it gets its own plan or (past `MAX_PLANS`) the symbolic one,
    /// and every thread count gives the same vectors.
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
        let cached = one.plans.lock().unwrap();
        assert_eq!(cached.len(), MAX_PLANS, "plans are cached up to the limit");
        assert!(
            cached.values().all(Option::is_some),
            "every size got a plan"
        );
    }
}
