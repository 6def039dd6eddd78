//! The image index: vectors in HNSW (`hnsw_rs`) beside an id → record store, persisted
//! crash-safely in a directory.
//!
//! Callers use the [`SearchIndex`] trait, so a remote vector engine can replace [`LocalIndex`]
//! for users who outgrow one machine.
//!
//! On-disk layout of an index directory:
//! - `CURRENT`: the name of the live generation directory (replaced by atomic rename);
//! - `gen-<n>/meta.json`, `records.json`, `vectors.f32`, `hnsw.hnsw.{graph,data}`.
//!
//! A save writes a new generation into a temporary directory, fsyncs every file, renames it into
//! place and only then swaps `CURRENT`. A crash at any point leaves the previous generation
//! readable.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use hnsw_rs::hnswio::HnswIo;
use hnsw_rs::prelude::{AnnT, DistL2, Hnsw};
use serde::{Deserialize, Serialize};

use crate::embed::ModelId;

/// Current on-disk format version.
pub const FORMAT_VERSION: u32 = 1;

/// Why an index operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Filesystem failure, with the path involved.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// Path involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The directory holds no index.
    #[error("no index at {0} (create one with `htg index <DIR> --index {0}`)")]
    NotFound(PathBuf),
    /// Files exist but do not form a valid index.
    #[error("index at {path} is unreadable: {reason}")]
    Corrupt {
        /// Index directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The query model differs from the model that built the index.
    #[error("index was built with model {built} but the query model is {query}; re-index or pass the same --model")]
    ModelMismatch {
        /// Description of the index's model.
        built: String,
        /// Description of the query model.
        query: String,
    },
    /// A vector has the wrong length.
    #[error("vector has dimension {got}, the index expects {expected}")]
    Dimension {
        /// Length given.
        got: usize,
        /// Index dimension.
        expected: usize,
    },
    /// A parameter is out of range.
    #[error("invalid index parameter: {0}")]
    Param(String),
    /// The id is not in the index.
    #[error("no image with id {0}")]
    UnknownId(u64),
}

/// What the index knows about one image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Where the image was read from.
    pub path: String,
    /// sha256 of the file's bytes, hex: how re-indexing detects changes.
    pub sha256: String,
    /// Optional class or tag, for filtered search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// HNSW build parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswParams {
    /// Links per node (hnswlib's M); 2..=256.
    pub m: usize,
    /// Candidate list size while building.
    pub ef_construction: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 200,
        }
    }
}

impl HnswParams {
    /// Rejects values that `hnsw_rs` would answer with `process::exit` or nonsense.
    pub fn validate(&self) -> Result<(), IndexError> {
        if !(2..=256).contains(&self.m) {
            return Err(IndexError::Param(format!(
                "m = {} is outside 2..=256",
                self.m
            )));
        }
        if self.ef_construction == 0 || self.ef_construction > 10_000 {
            return Err(IndexError::Param(format!(
                "ef_construction = {} is outside 1..=10000",
                self.ef_construction
            )));
        }
        Ok(())
    }
}

/// How to search.
#[derive(Clone, Debug, Default)]
pub struct SearchOptions {
    /// HNSW candidate list size; defaults to `max(k, 64)`.
    pub ef: Option<usize>,
    /// Brute force instead of HNSW: exact, for ground truth and small sets.
    pub exact: bool,
    /// Keep only records with this label.
    pub label: Option<String>,
    /// Keep only records whose path starts with this.
    pub path_prefix: Option<String>,
}

impl SearchOptions {
    fn accepts(&self, r: &Record) -> bool {
        self.label
            .as_ref()
            .is_none_or(|l| r.label.as_ref() == Some(l))
            && self
                .path_prefix
                .as_ref()
                .is_none_or(|p| r.path.starts_with(p.as_str()))
    }

    fn filtered(&self) -> bool {
        self.label.is_some() || self.path_prefix.is_some()
    }
}

/// One search result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    /// Record id.
    pub id: u64,
    /// Squared Euclidean distance between l2-normalised vectors (0..=4).
    pub distance: f32,
    /// The record.
    #[serde(flatten)]
    pub record: Record,
}

/// The operations the CLI and server need from a vector index, local or remote.
pub trait SearchIndex: Send + Sync {
    /// The model whose embeddings the index holds.
    fn model(&self) -> &ModelId;
    /// Vector dimension.
    fn dim(&self) -> usize;
    /// Number of live records.
    fn len(&self) -> usize;
    /// True when no records are live.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A record by id.
    fn record(&self, id: u64) -> Option<Record>;
    /// A stored vector by id.
    fn vector(&self, id: u64) -> Option<Vec<f32>>;
    /// Adds a record with its (l2-normalised) vector and returns its new id.
    fn insert(&mut self, record: Record, vector: &[f32]) -> Result<u64, IndexError>;
    /// Adds many records at once (parallel HNSW insertion).
    fn insert_many(&mut self, items: Vec<(Record, Vec<f32>)>) -> Result<Vec<u64>, IndexError>;
    /// Removes a record; `false` if it did not exist.
    fn remove(&mut self, id: u64) -> Result<bool, IndexError>;
    /// The `k` nearest live records, nearest first.
    fn search(&self, query: &[f32], k: usize, opts: &SearchOptions)
        -> Result<Vec<Hit>, IndexError>;
    /// Makes every acknowledged change durable.
    fn save(&mut self) -> Result<(), IndexError>;
}

/// What `meta.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    format_version: u32,
    model: ModelId,
    /// Where the model was loaded from when the index was built (a hint for `htg search`).
    model_path: Option<String>,
    dim: usize,
    hnsw: HnswParams,
    next_id: u64,
    /// Ids still in the HNSW graph but deleted.
    tombstones: Vec<u64>,
    /// Basename `hnsw_rs` dumped under.
    hnsw_basename: String,
}

/// A single-machine index: HNSW for speed, stored vectors for exact search and rebuilds.
pub struct LocalIndex {
    dir: PathBuf,
    meta: Meta,
    records: BTreeMap<u64, Record>,
    vectors: BTreeMap<u64, Vec<f32>>,
    hnsw: Hnsw<'static, f32, DistL2>,
    tombstones: HashSet<u64>,
    dirty: bool,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IndexError + 'a {
    move |source| IndexError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn new_hnsw(params: HnswParams, capacity: usize) -> Hnsw<'static, f32, DistL2> {
    Hnsw::new(
        params.m,
        capacity.max(1024),
        16,
        params.ef_construction,
        DistL2 {},
    )
}

/// Writes `bytes` to `path` and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), IndexError> {
    let mut f = fs::File::create(path).map_err(io_err("create", path))?;
    f.write_all(bytes).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("fsync", path))
}

fn sync_dir(path: &Path) -> Result<(), IndexError> {
    fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", path))
}

/// A short human description of a model for mismatch messages.
fn describe(m: &ModelId) -> String {
    format!(
        "sha256 {}… ({}x{} {:?}, dim {})",
        &m.sha256[..m.sha256.len().min(12)],
        m.spec.width,
        m.spec.height,
        m.spec.color,
        m.spec.embedding_dim
    )
}

impl LocalIndex {
    /// Starts an empty index that will live in `dir` (nothing is written until [`save`]).
    ///
    /// [`save`]: SearchIndex::save
    pub fn create(
        dir: &Path,
        model: ModelId,
        model_path: Option<String>,
        params: HnswParams,
    ) -> Result<LocalIndex, IndexError> {
        params.validate()?;
        let dim = model.spec.embedding_dim;
        Ok(LocalIndex {
            dir: dir.to_path_buf(),
            meta: Meta {
                format_version: FORMAT_VERSION,
                model,
                model_path,
                dim,
                hnsw: params,
                next_id: 0,
                tombstones: Vec::new(),
                hnsw_basename: "hnsw".into(),
            },
            records: BTreeMap::new(),
            vectors: BTreeMap::new(),
            hnsw: new_hnsw(params, 0),
            tombstones: HashSet::new(),
            dirty: true,
        })
    }

    /// True when `dir` holds a saved index.
    pub fn exists(dir: &Path) -> bool {
        dir.join("CURRENT").is_file()
    }

    /// Opens the index saved in `dir`.
    pub fn open(dir: &Path) -> Result<LocalIndex, IndexError> {
        let current = dir.join("CURRENT");
        let gen = match fs::read_to_string(&current) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IndexError::NotFound(dir.to_path_buf()))
            }
            Err(e) => return Err(io_err("read", &current)(e)),
        };
        let corrupt = |reason: String| IndexError::Corrupt {
            path: dir.to_path_buf(),
            reason,
        };
        if gen.is_empty() || gen.contains('/') || gen.contains("..") {
            return Err(corrupt(format!("CURRENT names {gen:?}")));
        }
        let gdir = dir.join(&gen);
        let read = |name: &str| {
            let p = gdir.join(name);
            fs::read(&p).map_err(io_err("read", &gdir))
        };
        let meta: Meta = serde_json::from_slice(&read("meta.json")?)
            .map_err(|e| corrupt(format!("meta.json: {e}")))?;
        if meta.format_version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {} (this htg reads {FORMAT_VERSION})",
                meta.format_version
            )));
        }
        let records: BTreeMap<u64, Record> = serde_json::from_slice(&read("records.json")?)
            .map_err(|e| corrupt(format!("records.json: {e}")))?;
        let raw = read("vectors.f32")?;
        let dim = meta.dim;
        if dim == 0 || raw.len() != records.len() * dim * 4 {
            return Err(corrupt(format!(
                "vectors.f32 has {} bytes, expected {} records x {dim} x 4",
                raw.len(),
                records.len()
            )));
        }
        let floats: Vec<f32> = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let vectors: BTreeMap<u64, Vec<f32>> = records
            .keys()
            .zip(floats.chunks_exact(dim))
            .map(|(id, v)| (*id, v.to_vec()))
            .collect();
        let tombstones: HashSet<u64> = meta.tombstones.iter().copied().collect();
        let hnsw = if records.is_empty() && tombstones.is_empty() {
            new_hnsw(meta.hnsw, 0)
        } else {
            // hnsw_rs ties the graph's lifetime to its loader; the loader is small and lives
            // as long as the index, so it is leaked rather than made self-referential.
            let loader: &'static mut HnswIo =
                Box::leak(Box::new(HnswIo::new(&gdir, &meta.hnsw_basename)));
            loader
                .load_hnsw::<f32, DistL2>()
                .map_err(|e| corrupt(format!("HNSW graph: {e:#}")))?
        };
        let expected = records.len() + tombstones.len();
        if hnsw.get_nb_point() != expected {
            return Err(corrupt(format!(
                "HNSW graph has {} points, records and tombstones say {expected}",
                hnsw.get_nb_point()
            )));
        }
        Ok(LocalIndex {
            dir: dir.to_path_buf(),
            meta,
            records,
            vectors,
            hnsw,
            tombstones,
            dirty: false,
        })
    }

    /// Refuses a query model that differs from the one that built the index.
    pub fn check_model(&self, query: &ModelId) -> Result<(), IndexError> {
        if &self.meta.model != query {
            return Err(IndexError::ModelMismatch {
                built: describe(&self.meta.model),
                query: describe(query),
            });
        }
        Ok(())
    }

    /// Path of the model that built the index, as recorded then.
    pub fn model_path(&self) -> Option<&str> {
        self.meta.model_path.as_deref()
    }

    /// HNSW build parameters.
    pub fn params(&self) -> HnswParams {
        self.meta.hnsw
    }

    /// Index directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// All live records, by id.
    pub fn records(&self) -> &BTreeMap<u64, Record> {
        &self.records
    }

    /// Number of deleted ids still in the HNSW graph.
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    fn check_dim(&self, v: &[f32]) -> Result<(), IndexError> {
        if v.len() != self.meta.dim {
            return Err(IndexError::Dimension {
                got: v.len(),
                expected: self.meta.dim,
            });
        }
        Ok(())
    }

    /// Exact k nearest live records by brute force.
    pub fn search_exact(&self, query: &[f32], k: usize, opts: &SearchOptions) -> Vec<(u64, f32)> {
        let mut all: Vec<(u64, f32)> = self
            .vectors
            .iter()
            .filter(|(id, _)| !opts.filtered() || opts.accepts(&self.records[id]))
            .map(|(id, v)| (*id, squared_l2(query, v)))
            .collect();
        let k = k.min(all.len());
        if k == 0 {
            return Vec::new();
        }
        all.select_nth_unstable_by(k - 1, |a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        all
    }

    fn search_hnsw(&self, query: &[f32], k: usize, opts: &SearchOptions) -> Vec<(u64, f32)> {
        let ef = opts.ef.unwrap_or(64).max(k);
        let found = if self.tombstones.is_empty() && !opts.filtered() {
            self.hnsw.search(query, k, ef)
        } else {
            let keep = |id: &usize| {
                let id = *id as u64;
                !self.tombstones.contains(&id)
                    && self.records.get(&id).is_some_and(|r| opts.accepts(r))
            };
            self.hnsw.search_filter(query, k, ef, Some(&keep))
        };
        // DistL2 yields the Euclidean distance; report its square, like exact search.
        found
            .into_iter()
            .map(|n| (n.d_id as u64, n.distance * n.distance))
            .collect()
    }

    /// Rebuilds the HNSW graph from the live vectors, dropping tombstones.
    fn rebuild(&mut self) {
        let hnsw = new_hnsw(self.meta.hnsw, self.vectors.len());
        let items: Vec<(&[f32], usize)> = self
            .vectors
            .iter()
            .map(|(id, v)| (v.as_slice(), *id as usize))
            .collect();
        hnsw.parallel_insert_slice(&items);
        self.hnsw = hnsw;
        self.tombstones.clear();
    }

    fn write_generation(&self, tmp: &Path) -> Result<String, IndexError> {
        fs::create_dir_all(tmp).map_err(io_err("create", tmp))?;
        let basename = if self.hnsw.get_nb_point() > 0 {
            self.hnsw
                .file_dump(tmp, "hnsw")
                .map_err(|e| IndexError::Io {
                    op: "dump HNSW into",
                    path: tmp.to_path_buf(),
                    source: std::io::Error::other(format!("{e:#}")),
                })?
        } else {
            "hnsw".to_string()
        };
        let mut meta = self.meta.clone();
        meta.hnsw_basename = basename;
        let mut tomb: Vec<u64> = self.tombstones.iter().copied().collect();
        tomb.sort_unstable();
        meta.tombstones = tomb;
        write_synced(&tmp.join("meta.json"), &to_json(&meta))?;
        write_synced(&tmp.join("records.json"), &to_json(&self.records))?;
        let mut raw = Vec::with_capacity(self.vectors.len() * self.meta.dim * 4);
        for v in self.vectors.values() {
            for x in v {
                raw.extend_from_slice(&x.to_le_bytes());
            }
        }
        write_synced(&tmp.join("vectors.f32"), &raw)?;
        // hnsw_rs writes its own files without fsync: sync everything in the directory.
        for entry in fs::read_dir(tmp).map_err(io_err("list", tmp))? {
            let p = entry.map_err(io_err("list", tmp))?.path();
            fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(io_err("fsync", &p))?;
        }
        sync_dir(tmp)?;
        Ok(meta.hnsw_basename)
    }
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain structs and maps with string keys: serialisation cannot fail.
    serde_json::to_vec(v).expect("index metadata serialises")
}

/// Squared Euclidean distance.
pub fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

impl SearchIndex for LocalIndex {
    fn model(&self) -> &ModelId {
        &self.meta.model
    }

    fn dim(&self) -> usize {
        self.meta.dim
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    fn record(&self, id: u64) -> Option<Record> {
        self.records.get(&id).cloned()
    }

    fn vector(&self, id: u64) -> Option<Vec<f32>> {
        self.vectors.get(&id).cloned()
    }

    fn insert(&mut self, record: Record, vector: &[f32]) -> Result<u64, IndexError> {
        Ok(self.insert_many(vec![(record, vector.to_vec())])?[0])
    }

    fn insert_many(&mut self, items: Vec<(Record, Vec<f32>)>) -> Result<Vec<u64>, IndexError> {
        for (_, v) in &items {
            self.check_dim(v)?;
        }
        let first = self.meta.next_id;
        let ids: Vec<u64> = (first..first + items.len() as u64).collect();
        {
            let batch: Vec<(&[f32], usize)> = items
                .iter()
                .zip(&ids)
                .map(|((_, v), id)| (v.as_slice(), *id as usize))
                .collect();
            if batch.len() > 1 {
                self.hnsw.parallel_insert_slice(&batch);
            } else if let Some(one) = batch.first() {
                self.hnsw.insert_slice(*one);
            }
        }
        for ((record, vector), id) in items.into_iter().zip(&ids) {
            self.records.insert(*id, record);
            self.vectors.insert(*id, vector);
        }
        self.meta.next_id += ids.len() as u64;
        self.dirty = true;
        Ok(ids)
    }

    fn remove(&mut self, id: u64) -> Result<bool, IndexError> {
        if self.records.remove(&id).is_none() {
            return Ok(false);
        }
        self.vectors.remove(&id);
        self.tombstones.insert(id);
        self.dirty = true;
        Ok(true)
    }

    fn search(
        &self,
        query: &[f32],
        k: usize,
        opts: &SearchOptions,
    ) -> Result<Vec<Hit>, IndexError> {
        self.check_dim(query)?;
        if k == 0 {
            return Ok(Vec::new());
        }
        let found = if opts.exact {
            self.search_exact(query, k, opts)
        } else {
            self.search_hnsw(query, k, opts)
        };
        Ok(found
            .into_iter()
            .filter_map(|(id, distance)| {
                self.records.get(&id).map(|r| Hit {
                    id,
                    distance,
                    record: r.clone(),
                })
            })
            .collect())
    }

    fn save(&mut self) -> Result<(), IndexError> {
        if !self.dirty && LocalIndex::exists(&self.dir) {
            return Ok(());
        }
        // Deletions are tombstones in hnsw_rs; compact once they are a fifth of the graph.
        if !self.tombstones.is_empty() && self.tombstones.len() * 5 >= self.hnsw.get_nb_point() {
            self.rebuild();
        }
        fs::create_dir_all(&self.dir).map_err(io_err("create", &self.dir))?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let gen = format!("gen-{stamp}-{}", std::process::id());
        let tmp = self.dir.join(format!(".tmp-{gen}"));
        self.write_generation(&tmp)?;
        let final_dir = self.dir.join(&gen);
        fs::rename(&tmp, &final_dir).map_err(io_err("rename", &tmp))?;
        sync_dir(&self.dir)?;
        let cur_tmp = self.dir.join(".CURRENT.tmp");
        write_synced(&cur_tmp, gen.as_bytes())?;
        let current = self.dir.join("CURRENT");
        fs::rename(&cur_tmp, &current).map_err(io_err("rename", &cur_tmp))?;
        sync_dir(&self.dir)?;
        // Old generations and leftovers of interrupted saves are garbage now.
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name != gen && (name.starts_with("gen-") || name.starts_with(".tmp-gen-")) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        self.dirty = false;
        Ok(())
    }
}
