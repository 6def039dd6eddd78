//! The model spec: how an image becomes a model input and an output becomes an embedding.
//!
//! Training writes the spec into the ONNX file's `metadata_props`, and serving reads it back, so
//! the two cannot drift apart. External models carry a `<model>.json` manifest instead. The keys
//! are documented once, in `docs/MODEL_SPEC.md`, and mirrored by [`keys`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tract_onnx::pb;

/// The `metadata_props` keys that carry a [`ModelSpec`] (see `docs/MODEL_SPEC.md`).
pub mod keys {
    /// Graph input that takes the image batch.
    pub const INPUT_NAME: &str = "htg.input_name";
    /// Graph output that holds the embedding.
    pub const OUTPUT_NAME: &str = "htg.output_name";
    /// `NCHW` or `NHWC`.
    pub const LAYOUT: &str = "htg.layout";
    /// `stretch` or `short_side:S` (see [`super::Resize`]).
    pub const RESIZE: &str = "htg.resize";
    /// Input height in pixels.
    pub const HEIGHT: &str = "htg.height";
    /// Input width in pixels.
    pub const WIDTH: &str = "htg.width";
    /// `rgb`, `bgr` or `grey`.
    pub const COLOR: &str = "htg.color";
    /// Factor applied to 0..255 pixel values before mean and std.
    pub const SCALE: &str = "htg.scale";
    /// Per-channel mean, comma separated.
    pub const MEAN: &str = "htg.mean";
    /// Per-channel std, comma separated.
    pub const STD: &str = "htg.std";
    /// `none` or `gap` (global average pooling of a rank-4 output).
    pub const POOLING: &str = "htg.pooling";
    /// Length of the embedding vector.
    pub const EMBEDDING_DIM: &str = "htg.embedding_dim";
    /// Training method, informational.
    pub const TRAIN_METHOD: &str = "htg.train.method";
    /// Training data set, informational.
    pub const TRAIN_DATA: &str = "htg.train.data";
}

/// Why a spec could not be resolved. Each variant names the key a user has to supply.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The model file could not be read.
    #[error("cannot read model {path}: {source}")]
    Read {
        /// File tried.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The bytes are not an ONNX protobuf.
    #[error("{path} is not a valid ONNX model: {reason}")]
    NotOnnx {
        /// File tried.
        path: PathBuf,
        /// Decoder message.
        reason: String,
    },
    /// The manifest beside the model is malformed.
    #[error("invalid manifest {path}: {reason}")]
    Manifest {
        /// Manifest file.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
    /// A metadata value does not parse.
    #[error("invalid value {value:?} for {key}: {reason}")]
    InvalidValue {
        /// Metadata key.
        key: &'static str,
        /// Value found.
        value: String,
        /// Expected form.
        reason: String,
    },
    /// A value is neither given nor inferable.
    #[error(
        "model spec is missing {key} ({hint}); set it in the ONNX metadata_props or in {manifest}"
    )]
    Missing {
        /// The metadata key (the manifest field is the same without `htg.`).
        key: &'static str,
        /// Why inference failed.
        hint: String,
        /// Manifest path that would supply it.
        manifest: String,
    },
    /// The values are individually valid but inconsistent.
    #[error("inconsistent model spec: {0}")]
    Inconsistent(String),
}

/// Tensor layout of the image input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// Batch, channels, height, width (PyTorch, burn).
    #[serde(rename = "NCHW")]
    Nchw,
    /// Batch, height, width, channels (TensorFlow).
    #[serde(rename = "NHWC")]
    Nhwc,
}

/// Channel order and colour of the image input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// Three channels, red first.
    Rgb,
    /// Three channels, blue first (OpenCV-trained models).
    Bgr,
    /// One luma channel.
    Grey,
}

impl Color {
    /// Number of input channels.
    pub fn channels(self) -> usize {
        match self {
            Color::Rgb | Color::Bgr => 3,
            Color::Grey => 1,
        }
    }
}

/// How an image of any shape becomes the model's `width x height`.
///
/// Emoji and the models trained here are square and were trained on stretched images, so
/// `Stretch` stays the default for every file that does not say otherwise. Photos have every
/// aspect ratio, and ImageNet networks were trained on a short-side resize and a centre crop;
/// stretching a 4:3 photo to a square distorts every shape the network learned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Resize {
    /// Resize to exactly `width x height`, ignoring the aspect ratio.
    #[default]
    Stretch,
    /// Scale so the shorter side is this many pixels (keeping the aspect ratio), then cut the
    /// centred `width x height`.
    ShortSide(u32),
}

impl std::str::FromStr for Resize {
    type Err = String;

    fn from_str(s: &str) -> Result<Resize, String> {
        let s = s.trim();
        if s == "stretch" {
            return Ok(Resize::Stretch);
        }
        match s
            .strip_prefix("short_side:")
            .map(|n| n.trim().parse::<u32>())
        {
            Some(Ok(n)) if n > 0 => Ok(Resize::ShortSide(n)),
            _ => Err(format!(
                "{s:?} is neither `stretch` nor `short_side:S` with S a positive integer"
            )),
        }
    }
}

impl TryFrom<String> for Resize {
    type Error = String;

    fn try_from(s: String) -> Result<Resize, String> {
        s.parse()
    }
}

impl From<Resize> for String {
    fn from(r: Resize) -> String {
        r.to_string()
    }
}

impl fmt::Display for Resize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resize::Stretch => f.write_str("stretch"),
            Resize::ShortSide(n) => write!(f, "short_side:{n}"),
        }
    }
}

/// How the model output becomes a vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The output already is `[N, D]`.
    None,
    /// The output is `[N, D, H, W]` (average over H and W) or `[N, D, L]` (average over L).
    Gap,
}

/// Everything needed to feed a model and read its embedding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Graph input that takes the image batch.
    pub input_name: String,
    /// Graph output that holds the embedding.
    pub output_name: String,
    /// Input layout.
    pub layout: Layout,
    /// Input height in pixels.
    pub height: u32,
    /// Input width in pixels.
    pub width: u32,
    /// How an image is brought to `width x height` (absent in files and indexes written before
    /// the field existed: those stretch).
    #[serde(default)]
    pub resize: Resize,
    /// Channel order and colour.
    pub color: Color,
    /// Factor on 0..255 pixel values.
    pub scale: f32,
    /// Per-channel mean subtracted after scaling.
    pub mean: Vec<f32>,
    /// Per-channel std divided after the mean.
    pub std: Vec<f32>,
    /// How a rank-4 output becomes a vector.
    pub pooling: Pooling,
    /// Embedding length.
    pub embedding_dim: usize,
}

/// A spec with every field optional: one layer of the manifest > metadata > graph resolution.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialSpec {
    input_name: Option<String>,
    output_name: Option<String>,
    layout: Option<Layout>,
    height: Option<u32>,
    width: Option<u32>,
    resize: Option<Resize>,
    color: Option<Color>,
    scale: Option<f32>,
    mean: Option<Vec<f32>>,
    std: Option<Vec<f32>>,
    pooling: Option<Pooling>,
    embedding_dim: Option<usize>,
}

impl PartialSpec {
    /// Fields of `self` win over those of `under`.
    fn over(self, under: PartialSpec) -> PartialSpec {
        PartialSpec {
            input_name: self.input_name.or(under.input_name),
            output_name: self.output_name.or(under.output_name),
            layout: self.layout.or(under.layout),
            height: self.height.or(under.height),
            width: self.width.or(under.width),
            resize: self.resize.or(under.resize),
            color: self.color.or(under.color),
            scale: self.scale.or(under.scale),
            mean: self.mean.or(under.mean),
            std: self.std.or(under.std),
            pooling: self.pooling.or(under.pooling),
            embedding_dim: self.embedding_dim.or(under.embedding_dim),
        }
    }

    fn from_metadata(props: &HashMap<String, String>) -> Result<PartialSpec, SpecError> {
        fn parse<T: std::str::FromStr>(
            props: &HashMap<String, String>,
            key: &'static str,
            what: &str,
        ) -> Result<Option<T>, SpecError> {
            props
                .get(key)
                .map(|v| {
                    v.trim().parse::<T>().map_err(|_| SpecError::InvalidValue {
                        key,
                        value: v.clone(),
                        reason: format!("expected {what}"),
                    })
                })
                .transpose()
        }
        fn floats(
            props: &HashMap<String, String>,
            key: &'static str,
        ) -> Result<Option<Vec<f32>>, SpecError> {
            props
                .get(key)
                .map(|v| {
                    v.split(',')
                        .map(|x| x.trim().parse::<f32>())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| SpecError::InvalidValue {
                            key,
                            value: v.clone(),
                            reason: "expected comma-separated numbers".into(),
                        })
                })
                .transpose()
        }
        fn word<T: for<'de> Deserialize<'de>>(
            props: &HashMap<String, String>,
            key: &'static str,
            allowed: &str,
        ) -> Result<Option<T>, SpecError> {
            props
                .get(key)
                .map(|v| {
                    serde_json::from_value::<T>(serde_json::Value::String(v.trim().to_string()))
                        .map_err(|_| SpecError::InvalidValue {
                            key,
                            value: v.clone(),
                            reason: format!("expected one of {allowed}"),
                        })
                })
                .transpose()
        }
        Ok(PartialSpec {
            input_name: props.get(keys::INPUT_NAME).cloned(),
            output_name: props.get(keys::OUTPUT_NAME).cloned(),
            layout: word(props, keys::LAYOUT, "NCHW, NHWC")?,
            height: parse(props, keys::HEIGHT, "a positive integer")?,
            width: parse(props, keys::WIDTH, "a positive integer")?,
            resize: props
                .get(keys::RESIZE)
                .map(|v| {
                    v.parse::<Resize>()
                        .map_err(|reason| SpecError::InvalidValue {
                            key: keys::RESIZE,
                            value: v.clone(),
                            reason,
                        })
                })
                .transpose()?,
            color: word(props, keys::COLOR, "rgb, bgr, grey")?,
            scale: parse(props, keys::SCALE, "a number")?,
            mean: floats(props, keys::MEAN)?,
            std: floats(props, keys::STD)?,
            pooling: word(props, keys::POOLING, "none, gap")?,
            embedding_dim: parse(props, keys::EMBEDDING_DIM, "a positive integer")?,
        })
    }

    fn finish(self, graph: &GraphFacts, manifest: &Path) -> Result<ModelSpec, SpecError> {
        let manifest = manifest.display().to_string();
        let missing = |key: &'static str, hint: &str| SpecError::Missing {
            key,
            hint: hint.to_string(),
            manifest: manifest.clone(),
        };
        let not_inferable = "not inferable from the graph";
        let spec = ModelSpec {
            input_name: self
                .input_name
                .ok_or_else(|| missing(keys::INPUT_NAME, &graph.input_hint()))?,
            output_name: self
                .output_name
                .ok_or_else(|| missing(keys::OUTPUT_NAME, &graph.output_hint()))?,
            layout: self
                .layout
                .ok_or_else(|| missing(keys::LAYOUT, "the input shape is ambiguous"))?,
            height: self
                .height
                .ok_or_else(|| missing(keys::HEIGHT, "the input height is not fixed"))?,
            width: self
                .width
                .ok_or_else(|| missing(keys::WIDTH, "the input width is not fixed"))?,
            resize: self.resize.unwrap_or_default(),
            color: self
                .color
                .ok_or_else(|| missing(keys::COLOR, "3 channels may be rgb or bgr"))?,
            scale: self
                .scale
                .ok_or_else(|| missing(keys::SCALE, not_inferable))?,
            mean: self
                .mean
                .ok_or_else(|| missing(keys::MEAN, not_inferable))?,
            std: self.std.ok_or_else(|| missing(keys::STD, not_inferable))?,
            pooling: self
                .pooling
                .ok_or_else(|| missing(keys::POOLING, "the output rank is unknown"))?,
            embedding_dim: self
                .embedding_dim
                .ok_or_else(|| missing(keys::EMBEDDING_DIM, "the output size is not fixed"))?,
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// Shapes of one graph value: `None` for a symbolic or unknown dimension.
type Dims = Vec<Option<i64>>;

/// What the graph itself says about inputs and outputs.
#[derive(Debug, Default)]
struct GraphFacts {
    inputs: Vec<(String, Option<Dims>)>,
    outputs: Vec<(String, Option<Dims>)>,
}

fn dims_of(v: &pb::ValueInfoProto) -> Option<Dims> {
    let pb::type_proto::Value::TensorType(t) = v.r#type.as_ref()?.value.as_ref()?;
    let shape = t.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => Some(v),
                _ => None,
            })
            .collect(),
    )
}

impl GraphFacts {
    fn from_proto(proto: &pb::ModelProto) -> GraphFacts {
        let Some(graph) = proto.graph.as_ref() else {
            return GraphFacts::default();
        };
        let initializers: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        GraphFacts {
            inputs: graph
                .input
                .iter()
                .filter(|i| !initializers.contains(i.name.as_str()))
                .map(|i| (i.name.clone(), dims_of(i)))
                .collect(),
            outputs: graph
                .output
                .iter()
                .map(|o| (o.name.clone(), dims_of(o)))
                .collect(),
        }
    }

    fn input_hint(&self) -> String {
        let names: Vec<&str> = self.inputs.iter().map(|(n, _)| n.as_str()).collect();
        format!("the graph has {} inputs: {:?}", names.len(), names)
    }

    fn output_hint(&self) -> String {
        let names: Vec<&str> = self.outputs.iter().map(|(n, _)| n.as_str()).collect();
        format!("the graph has {} outputs: {:?}", names.len(), names)
    }

    /// Infers what the shapes make unambiguous, given names already chosen by higher layers.
    fn infer(&self, chosen: &PartialSpec) -> PartialSpec {
        let mut out = PartialSpec::default();
        let input = match &chosen.input_name {
            Some(n) => self.inputs.iter().find(|(i, _)| i == n),
            None if self.inputs.len() == 1 => self.inputs.first(),
            None => None,
        };
        if let Some((name, dims)) = input {
            out.input_name = Some(name.clone());
            if let Some(d) = dims.as_ref().filter(|d| d.len() == 4) {
                let is_c = |x: Option<i64>| matches!(x, Some(1) | Some(3));
                let layout = match (is_c(d[1]), is_c(d[3])) {
                    (true, false) => Some(Layout::Nchw),
                    (false, true) => Some(Layout::Nhwc),
                    _ => chosen.layout,
                };
                out.layout = layout;
                let (c, h, w) = match layout {
                    Some(Layout::Nchw) => (d[1], d[2], d[3]),
                    Some(Layout::Nhwc) => (d[3], d[1], d[2]),
                    None => (None, None, None),
                };
                out.height = h.map(|v| v as u32);
                out.width = w.map(|v| v as u32);
                if c == Some(1) {
                    out.color = Some(Color::Grey);
                }
            }
        }
        let output = match &chosen.output_name {
            Some(n) => self.outputs.iter().find(|(o, _)| o == n),
            None if self.outputs.len() == 1 => self.outputs.first(),
            None => None,
        };
        if let Some((name, dims)) = output {
            out.output_name = Some(name.clone());
            match dims.as_deref() {
                Some([_, d]) => {
                    out.pooling = Some(Pooling::None);
                    out.embedding_dim = d.map(|v| v as usize);
                }
                Some([_, d, _]) | Some([_, d, _, _]) => {
                    out.pooling = Some(Pooling::Gap);
                    out.embedding_dim = d.map(|v| v as usize);
                }
                _ => {}
            }
        }
        out
    }
}

impl ModelSpec {
    /// The `metadata_props` entries that make a model self-describing (written at export).
    pub fn metadata_props(&self) -> Vec<(String, String)> {
        let join = |v: &[f32]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let word = |v: serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let mut props = vec![
            (keys::INPUT_NAME.into(), self.input_name.clone()),
            (keys::OUTPUT_NAME.into(), self.output_name.clone()),
            (keys::LAYOUT.into(), word(serde_json::json!(self.layout))),
            (keys::HEIGHT.into(), self.height.to_string()),
            (keys::WIDTH.into(), self.width.to_string()),
            (keys::COLOR.into(), word(serde_json::json!(self.color))),
            (keys::SCALE.into(), self.scale.to_string()),
            (keys::MEAN.into(), join(&self.mean)),
            (keys::STD.into(), join(&self.std)),
            (keys::POOLING.into(), word(serde_json::json!(self.pooling))),
            (keys::EMBEDDING_DIM.into(), self.embedding_dim.to_string()),
        ];
        // Written only where it differs from the default, so files exported before the key
        // existed and files exported since mean the same and stay byte for byte alike.
        if self.resize != Resize::Stretch {
            props.insert(5, (keys::RESIZE.into(), self.resize.to_string()));
        }
        props
    }

    /// Checks values that parse but cannot work together.
    pub fn validate(&self) -> Result<(), SpecError> {
        let c = self.color.channels();
        if self.mean.len() != c || self.std.len() != c {
            return Err(SpecError::Inconsistent(format!(
                "color {:?} has {c} channel(s) but mean has {} and std has {} values",
                self.color,
                self.mean.len(),
                self.std.len()
            )));
        }
        if self.std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
            return Err(SpecError::Inconsistent(
                "std values must be finite and non-zero".into(),
            ));
        }
        if self.height == 0 || self.width == 0 || self.height > 8192 || self.width > 8192 {
            return Err(SpecError::Inconsistent(format!(
                "input size {}x{} is out of range 1..=8192",
                self.width, self.height
            )));
        }
        if let Resize::ShortSide(s) = self.resize {
            if s < self.width.max(self.height) || s > 16384 {
                return Err(SpecError::Inconsistent(format!(
                    "resize short_side:{s} must lie in {}..=16384: the centre crop of {}x{} has \
                     to fit inside the resized image",
                    self.width.max(self.height),
                    self.width,
                    self.height
                )));
            }
        }
        if self.embedding_dim == 0 {
            return Err(SpecError::Inconsistent(
                "embedding_dim must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Resolves the spec of `onnx_path`: manifest, then metadata, then graph inference.
    pub fn resolve(onnx_path: &Path) -> Result<ModelSpec, SpecError> {
        let bytes = std::fs::read(onnx_path).map_err(|source| SpecError::Read {
            path: onnx_path.to_path_buf(),
            source,
        })?;
        let proto = decode_proto(onnx_path, &bytes)?;
        ModelSpec::resolve_proto(onnx_path, &proto)
    }

    /// As [`ModelSpec::resolve`], for a model already decoded.
    pub fn resolve_proto(onnx_path: &Path, proto: &pb::ModelProto) -> Result<ModelSpec, SpecError> {
        let manifest_path = manifest_path(onnx_path);
        let manifest = match std::fs::read_to_string(&manifest_path) {
            Ok(text) => {
                serde_json::from_str::<PartialSpec>(&text).map_err(|e| SpecError::Manifest {
                    path: manifest_path.clone(),
                    reason: e.to_string(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PartialSpec::default(),
            Err(e) => {
                return Err(SpecError::Manifest {
                    path: manifest_path,
                    reason: e.to_string(),
                })
            }
        };
        let metadata = PartialSpec::from_metadata(&metadata_of(proto))?;
        let given = manifest.over(metadata);
        let graph = GraphFacts::from_proto(proto);
        let inferred = graph.infer(&given);
        given.over(inferred).finish(&graph, &manifest_path)
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in self.metadata_props() {
            writeln!(f, "{k:<20} {v}")?;
        }
        if self.resize == Resize::Stretch {
            writeln!(f, "{:<20} {}", keys::RESIZE, self.resize)?;
        }
        Ok(())
    }
}

/// `<model>.json` beside `<model>.onnx`.
pub fn manifest_path(onnx_path: &Path) -> PathBuf {
    onnx_path.with_extension("json")
}

/// Decodes ONNX bytes, naming the file on failure.
pub fn decode_proto(path: &Path, bytes: &[u8]) -> Result<pb::ModelProto, SpecError> {
    use tract_onnx::prelude::Framework;
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| SpecError::NotOnnx {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if proto.graph.is_none() {
        return Err(SpecError::NotOnnx {
            path: path.to_path_buf(),
            reason: "the file holds no graph".into(),
        });
    }
    Ok(proto)
}

/// The model's `metadata_props` as a map.
pub fn metadata_of(proto: &pb::ModelProto) -> HashMap<String, String> {
    proto
        .metadata_props
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect()
}

/// All `htg.*` metadata, including informational keys, for display.
pub fn htg_metadata(proto: &pb::ModelProto) -> BTreeMap<String, String> {
    metadata_of(proto)
        .into_iter()
        .filter(|(k, _)| k.starts_with("htg."))
        .collect()
}
