//! ONNX export of F with the `htg.*` metadata that retrieval reads.
//!
//! burn-onnx traces F twice (batch 1 and 2) to mark the batch axis dynamic. Its writer has no
//! `metadata_props` API, so the written `ModelProto` is decoded with prost (tract's generated
//! ONNX types), given the spec's keys plus `htg.train.method` / `htg.train.data`, and
//! re-encoded. The spec's input and output names are taken from the exported graph, so they
//! always match.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Tensor;
use burn_onnx::export::{AxisSpec, InputSpec, OnnxExporter};
use htg_retrieval::spec::{keys, ModelSpec};
use prost::Message;
use tract_onnx::pb;

use crate::backend::infer_device;
use crate::model::{Cnn, FeatureNet, Head};
use crate::TrainError;

/// Provenance written into the model's metadata.
#[derive(Clone, Debug)]
pub struct Provenance {
    /// Training method name (`htg`, `triplet-batchhard`, ...).
    pub method: String,
    /// Training data name.
    pub data: String,
    /// sha256 of the frozen backbone under F's head, when there is one.
    pub backbone: Option<String>,
}

/// Metadata key naming the backbone a merged model's head was trained on (informational, like
/// the method and data keys: retrieval reads none of them).
pub const TRAIN_BACKBONE: &str = "htg.train.backbone";

/// Exports F (a clone in inference mode; the exporter consumes the traced instance) to ONNX
/// bytes with a dynamic batch axis and the spec in `metadata_props`. Returns the bytes and
/// the spec with the graph's actual input/output names.
pub fn export_feature_net(
    f: &FeatureNet,
    spec: &ModelSpec,
    prov: &Provenance,
) -> Result<(Vec<u8>, ModelSpec), TrainError> {
    let FeatureNet::Cnn(cnn) = f else {
        return Err(TrainError::Export(
            "a head on a backbone is exported merged with it (merge_backbone_head)".into(),
        ));
    };
    let model = cnn.clone().valid();
    let dev = infer_device();
    let c = spec.color.channels();
    let (h, w) = (spec.height as usize, spec.width as usize);
    let sample = Tensor::<4>::zeros([1, c, h, w], &dev);
    let validation = Tensor::<4>::zeros([2, c, h, w], &dev);
    let specs = [InputSpec::new([
        AxisSpec::dynamic("batch"),
        AxisSpec::Static,
        AxisSpec::Static,
        AxisSpec::Static,
    ])];
    let onnx = OnnxExporter::new()
        .export_dynamic(&model, sample, validation, &specs, Cnn::forward)
        .map_err(|e| TrainError::Export(e.to_string()))?;
    add_metadata(onnx.as_bytes(), spec, prov)
}

/// Decodes `bytes`, sets the `htg.*` metadata from `spec` and `prov` (replacing any old
/// `htg.*` entries), and re-encodes. The spec's names are replaced by the graph's first
/// non-initializer input and first output.
pub fn add_metadata(
    bytes: &[u8],
    spec: &ModelSpec,
    prov: &Provenance,
) -> Result<(Vec<u8>, ModelSpec), TrainError> {
    let mut proto = pb::ModelProto::decode(bytes).map_err(|e| TrainError::Export(e.to_string()))?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| TrainError::Export("exported model has no graph".into()))?;
    let inits: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let input = graph
        .input
        .iter()
        .find(|i| !inits.contains(i.name.as_str()))
        .ok_or_else(|| TrainError::Export("exported model has no input".into()))?;
    let output = graph
        .output
        .first()
        .ok_or_else(|| TrainError::Export("exported model has no output".into()))?;
    let mut spec = spec.clone();
    spec.input_name = input.name.clone();
    spec.output_name = output.name.clone();
    proto.metadata_props.retain(|e| !e.key.starts_with("htg."));
    let mut props = spec.metadata_props();
    props.push((keys::TRAIN_METHOD.into(), prov.method.clone()));
    props.push((keys::TRAIN_DATA.into(), prov.data.clone()));
    if let Some(b) = &prov.backbone {
        props.push((TRAIN_BACKBONE.into(), b.clone()));
    }
    proto.metadata_props.extend(
        props
            .into_iter()
            .map(|(key, value)| pb::StringStringEntryProto { key, value }),
    );
    if proto.producer_name.is_empty() {
        proto.producer_name = "htg".into();
    }
    Ok((proto.encode_to_vec(), spec))
}

/// Writes `bytes` to `path` through the shared durable writer (temporary file, fsync, rename,
/// directory fsync), so a crash never leaves a truncated model behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    htg_retrieval::fsio::write_atomic(path, bytes).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The ONNX nodes and initializers of `head`, reading `input` (`[N, D]`) and writing
/// `output`; every name but those two starts with `prefix`. Gemm and Relu mean the same from
/// opset 13 on, so the nodes fit any graph they are grafted into.
fn head_nodes(
    head: &Head,
    input: &str,
    output: &str,
    prefix: &str,
) -> (Vec<pb::NodeProto>, Vec<pb::TensorProto>) {
    let layers = head.layers();
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut x = input.to_string();
    for (i, l) in layers.iter().enumerate() {
        let (w, b) = (
            format!("{prefix}dense{i}.weight"),
            format!("{prefix}dense{i}.bias"),
        );
        inits.push(pb::TensorProto {
            name: w.clone(),
            dims: vec![l.inputs as i64, l.outputs as i64],
            data_type: pb::tensor_proto::DataType::Float as i32,
            float_data: l.weight.clone(),
            ..Default::default()
        });
        inits.push(pb::TensorProto {
            name: b.clone(),
            dims: vec![l.outputs as i64],
            data_type: pb::tensor_proto::DataType::Float as i32,
            float_data: l.bias.clone(),
            ..Default::default()
        });
        let last = i + 1 == layers.len();
        let y = if last {
            output.to_string()
        } else {
            format!("{prefix}dense{i}.out")
        };
        nodes.push(pb::NodeProto {
            name: format!("{prefix}dense{i}"),
            op_type: "Gemm".into(),
            input: vec![x.clone(), w, b],
            output: vec![y.clone()],
            ..Default::default()
        });
        x = y;
        if !last {
            let r = format!("{prefix}relu{i}.out");
            nodes.push(pb::NodeProto {
                name: format!("{prefix}relu{i}"),
                op_type: "Relu".into(),
                input: vec![x],
                output: vec![r.clone()],
                ..Default::default()
            });
            x = r;
        }
    }
    (nodes, inits)
}

/// A float `[batch, cols]` graph input or output.
pub(crate) fn matrix_value(name: &str, cols: usize) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension, Dimension};
    let dim = |v| Dimension {
        value: Some(v),
        ..Default::default()
    };
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![
                        dim(dimension::Value::DimParam("batch".into())),
                        dim(dimension::Value::DimValue(cols as i64)),
                    ],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The head alone as ONNX (`features` `[N, D]` → `embedding`): how the run checks the
/// written nodes against burn on every evaluated feature vector, cheaply.
pub fn head_only_onnx(head: &Head) -> Vec<u8> {
    let layers = head.layers();
    let (din, dout) = (layers[0].inputs, layers[layers.len() - 1].outputs);
    let (node, initializer) = head_nodes(head, "features", "embedding", "head/");
    let proto = pb::ModelProto {
        ir_version: 8,
        producer_name: "htg".into(),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(pb::GraphProto {
            name: "head".into(),
            node,
            initializer,
            input: vec![matrix_value("features", din)],
            output: vec![matrix_value("embedding", dout)],
            ..Default::default()
        }),
        ..Default::default()
    };
    proto.encode_to_vec()
}

/// One ONNX file of the backbone with `head` on its feature output: what users index with.
///
/// The backbone's feature tensor is renamed and fed to the head, whose output takes the
/// spec's output name; the backbone's other outputs (a classifier's logits) and every node
/// and initializer only they needed are dropped. The spec is the backbone's, with the head's
/// width, and the provenance and backbone hash are added to the metadata.
pub fn merge_backbone_head(
    backbone: &[u8],
    backbone_spec: &ModelSpec,
    head: &Head,
    prov: &Provenance,
) -> Result<(Vec<u8>, ModelSpec), TrainError> {
    let err = |m: String| TrainError::Export(m);
    let mut proto = pb::ModelProto::decode(backbone).map_err(|e| err(e.to_string()))?;
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| err("the backbone has no graph".into()))?;
    let out = backbone_spec.output_name.clone();
    if !graph.output.iter().any(|o| o.name == out) {
        return Err(err(format!("the backbone has no output {out:?}")));
    }
    let inner = format!("backbone/{out}");
    for n in &mut graph.node {
        for name in n.input.iter_mut().chain(n.output.iter_mut()) {
            if *name == out {
                *name = inner.clone();
            }
        }
    }
    let (nodes, inits) = head_nodes(head, &inner, &out, "head/");
    graph.node.extend(nodes);
    graph.initializer.extend(inits);
    let dim = head.layers().last().map_or(0, |l| l.outputs);
    graph.output = vec![matrix_value(&out, dim)];
    graph.value_info.clear();
    prune(graph);
    let mut spec = backbone_spec.clone();
    spec.embedding_dim = dim;
    spec.pooling = htg_retrieval::spec::Pooling::None;
    add_metadata(&proto.encode_to_vec(), &spec, prov)
}

/// Drops every node and initializer the graph's outputs do not need (nodes are in
/// topological order, so one walk back from the outputs finds them).
pub(crate) fn prune(graph: &mut pb::GraphProto) {
    let mut needed: std::collections::HashSet<String> =
        graph.output.iter().map(|o| o.name.clone()).collect();
    let mut keep = vec![false; graph.node.len()];
    for (i, n) in graph.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(n.input.iter().cloned());
        }
    }
    let mut k = keep.iter();
    graph.node.retain(|_| *k.next().expect("one flag per node"));
    graph.initializer.retain(|t| needed.contains(&t.name));
}

/// Runs a plain-input ONNX file (the head alone) on tract: `[N, D]` in, its first output out.
pub fn run_matrix_onnx(
    bytes: &[u8],
    x: &ndarray::Array2<f32>,
) -> Result<ndarray::Array2<f32>, TrainError> {
    use tract_onnx::prelude::*;
    let err = |e: TractError| TrainError::Export(format!("tract: {e:#}"));
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .and_then(|m| {
            m.with_input_fact(
                0,
                InferenceFact::dt_shape(f32::datum_type(), tvec![x.nrows(), x.ncols()]),
            )
        })
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(err)?;
    let input: Tensor = x.clone().into_dyn().into();
    let out = plan.run(tvec![input.into_tvalue()]).map_err(err)?;
    let v = out[0].to_plain_array_view::<f32>().map_err(err)?;
    v.into_dimensionality::<ndarray::Ix2>()
        .map(|v| v.to_owned())
        .map_err(|e| TrainError::Export(e.to_string()))
}
