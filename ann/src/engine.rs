//! The one vector engine of the workspace, behind one set of operations: `htg` (our graph in
//! [`crate::graph`], the default) and `hnsw_rs` (the design card's library, kept so both can be
//! measured in one run). The persisted index in `htg-retrieval` runs on it, and `htg bench`
//! measures the same type.
//!
//! Both address vectors by internal `u32` ids in insertion order, insert through `&self`
//! (concurrently with searches), and keep deleted ids as tombstones that route but are never
//! returned.

use std::collections::HashSet;
use std::path::Path;

use hnsw_rs::hnswio::HnswIo;
use hnsw_rs::prelude::{AnnT, DistL2, FilterT, Hnsw};
use parking_lot::RwLock;

use crate::graph::{Filter, Graph, GraphParams};
use crate::AnnError;

/// Which engine an index runs on, as written in its metadata and on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// Our HNSW (`htg_ann::graph`): flat links, visited pool, mmap-able file.
    #[default]
    Htg,
    /// `hnsw_rs` 0.3: the design card's library.
    #[cfg_attr(feature = "clap", value(name = "hnsw_rs"))]
    HnswRs,
}

impl EngineKind {
    /// The name used in metadata, flags and reports (serde's, so the two never differ).
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Htg => "htg",
            EngineKind::HnswRs => "hnsw_rs",
        }
    }

    /// The file the engine keeps inside a generation directory.
    pub fn file_name(self) -> &'static str {
        match self {
            EngineKind::Htg => "graph.htg",
            EngineKind::HnswRs => "hnsw",
        }
    }
}

/// `hnsw_rs` with what it lacks for our use: vectors we can read back and tombstones.
pub struct HnswRsEngine {
    hnsw: Hnsw<'static, f32, DistL2>,
    dim: usize,
    vectors: RwLock<Vec<Vec<f32>>>,
    dead: RwLock<HashSet<u32>>,
}

struct Keep<'a>(&'a (dyn Fn(u32) -> bool + Sync));

impl FilterT for Keep<'_> {
    fn hnsw_filter(&self, id: &usize) -> bool {
        u32::try_from(*id).is_ok_and(|i| (self.0)(i))
    }
}

/// One engine.
// One value per open index, never in a collection: boxing the graph would add a pointer hop
// to every search for no memory saved.
#[allow(clippy::large_enum_variant)]
pub enum Engine {
    /// Ours.
    Htg(Graph),
    /// `hnsw_rs`.
    HnswRs(HnswRsEngine),
}

/// Growth step when an engine with fixed capacity fills up.
/// Grows by half (not double) so a large index does not hold twice its size in slack; a
/// bulk load that knows its size reserves it up front instead.
fn grown(capacity: usize, need: usize) -> usize {
    (capacity.max(1024) * 3 / 2).max(need)
}

impl Engine {
    /// An empty engine.
    pub fn new(
        kind: EngineKind,
        dim: usize,
        p: GraphParams,
        capacity: usize,
    ) -> Result<Engine, AnnError> {
        p.validate()?;
        Ok(match kind {
            EngineKind::Htg => Engine::Htg(Graph::new(dim, p, capacity.max(1024))?),
            EngineKind::HnswRs => Engine::HnswRs(HnswRsEngine {
                hnsw: Hnsw::new(p.m, capacity.max(1024), 16, p.ef_construction, DistL2 {}),
                dim,
                vectors: RwLock::new(Vec::new()),
                dead: RwLock::new(HashSet::new()),
            }),
        })
    }

    /// Which engine this is.
    pub fn kind(&self) -> EngineKind {
        match self {
            Engine::Htg(_) => EngineKind::Htg,
            Engine::HnswRs(_) => EngineKind::HnswRs,
        }
    }

    /// Length of every vector.
    pub fn dim(&self) -> usize {
        match self {
            Engine::Htg(g) => g.dim(),
            Engine::HnswRs(h) => h.dim,
        }
    }

    /// True before the first insert: no id handed out yet (the pair of [`Engine::len`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ids handed out so far (live and deleted).
    pub fn len(&self) -> usize {
        match self {
            Engine::Htg(g) => g.len(),
            Engine::HnswRs(h) => h.vectors.read().len(),
        }
    }

    /// Makes room for `additional` more inserts (in place for an opened file on unix; a
    /// read-only map is copied into memory).
    /// Needs exclusive access; call before inserting when [`Engine::has_room`] says no.
    pub fn reserve(&mut self, additional: usize) -> Result<(), AnnError> {
        match self {
            Engine::Htg(g) => {
                let need = g.len() + additional;
                if need > g.capacity() || g.is_read_only() {
                    let target = grown(g.capacity(), need);
                    g.reserve(target - g.len())?;
                }
                Ok(())
            }
            Engine::HnswRs(_) => Ok(()),
        }
    }

    /// Whether `additional` inserts fit without [`Engine::reserve`].
    pub fn has_room(&self, additional: usize) -> bool {
        match self {
            Engine::Htg(g) => !g.is_read_only() && g.len() + additional <= g.capacity(),
            Engine::HnswRs(_) => true,
        }
    }

    /// Inserts one vector through `&self`; returns its internal id.
    pub fn insert(&self, v: &[f32]) -> Result<u32, AnnError> {
        match self {
            Engine::Htg(g) => g.insert(v),
            Engine::HnswRs(h) => {
                let id = {
                    let mut vs = h.vectors.write();
                    vs.push(v.to_vec());
                    vs.len() - 1
                };
                h.hnsw.insert_slice((v, id));
                Ok(id as u32)
            }
        }
    }

    /// Inserts many vectors, in parallel where the engine allows; ids follow `vs`'s order
    /// only for one thread, so they are returned.
    pub fn insert_many(&self, vs: &[&[f32]]) -> Result<Vec<u32>, AnnError> {
        use rayon::prelude::*;
        if vs.len() < 2 {
            return vs.iter().map(|v| self.insert(v)).collect();
        }
        match self {
            Engine::Htg(_) => vs.par_iter().map(|v| self.insert(v)).collect(),
            Engine::HnswRs(h) => {
                let first = {
                    let mut all = h.vectors.write();
                    let first = all.len();
                    all.extend(vs.iter().map(|v| v.to_vec()));
                    first
                };
                let items: Vec<(&[f32], usize)> = vs
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (*v, first + i))
                    .collect();
                h.hnsw.parallel_insert_slice(&items);
                Ok((first..first + vs.len()).map(|i| i as u32).collect())
            }
        }
    }

    /// Whether deleted slots can take new vectors ([`Engine::replace_many`]): our engine's
    /// can; `hnsw_rs` has no way to rewrite a point, so its tombstones wait for a compaction.
    pub fn reuses_slots(&self) -> bool {
        matches!(self, Engine::Htg(_))
    }

    /// Puts each vector into its deleted slot (see [`Graph::replace`]), in parallel.
    pub fn replace_many(&self, items: &[(u32, &[f32])]) -> Result<(), AnnError> {
        use rayon::prelude::*;
        match self {
            Engine::Htg(g) => items.par_iter().try_for_each(|&(id, v)| g.replace(id, v)),
            Engine::HnswRs(_) => Err(AnnError::Param(
                "the hnsw_rs engine cannot reuse a deleted slot".into(),
            )),
        }
    }

    /// Switches traversal to 8-bit codes trained on the vectors present (f32 rescoring; see
    /// [`Graph::quantize`]). Our engine only: `hnsw_rs` has no codes.
    pub fn quantize(&mut self) -> Result<(), AnnError> {
        match self {
            Engine::Htg(g) => g.quantize(),
            Engine::HnswRs(_) => Err(AnnError::Param(
                "int8 quantisation needs the htg engine".into(),
            )),
        }
    }

    /// Tombstones internal id `id`.
    pub fn delete(&self, id: u32) -> Result<(), AnnError> {
        match self {
            Engine::Htg(g) => g.delete(id).map(|_| ()),
            Engine::HnswRs(h) => {
                h.dead.write().insert(id);
                Ok(())
            }
        }
    }

    /// Deleted ids still in the graph.
    pub fn tombstones(&self) -> usize {
        match self {
            Engine::Htg(g) => g.tombstones(),
            Engine::HnswRs(h) => h.dead.read().len(),
        }
    }

    /// A copy of the stored vector of `id`.
    pub fn vector(&self, id: u32) -> Option<Vec<f32>> {
        match self {
            Engine::Htg(g) => g.vector(id).ok().map(<[f32]>::to_vec),
            Engine::HnswRs(h) => h.vectors.read().get(id as usize).cloned(),
        }
    }

    /// Approximate `k` nearest live ids passing `keep` (squared L2, nearest first).
    /// `allowed` estimates how many ids pass, so a very selective filter scans instead.
    pub fn search(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        keep: Option<&(dyn Fn(u32) -> bool + Sync)>,
        allowed: Option<usize>,
    ) -> Result<Vec<(u32, f32)>, AnnError> {
        match self {
            Engine::Htg(g) => {
                let f = keep.map(|k| Filter::predicate(k, allowed));
                g.search(q, k, ef, f.as_ref())
            }
            Engine::HnswRs(h) => {
                let dead = h.dead.read();
                let pass = |i: u32| !dead.contains(&i) && keep.is_none_or(|k| k(i));
                let found = if dead.is_empty() && keep.is_none() {
                    h.hnsw.search(q, k, ef.max(k))
                } else {
                    h.hnsw.search_filter(q, k, ef.max(k), Some(&Keep(&pass)))
                };
                // DistL2 yields the Euclidean distance; report its square, like exact search.
                Ok(found
                    .into_iter()
                    .map(|n| (n.d_id as u32, n.distance * n.distance))
                    .collect())
            }
        }
    }

    /// Exact `k` nearest live ids passing `keep`, by brute force over the stored vectors.
    pub fn exact(
        &self,
        q: &[f32],
        k: usize,
        keep: &(dyn Fn(u32) -> bool + Sync),
    ) -> Vec<(u32, f32)> {
        let n = self.len() as u32;
        let mut all: Vec<(u32, f32)> = (0..n)
            .filter(|&i| keep(i))
            .filter_map(|i| match self {
                Engine::Htg(g) => g.vector(i).ok().map(|v| (i, crate::kernels::l2_sq(q, v))),
                Engine::HnswRs(h) => h
                    .vectors
                    .read()
                    .get(i as usize)
                    .map(|v| (i, crate::kernels::l2_sq(q, v))),
            })
            .collect();
        let k = k.min(all.len());
        if k == 0 {
            return Vec::new();
        }
        let cmp = |a: &(u32, f32), b: &(u32, f32)| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0));
        all.select_nth_unstable_by(k - 1, cmp);
        all.truncate(k);
        all.sort_by(cmp);
        all
    }

    /// Whether tombstones are past `ratio` of the ids.
    pub fn needs_compaction(&self, ratio: f64) -> bool {
        let n = self.len();
        n > 0 && self.tombstones() as f64 > ratio * n as f64
    }

    /// The live ids (inserted and not deleted), ascending, and their vectors in one flat
    /// buffer: what a compaction rebuilds from. A copy, so the rebuild itself can run without
    /// holding the engine.
    pub fn live_rows(&self) -> (Vec<u32>, Vec<f32>) {
        match self {
            Engine::Htg(g) => {
                let mut ids = Vec::with_capacity(g.len().saturating_sub(g.tombstones()));
                let mut data = Vec::with_capacity(ids.capacity() * g.dim());
                for i in 0..g.len() as u32 {
                    if g.is_deleted(i) {
                        continue;
                    }
                    // Every id below `len` is ready when the caller holds the applier's lock
                    // (as a compaction does); an id that is not is an insert still in flight.
                    if let Ok(v) = g.vector(i) {
                        ids.push(i);
                        data.extend_from_slice(v);
                    }
                }
                (ids, data)
            }
            Engine::HnswRs(h) => {
                let dead = h.dead.read();
                let vs = h.vectors.read();
                let mut ids = Vec::new();
                let mut data = Vec::new();
                for (i, v) in vs.iter().enumerate() {
                    if !dead.contains(&(i as u32)) {
                        ids.push(i as u32);
                        data.extend_from_slice(v);
                    }
                }
                (ids, data)
            }
        }
    }

    /// Writes the engine into generation directory `dir` (fsynced).
    pub fn save(&self, dir: &Path) -> Result<(), AnnError> {
        let io = |op: &'static str, err: std::io::Error| AnnError::Io {
            op,
            path: dir.to_path_buf(),
            err,
        };
        match self {
            Engine::Htg(g) => {
                g.save(&dir.join(EngineKind::Htg.file_name()))?;
                Ok(())
            }
            Engine::HnswRs(h) => {
                let vs = h.vectors.read();
                let dead = h.dead.read();
                let mut raw = Vec::with_capacity(vs.len() * vs.first().map_or(0, Vec::len) * 4);
                for v in vs.iter() {
                    for x in v {
                        raw.extend_from_slice(&x.to_le_bytes());
                    }
                }
                crate::fsio::write_synced(&dir.join("vectors.f32"), &raw)
                    .map_err(|e| io("write vectors into", e))?;
                let mut d: Vec<u32> = dead.iter().copied().collect();
                d.sort_unstable();
                let dead_raw: Vec<u8> = d.iter().flat_map(|i| i.to_le_bytes()).collect();
                crate::fsio::write_synced(&dir.join("tombstones.u32"), &dead_raw)
                    .map_err(|e| io("write tombstones into", e))?;
                if !vs.is_empty() {
                    let name = h.hnsw.file_dump(dir, "hnsw").map_err(|e| {
                        io("dump HNSW into", std::io::Error::other(format!("{e:#}")))
                    })?;
                    if name != "hnsw" {
                        return Err(io(
                            "dump HNSW into",
                            std::io::Error::other(format!("hnsw_rs chose basename {name:?}")),
                        ));
                    }
                    for f in ["hnsw.hnsw.graph", "hnsw.hnsw.data"] {
                        crate::fsio::sync_file(&dir.join(f)).map_err(|e| io("fsync", e))?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Opens the engine saved in generation directory `dir` (the graph is memory-mapped).
    pub fn open(
        kind: EngineKind,
        dir: &Path,
        dim: usize,
        p: GraphParams,
    ) -> Result<Engine, AnnError> {
        let corrupt = |reason: String| AnnError::Format {
            path: dir.to_path_buf(),
            reason,
        };
        match kind {
            EngineKind::Htg => {
                let g = Graph::open(&dir.join(kind.file_name()))?;
                if g.dim() != dim {
                    return Err(corrupt(format!(
                        "graph holds {}-d vectors, metadata says {dim}",
                        g.dim()
                    )));
                }
                Ok(Engine::Htg(g))
            }
            EngineKind::HnswRs => {
                let raw = std::fs::read(dir.join("vectors.f32")).map_err(|err| AnnError::Io {
                    op: "read",
                    path: dir.join("vectors.f32"),
                    err,
                })?;
                if dim == 0 || raw.len() % (dim * 4) != 0 {
                    return Err(corrupt(format!(
                        "vectors.f32 has {} bytes, not a multiple of {dim} x 4",
                        raw.len()
                    )));
                }
                let vectors: Vec<Vec<f32>> = raw
                    .chunks_exact(dim * 4)
                    .map(|row| {
                        row.chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                            .collect()
                    })
                    .collect();
                let dead_raw = std::fs::read(dir.join("tombstones.u32")).unwrap_or_default();
                let dead: HashSet<u32> = dead_raw
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let hnsw = if vectors.is_empty() {
                    Hnsw::new(p.m, 1024, 16, p.ef_construction, DistL2 {})
                } else {
                    // hnsw_rs ties the graph's lifetime to its loader; the loader is small and
                    // lives as long as the index, so it is leaked rather than made
                    // self-referential.
                    let loader: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, "hnsw")));
                    loader
                        .load_hnsw::<f32, DistL2>()
                        .map_err(|e| corrupt(format!("HNSW graph: {e:#}")))?
                };
                if hnsw.get_nb_point() != vectors.len() {
                    return Err(corrupt(format!(
                        "HNSW graph has {} points, vectors.f32 {}",
                        hnsw.get_nb_point(),
                        vectors.len()
                    )));
                }
                Ok(Engine::HnswRs(HnswRsEngine {
                    hnsw,
                    dim,
                    vectors: RwLock::new(vectors),
                    dead: RwLock::new(dead),
                }))
            }
        }
    }

    /// Builds an engine over the rows of `data` (`dim` values each; id = row), in parallel.
    pub fn build(
        kind: EngineKind,
        dim: usize,
        p: GraphParams,
        data: Vec<f32>,
    ) -> Result<Engine, AnnError> {
        p.validate()?;
        let rows = data.len() / dim.max(1);
        match kind {
            EngineKind::Htg => {
                let m = crate::npy::Matrix {
                    rows,
                    cols: dim,
                    data,
                };
                Ok(Engine::Htg(Graph::build(&m, p)?))
            }
            // hnsw_rs's parallel insert takes the ids it is given: they are the positions.
            EngineKind::HnswRs => {
                let e = Engine::new(kind, dim, p, rows)?;
                let refs: Vec<&[f32]> = data.chunks_exact(dim).collect();
                e.insert_many(&refs)?;
                Ok(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hnsw::Metric;

    /// `name()` is what file names and reports use; serde (index metadata) and clap (flags)
    /// derive their own spellings. They must never drift apart.
    #[test]
    fn names_agree_with_serde_and_clap() {
        fn serde_name<T: serde::Serialize>(t: T) -> String {
            serde_json::to_value(t)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        }
        for k in [EngineKind::Htg, EngineKind::HnswRs] {
            assert_eq!(serde_name(k), k.name());
            #[cfg(feature = "clap")]
            assert_eq!(
                clap::ValueEnum::to_possible_value(&k).unwrap().get_name(),
                k.name()
            );
        }
        for m in Metric::ALL {
            assert_eq!(serde_name(m), m.name());
            #[cfg(feature = "clap")]
            assert_eq!(
                clap::ValueEnum::to_possible_value(&m).unwrap().get_name(),
                m.name()
            );
        }
    }

    #[test]
    fn both_kinds_insert_search_delete_save_and_open() {
        let dir = tempfile::tempdir().unwrap();
        for kind in [EngineKind::Htg, EngineKind::HnswRs] {
            let p = GraphParams {
                m: 8,
                ef_construction: 50,
                ..GraphParams::default()
            };
            let rows: Vec<f32> = (0..200)
                .flat_map(|i| {
                    let a = i as f32 * 0.1;
                    [a.cos(), a.sin(), 0.5]
                })
                .collect();
            let e = Engine::build(kind, 3, p, rows.clone()).unwrap();
            assert_eq!((e.kind(), e.dim(), e.len()), (kind, 3, 200));
            let hit = e.search(&rows[30..33], 1, 32, None, None).unwrap();
            assert_eq!(hit[0].0, 10, "{kind:?}");
            e.delete(10).unwrap();
            let hit = e.search(&rows[30..33], 1, 32, None, None).unwrap();
            assert_ne!(hit[0].0, 10, "{kind:?}: a tombstone came back");
            let sub = dir.path().join(kind.name());
            std::fs::create_dir_all(&sub).unwrap();
            e.save(&sub).unwrap();
            let back = Engine::open(kind, &sub, 3, p).unwrap();
            assert_eq!((back.len(), back.tombstones()), (200, 1), "{kind:?}");
            let err = Engine::open(kind, &sub, 4, p).err().unwrap();
            assert!(matches!(err, AnnError::Format { .. }), "{kind:?}: {err}");
        }
    }
}
