//! A frozen pretrained backbone's features, computed once per image and cached on disk.
//!
//! HTG's G and D act on F's output, and with a frozen backbone F's trainable part is a head
//! on the backbone's features: running the backbone is the whole cost of a step, and it gives
//! the same answer every time. So every image is run once, and its feature vector is kept in
//! a cache file named by the backbone file's sha256; a rerun, a seed sweep or a grid reads it
//! back. Within the file each vector is keyed by the sha256 of the decoded image (its size,
//! colour type and pixels), which covers sets that have no files of their own (IDX, CSV).
//!
//! Cache file (`<cache>/features/<backbone sha256>.f32`): the magic `HTGFEAT1`, the backbone's
//! 32-byte digest, the feature width as a little-endian u32, then records of a 32-byte image
//! digest and `width` little-endian f32. Records are only appended; a torn last record (a
//! crash while appending) is ignored on load and overwritten by the next append.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use htg_retrieval::embed::{to_vectors, Embedder};
use htg_retrieval::preprocess::preprocess_batch;
use htg_retrieval::spec::ModelSpec;
use image::DynamicImage;
use sha2::{Digest, Sha256};

use crate::config::BackboneConfig;
use crate::TrainError;

const MAGIC: &[u8; 8] = b"HTGFEAT1";
/// Images run through the backbone at once.
const CHUNK: usize = 32;

/// Reports `(done, total)` images of one set while its features are computed or read.
pub type Progress = Box<dyn Fn(usize, usize) + Send + Sync>;

/// Loads an ONNX file on the runtime the caller chose (the CLI's flags, the protocol's
/// automatic choice): the backbone is opened here but run where the user said.
pub type LoadBackbone<'a> = dyn Fn(&Path) -> Result<Box<dyn Embedder>, String> + 'a;

/// A frozen ONNX backbone, its file and its feature cache.
pub struct Backbone {
    config: BackboneConfig,
    bytes: Vec<u8>,
    embedder: Box<dyn Embedder>,
    cache: Mutex<FeatureCache>,
    progress: Option<Progress>,
}

impl std::fmt::Debug for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backbone")
            .field("config", &self.config)
            .field("runtime", &self.embedder.backend())
            .finish_non_exhaustive()
    }
}

impl Backbone {
    /// The backbone in `path`, with its cache under `cache_dir/features` (`None`: nothing is
    /// kept between runs), run by what `load` makes of a file. With `grid` > 1 the features
    /// are the last feature map average-pooled to a `grid`×`grid` grid ([`grid_features`]):
    /// the file that computes them is written beside the cache (or into a temporary
    /// directory) and loaded instead.
    pub fn open(
        name: &str,
        path: &Path,
        grid: usize,
        cache_dir: Option<&Path>,
        load: &LoadBackbone<'_>,
    ) -> Result<Backbone, TrainError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TrainError::Io { path, source }
        };
        let grid = grid.max(1);
        let source = std::fs::read(path).map_err(io(path))?;
        let source_sha = hex::encode(Sha256::digest(&source));
        let (bytes, file) = if grid > 1 {
            let spec = htg_retrieval::embed::ModelFile::read(path)
                .map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?
                .id
                .spec;
            let bytes = grid_features(&source, &spec, grid)?;
            let dir = cache_dir
                .map(|d| d.join("features"))
                .unwrap_or_else(std::env::temp_dir);
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            let file = dir.join(format!("{}-grid{grid}.onnx", &source_sha[..16]));
            crate::export::write_atomic(&file, &bytes)?;
            (bytes, file)
        } else {
            (source, path.to_path_buf())
        };
        let embedder = load(&file).map_err(|e| TrainError::Data(format!("backbone: {e}")))?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let sha256 = hex::encode(digest);
        if embedder.model_id().sha256 != sha256 {
            return Err(TrainError::Config(format!(
                "{}: the embedder was loaded from another file than the backbone",
                path.display()
            )));
        }
        let features = embedder.spec().embedding_dim;
        let cache_path = cache_dir.map(|d| d.join("features").join(format!("{sha256}.f32")));
        let cache = FeatureCache::open(cache_path, digest, features)?;
        Ok(Backbone {
            config: BackboneConfig {
                name: name.to_string(),
                sha256: source_sha,
                grid,
                features_sha256: sha256,
                features,
                head_hidden: 0,
                head_init: Default::default(),
            },
            bytes,
            embedder,
            cache: Mutex::new(cache),
            progress: None,
        })
    }

    /// Calls `progress` as each set's features are computed.
    pub fn with_progress(mut self, progress: Progress) -> Backbone {
        self.progress = Some(progress);
        self
    }

    /// What the config records about this backbone (with a linear head: the config says
    /// otherwise, see [`crate::TrainConfig::on_backbone`]).
    pub fn config(&self) -> &BackboneConfig {
        &self.config
    }

    /// The backbone's preprocessing: what the merged model's spec starts from.
    pub fn spec(&self) -> &ModelSpec {
        self.embedder.spec()
    }

    /// The ONNX file's bytes, for the merged export.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// How many vectors the cache holds, and how many of those this process computed.
    pub fn cache_counts(&self) -> (usize, usize) {
        let c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        (c.index.len(), c.computed)
    }

    /// The backbone's raw (not normalised) features of a preprocessed batch.
    pub fn raw(&self, input: ndarray::ArrayView4<f32>) -> Result<ndarray::Array2<f32>, TrainError> {
        self.embedder
            .run(input)
            .and_then(|r| to_vectors(r, self.spec()))
            .map_err(|e| TrainError::Data(format!("backbone {}: {e}", self.config.name)))
    }

    /// Raw (not normalised) feature vectors of `images`, row after row: read from the
    /// cache where present, else computed and appended to it.
    pub fn features(&self, images: &[DynamicImage]) -> Result<Vec<f32>, TrainError> {
        let d = self.config.features;
        let keys: Vec<[u8; 32]> = images.iter().map(image_key).collect();
        let mut out = vec![0f32; images.len() * d];
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let missing: Vec<usize> = (0..images.len())
            .filter(|&i| !cache.read(&keys[i], &mut out[i * d..(i + 1) * d]))
            .collect();
        let cached = images.len() - missing.len();
        let report = |done: usize| {
            if let Some(p) = &self.progress {
                p(cached + done, images.len());
            }
        };
        report(0);
        for (c, chunk) in missing.chunks(CHUNK).enumerate() {
            let batch: Vec<DynamicImage> = chunk.iter().map(|&i| images[i].clone()).collect();
            let raw = self.raw(preprocess_batch(&batch, self.spec()).view())?;
            for (row, &i) in raw.outer_iter().zip(chunk) {
                let v = &mut out[i * d..(i + 1) * d];
                v.iter_mut().zip(row.iter()).for_each(|(o, x)| *o = *x);
                cache.insert(keys[i], v);
            }
            cache.flush()?;
            report(c * CHUNK + chunk.len());
        }
        Ok(out)
    }
}

/// `backbone` with its feature output replaced: the map under its global average pool, pooled
/// instead to a `grid`×`grid` grid (windows of side `H − s·(grid − 1)` at stride `s =
/// ⌊H / grid⌋`, so they cover the map exactly) and flattened, channel-major: `C·grid²`
/// features. An ImageNet network's pooled vector says what is in a picture, not where; for
/// drawings such as emoji, where two vendors' renderings of one symbol share their layout,
/// the coarse layout is what tells near-identical classes apart.
///
/// The spec's output must be `Flatten(GlobalAveragePool(x))`, as in the converted
/// EfficientNet-Lite files; other outputs (a classifier's logits) are dropped.
pub fn grid_features(
    backbone: &[u8],
    spec: &ModelSpec,
    grid: usize,
) -> Result<Vec<u8>, TrainError> {
    use prost::Message;
    use tract_onnx::pb;
    let err = |m: String| TrainError::Data(format!("backbone grid: {m}"));
    let mut proto = pb::ModelProto::decode(backbone).map_err(|e| err(e.to_string()))?;
    let g = proto
        .graph
        .as_mut()
        .ok_or_else(|| err("the backbone has no graph".into()))?;
    let out = spec.output_name.clone();
    let flatten = g
        .node
        .iter()
        .find(|n| n.output.first() == Some(&out))
        .filter(|n| n.op_type == "Flatten")
        .ok_or_else(|| err(format!("{out:?} is not made by a Flatten")))?;
    let pool = g
        .node
        .iter()
        .find(|n| n.output.first() == flatten.input.first())
        .filter(|n| n.op_type == "GlobalAveragePool")
        .ok_or_else(|| err(format!("{out:?} is not a flattened global average pool")))?;
    let map = pool.input[0].clone();
    let channels = spec.embedding_dim;
    // The map's side: every stride-2 stage of a 32× network halves it, rounding up.
    let h = (spec.height as usize).div_ceil(32);
    if grid > h {
        return Err(err(format!(
            "grid {grid} is finer than the {h}×{h} feature map"
        )));
    }
    let stride = h / grid;
    let kernel = h - stride * (grid - 1);
    let ints = |name: &str, v: Vec<i64>| pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v,
        ..Default::default()
    };
    for n in &mut g.node {
        for name in n.input.iter_mut().chain(n.output.iter_mut()) {
            if *name == out {
                *name = format!("backbone/{out}");
            }
        }
    }
    let pooled = format!("backbone/grid{grid}");
    g.node.push(pb::NodeProto {
        name: pooled.clone(),
        op_type: "AveragePool".into(),
        input: vec![map],
        output: vec![pooled.clone()],
        attribute: vec![
            ints("kernel_shape", vec![kernel as i64; 2]),
            ints("strides", vec![stride as i64; 2]),
        ],
        ..Default::default()
    });
    g.node.push(pb::NodeProto {
        name: format!("{pooled}/flatten"),
        op_type: "Flatten".into(),
        input: vec![pooled],
        output: vec![out.clone()],
        attribute: vec![pb::AttributeProto {
            name: "axis".into(),
            r#type: pb::attribute_proto::AttributeType::Int as i32,
            i: 1,
            ..Default::default()
        }],
        ..Default::default()
    });
    let features = channels * grid * grid;
    g.output = vec![crate::export::matrix_value(&out, features)];
    g.value_info.clear();
    crate::export::prune(g);
    let mut spec = spec.clone();
    spec.embedding_dim = features;
    proto.metadata_props.retain(|e| !e.key.starts_with("htg."));
    proto.metadata_props.extend(
        spec.metadata_props()
            .into_iter()
            .map(|(key, value)| pb::StringStringEntryProto { key, value }),
    );
    Ok(proto.encode_to_vec())
}

/// sha256 of a decoded image: its size, colour type and pixel bytes.
fn image_key(img: &DynamicImage) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(img.width().to_le_bytes());
    h.update(img.height().to_le_bytes());
    h.update(format!("{:?}", img.color()).as_bytes());
    h.update(img.as_bytes());
    h.finalize().into()
}

/// The vectors of one backbone: all in memory, new ones appended to the file.
struct FeatureCache {
    path: Option<PathBuf>,
    dim: usize,
    index: HashMap<[u8; 32], usize>,
    data: Vec<f32>,
    /// Keys of the records not yet in the file.
    pending: Vec<[u8; 32]>,
    header: Vec<u8>,
    /// Bytes of the file that hold whole records (where the next append goes).
    valid_len: u64,
    computed: usize,
}

impl FeatureCache {
    fn header(backbone: &[u8; 32], dim: usize) -> Vec<u8> {
        let mut h = MAGIC.to_vec();
        h.extend_from_slice(backbone);
        h.extend_from_slice(&(dim as u32).to_le_bytes());
        h
    }

    fn open(
        path: Option<PathBuf>,
        backbone: [u8; 32],
        dim: usize,
    ) -> Result<FeatureCache, TrainError> {
        let mut c = FeatureCache {
            path,
            dim,
            index: HashMap::new(),
            data: Vec::new(),
            pending: Vec::new(),
            header: Self::header(&backbone, dim),
            valid_len: 0,
            computed: 0,
        };
        let Some(path) = &c.path else {
            return Ok(c);
        };
        let header = c.header.clone();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(TrainError::Io {
                    path: path.clone(),
                    source,
                })
            }
        };
        if bytes.len() < header.len() || bytes[..header.len()] != header[..] {
            // Absent, or not this backbone's file (a foreign or damaged header): start it
            // afresh rather than read another model's vectors.
            c.valid_len = 0;
            return Ok(c);
        }
        let rec = 32 + 4 * dim;
        let body = &bytes[header.len()..];
        for r in body.chunks_exact(rec) {
            let key: [u8; 32] = r[..32].try_into().expect("32 bytes");
            let at = c.data.len();
            c.data.extend(
                r[32..]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
            );
            c.index.insert(key, at);
        }
        c.valid_len = (header.len() + body.len() / rec * rec) as u64;
        Ok(c)
    }

    fn read(&self, key: &[u8; 32], out: &mut [f32]) -> bool {
        match self.index.get(key) {
            Some(&at) => {
                out.copy_from_slice(&self.data[at..at + self.dim]);
                true
            }
            None => false,
        }
    }

    fn insert(&mut self, key: [u8; 32], v: &[f32]) {
        if self.index.contains_key(&key) {
            return;
        }
        let at = self.data.len();
        self.data.extend_from_slice(v);
        self.index.insert(key, at);
        self.pending.push(key);
        self.computed += 1;
    }

    /// Appends the pending records after the last whole record in the file.
    fn flush(&mut self) -> Result<(), TrainError> {
        let Some(path) = &self.path else {
            self.pending.clear();
            return Ok(());
        };
        if self.pending.is_empty() {
            return Ok(());
        }
        let io = |source| TrainError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io)?;
        let mut buf = Vec::new();
        if self.valid_len == 0 {
            buf.extend_from_slice(&self.header);
        }
        for key in &self.pending {
            let at = self.index[key];
            buf.extend_from_slice(key);
            for v in &self.data[at..at + self.dim] {
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        f.set_len(self.valid_len).map_err(io)?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(self.valid_len)).map_err(io)?;
        f.write_all(&buf).map_err(io)?;
        self.valid_len += buf.len() as u64;
        self.pending.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_reads_back_its_vectors_ignores_a_torn_tail_and_another_backbone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.f32");
        let a = [1u8; 32];
        let mut c = FeatureCache::open(Some(path.clone()), a, 3).unwrap();
        c.insert([7; 32], &[1.0, 2.0, 3.0]);
        c.insert([8; 32], &[4.0, 5.0, 6.0]);
        c.flush().unwrap();
        // A torn record after the two whole ones.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[9; 20]).unwrap();
        drop(f);
        let mut c = FeatureCache::open(Some(path.clone()), a, 3).unwrap();
        let mut v = [0f32; 3];
        assert!(c.read(&[8; 32], &mut v));
        assert_eq!(v, [4.0, 5.0, 6.0]);
        assert!(!c.read(&[9; 32], &mut v));
        c.insert([9; 32], &[7.0, 8.0, 9.0]);
        c.flush().unwrap();
        let c = FeatureCache::open(Some(path.clone()), a, 3).unwrap();
        assert_eq!(c.index.len(), 3);
        assert!(c.read(&[9; 32], &mut v));
        assert_eq!(v, [7.0, 8.0, 9.0]);
        // Another backbone's digest: nothing is read from this file.
        let other = FeatureCache::open(Some(path), [2u8; 32], 3).unwrap();
        assert!(other.index.is_empty());
    }

    #[test]
    fn the_grid_tap_needs_a_flattened_global_pool_and_a_map_as_coarse_as_the_grid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let photo = root.join("models/photo.onnx");
        let spec = htg_retrieval::embed::ModelFile::read(&photo)
            .unwrap()
            .id
            .spec;
        let bytes = std::fs::read(&photo).unwrap();
        let g2 = grid_features(&bytes, &spec, 2).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("g2.onnx"), &g2).unwrap();
        let tapped = htg_retrieval::embed::ModelFile::read(&dir.path().join("g2.onnx"))
            .unwrap()
            .id
            .spec;
        assert_eq!(tapped.embedding_dim, 1280 * 4);
        // The 224 px input leaves a 7×7 map: an 8×8 grid cannot be pooled from it.
        let e = grid_features(&bytes, &spec, 8).unwrap_err().to_string();
        assert!(e.contains("finer than the 7×7"), "{e}");
        // A model whose output is not a flattened global pool is refused, by name.
        let tiny = root.join("tests/fixtures/models/tiny.onnx");
        let tspec = htg_retrieval::embed::ModelFile::read(&tiny)
            .unwrap()
            .id
            .spec;
        let e = grid_features(&std::fs::read(&tiny).unwrap(), &tspec, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&tspec.output_name), "{e}");
    }
}
