//! Zero-shot evaluation: embed the unseen classes and compute the retrieval metrics.
//!
//! The metrics come from [`crate::metrics`], the same code `htg bench quality` uses. Embeddings
//! can come from burn (the trained module), from the exported ONNX file on a retrieval
//! [`Embedder`] (what users will run), or from raw pixels (the floor every learned F must
//! clear).

use crate::metrics;
use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use htg_retrieval::embed::Embedder;
use ndarray::{concatenate, Array2, Axis};
use serde::{Deserialize, Serialize};

use crate::backend::infer_device;
use crate::data::{EvalProtocol, ImageSet};
use crate::model::{l2_normalize, FeatureNet};
use crate::TrainError;

/// Batch size used when embedding an evaluation set.
pub const EVAL_BATCH: usize = 256;

/// The numbers reported for one model on one split.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalReport {
    /// Data set name.
    pub data: String,
    /// How the unseen classes were evaluated.
    pub protocol: String,
    /// `(K, Recall@K)`.
    pub recall_at: Vec<(usize, f64)>,
    /// NMI of seeded k-means (k = number of unseen classes).
    pub nmi: f64,
    /// MAP@R.
    pub map_at_r: f64,
    /// R-precision.
    pub r_precision: f64,
    /// Queries averaged.
    pub queries: usize,
}

impl EvalReport {
    /// A one-row Markdown-style table of the metrics.
    pub fn table(&self) -> String {
        let mut head = String::from("|");
        let mut row = String::from("|");
        for (k, r) in &self.recall_at {
            head.push_str(&format!(" R@{k} |"));
            row.push_str(&format!(" {r:.4} |"));
        }
        head.push_str(" NMI | MAP@R | R-prec |");
        row.push_str(&format!(
            " {:.4} | {:.4} | {:.4} |",
            self.nmi, self.map_at_r, self.r_precision
        ));
        let sep: String = head
            .chars()
            .map(|c| if c == '|' { '|' } else { '-' })
            .collect();
        format!("{head}\n{sep}\n{row}")
    }
}

/// l2-normalised burn embeddings of every image in `set` (F in inference mode).
pub fn embed_burn(f: &FeatureNet, set: &ImageSet) -> Array2<f32> {
    let model = f.clone().valid();
    let dev = infer_device();
    let [c, h, w] = set.chw;
    let n = c * h * w;
    let d_out = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().expect("float tensor");
    let mut out = Vec::with_capacity(set.len() * 64);
    let mut dim = 0;
    for start in (0..set.len()).step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(set.len());
        let x = set.data[start * n..end * n].to_vec();
        let x = Tensor::<4>::from_data(TensorData::new(x, [end - start, c, h, w]), &dev);
        let e = l2_normalize(model.forward(x));
        dim = e.dims()[1];
        out.extend(d_out(e));
    }
    Array2::from_shape_vec((set.len(), dim), out).expect("rows × dim values")
}

/// l2-normalised embeddings of `set` through a retrieval embedder (e.g. tract on the ONNX).
pub fn embed_with(embedder: &dyn Embedder, set: &ImageSet) -> Result<Array2<f32>, TrainError> {
    let mut parts = Vec::new();
    for start in (0..set.len()).step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(set.len());
        let batch = set.to_array4(start..end);
        parts.push(
            embedder
                .embed_tensor(batch.view())
                .map_err(|e| TrainError::Eval(e.to_string()))?,
        );
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    concatenate(Axis(0), &views).map_err(|e| TrainError::Eval(e.to_string()))
}

/// Raw-pixel floor: each image's normalised pixels minus the mean image of the evaluated
/// images, l2-normalised.
pub fn embed_raw_pixels(sets: &[&ImageSet]) -> Vec<Array2<f32>> {
    let n: usize = sets.first().map_or(0, |s| s.chw.iter().product());
    let total: usize = sets.iter().map(|s| s.len()).sum();
    let mut mean = vec![0f64; n];
    for s in sets {
        for i in 0..s.len() {
            for (m, v) in mean.iter_mut().zip(s.sample(i)) {
                *m += *v as f64;
            }
        }
    }
    mean.iter_mut().for_each(|m| *m /= total.max(1) as f64);
    sets.iter()
        .map(|s| {
            let mut a = Array2::<f32>::zeros((s.len(), n));
            for (i, mut row) in a.outer_iter_mut().enumerate() {
                for ((r, v), m) in row.iter_mut().zip(s.sample(i)).zip(&mean) {
                    *r = *v - *m as f32;
                }
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                row.mapv_inplace(|v| v / norm);
            }
            a
        })
        .collect()
}

/// Metrics of `protocol`, with `embed` turning an image set into l2-normalised rows.
pub fn evaluate(
    data: &str,
    protocol: &EvalProtocol,
    ks: &[usize],
    seed: u64,
    mut embed: impl FnMut(&[&ImageSet]) -> Result<Vec<Array2<f32>>, TrainError>,
) -> Result<EvalReport, TrainError> {
    let (m, nmi) = match protocol {
        EvalProtocol::QueryGallery { query, gallery } => {
            let e = embed(&[query, gallery])?;
            let (q, g) = (&e[0], &e[1]);
            let m = metrics::evaluate_query_gallery(
                q.view(),
                &query.labels,
                g.view(),
                &gallery.labels,
                ks,
            )?;
            let all = concatenate(Axis(0), &[q.view(), g.view()])
                .map_err(|e| TrainError::Eval(e.to_string()))?;
            let labels: Vec<usize> = query
                .labels
                .iter()
                .chain(&gallery.labels)
                .copied()
                .collect();
            (m, metrics::clustering_nmi(all.view(), &labels, seed)?)
        }
        EvalProtocol::LeaveOneOut(set) => {
            let e = embed(&[set])?;
            let m = metrics::evaluate_leave_one_out(e[0].view(), &set.labels, ks)?;
            (m, metrics::clustering_nmi(e[0].view(), &set.labels, seed)?)
        }
    };
    Ok(EvalReport {
        data: data.to_string(),
        protocol: protocol.describe(),
        recall_at: m.recall_at,
        nmi,
        map_at_r: m.map_at_r,
        r_precision: m.r_precision,
        queries: m.queries,
    })
}

/// The nearest neighbour of one query, as [`top1`] finds it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Top1 {
    /// Index of the retrieved image in the gallery (or in the leave-one-out set).
    pub retrieved: usize,
    /// Squared Euclidean distance from the query to the retrieved image.
    pub distance: f32,
    /// Squared distance to the nearest image of the query's own class (itself excluded under
    /// leave-one-out); `None` when the gallery has none. A miss's margin is this minus
    /// `distance`: how much closer the wrong image was than the closest right one.
    pub same_class_distance: Option<f32>,
}

/// Per query, its nearest neighbour (squared Euclidean distance, ties to the lower index);
/// `emb` holds the embeddings in [`evaluate`]'s order (query then gallery, or the one
/// leave-one-out set, where a query never matches itself). One rule for [`top1_hits`] and
/// the confusion counts, so both describe the same retrievals.
pub fn top1(protocol: &EvalProtocol, emb: &[Array2<f32>]) -> Vec<Top1> {
    let nearest = |q: ndarray::ArrayView1<f32>,
                   label: usize,
                   g: &Array2<f32>,
                   g_labels: &[usize],
                   skip: Option<usize>| {
        let mut best = Top1 {
            retrieved: 0,
            distance: f32::INFINITY,
            same_class_distance: None,
        };
        for (j, row) in g.rows().into_iter().enumerate() {
            if Some(j) == skip {
                continue;
            }
            let d: f32 = q
                .iter()
                .zip(row.iter())
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            if d < best.distance {
                best.distance = d;
                best.retrieved = j;
            }
            if g_labels[j] == label && best.same_class_distance.is_none_or(|s| d < s) {
                best.same_class_distance = Some(d);
            }
        }
        best
    };
    match (protocol, emb) {
        (EvalProtocol::QueryGallery { query, gallery }, [q, g, ..]) => (0..q.nrows())
            .map(|i| nearest(q.row(i), query.labels[i], g, &gallery.labels, None))
            .collect(),
        (EvalProtocol::LeaveOneOut(set), [e, ..]) => (0..e.nrows())
            .map(|i| nearest(e.row(i), set.labels[i], e, &set.labels, Some(i)))
            .collect(),
        _ => Vec::new(),
    }
}

/// Per query, whether its nearest neighbour ([`top1`]) has the query's label.
/// Paired tests over queries compare two models on these.
pub fn top1_hits(protocol: &EvalProtocol, emb: &[Array2<f32>]) -> Vec<bool> {
    let (query, gallery) = protocol.sets();
    top1(protocol, emb)
        .iter()
        .zip(&query.labels)
        .map(|(t, &l)| gallery.labels[t.retrieved] == l)
        .collect()
}

/// Largest absolute difference between two embedding matrices (shape mismatch = infinity).
pub fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    if a.shape() != b.shape() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
