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
use crate::model::FeatureNet;
use crate::TrainError;

/// Provenance written into the model's metadata.
#[derive(Clone, Debug)]
pub struct Provenance {
    /// Training method name (`htg`, `triplet-batchhard`, ...).
    pub method: String,
    /// Training data name.
    pub data: String,
}

/// Exports F (a clone in inference mode; the exporter consumes the traced instance) to ONNX
/// bytes with a dynamic batch axis and the spec in `metadata_props`. Returns the bytes and
/// the spec with the graph's actual input/output names.
pub fn export_feature_net(
    f: &FeatureNet,
    spec: &ModelSpec,
    prov: &Provenance,
) -> Result<(Vec<u8>, ModelSpec), TrainError> {
    let model = f.clone().valid();
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
        .export_dynamic(&model, sample, validation, &specs, FeatureNet::forward)
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
