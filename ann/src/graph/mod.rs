//! Our own HNSW graph (Malkov & Yashunin 2016), laid out for the cache as hnswlib lays it out.
//!
//! Why not `hnsw_rs`: it holds every point and every edge behind an `Arc`, allocates a hash set
//! of visited points per query and pays a pointer chase per neighbour; it runs at a fraction of
//! hnswlib's speed and cannot delete. Here:
//!
//! - vectors sit in one 64-byte aligned `f32` array, row `id` at `id * stride` (ids are
//!   `u32`, handed out in insertion order);
//! - layer-0 neighbour lists are fixed-size `u32` arrays of `1 + M0` words (count, then up to
//!   `M0 = 2M` ids), upper layers exist only for the nodes that reach them;
//! - a search takes a scratch (visited marks cleared by bumping an epoch, and its heaps) from a
//!   pool, so steady-state queries allocate nothing but their answer;
//! - neighbours' vectors are prefetched before they are scored;
//! - inserts go through `&self`: a node's lists change only under its own lock, searches read
//!   them with atomic loads, so a parallel build works and searches run while inserts do (the
//!   owner keeps the graph in an `RwLock`, read side for both, write side for
//!   [`Graph::reserve`]);
//! - filters and tombstones act inside the traversal: excluded nodes still route but are never
//!   returned, and a small allowed set is searched exactly instead, as qdrant does;
//! - optional 8-bit scalar quantisation: traversal on codes, then `f32` rescoring;
//! - a checksummed file format, opened with `mmap` (see [`mod@file`]).
//!
//! # Concurrency protocol
//! An insert claims its id, writes the vector (and code), allocates its upper lists and then
//! stores its level with `Release`; only after that does any list name the id. Lists are
//! written entries first, count last (`Release`), and read count first (`Acquire`). A reader
//! may see a list mid-rewrite (some old, some new ids): every id it can read is a finished
//! node, which is all a search needs. A node's lists are only ever changed under its lock, and
//! no thread holds two node locks at once, so there is no lock order to get wrong.
//!
//! # Slot reuse
//! A delete only sets a tombstone; [`Graph::replace`] later puts a new vector into that
//! slot, so a graph under add/delete churn stays the size of its live data without a
//! rebuild. The rule that keeps readers right: each slot has a generation, even while the slot
//! is stable. `replace` claims the slot by moving its generation from even to odd, rewrites
//! the row (and code), and stores the next even value with `Release`; only then does it
//! repair the old neighbours, link the node and lift the tombstone. Traversal may score a row
//! mid-rewrite, which at worst sends the walk a little out of its way; the answer is never
//! built from such a score: once any slot has been reused, a search scores its hits again
//! between two loads of their generation (`Acquire`, then a fence) and drops a hit whose
//! generation was odd or moved, or that its filter now refuses (tombstones included). So a
//! returned distance always belongs
//! to the vector the slot held at one instant of the search, never to a half-written row
//! or to the slot's previous vector under a later id. Callers that map slots to their own
//! ids (the index's records) change that mapping only after `replace` returns, and wait
//! their own grace before reusing a slot, so no search that could still see the old owner
//! is running.

pub mod file;

use std::cmp::Ordering as CmpOrdering;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;

use parking_lot::Mutex;
use rayon::prelude::*;

use crate::dataset::Rng;
use crate::kernels::{self, Kernels};
use crate::npy::Matrix;
use crate::AnnError;

mod store;
use store::Buf;

/// Level byte of a slot whose vector is not written yet.
const NOT_READY: u8 = u8::MAX;
/// Highest layer a node can reach. With `M >= 2` reaching it is a 2^-16 event or rarer.
const MAX_LEVEL: usize = 16;
/// Packed entry point of an empty graph.
const NO_ENTRY: u64 = u64::MAX;
/// Largest `M`; layer 0 then holds 512 links.
pub const MAX_M: usize = 256;
/// Largest dimension: the 8-bit kernels sum squared code differences in a `u32`.
pub const MAX_DIM: usize = 65_535;

/// How the graph measures closeness. Both are "smaller is nearer".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distance {
    /// Squared Euclidean distance: what the callers use, on l2-normalised vectors.
    L2Sq,
    /// `1 - a·b`: the same ranking as `L2Sq` on unit vectors, for callers that store
    /// unnormalised vectors and want inner-product ranking.
    Dot,
}

/// Construction parameters of a graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GraphParams {
    /// Links per node on upper layers (hnswlib's M); layer 0 keeps `2M`.
    pub m: usize,
    /// Candidate list size while inserting: higher builds slower and searches better.
    pub ef_construction: usize,
    /// The distance.
    pub distance: Distance,
    /// Seed of the level draws; with one thread the graph depends on it and the data only.
    pub seed: u64,
}

impl Default for GraphParams {
    fn default() -> Self {
        GraphParams {
            m: 16,
            ef_construction: 200,
            distance: Distance::L2Sq,
            seed: 0,
        }
    }
}

impl GraphParams {
    /// Refuses values that would make a useless or oversized graph.
    pub fn validate(&self) -> Result<(), AnnError> {
        if !(2..=MAX_M).contains(&self.m) {
            return Err(AnnError::Param(format!(
                "M = {} is outside 2..={MAX_M}",
                self.m
            )));
        }
        if !(1..=10_000).contains(&self.ef_construction) {
            return Err(AnnError::Param(format!(
                "ef_construction = {} is outside 1..=10000",
                self.ef_construction
            )));
        }
        Ok(())
    }
}

/// A set of ids, one bit each, that knows its size: the filter to use when the allowed set is
/// known up front, because its exact count lets the search choose between graph and scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdSet {
    words: Vec<u64>,
    count: usize,
}

impl IdSet {
    /// An empty set.
    pub fn new() -> IdSet {
        IdSet::default()
    }

    /// Adds `id`; returns whether it was absent.
    pub fn insert(&mut self, id: u32) -> bool {
        let (w, b) = (id as usize / 64, id % 64);
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let fresh = self.words[w] & (1 << b) == 0;
        self.words[w] |= 1 << b;
        self.count += fresh as usize;
        fresh
    }

    /// Whether `id` is in the set.
    #[inline]
    pub fn contains(&self, id: u32) -> bool {
        self.words
            .get(id as usize / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// Number of ids in the set.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The ids, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &bits)| {
            let mut bits = bits;
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let b = bits.trailing_zeros();
                    bits &= bits - 1;
                    w as u32 * 64 + b
                })
            })
        })
    }
}

impl FromIterator<u32> for IdSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> IdSet {
        let mut s = IdSet::new();
        for id in iter {
            s.insert(id);
        }
        s
    }
}

/// How a filtered search runs. `Auto` compares the estimated cost of both; the others exist
/// for tests and for callers who know better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Plan {
    /// Exact scan when the allowed set is small enough that scanning it is cheaper than a
    /// graph traversal that must skip most nodes.
    #[default]
    Auto,
    /// Always traverse the graph.
    Graph,
    /// Always scan the allowed set exactly.
    Exact,
}

enum Allow<'a> {
    Set(&'a IdSet),
    Predicate {
        f: &'a dyn Fn(u32) -> bool,
        allowed: Option<usize>,
    },
}

/// Which ids a search may return. Filtered-out nodes still carry the traversal, so a filter
/// never disconnects the graph.
pub struct Filter<'a> {
    allow: Allow<'a>,
    plan: Plan,
}

impl<'a> Filter<'a> {
    /// Only ids in `set`.
    pub fn set(set: &'a IdSet) -> Filter<'a> {
        Filter {
            allow: Allow::Set(set),
            plan: Plan::Auto,
        }
    }

    /// Only ids for which `f` is true. `allowed`, the number of such ids if the caller knows
    /// it, lets the search choose its plan without sampling `f`.
    pub fn predicate(f: &'a dyn Fn(u32) -> bool, allowed: Option<usize>) -> Filter<'a> {
        Filter {
            allow: Allow::Predicate { f, allowed },
            plan: Plan::Auto,
        }
    }

    /// The same filter with a forced plan.
    pub fn with_plan(self, plan: Plan) -> Filter<'a> {
        Filter { plan, ..self }
    }

    #[inline]
    fn allows(&self, id: u32) -> bool {
        match &self.allow {
            Allow::Set(s) => s.contains(id),
            Allow::Predicate { f, .. } => f(id),
        }
    }
}

/// A candidate: distance to the query and id, ordered by distance, then id.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Cand {
    d: f32,
    id: u32,
}

impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> CmpOrdering {
        self.d.total_cmp(&o.d).then(self.id.cmp(&o.id))
    }
}

/// Per-search working memory, pooled so that queries do not allocate.
struct Scratch {
    marks: Vec<u16>,
    epoch: u16,
    cand: BinaryHeap<Reverse<Cand>>,
    top: BinaryHeap<Cand>,
    fresh: Vec<u32>,
    sorted: Vec<Cand>,
    code: Vec<u8>,
}

impl Scratch {
    fn new(capacity: usize) -> Scratch {
        Scratch {
            marks: vec![0; capacity],
            epoch: 0,
            cand: BinaryHeap::new(),
            top: BinaryHeap::new(),
            fresh: Vec::new(),
            sorted: Vec::new(),
            code: Vec::new(),
        }
    }

    /// Forgets every mark in O(1); once per 65 535 searches the marks are really cleared.
    fn next_epoch(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.fill(0);
            self.epoch = 1;
        }
    }

    /// Marks `id` visited; returns whether it was not yet.
    #[inline(always)]
    fn visit(&mut self, id: u32) -> bool {
        match self.marks.get_mut(id as usize) {
            Some(m) if *m != self.epoch => {
                *m = self.epoch;
                true
            }
            _ => false,
        }
    }

    /// `top`, nearest first, into `sorted`.
    fn drain_sorted(&mut self) {
        self.sorted.clear();
        self.sorted.extend(self.top.drain());
        self.sorted.sort_unstable();
    }
}

struct ScratchGuard<'a> {
    pool: &'a Mutex<Vec<Scratch>>,
    s: Option<Scratch>,
}

impl std::ops::Deref for ScratchGuard<'_> {
    type Target = Scratch;
    fn deref(&self) -> &Scratch {
        self.s.as_ref().expect("present until drop")
    }
}
impl std::ops::DerefMut for ScratchGuard<'_> {
    fn deref_mut(&mut self) -> &mut Scratch {
        self.s.as_mut().expect("present until drop")
    }
}
impl Drop for ScratchGuard<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.s.take() {
            self.pool.lock().push(s);
        }
    }
}

/// 8-bit scalar quantisation: per-dimension minimum, one step for all dimensions, so the
/// integer distance of two codes is the squared L2 of what they encode, times `step²`.
/// (A step per dimension would weight every term of the integer sum differently.)
struct Quant {
    lo: Vec<f32>,
    step: f32,
    code_stride: usize,
    codes: Buf<u8>,
}

impl Quant {
    fn train<'v>(dim: usize, rows: impl Iterator<Item = &'v [f32]>) -> (Vec<f32>, f32) {
        let mut lo = vec![f32::INFINITY; dim];
        let mut hi = vec![f32::NEG_INFINITY; dim];
        for r in rows {
            for j in 0..dim {
                lo[j] = lo[j].min(r[j]);
                hi[j] = hi[j].max(r[j]);
            }
        }
        let mut range = 0.0f32;
        for j in 0..dim {
            if lo[j] > hi[j] {
                lo[j] = 0.0;
                hi[j] = 0.0;
            }
            range = range.max(hi[j] - lo[j]);
        }
        let step = if range > 0.0 { range / 255.0 } else { 1.0 };
        (lo, step)
    }

    #[inline]
    fn encode(lo: &[f32], step: f32, v: &[f32], out: &mut [u8]) {
        let inv = 1.0 / step;
        for ((o, &x), &l) in out.iter_mut().zip(v).zip(lo) {
            *o = ((x - l) * inv).round().clamp(0.0, 255.0) as u8;
        }
    }

    #[inline(always)]
    fn code(&self, id: u32) -> &[u8] {
        self.codes
            .slice(id as usize * self.code_stride, self.code_stride)
    }
}

/// An HNSW graph over `f32` vectors; see the module docs for its layout and protocol.
pub struct Graph {
    dim: usize,
    /// `f32` values per vector row: `dim` rounded up to a cache line.
    stride: usize,
    params: GraphParams,
    m0: usize,
    level_mult: f64,
    capacity: usize,
    /// Ids handed out (some may still be being written).
    len: AtomicUsize,
    vectors: Buf<f32>,
    /// `capacity * (1 + m0)` words: count, then ids.
    links0: Buf<u32>,
    /// Level of each node, or `NOT_READY`.
    levels: Vec<AtomicU8>,
    /// Lists of layers `1..=level`, `1 + m` words each, for nodes above layer 0.
    upper: Vec<OnceLock<Box<[AtomicU32]>>>,
    locks: Vec<Mutex<()>>,
    /// `(level << 32) | id` of the entry point, or `NO_ENTRY`.
    entry: AtomicU64,
    /// Held by an insert that may raise the top level, for its whole insertion.
    entry_lock: Mutex<()>,
    deleted: Vec<AtomicU64>,
    tombstones: AtomicUsize,
    /// Per slot: bumped to odd before [`Graph::replace`] rewrites the slot's vector and to
    /// even after, so a reader can tell whether a distance it computed belongs to one vector.
    gens: Vec<AtomicU32>,
    /// Set by the first [`Graph::replace`]: from then on searches check their hits' slot
    /// generations (a few distances per query), before it they need not.
    reused: AtomicBool,
    quant: Option<Quant>,
    pool: Mutex<Vec<Scratch>>,
    kernels: &'static Kernels,
}

// The owner shares one graph between threads behind an `RwLock`.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Graph>();
};

#[inline]
fn pack(id: u32, level: usize) -> u64 {
    ((level as u64) << 32) | id as u64
}

#[inline]
fn unpack(e: u64) -> (u32, usize) {
    (e as u32, (e >> 32) as usize)
}

fn row_stride(dim: usize) -> usize {
    dim.div_ceil(16) * 16
}

impl Graph {
    /// An empty graph for `dim`-dimensional vectors with room for `capacity` of them.
    pub fn new(dim: usize, params: GraphParams, capacity: usize) -> Result<Graph, AnnError> {
        params.validate()?;
        if !(1..=MAX_DIM).contains(&dim) {
            return Err(AnnError::Param(format!(
                "dimension {dim} is outside 1..={MAX_DIM}"
            )));
        }
        if capacity > u32::MAX as usize - 1 {
            return Err(AnnError::Param(format!(
                "capacity {capacity} exceeds the u32 id space"
            )));
        }
        let m0 = 2 * params.m;
        let stride = row_stride(dim);
        Ok(Graph {
            dim,
            stride,
            params,
            m0,
            level_mult: 1.0 / (params.m as f64).ln(),
            capacity,
            len: AtomicUsize::new(0),
            vectors: Buf::zeroed(capacity * stride),
            links0: Buf::zeroed(capacity * (1 + m0)),
            levels: (0..capacity).map(|_| AtomicU8::new(NOT_READY)).collect(),
            upper: (0..capacity).map(|_| OnceLock::new()).collect(),
            locks: (0..capacity).map(|_| Mutex::new(())).collect(),
            entry: AtomicU64::new(NO_ENTRY),
            entry_lock: Mutex::new(()),
            deleted: (0..capacity.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            tombstones: AtomicUsize::new(0),
            gens: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
            reused: AtomicBool::new(false),
            quant: None,
            pool: Mutex::new(Vec::new()),
            kernels: kernels::best(),
        })
    }

    /// Builds a graph over every row of `data` (id = row) on the current rayon pool. With one
    /// thread the rows are inserted in order, so the graph depends only on data and seed.
    pub fn build(data: &Matrix<f32>, params: GraphParams) -> Result<Graph, AnnError> {
        if data.data.len() != data.rows * data.cols {
            return Err(AnnError::Mismatch(format!(
                "a {}x{} matrix holds {} values",
                data.rows,
                data.cols,
                data.data.len()
            )));
        }
        let g = Graph::new(data.cols, params, data.rows)?;
        if data.rows == 0 {
            return Ok(g);
        }
        if let Some(i) = data.data.iter().position(|x| !x.is_finite()) {
            return Err(AnnError::Mismatch(format!(
                "row {} holds a non-finite value",
                i / data.cols
            )));
        }
        for i in 0..data.rows {
            g.prepare(i as u32, data.row(i));
        }
        g.len.store(data.rows, Ordering::Release);
        g.link(0);
        if rayon::current_num_threads() <= 1 {
            (1..data.rows as u32).for_each(|i| g.link(i));
        } else {
            (1..data.rows as u32)
                .into_par_iter()
                .for_each(|i| g.link(i));
        }
        Ok(g)
    }

    /// Dimension of the vectors.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Construction parameters.
    pub fn params(&self) -> GraphParams {
        self.params
    }

    /// Ids handed out so far, deleted ones included: the next insert gets this id.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire).min(self.capacity)
    }

    /// Whether no id was handed out.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots available without [`Graph::reserve`].
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether searches traverse 8-bit codes.
    pub fn is_quantized(&self) -> bool {
        self.quant.is_some()
    }

    /// Whether storage is a read-only file map (inserts then need [`Graph::reserve`] first).
    /// On unix an opened file is mapped copy-on-write instead, and this is false.
    pub fn is_read_only(&self) -> bool {
        !self.vectors.is_writable()
            || !self.links0.is_writable()
            || self.quant.as_ref().is_some_and(|q| !q.codes.is_writable())
    }

    /// Whether the vectors are still an index file's pages (read-only or copy-on-write)
    /// rather than memory of this process.
    pub fn is_file_backed(&self) -> bool {
        self.vectors.is_in_file()
    }

    /// Heap bytes the graph holds (a mapped file's pages are the kernel's page cache, not
    /// counted): what keeping this index in memory costs.
    pub fn heap_bytes(&self) -> usize {
        let upper: usize = self
            .upper
            .iter()
            .filter_map(|u| u.get())
            .map(|b| b.len() * 4)
            .sum();
        let marks = self
            .pool
            .lock()
            .iter()
            .map(|s| s.marks.len() * 2)
            .sum::<usize>();
        self.vectors.heap_bytes()
            + self.links0.heap_bytes()
            + self
                .quant
                .as_ref()
                .map_or(0, |q| q.codes.heap_bytes() + q.lo.len() * 4)
            + self.levels.len()
            + self.upper.len() * std::mem::size_of::<OnceLock<Box<[AtomicU32]>>>()
            + upper
            + self.locks.len() * std::mem::size_of::<Mutex<()>>()
            + self.deleted.len() * 8
            + self.gens.len() * 4
            + marks
    }

    /// Grows room to `len() + additional` slots, in place where the storage has the room (an
    /// opened file's copy-on-write region does: see `store.rs`), else by moving it to owned
    /// memory; a read-only map is moved too. Then inserts can follow. Takes `&mut self`: the
    /// owner's write lock.
    pub fn reserve(&mut self, additional: usize) -> Result<(), AnnError> {
        let len = self.len();
        let need = len
            .checked_add(additional)
            .filter(|&n| n < u32::MAX as usize)
            .ok_or_else(|| AnnError::Param("capacity exceeds the u32 id space".into()))?;
        let cap = need.max(self.capacity);
        if cap == self.capacity && !self.is_read_only() {
            return Ok(());
        }
        self.vectors.grow(cap * self.stride);
        self.links0.grow(cap * (1 + self.m0));
        if let Some(q) = &mut self.quant {
            q.codes.grow(cap * q.code_stride);
        }
        self.levels.resize_with(cap, || AtomicU8::new(NOT_READY));
        self.upper.resize_with(cap, OnceLock::new);
        self.locks.resize_with(cap, || Mutex::new(()));
        self.gens.resize_with(cap, || AtomicU32::new(0));
        self.deleted
            .resize_with(cap.div_ceil(64), || AtomicU64::new(0));
        self.capacity = cap;
        self.pool.get_mut().clear();
        Ok(())
    }

    fn scratch(&self) -> ScratchGuard<'_> {
        let s = self.pool.lock().pop();
        ScratchGuard {
            pool: &self.pool,
            s: Some(s.unwrap_or_else(|| Scratch::new(self.capacity))),
        }
    }

    #[inline(always)]
    fn vec(&self, id: u32) -> &[f32] {
        self.vectors.slice(id as usize * self.stride, self.dim)
    }

    #[inline(always)]
    fn dist(&self, a: &[f32], b: &[f32]) -> f32 {
        match self.params.distance {
            Distance::L2Sq => self.kernels.l2_sq(a, b),
            Distance::Dot => 1.0 - self.kernels.dot(a, b),
        }
    }

    #[inline(always)]
    fn prefetch_vec(&self, id: u32) {
        let p = self
            .vectors
            .as_ptr()
            .wrapping_add(id as usize * self.stride);
        kernels::prefetch(p);
        if self.dim > 16 {
            kernels::prefetch(p.wrapping_add(16));
        }
    }

    /// Starts loading the layer-0 list of `id` (count and ids, `4 + 4 * M0` bytes over up to
    /// three cache lines). Upper layers are few nodes and stay cached; they are not prefetched.
    #[inline(always)]
    fn prefetch_links(&self, id: u32, level: usize) {
        if level != 0 {
            return;
        }
        let words = 1 + self.m0;
        let p = self.links0.as_ptr().wrapping_add(id as usize * words) as *const u8;
        let bytes = words * 4;
        let mut off = 0;
        while off < bytes {
            kernels::prefetch(p.wrapping_add(off));
            off += 64;
        }
        kernels::prefetch(p.wrapping_add(bytes - 1));
    }

    fn ready(&self, id: u32) -> bool {
        self.levels
            .get(id as usize)
            .is_some_and(|l| l.load(Ordering::Acquire) != NOT_READY)
    }

    /// Whether `id` carries a tombstone.
    #[inline]
    pub fn is_deleted(&self, id: u32) -> bool {
        self.deleted
            .get(id as usize / 64)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (id % 64)) != 0)
    }

    /// The stored vector of `id`, deleted or not.
    pub fn vector(&self, id: u32) -> Result<&[f32], AnnError> {
        if !self.ready(id) {
            return Err(AnnError::UnknownId {
                id: id as u64,
                len: self.len(),
            });
        }
        Ok(self.vec(id))
    }

    /// The neighbour list of `id` on `level`: count word, then room for the ids. Empty where
    /// the node does not reach the level.
    #[inline(always)]
    fn links(&self, id: u32, level: usize) -> &[AtomicU32] {
        if level == 0 {
            return self
                .links0
                .atomics(id as usize * (1 + self.m0), 1 + self.m0);
        }
        let w = 1 + self.params.m;
        match self.upper.get(id as usize).and_then(|u| u.get()) {
            Some(b) => b.get((level - 1) * w..level * w).unwrap_or(&[]),
            None => &[],
        }
    }

    #[inline(always)]
    fn read_count(list: &[AtomicU32]) -> usize {
        match list.first() {
            Some(c) => (c.load(Ordering::Acquire) as usize).min(list.len() - 1),
            None => 0,
        }
    }

    fn read_list(list: &[AtomicU32], out: &mut Vec<u32>) {
        out.clear();
        let n = Self::read_count(list);
        out.extend(list[1..1 + n].iter().map(|w| w.load(Ordering::Relaxed)));
    }

    /// Rewrites a list; the caller holds the node's lock.
    fn write_list(list: &[AtomicU32], ids: impl Iterator<Item = u32>) {
        let mut n = 0;
        for (slot, id) in list[1..].iter().zip(ids) {
            slot.store(id, Ordering::Relaxed);
            n += 1;
        }
        list[0].store(n as u32, Ordering::Release);
    }

    fn level_for(&self, id: u32) -> usize {
        let mut r = Rng::new(
            self.params
                .seed
                .wrapping_add((id as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)),
        );
        let u = 1.0 - r.uniform(); // (0, 1]
        ((-u.ln() * self.level_mult) as usize).min(MAX_LEVEL)
    }

    /// Writes the vector (and code) of a claimed id and publishes its level. Nothing links to
    /// the id yet.
    fn prepare(&self, id: u32, v: &[f32]) {
        let i = id as usize;
        // SAFETY: `id` was claimed by this thread and is not yet published, so no other thread
        // reads or writes its row; the buffers are owned (checked by the callers).
        unsafe { self.vectors.write(i * self.stride, v) };
        if let Some(q) = &self.quant {
            let mut code = vec![0u8; q.code_stride];
            Quant::encode(&q.lo, q.step, v, &mut code);
            // SAFETY: as above.
            unsafe { q.codes.write(i * q.code_stride, &code) };
        }
        let level = self.level_for(id);
        if level > 0 {
            let w = 1 + self.params.m;
            let lists: Box<[AtomicU32]> = (0..level * w).map(|_| AtomicU32::new(0)).collect();
            let _ = self.upper[i].set(lists);
        }
        self.levels[i].store(level as u8, Ordering::Release);
    }

    /// What an insert or a replace needs: the graph's dimension, finite values, owned storage.
    fn check_insert(&self, v: &[f32]) -> Result<(), AnnError> {
        if v.len() != self.dim {
            return Err(AnnError::Mismatch(format!(
                "vector has dimension {}, the index {}",
                v.len(),
                self.dim
            )));
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(AnnError::Mismatch("vector holds a non-finite value".into()));
        }
        if self.is_read_only() {
            return Err(AnnError::ReadOnly);
        }
        Ok(())
    }

    /// Inserts a vector; returns its id. Safe to call from many threads and alongside
    /// searches. Fails when the graph is full or mapped read-only (see [`Graph::reserve`]).
    pub fn insert(&self, v: &[f32]) -> Result<u32, AnnError> {
        self.check_insert(v)?;
        let mut cur = self.len.load(Ordering::Relaxed);
        let id = loop {
            if cur >= self.capacity {
                return Err(AnnError::Full {
                    capacity: self.capacity,
                });
            }
            match self
                .len
                .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break cur as u32,
                Err(now) => cur = now,
            }
        };
        self.prepare(id, v);
        self.link(id);
        Ok(id)
    }

    /// Greedy descent from `cur` through layers `from` down to `to + 1`.
    fn greedy<D: Fn(u32) -> f32>(&self, mut cur: Cand, from: usize, to: usize, dist: &D) -> Cand {
        let mut buf = [0u32; MAX_M];
        for level in (to + 1..=from).rev() {
            loop {
                let list = self.links(cur.id, level);
                let n = Self::read_count(list);
                for (b, w) in buf.iter_mut().zip(&list[1..1 + n]) {
                    *b = w.load(Ordering::Relaxed);
                }
                let mut moved = false;
                for &id in &buf[..n] {
                    let d = dist(id);
                    if d < cur.d {
                        cur = Cand { d, id };
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        cur
    }

    /// Best-first search of one layer from `eps`, keeping the `ef` nearest allowed nodes in
    /// `s.top`. Disallowed nodes are expanded like any other but never kept.
    #[allow(clippy::too_many_arguments)]
    fn search_layer<D, A, P>(
        &self,
        s: &mut Scratch,
        eps: &[Cand],
        level: usize,
        ef: usize,
        dist: &D,
        allowed: Option<&A>,
        prefetch: &P,
    ) where
        D: Fn(u32) -> f32,
        A: Fn(u32) -> bool,
        P: Fn(u32),
    {
        s.next_epoch();
        s.cand.clear();
        s.top.clear();
        let ok = |id: u32| allowed.is_none_or(|a| a(id));
        for &c in eps {
            if s.visit(c.id) {
                s.cand.push(Reverse(c));
                if ok(c.id) {
                    s.top.push(c);
                }
            }
        }
        while s.top.len() > ef {
            s.top.pop();
        }
        let mut bound = s.top.peek().map_or(f32::INFINITY, |c| c.d);
        while let Some(Reverse(c)) = s.cand.pop() {
            if c.d > bound && s.top.len() >= ef {
                break;
            }
            let list = self.links(c.id, level);
            let n = Self::read_count(list);
            // The next candidate's list is in another row of `links0`: load it while this
            // one's neighbours are scored (the profile had a third of the walk's time waiting
            // on that count word). A nearer neighbour pushed below prefetches its own.
            if let Some(Reverse(next)) = s.cand.peek() {
                self.prefetch_links(next.id, level);
            }
            s.fresh.clear();
            for w in &list[1..1 + n] {
                let id = w.load(Ordering::Relaxed);
                if s.visit(id) {
                    prefetch(id);
                    s.fresh.push(id);
                }
            }
            for i in 0..s.fresh.len() {
                let id = s.fresh[i];
                let d = dist(id);
                if s.top.len() < ef || d < bound {
                    if s.cand.peek().is_none_or(|Reverse(t)| d < t.d) {
                        self.prefetch_links(id, level);
                    }
                    s.cand.push(Reverse(Cand { d, id }));
                    if ok(id) {
                        s.top.push(Cand { d, id });
                        if s.top.len() > ef {
                            s.top.pop();
                        }
                        bound = s.top.peek().map_or(f32::INFINITY, |c| c.d);
                    }
                }
            }
        }
    }

    /// Algorithm 4 of the paper (hnswlib's `getNeighborsByHeuristic2`): from `cands`, nearest
    /// first, keep a candidate only if it is nearer to the base than to every one kept, so
    /// links spread in all directions instead of into one cluster.
    fn select(&self, cands: &[Cand], m: usize, out: &mut Vec<Cand>) {
        out.clear();
        if cands.len() <= m {
            out.extend_from_slice(cands);
            return;
        }
        for &c in cands {
            if out.len() >= m {
                break;
            }
            let v = self.vec(c.id);
            if out.iter().all(|r| self.dist(v, self.vec(r.id)) >= c.d) {
                out.push(c);
            }
        }
    }

    fn cap(&self, level: usize) -> usize {
        if level == 0 {
            self.m0
        } else {
            self.params.m
        }
    }

    /// Links a prepared node into the graph.
    fn link(&self, id: u32) {
        let level = self.levels[id as usize].load(Ordering::Acquire) as usize;
        let q = self.vec(id);
        let mut e = self.entry.load(Ordering::Acquire);
        let mut guard = None;
        if e == NO_ENTRY || level > unpack(e).1 {
            guard = Some(self.entry_lock.lock());
            e = self.entry.load(Ordering::Acquire);
            if e == NO_ENTRY {
                self.entry.store(pack(id, level), Ordering::Release);
                return;
            }
        }
        let (ep, top) = unpack(e);
        if level <= top {
            guard = None;
        }
        let dist = |n: u32| self.dist(q, self.vec(n));
        let mut cur = self.greedy(
            Cand {
                d: dist(ep),
                id: ep,
            },
            top,
            level,
            &dist,
        );
        let mut eps = vec![cur];
        let mut sorted = Vec::new();
        let mut selected = Vec::new();
        let mut merged = Vec::new();
        let mut ids = Vec::new();
        for l in (0..=level.min(top)).rev() {
            {
                let mut s = self.scratch();
                self.search_layer(
                    &mut s,
                    &eps,
                    l,
                    self.params.ef_construction,
                    &dist,
                    None::<&fn(u32) -> bool>,
                    &|n| self.prefetch_vec(n),
                );
                s.drain_sorted();
                sorted.clear();
                sorted.extend(s.sorted.iter().filter(|c| c.id != id));
            }
            self.select(&sorted, self.params.m, &mut selected);
            // Our own list: others may already have linked to us through an upper layer.
            {
                let _g = self.locks[id as usize].lock();
                let list = self.links(id, l);
                Self::read_list(list, &mut ids);
                if ids.is_empty() {
                    Self::write_list(list, selected.iter().map(|c| c.id));
                } else {
                    merged.clear();
                    merged.extend_from_slice(&selected);
                    for &n in &ids {
                        if !merged.iter().any(|c| c.id == n) {
                            merged.push(Cand { d: dist(n), id: n });
                        }
                    }
                    merged.sort_unstable();
                    let mut keep = Vec::new();
                    self.select(&merged, self.cap(l), &mut keep);
                    Self::write_list(list, keep.iter().map(|c| c.id));
                }
            }
            for c in &selected {
                self.connect(c.id, id, l, &mut ids, &mut merged);
            }
            if let Some(&first) = selected.first() {
                cur = first;
            }
            eps.clear();
            eps.extend_from_slice(if selected.is_empty() {
                &sorted
            } else {
                &selected
            });
            if eps.is_empty() {
                eps.push(cur);
            }
        }
        if level > top {
            self.entry.store(pack(id, level), Ordering::Release);
        }
        drop(guard);
    }

    /// Adds `id` to the list of `n` on `level`, pruning with the heuristic when it is full.
    fn connect(&self, n: u32, id: u32, level: usize, ids: &mut Vec<u32>, cands: &mut Vec<Cand>) {
        let cap = self.cap(level);
        let _g = self.locks[n as usize].lock();
        let list = self.links(n, level);
        if list.is_empty() {
            return;
        }
        Self::read_list(list, ids);
        if ids.contains(&id) {
            return;
        }
        if ids.len() < cap {
            list[1 + ids.len()].store(id, Ordering::Relaxed);
            list[0].store(ids.len() as u32 + 1, Ordering::Release);
            return;
        }
        let nv = self.vec(n);
        cands.clear();
        cands.extend(ids.iter().map(|&x| Cand {
            d: self.dist(nv, self.vec(x)),
            id: x,
        }));
        cands.push(Cand {
            d: self.dist(nv, self.vec(id)),
            id,
        });
        cands.sort_unstable();
        let mut keep = Vec::with_capacity(cap);
        self.select(cands, cap, &mut keep);
        Self::write_list(list, keep.iter().map(|c| c.id));
    }

    /// Marks `id` deleted: it keeps routing searches but is never returned. Returns whether it
    /// was live. [`Graph::compact`] drops tombstoned nodes for good.
    pub fn delete(&self, id: u32) -> Result<bool, AnnError> {
        if (id as usize) >= self.len() || !self.ready(id) {
            return Err(AnnError::UnknownId {
                id: id as u64,
                len: self.len(),
            });
        }
        let bit = 1u64 << (id % 64);
        let was = self.deleted[id as usize / 64].fetch_or(bit, Ordering::AcqRel);
        let fresh = was & bit == 0;
        if fresh {
            self.tombstones.fetch_add(1, Ordering::AcqRel);
        }
        Ok(fresh)
    }

    /// Puts `v` into the slot of deleted id `id`, so the slot serves again instead of growing
    /// the graph (hnswlib's `replace_deleted`). The node keeps its level. Its old neighbours
    /// are repaired first: each list that named `id` is chosen again, by the heuristic, from
    /// itself and `id`'s old neighbours, so routes that ran through the old vector survive it.
    /// Then the node is linked like a fresh insert, and its tombstone is lifted last.
    ///
    /// Safe beside searches and inserts; one `replace` per slot at a time (a second is
    /// refused). The vector is rewritten between two generation bumps (see the module docs),
    /// so a search never reports a distance to a half-written vector or to the vector the
    /// slot held before.
    pub fn replace(&self, id: u32, v: &[f32]) -> Result<(), AnnError> {
        self.check_insert(v)?;
        let i = id as usize;
        if i >= self.len() || !self.ready(id) {
            return Err(AnnError::UnknownId {
                id: id as u64,
                len: self.len(),
            });
        }
        if !self.is_deleted(id) {
            return Err(AnnError::Param(format!(
                "slot {id} holds a live vector; only a deleted slot is reused"
            )));
        }
        let gen = &self.gens[i];
        let g = gen.load(Ordering::Acquire);
        if g % 2 == 1
            || gen
                .compare_exchange(g, g + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return Err(AnnError::Param(format!(
                "slot {id} is already being reused"
            )));
        }
        // The odd generation is visible before any byte of the row changes.
        fence(Ordering::Release);
        let level = self.levels[i].load(Ordering::Acquire) as usize;
        let mut old: Vec<Vec<u32>> = Vec::with_capacity(level + 1);
        for l in 0..=level {
            let mut ids = Vec::new();
            Self::read_list(self.links(id, l), &mut ids);
            ids.retain(|&n| n != id);
            old.push(ids);
        }
        // SAFETY: the slot is claimed by the generation exchange above, so no other writer
        // touches the row; readers that load it meanwhile see an odd or a changed generation
        // and drop what they computed. The buffers are owned (`check_insert`).
        unsafe { self.vectors.write(i * self.stride, v) };
        if let Some(q) = &self.quant {
            let mut code = vec![0u8; q.code_stride];
            Quant::encode(&q.lo, q.step, v, &mut code);
            // SAFETY: as above.
            unsafe { q.codes.write(i * q.code_stride, &code) };
        }
        gen.store(g + 2, Ordering::Release);
        self.reused.store(true, Ordering::Release);
        let mut ids = Vec::new();
        let mut cands = Vec::new();
        for (l, around) in old.iter().enumerate() {
            for &n in around {
                self.repair(n, id, l, around, &mut ids, &mut cands);
            }
        }
        self.link(id);
        let bit = 1u64 << (id % 64);
        if self.deleted[i / 64].fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
            self.tombstones.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Chooses the list of `n` on `level` again if it names `slot`, from that list and the
    /// slot's old neighbours `around`, with `slot` scored at its new vector.
    fn repair(
        &self,
        n: u32,
        slot: u32,
        level: usize,
        around: &[u32],
        ids: &mut Vec<u32>,
        cands: &mut Vec<Cand>,
    ) {
        let _g = self.locks[n as usize].lock();
        let list = self.links(n, level);
        if list.is_empty() {
            return;
        }
        Self::read_list(list, ids);
        if !ids.contains(&slot) {
            return;
        }
        let nv = self.vec(n);
        cands.clear();
        for &x in ids.iter().chain(around) {
            if x != n && !cands.iter().any(|c: &Cand| c.id == x) {
                cands.push(Cand {
                    d: self.dist(nv, self.vec(x)),
                    id: x,
                });
            }
        }
        cands.sort_unstable();
        let mut keep = Vec::with_capacity(self.cap(level));
        self.select(cands, self.cap(level), &mut keep);
        Self::write_list(list, keep.iter().map(|c| c.id));
    }

    /// The hits of a search, scored again at their slot's current generation: a slot rewritten
    /// by [`Graph::replace`] while the search ran (odd or changed generation, or deleted
    /// again) is dropped, so each distance returned belongs to the vector the slot holds.
    fn settle(
        &self,
        q: &[f32],
        hits: impl Iterator<Item = u32>,
        k: usize,
        allowed: Option<&dyn Fn(u32) -> bool>,
    ) -> Vec<(u32, f32)> {
        let mut out: Vec<Cand> = Vec::with_capacity(k);
        for id in hits {
            if out.len() == k {
                break;
            }
            let gen = &self.gens[id as usize];
            let g = gen.load(Ordering::Acquire);
            if g % 2 == 1 || allowed.is_some_and(|a| !a(id)) {
                continue;
            }
            let d = self.dist(q, self.vec(id));
            fence(Ordering::Acquire);
            if gen.load(Ordering::Relaxed) == g {
                out.push(Cand { d, id });
            }
        }
        out.sort_unstable();
        out.into_iter().map(|c| (c.id, c.d)).collect()
    }

    /// Number of deleted ids still in the graph.
    pub fn tombstones(&self) -> usize {
        self.tombstones.load(Ordering::Acquire)
    }

    /// Whether tombstones exceed `ratio` of the ids: past some point dead nodes cost more
    /// traversal than a rebuild costs once.
    pub fn needs_compaction(&self, ratio: f64) -> bool {
        let n = self.len();
        n > 0 && self.tombstones() as f64 > ratio * n as f64
    }

    /// A new graph of the live nodes only, built on the current rayon pool (same parameters,
    /// quantised again if this one is), and the map from old id to new id (`None`: deleted).
    pub fn compact(&self) -> Result<(Graph, Vec<Option<u32>>), AnnError> {
        let n = self.len();
        let live: Vec<u32> = (0..n as u32)
            .filter(|&i| self.ready(i) && !self.is_deleted(i))
            .collect();
        let mut data = Matrix {
            rows: live.len(),
            cols: self.dim,
            data: Vec::with_capacity(live.len() * self.dim),
        };
        for &i in &live {
            data.data.extend_from_slice(self.vec(i));
        }
        let mut g = Graph::build(&data, self.params)?;
        if self.quant.is_some() {
            g.quantize()?;
        }
        let mut map = vec![None; n];
        for (new, &old) in live.iter().enumerate() {
            map[old as usize] = Some(new as u32);
        }
        Ok((g, map))
    }

    /// Trains 8-bit codes on the vectors present (per-dimension minimum, common step from the
    /// widest range) and encodes them; later inserts are encoded with the same ranges, values
    /// outside clamped. Searches then traverse codes and rescore with `f32`. Squared L2 only.
    pub fn quantize(&mut self) -> Result<(), AnnError> {
        if self.params.distance != Distance::L2Sq {
            return Err(AnnError::Param(
                "quantisation supports the squared-L2 distance only".into(),
            ));
        }
        let n = self.len();
        let (lo, step) = Quant::train(
            self.dim,
            (0..n as u32)
                .filter(|&i| self.ready(i))
                .map(|i| self.vec(i)),
        );
        let code_stride = self.dim.div_ceil(16) * 16;
        let codes = Buf::<u8>::zeroed(self.capacity * code_stride);
        let mut code = vec![0u8; code_stride];
        for i in (0..n as u32).filter(|&i| self.ready(i)) {
            Quant::encode(&lo, step, self.vec(i), &mut code);
            // SAFETY: fresh owned buffer, `&mut self`: nothing else touches it.
            unsafe { codes.write(i as usize * code_stride, &code) };
        }
        self.quant = Some(Quant {
            lo,
            step,
            code_stride,
            codes,
        });
        Ok(())
    }

    fn check_query(&self, q: &[f32]) -> Result<(), AnnError> {
        if q.len() != self.dim {
            return Err(AnnError::Mismatch(format!(
                "query has dimension {}, the index {}",
                q.len(),
                self.dim
            )));
        }
        if q.iter().any(|x| !x.is_finite()) {
            return Err(AnnError::Mismatch("query holds a non-finite value".into()));
        }
        Ok(())
    }

    /// The `k` nearest allowed, live ids to `query` with their distances (squared L2, or
    /// `1 - dot`), nearest first. `ef` (raised to `k`) trades speed for recall.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<(u32, f32)>, AnnError> {
        self.check_query(query)?;
        // More than every id cannot be found; clamping also keeps `4 * k` and heap sizes sane.
        let k = k.min(self.len());
        let ef = ef.min(self.len().max(1));
        if k == 0 || self.entry.load(Ordering::Acquire) == NO_ENTRY {
            return Ok(Vec::new());
        }
        let dead = self.tombstones() > 0;
        let Some(f) = filter else {
            return Ok(if dead {
                self.search_graph(query, k, ef, Some(&|id| !self.is_deleted(id)))
            } else {
                self.search_graph(query, k, ef, None::<&fn(u32) -> bool>)
            });
        };
        let allowed = |id: u32| f.allows(id) && !self.is_deleted(id);
        let exact = match f.plan {
            Plan::Exact => true,
            Plan::Graph => false,
            Plan::Auto => self.prefer_exact(f, ef.max(k)),
        };
        Ok(if exact {
            match &f.allow {
                Allow::Set(s) => self.search_exact(query, k, s.iter(), &allowed),
                Allow::Predicate { .. } => {
                    self.search_exact(query, k, 0..self.len() as u32, &allowed)
                }
            }
        } else {
            self.search_graph(query, k, ef, Some(&allowed))
        })
    }

    /// Whether scanning the allowed set beats traversing. A traversal keeping `ef` results
    /// at selectivity `s` expands about `ef / s` nodes of `M0 / 2` fresh neighbours each;
    /// a scan scores the `s * n` allowed nodes.
    fn prefer_exact(&self, f: &Filter, ef: usize) -> bool {
        let n = self.len().saturating_sub(self.tombstones()).max(1);
        let allowed = match &f.allow {
            Allow::Set(s) => s.len(),
            Allow::Predicate {
                allowed: Some(a), ..
            } => *a,
            Allow::Predicate { f, allowed: None } => {
                let len = self.len();
                let step = (len / 1024).max(1);
                let (mut seen, mut hit) = (0usize, 0usize);
                for id in (0..len as u32).step_by(step) {
                    seen += 1;
                    hit += f(id) as usize;
                }
                (hit as f64 / seen.max(1) as f64 * n as f64).ceil() as usize
            }
        }
        .min(n);
        let s = allowed as f64 / n as f64;
        if allowed == 0 {
            return true;
        }
        let graph = (ef as f64 / s) * (self.m0 as f64 / 2.0);
        allowed as f64 <= graph
    }

    fn search_exact(
        &self,
        q: &[f32],
        k: usize,
        ids: impl Iterator<Item = u32>,
        allowed: &dyn Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        let len = self.len() as u32;
        let mut top: BinaryHeap<Cand> = BinaryHeap::with_capacity(k + 1);
        for id in ids {
            if id >= len || !self.ready(id) || !allowed(id) {
                continue;
            }
            let gen = &self.gens[id as usize];
            let g = gen.load(Ordering::Acquire);
            let d = self.dist(q, self.vec(id));
            fence(Ordering::Acquire);
            if g % 2 == 1 || gen.load(Ordering::Relaxed) != g {
                // Being rewritten by `replace`: neither vector's distance is known.
                continue;
            }
            if top.len() < k {
                top.push(Cand { d, id });
            } else if top.peek().is_some_and(|w| d < w.d) {
                top.pop();
                top.push(Cand { d, id });
            }
        }
        let mut v = top.into_vec();
        v.sort_unstable();
        v.into_iter().map(|c| (c.id, c.d)).collect()
    }

    fn search_graph<A: Fn(u32) -> bool>(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        allowed: Option<&A>,
    ) -> Vec<(u32, f32)> {
        let (ep, top) = unpack(self.entry.load(Ordering::Acquire));
        let mut s = self.scratch();
        let s = &mut *s;
        let out = if let Some(qz) = &self.quant {
            let mut code = std::mem::take(&mut s.code);
            code.resize(qz.code_stride, 0);
            Quant::encode(&qz.lo, qz.step, q, &mut code);
            let scale = qz.step * qz.step;
            let kern = self.kernels;
            let dist = |n: u32| kern.l2_sq_u8(&code, qz.code(n)) as f32 * scale;
            let cur = self.greedy(
                Cand {
                    d: dist(ep),
                    id: ep,
                },
                top,
                0,
                &dist,
            );
            let ef = ef.max(4 * k);
            self.search_layer(s, &[cur], 0, ef, &dist, allowed, &|n| {
                kernels::prefetch(qz.codes.as_ptr().wrapping_add(n as usize * qz.code_stride))
            });
            s.code = code;
            if self.reused.load(Ordering::Acquire) {
                let ids: Vec<u32> = s.top.drain().map(|c| c.id).collect();
                let n = ids.len();
                let mut out = self.settle(q, ids.into_iter(), n, allowed.map(as_dyn));
                out.truncate(k);
                return out;
            }
            s.sorted.clear();
            s.sorted.extend(s.top.drain().map(|c| Cand {
                d: self.dist(q, self.vec(c.id)),
                id: c.id,
            }));
            s.sorted.sort_unstable();
            s.sorted.iter().take(k).map(|c| (c.id, c.d)).collect()
        } else {
            let dist = |n: u32| self.dist(q, self.vec(n));
            let cur = self.greedy(
                Cand {
                    d: dist(ep),
                    id: ep,
                },
                top,
                0,
                &dist,
            );
            self.search_layer(s, &[cur], 0, ef.max(k), &dist, allowed, &|n| {
                self.prefetch_vec(n)
            });
            s.drain_sorted();
            if self.reused.load(Ordering::Acquire) {
                return self.settle(q, s.sorted.iter().map(|c| c.id), k, allowed.map(as_dyn));
            }
            s.sorted.iter().take(k).map(|c| (c.id, c.d)).collect()
        };
        out
    }
}

fn as_dyn<A: Fn(u32) -> bool>(a: &A) -> &dyn Fn(u32) -> bool {
    a
}

#[cfg(test)]
mod tests;
