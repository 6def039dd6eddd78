//! [`LocalIndex`]: records and vectors in one directory on this machine, every write logged
//! before it is acknowledged.
//!
//! Layout of an index directory:
//! - `CURRENT`: the name of the live checkpoint generation (replaced atomically);
//! - `gen-<stamp>/`: `meta.json` (model provenance, parameters, the log position it covers),
//!   the engine's file (`graph.htg`, or the `hnsw_rs` dump) and `records.bin`;
//! - `wal-<seq>.log`: the write-ahead log segments after that position ([`super::wal`]);
//! - `LOCK`: held by the one process that writes;
//! - `uploads/`: images added over HTTP (the server's);
//! - `ACTIVE` (written by a model swap, `htg reindex`): names the subdirectory that holds
//!   the files above for the model now serving; the directory the user names stays the
//!   index's one name, and writing `ACTIVE` is the swap's single atomic step.
//!
//! A write (add or delete) is appended to the log, applied in memory and fsynced (one fsync
//! shared by concurrent writers) before it returns: acknowledged writes survive a crash. An
//! add is acknowledged before it is in the graph: it waits in a pending buffer that every
//! search scans exactly, and a background applier moves it into the graph, so an add costs
//! the same at any index size and is visible to the next search. When
//! the log passes [`LocalIndex::set_checkpoint_bytes`], a checkpoint runs on a background
//! thread: it writes a new generation while appends wait, swaps `CURRENT`, and deletes the log
//! it covers. A delete leaves a tombstone in the graph; once tombstones pass a fifth of it, the
//! next checkpoint (started by that delete) first rebuilds the graph from the live vectors while
//! searches and writes go on, so memory follows the live data under add/delete churn.
//! Searches take only read locks and never wait for a write's fsync or a checkpoint.
//! On open, the checkpoint is mapped (graph and records are not parsed whole) and the log is
//! replayed; a torn last entry is dropped, a corrupt one in the middle is refused. An open that
//! overlaps another process's checkpoint starts again from the new `CURRENT`, and dropping the
//! last handle waits for the index's own checkpoint in flight, so the directory is quiet after.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::engine::{Engine, EngineKind};
use super::error::{io_err, IndexError};
use super::legacy;
use super::records::Records;
use super::seam::{CreateOptions, SearchIndex};
use super::types::{Hit, HnswParams, IndexStats, Record, SearchOptions};
use super::wal::{AppendError, Op, Wal};
use crate::embed::ModelId;

/// Current on-disk format version (1: JSON records and an `hnsw_rs` dump, read by
/// [`legacy`]; 2: engine file, `records.bin` and a write-ahead log).
pub const FORMAT_VERSION: u32 = 2;

/// Default log size that triggers a background checkpoint.
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 64 << 20;

/// Acknowledged adds allowed to wait for the graph before writers help move them in.
const MAX_PENDING: usize = 8192;

/// Tombstones past this fraction of the graph start a checkpoint that compacts them away.
const COMPACT_RATIO: f64 = 0.2;

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
    engine: EngineKind,
    next_id: u64,
    /// The last log sequence number this checkpoint contains.
    checkpoint_seq: u64,
    /// Engine slots (live and deleted) in this checkpoint.
    slots: usize,
}

struct Inner {
    dir: PathBuf,
    model: ModelId,
    model_path: Option<String>,
    dim: usize,
    params: HnswParams,
    engine: RwLock<Engine>,
    records: RwLock<Records>,
    /// Adds that are durable (logged) but not yet in the graph, in log order: searched
    /// exactly until the applier moves them in. Lock order: `records`, then `pending`.
    pending: RwLock<Vec<PendingAdd>>,
    /// One applier (background thread or checkpoint) moves pending adds into the graph at a
    /// time, so internal ids stay contiguous.
    apply_lock: Mutex<()>,
    /// Wakes the applier (shared with it, so it waits without keeping the index alive).
    wake: Arc<(Mutex<bool>, Condvar)>,
    /// Next external id; changed only under the log's append lock.
    next_id: AtomicU64,
    wal: Wal,
    /// One checkpoint at a time.
    ckpt: Mutex<()>,
    checkpointing: AtomicBool,
    /// The background checkpoint started by [`LocalIndex::maybe_checkpoint`], joined when the
    /// last user handle drops: a generation half-published by a dropped index would race a
    /// reopen of the same directory (the reopen could read `CURRENT` just before the old
    /// index's checkpoint deletes the generation it names).
    ckpt_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpoint_bytes: AtomicU64,
    checkpoints: AtomicU64,
    compactions: AtomicU64,
    /// What the background threads last failed at, until they succeed again: nobody waits on
    /// them, so this is how a full disk under a background checkpoint becomes visible
    /// (`/stats`, `/readyz`, `/metrics`, `htg index`).
    background: Mutex<Background>,
    /// Background failures since open (a counter: each failed attempt).
    background_errors: AtomicU64,
    /// Set when the last user handle drops: no new background checkpoint starts after it.
    closed: AtomicBool,
    notice: Option<String>,
}

/// The background threads' outstanding failures.
#[derive(Default)]
struct Background {
    /// The last background checkpoint's error; cleared by any checkpoint that succeeds.
    checkpoint: Option<String>,
    /// The applier's last error; cleared when it next moves adds into the graph.
    applier: Option<String>,
    /// When a failed checkpoint is tried again without waiting for a write.
    retry_at: Option<Instant>,
}

/// Pause before a failed background checkpoint is tried again by the applier.
const CHECKPOINT_RETRY: Duration = Duration::from_secs(1);

/// An add that is logged but not yet in the graph.
#[derive(Clone)]
struct PendingAdd {
    id: u64,
    record: Record,
    vector: Vec<f32>,
}

/// A single-machine index: our HNSW (or `hnsw_rs`) over vectors stored once, records in a
/// mapped file, and a write-ahead log. Cheap to clone: clones share the same index.
#[derive(Clone)]
pub struct LocalIndex {
    inner: Arc<Inner>,
    /// Shared by the handles users hold (not by the index's own background threads): when the
    /// last one drops, a checkpoint in flight is finished before the drop returns, so the
    /// directory is quiet once the user lets go of the index and can be reopened at once.
    _owner: Option<Arc<Owner>>,
}

/// Joins the background checkpoint when the last user handle of an index drops.
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        // Under `ckpt_thread`'s lock (taken below), a background checkpoint either started
        // before this and is joined, or sees `closed` and does not start.
        self.0.closed.store(true, Ordering::Release);
        let handle = self
            .0
            .ckpt_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            // The thread records its own error; a panic in it has nothing left to report.
            let _ = h.join();
        }
    }
}

fn read_lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

fn wal_err(e: AppendError<IndexError>) -> IndexError {
    match e {
        AppendError::Wal(w) => IndexError::Wal(w),
        AppendError::Apply(a) => a,
    }
}

impl LocalIndex {
    /// Whether `dir` holds an index.
    pub fn exists(dir: &Path) -> bool {
        matches!(resolve_root(dir), Ok(root) if root.join("CURRENT").is_file())
    }

    /// Creates an empty index in `dir` (writes its first checkpoint at once, so it opens).
    pub fn create(
        dir: &Path,
        model: ModelId,
        model_path: Option<String>,
        opts: &CreateOptions,
    ) -> Result<LocalIndex, IndexError> {
        opts.params.validate()?;
        let dim = model.spec.embedding_dim;
        if dim == 0 {
            return Err(IndexError::Param(
                "the model's embedding dimension is 0".into(),
            ));
        }
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let engine = Engine::new(opts.engine, dim, opts.params, opts.capacity.max(1024))?;
        let opened = Wal::open(dir, 0)?;
        let index = LocalIndex::assemble(
            dir,
            model,
            model_path,
            dim,
            opts.params,
            engine,
            Records::default(),
            1,
            opened.wal,
            None,
        );
        index.checkpoint()?;
        Ok(index)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dir: &Path,
        model: ModelId,
        model_path: Option<String>,
        dim: usize,
        params: HnswParams,
        engine: Engine,
        records: Records,
        next_id: u64,
        wal: Wal,
        notice: Option<String>,
    ) -> LocalIndex {
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            model,
            model_path,
            dim,
            params,
            engine: RwLock::new(engine),
            records: RwLock::new(records),
            pending: RwLock::new(Vec::new()),
            apply_lock: Mutex::new(()),
            wake: Arc::new((Mutex::new(false), Condvar::new())),
            next_id: AtomicU64::new(next_id),
            wal,
            ckpt: Mutex::new(()),
            checkpointing: AtomicBool::new(false),
            ckpt_thread: Mutex::new(None),
            checkpoint_bytes: AtomicU64::new(DEFAULT_CHECKPOINT_BYTES),
            checkpoints: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            background: Mutex::new(Background::default()),
            background_errors: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            notice,
        });
        let index = LocalIndex {
            _owner: Some(Arc::new(Owner(Arc::clone(&inner)))),
            inner,
        };
        let weak = Arc::downgrade(&index.inner);
        let wake = Arc::clone(&index.inner.wake);
        std::thread::Builder::new()
            .name("htg-index-applier".into())
            .spawn(move || applier(weak, wake))
            .expect("spawning the index applier thread");
        index
    }

    /// Opens the index saved in `dir` (or in the subdirectory its `ACTIVE` names): maps its
    /// checkpoint and replays its log.
    pub fn open(dir: &Path) -> Result<LocalIndex, IndexError> {
        let root = resolve_root(dir)?;
        LocalIndex::open_root(&root)
    }

    fn open_root(dir: &Path) -> Result<LocalIndex, IndexError> {
        let current = dir.join("CURRENT");
        let read_current = || match fs::read_to_string(&current) {
            Ok(s) => Ok(s.trim().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(IndexError::NotFound(dir.to_path_buf()))
            }
            Err(e) => Err(io_err("read", &current)(e)),
        };
        // A process that writes this index may publish a new generation, delete the one just
        // read and truncate the log it covered, all while this open reads them. An open is
        // kept only when `CURRENT` still names the generation it started from (what it read
        // is then one consistent state); otherwise, or when a file vanished underneath it, it
        // starts again from the new `CURRENT`.
        let mut tries = 0;
        loop {
            let gen = read_current()?;
            let opened = LocalIndex::open_generation(dir, &gen);
            tries += 1;
            let moved_on = read_current()? != gen;
            match opened {
                Ok(index) if !moved_on => return Ok(index),
                Err(e) if !moved_on && !vanished(&e) => return Err(e),
                Err(e) if tries >= 20 => return Err(e),
                _ if tries >= 20 => {
                    return Err(corrupt_dir(
                        dir,
                        "CURRENT kept changing during 20 attempts to open it".into(),
                    ))
                }
                _ => {}
            }
        }
    }

    /// Opens the generation `gen` names (as `CURRENT` read it) and replays the log after it.
    fn open_generation(dir: &Path, gen: &str) -> Result<LocalIndex, IndexError> {
        let gen = gen.to_string();
        let corrupt = |reason: String| IndexError::Corrupt {
            path: dir.to_path_buf(),
            reason,
        };
        if gen.is_empty() || gen.contains('/') || gen.contains("..") {
            return Err(corrupt(format!("CURRENT names {gen:?}")));
        }
        let gdir = dir.join(&gen);
        let meta_path = gdir.join("meta.json");
        let meta_bytes = fs::read(&meta_path).map_err(io_err("read", &gdir))?;
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let version: Version =
            serde_json::from_slice(&meta_bytes).map_err(|e| corrupt(format!("meta.json: {e}")))?;
        let index = match version.format_version {
            1 => LocalIndex::open_v1(dir, &gdir)?,
            FORMAT_VERSION => {
                let meta: Meta = serde_json::from_slice(&meta_bytes)
                    .map_err(|e| corrupt(format!("meta.json: {e}")))?;
                let engine = Engine::open(meta.engine, &gdir, meta.dim, meta.hnsw)?;
                let records = Records::open(&gdir.join("records.bin"))?;
                if records.slots() != engine.len() || engine.len() != meta.slots {
                    return Err(corrupt(format!(
                        "the engine holds {} vectors, records.bin {} records, meta.json {}",
                        engine.len(),
                        records.slots(),
                        meta.slots
                    )));
                }
                let opened = Wal::open(dir, meta.checkpoint_seq)?;
                let index = LocalIndex::assemble(
                    dir,
                    meta.model,
                    meta.model_path,
                    meta.dim,
                    meta.hnsw,
                    engine,
                    records,
                    meta.next_id,
                    opened.wal,
                    None,
                );
                index.replay(opened.replay)?;
                index
            }
            v => {
                return Err(corrupt(format!(
                    "format version {v} (this htg reads 1 and {FORMAT_VERSION})"
                )))
            }
        };
        Ok(index)
    }

    /// Format 1: the vectors go into our engine (the `hnsw_rs` dump is not read); the next
    /// checkpoint writes format 2.
    fn open_v1(dir: &Path, gdir: &Path) -> Result<LocalIndex, IndexError> {
        let t = Instant::now();
        let v1 = legacy::read(dir, gdir)?;
        let rows: Vec<&[f32]> = v1.rows.iter().map(|(_, _, v)| v.as_slice()).collect();
        let mut engine = Engine::new(EngineKind::Htg, v1.dim, v1.hnsw, rows.len())?;
        engine.reserve(rows.len())?;
        let mut records = Records::default();
        for (i, ((id, r, _), v)) in v1.rows.iter().zip(&rows).enumerate() {
            let got = engine.insert(v)?;
            debug_assert_eq!(got as usize, i);
            records.push(got, *id, r.clone())?;
        }
        let notice = format!(
            "index {} is format 1 (an earlier htg): its {} vectors were re-inserted into the htg engine in {:.1} s; the next write or `htg index` saves format {FORMAT_VERSION}",
            dir.display(),
            rows.len(),
            t.elapsed().as_secs_f64()
        );
        let opened = Wal::open(dir, 0)?;
        let index = LocalIndex::assemble(
            dir,
            v1.model,
            v1.model_path,
            v1.dim,
            v1.hnsw,
            engine,
            records,
            v1.next_id,
            opened.wal,
            Some(notice),
        );
        index.replay(opened.replay)?;
        Ok(index)
    }

    /// Index directory: the one holding `CURRENT` (a subdirectory of the directory the user
    /// named once a model swap has written `ACTIVE`).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The id the next add gets: ids are never reused, so a model swap carries it over.
    pub fn next_id(&self) -> u64 {
        self.inner.next_id.load(Ordering::Relaxed)
    }

    /// Raises the next id to at least `next` (a model swap: the new index must not hand out
    /// an id the old one used, even a deleted one); persisted by the next checkpoint.
    pub fn raise_next_id(&self, next: u64) {
        self.inner.next_id.fetch_max(next, Ordering::Relaxed);
    }

    /// Takes the index's writer lock now instead of at the first write, so a second process
    /// that would write (a server, `htg reindex`) is refused at once rather than after its
    /// view has gone stale.
    pub fn lock_writes(&self) -> Result<(), IndexError> {
        Ok(self.inner.wal.lock_writes()?)
    }

    /// Adds records under ids the caller chose (a model swap keeps every image's id); ids
    /// already present are refused. Durable on return.
    pub fn insert_with_ids(&self, items: Vec<(u64, Record, Vec<f32>)>) -> Result<(), IndexError> {
        for (_, _, v) in &items {
            self.check_vector(v)?;
        }
        if items.is_empty() {
            return Ok(());
        }
        {
            let records = read_lock(&self.inner.records);
            let pending = read_lock(&self.inner.pending);
            let mut seen = std::collections::HashSet::new();
            for (id, _, _) in &items {
                if !seen.insert(*id)
                    || records.internal(*id).is_some()
                    || pending.iter().any(|p| p.id == *id)
                {
                    return Err(IndexError::Param(format!(
                        "id {id} is already in the index"
                    )));
                }
            }
        }
        let top = items.iter().map(|(id, _, _)| id + 1).max().unwrap_or(0);
        let mut items = Some(items);
        let seq = self
            .inner
            .wal
            .append(
                |_| {
                    self.inner.next_id.fetch_max(top, Ordering::Relaxed);
                    items
                        .take()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(id, record, vector)| Op::Add { id, record, vector })
                        .collect()
                },
                |ops| self.apply(ops).map(|_| ()),
            )
            .map_err(wal_err)?;
        self.after_add(seq)?;
        Ok(())
    }

    /// What every add does once its ops are appended: make them durable, keep the pending
    /// buffer bounded, and start a checkpoint when the log has grown.
    fn after_add(&self, seq: u64) -> Result<(), IndexError> {
        self.inner.wal.sync_to(seq)?;
        // A bulk load outruns the applier: past a bound, the writer helps it, so the pending
        // buffer (and the exact scan every search does over it) stays small.
        while read_lock(&self.inner.pending).len() > MAX_PENDING {
            self.drain_once(4096)?;
        }
        self.maybe_checkpoint();
        Ok(())
    }

    /// Which engine holds the vectors.
    pub fn engine_kind(&self) -> EngineKind {
        read_lock(&self.inner.engine).kind()
    }

    /// Log size (bytes) past which a write starts a background checkpoint.
    pub fn set_checkpoint_bytes(&self, bytes: u64) {
        self.inner.checkpoint_bytes.store(bytes, Ordering::Relaxed);
    }

    fn replay(&self, entries: Vec<super::wal::Entry>) -> Result<(), IndexError> {
        let mut ops = Vec::new();
        for e in entries {
            if let Op::Add { id, .. } = &e.op {
                let next = self.inner.next_id.load(Ordering::Relaxed);
                self.inner
                    .next_id
                    .store(next.max(id + 1), Ordering::Relaxed);
            }
            ops.push(e.op);
        }
        // Adds join the pending buffer; the applier moves them into the graph in parallel
        // batches while the index already answers.
        self.apply(&ops)?;
        Ok(())
    }

    /// Applies logged ops in memory (under the log's append lock, or while replaying): adds
    /// join the pending buffer (searched exactly at once, moved into the graph by the
    /// applier), so a write's cost does not grow with the index; deletes apply directly.
    fn apply(&self, ops: &[Op]) -> Result<Vec<bool>, IndexError> {
        let mut out = Vec::with_capacity(ops.len());
        let mut added = false;
        for o in ops {
            match o {
                Op::Add { id, record, vector } => {
                    write_lock(&self.inner.pending).push(PendingAdd {
                        id: *id,
                        record: record.clone(),
                        vector: vector.clone(),
                    });
                    added = true;
                    out.push(true);
                }
                Op::Remove { id } => {
                    let mut records = write_lock(&self.inner.records);
                    let mut pending = write_lock(&self.inner.pending);
                    if let Some(internal) = records.remove(*id) {
                        read_lock(&self.inner.engine).delete(internal)?;
                        out.push(true);
                    } else if let Some(k) = pending.iter().position(|p| p.id == *id) {
                        pending.remove(k);
                        out.push(true);
                    } else {
                        out.push(false);
                    }
                }
            }
        }
        if added {
            let (flag, cv) = &*self.inner.wake;
            *flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
            cv.notify_one();
        }
        Ok(out)
    }

    /// Moves up to `max` pending adds into the graph; returns how many were taken. Inserts run
    /// through the engine's `&self` path, concurrently with searches; the hand-over from the
    /// pending buffer to the records is one critical section, so a search sees each add
    /// exactly once.
    fn drain_once(&self, max: usize) -> Result<usize, IndexError> {
        let inner = &self.inner;
        let _one = inner
            .apply_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let batch: Vec<PendingAdd> = read_lock(&inner.pending)
            .iter()
            .take(max)
            .cloned()
            .collect();
        if batch.is_empty() {
            return Ok(0);
        }
        if !read_lock(&inner.engine).has_room(batch.len()) {
            write_lock(&inner.engine).reserve(batch.len())?;
        }
        let vectors: Vec<&[f32]> = batch.iter().map(|p| p.vector.as_slice()).collect();
        let ids = read_lock(&inner.engine).insert_many(&vectors)?;
        let mut order: Vec<(u32, usize)> = ids.iter().enumerate().map(|(k, &i)| (i, k)).collect();
        order.sort_unstable();
        let mut records = write_lock(&inner.records);
        let mut pending = write_lock(&inner.pending);
        let taken: std::collections::HashSet<u64> = batch.iter().map(|p| p.id).collect();
        let still: std::collections::HashSet<u64> = pending
            .iter()
            .filter(|p| taken.contains(&p.id))
            .map(|p| p.id)
            .collect();
        for (internal, k) in order {
            let p = &batch[k];
            records.push(internal, p.id, p.record.clone())?;
            if !still.contains(&p.id) {
                // Deleted while it was being inserted: keep the slot, dead.
                records.remove(p.id);
                read_lock(&inner.engine).delete(internal)?;
            }
        }
        pending.retain(|p| !taken.contains(&p.id));
        Ok(batch.len())
    }

    /// Moves every pending add into the graph (checkpoints, and callers that time a build).
    pub fn wait_indexed(&self) -> Result<(), IndexError> {
        while self.drain_once(4096)? > 0 {}
        Ok(())
    }

    fn check_vector(&self, v: &[f32]) -> Result<(), IndexError> {
        if v.len() != self.inner.dim {
            return Err(IndexError::Dimension {
                got: v.len(),
                expected: self.inner.dim,
            });
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(IndexError::Param("vector holds a non-finite value".into()));
        }
        Ok(())
    }

    /// Starts a background checkpoint when the log has grown past the threshold, or when
    /// tombstones call for a compaction (which the checkpoint runs first).
    fn maybe_checkpoint(&self) {
        let threshold = self.inner.checkpoint_bytes.load(Ordering::Relaxed);
        let due = self.inner.wal.segment_bytes() >= threshold
            || read_lock(&self.inner.engine).needs_compaction(COMPACT_RATIO);
        if due {
            self.start_checkpoint();
        }
    }

    /// Runs a checkpoint on a background thread unless one is running or the index is
    /// closing. Its failure is kept in `background` until a later checkpoint succeeds.
    fn start_checkpoint(&self) {
        if self.inner.checkpointing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.background();
        // Held across the spawn, so two writers that start checkpoints one after the other
        // store their handles in the same order.
        let mut slot = self
            .inner
            .ckpt_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.inner.closed.load(Ordering::Acquire) {
            self.inner.checkpointing.store(false, Ordering::Release);
            return;
        }
        let handle = std::thread::spawn(move || {
            if let Err(e) = me.checkpoint() {
                me.background_failed(|b| {
                    b.checkpoint = Some(format!("background checkpoint: {e}"));
                    b.retry_at = Some(Instant::now() + CHECKPOINT_RETRY);
                });
            }
            me.inner.checkpointing.store(false, Ordering::Release);
        });
        // The previous checkpoint's thread has finished (`checkpointing` was false).
        *slot = Some(handle);
    }

    /// Records a background failure: counted, and kept for [`IndexStats::background_error`].
    fn background_failed(&self, note: impl FnOnce(&mut Background)) {
        self.inner.background_errors.fetch_add(1, Ordering::Relaxed);
        note(
            &mut self
                .inner
                .background
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
    }

    /// The background failure outstanding now, if any: a checkpoint that could not be
    /// written (the log still holds every acknowledged write, but it cannot be cut), or
    /// adds the applier could not move into the graph.
    pub fn background_error(&self) -> Option<String> {
        let b = self
            .inner
            .background
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match (&b.checkpoint, &b.applier) {
            (Some(c), Some(a)) => Some(format!("{c}; {a}")),
            (Some(e), None) | (None, Some(e)) => Some(e.clone()),
            (None, None) => None,
        }
    }

    /// Tries a failed background checkpoint again once its pause is over (the applier calls
    /// this as it wakes), so the failure clears when space returns even if no write comes.
    fn retry_failed_checkpoint(&self) {
        let due = {
            let b = self
                .inner
                .background
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            b.checkpoint.is_some() && b.retry_at.is_none_or(|t| Instant::now() >= t)
        };
        if due {
            self.start_checkpoint();
        }
    }

    /// A handle for the index's own threads: it does not count as a user's, so it never
    /// joins the checkpoint thread (which may be the one holding it).
    fn background(&self) -> LocalIndex {
        LocalIndex {
            inner: Arc::clone(&self.inner),
            _owner: None,
        }
    }

    /// Writes a checkpoint of everything logged so far and deletes the log it covers.
    /// Appends wait while the generation is written; searches do not.
    pub fn checkpoint(&self) -> Result<(), IndexError> {
        let _one = self
            .inner
            .ckpt
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.checkpoint_locked().map(|_| ())
    }

    /// Rebuilds the engine from its live vectors while searches and writes go on, then swaps
    /// it in: the tombstones' memory is freed, and an index under steady add/delete churn stays
    /// the size of its live data. The rebuild works on a copy taken under the applier's lock
    /// (milliseconds); the writes that land meanwhile (adds past the copy, deletes of copied
    /// ids) are replayed onto the new engine at the swap, under the applier's lock and the
    /// records' write lock, which is the only pause searches see.
    fn compact_online(&self) -> Result<(), IndexError> {
        let inner = &self.inner;
        let (kind, live, data, n0) = {
            let _one = inner
                .apply_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let engine = read_lock(&inner.engine);
            let (live, data) = engine.live_rows();
            (engine.kind(), live, data, engine.len())
        };
        let mut fresh = Engine::build(kind, inner.dim, inner.params, data)?;

        let _one = inner
            .apply_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut records = write_lock(&inner.records);
        let map = {
            let old = read_lock(&inner.engine);
            let n1 = old.len();
            let mut map: Vec<Option<u32>> = vec![None; n1];
            for (new, &o) in live.iter().enumerate() {
                map[o as usize] = Some(new as u32);
                if !records.is_live(o) {
                    // Deleted during the rebuild: dead in the new engine too, until the next
                    // compaction.
                    fresh.delete(new as u32)?;
                }
            }
            let added: Vec<u32> = (n0 as u32..n1 as u32)
                .filter(|&i| records.is_live(i))
                .collect();
            let vectors: Vec<Vec<f32>> = added
                .iter()
                .map(|&i| {
                    old.vector(i).ok_or_else(|| IndexError::Corrupt {
                        path: inner.dir.clone(),
                        reason: format!("live slot {i} has no vector"),
                    })
                })
                .collect::<Result<_, _>>()?;
            if !fresh.has_room(vectors.len()) {
                fresh.reserve(vectors.len())?;
            }
            let refs: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
            for (&o, new) in added.iter().zip(fresh.insert_many(&refs)?) {
                map[o as usize] = Some(new);
            }
            map
        };
        let remapped = records.remap(&map)?;
        let old = std::mem::replace(&mut *write_lock(&inner.engine), fresh);
        let old_records = std::mem::replace(&mut *records, remapped);
        drop(records);
        drop(_one);
        drop(old);
        drop(old_records);
        release_free_memory();
        inner.compactions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes a consistent snapshot of the index to `out` while writes go on: a checkpoint,
    /// then its files packed into one checksummed file (see [`super::snapshot`]). Returns the
    /// snapshot's size and the log position it contains.
    pub fn snapshot_to(&self, out: &Path) -> Result<(u64, u64), IndexError> {
        // Holding the checkpoint lock keeps the generation from being replaced while it is
        // copied; appends continue into the log meanwhile.
        let _one = self
            .inner
            .ckpt
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (gdir, seq) = self.checkpoint_locked()?;
        let size = super::snapshot::write(&gdir, out)?;
        Ok((size, seq))
    }

    /// The checkpoint itself; the caller holds `ckpt`. Returns the new generation directory
    /// and the last log sequence number it contains.
    fn checkpoint_locked(&self) -> Result<(PathBuf, u64), IndexError> {
        let inner = &self.inner;
        // Before the log is held: the rebuild runs while appends go on.
        if read_lock(&inner.engine).needs_compaction(COMPACT_RATIO) {
            self.compact_online()?;
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let gen = format!("gen-{stamp}-{}", std::process::id());
        let tmp = inner.dir.join(format!(".tmp-{gen}"));
        let final_dir = inner.dir.join(&gen);
        fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        let covered = inner.wal.rotate_with(|last| -> Result<u64, IndexError> {
            // No appends now: what is pending is everything logged and not yet in the graph.
            self.wait_indexed()?;
            let _one = inner
                .apply_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let (kind, slots) = {
                let engine = read_lock(&inner.engine);
                engine.save(&tmp)?;
                (engine.kind(), engine.len())
            };
            let encoded = read_lock(&inner.records).encode();
            let rp = tmp.join("records.bin");
            crate::fsio::write_synced(&rp, &encoded).map_err(io_err("write", &rp))?;
            drop(encoded);
            // The records now live in that file: map it rather than keep one heap string per
            // field, so a server's records cost their encoded size after every checkpoint
            // (the mapping survives the directory's rename and the old generation's removal).
            *write_lock(&inner.records) = Records::open(&rp)?;
            let meta = Meta {
                format_version: FORMAT_VERSION,
                model: inner.model.clone(),
                model_path: inner.model_path.clone(),
                dim: inner.dim,
                hnsw: inner.params,
                engine: kind,
                next_id: inner.next_id.load(Ordering::Relaxed),
                checkpoint_seq: last,
                slots,
            };
            // Plain structs with string keys: serialisation cannot fail.
            let json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
            let mp = tmp.join("meta.json");
            crate::fsio::write_synced(&mp, &json).map_err(io_err("write", &mp))?;
            Ok(last)
        });
        let published = covered.and_then(|covered| {
            crate::fsio::sync_dir(&tmp).map_err(io_err("fsync", &tmp))?;
            fs::rename(&tmp, &final_dir).map_err(io_err("rename", &tmp))?;
            crate::fsio::sync_dir(&inner.dir).map_err(io_err("fsync", &inner.dir))?;
            let current = inner.dir.join("CURRENT");
            crate::fsio::write_atomic(&current, gen.as_bytes())
                .map_err(io_err("write", &current))?;
            Ok(covered)
        });
        let covered = match published {
            Ok(c) => c,
            Err(e) => {
                // A half-written generation (a full disk) holds space the next attempt needs.
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        inner.wal.truncate_through(covered)?;
        // Old generations and leftovers of interrupted checkpoints are garbage now.
        if let Ok(entries) = fs::read_dir(&inner.dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name != gen && (name.starts_with("gen-") || name.starts_with(".tmp-gen-")) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        inner.checkpoints.fetch_add(1, Ordering::Relaxed);
        {
            let mut b = inner
                .background
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            b.checkpoint = None;
            b.retry_at = None;
        }
        Ok((final_dir, covered))
    }

    /// Exact k nearest live records by brute force (ground truth; `--exact`).
    pub fn search_exact(&self, query: &[f32], k: usize, opts: &SearchOptions) -> Vec<(u64, f32)> {
        let records = read_lock(&self.inner.records);
        let pending = read_lock(&self.inner.pending);
        self.exact_locked(&records, &pending, query, k, opts)
    }

    fn exact_locked(
        &self,
        records: &Records,
        pending: &[PendingAdd],
        query: &[f32],
        k: usize,
        opts: &SearchOptions,
    ) -> Vec<(u64, f32)> {
        let keep = |i: u32| records.accepts(i, opts);
        let found = read_lock(&self.inner.engine).exact(query, k, &keep);
        let found = found
            .into_iter()
            .filter_map(|(i, d)| records.external(i).map(|e| (e, d)))
            .collect();
        merge_pending(found, pending, query, k, opts)
    }
}

/// Name of the file that points a model-swapped index at its live subdirectory.
pub const ACTIVE: &str = "ACTIVE";

/// The directory holding `CURRENT` for the index the user named `dir`: `dir` itself, or
/// the subdirectory its `ACTIVE` file names.
pub fn resolve_root(dir: &Path) -> Result<PathBuf, IndexError> {
    let active = dir.join(ACTIVE);
    match fs::read_to_string(&active) {
        Ok(s) => {
            let name = s.trim();
            if name.is_empty() || name.contains('/') || name.contains('\\') || name.contains("..") {
                return Err(IndexError::Corrupt {
                    path: dir.to_path_buf(),
                    reason: format!("{ACTIVE} names {name:?}"),
                });
            }
            Ok(dir.join(name))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(dir.to_path_buf()),
        Err(e) => Err(io_err("read", &active)(e)),
    }
}

/// A file that an open listed or named was removed before it was read: what a writer's
/// checkpoint does to the generation and log it has just superseded.
fn vanished(e: &IndexError) -> bool {
    let source = match e {
        IndexError::Io { source, .. } => source,
        IndexError::Wal(super::wal::WalError::Io { source, .. }) => source,
        _ => return false,
    };
    source.kind() == std::io::ErrorKind::NotFound
}

fn corrupt_dir(dir: &Path, reason: String) -> IndexError {
    IndexError::Corrupt {
        path: dir.to_path_buf(),
        reason,
    }
}

/// The record of external id `id`, from the store or the pending buffer.
fn lookup(records: &Records, pending: &[PendingAdd], id: u64) -> Option<Record> {
    match records.internal(id) {
        Some(i) => records.get(i),
        None => pending
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.record.clone()),
    }
}

/// Adds the pending adds that pass `opts` to `found` (exact distances) and keeps the `k`
/// nearest, ties by id.
fn merge_pending(
    mut found: Vec<(u64, f32)>,
    pending: &[PendingAdd],
    query: &[f32],
    k: usize,
    opts: &SearchOptions,
) -> Vec<(u64, f32)> {
    if pending.is_empty() {
        return found;
    }
    found.extend(
        pending
            .iter()
            .filter(|p| opts.accepts(&p.record))
            .map(|p| (p.id, htg_ann::kernels::l2_sq(query, &p.vector))),
    );
    found.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    found.dedup_by_key(|h| h.0);
    found.truncate(k);
    found
}

/// The background thread that moves pending adds into the graph; ends with the index. It
/// holds the index only while it works, never while it waits.
fn applier(weak: Weak<Inner>, wake: Arc<(Mutex<bool>, Condvar)>) {
    loop {
        {
            let Some(inner) = weak.upgrade() else { return };
            let index = LocalIndex {
                inner,
                _owner: None,
            };
            loop {
                match index.drain_once(1024) {
                    Ok(n) => {
                        index
                            .inner
                            .background
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .applier = None;
                        if n == 0 {
                            break;
                        }
                    }
                    Err(e) => {
                        index.background_failed(|b| {
                            b.applier = Some(format!("indexing: {e}"));
                        });
                        break;
                    }
                }
            }
            index.retry_failed_checkpoint();
        }
        let (flag, cv) = &*wake;
        let mut woken = flag.lock().unwrap_or_else(PoisonError::into_inner);
        if !*woken {
            woken = cv
                .wait_timeout(woken, Duration::from_millis(200))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *woken = false;
    }
}

impl SearchIndex for LocalIndex {
    fn location(&self) -> String {
        self.inner.dir.display().to_string()
    }

    fn model(&self) -> ModelId {
        self.inner.model.clone()
    }

    fn model_path(&self) -> Option<String> {
        self.inner.model_path.clone()
    }

    fn params(&self) -> HnswParams {
        self.inner.params
    }

    fn dim(&self) -> usize {
        self.inner.dim
    }

    fn len(&self) -> usize {
        let records = read_lock(&self.inner.records);
        records.live() + read_lock(&self.inner.pending).len()
    }

    fn record(&self, id: u64) -> Option<Record> {
        let records = read_lock(&self.inner.records);
        let pending = read_lock(&self.inner.pending);
        lookup(&records, &pending, id)
    }

    fn vector(&self, id: u64) -> Option<Vec<f32>> {
        let records = read_lock(&self.inner.records);
        let pending = read_lock(&self.inner.pending);
        match records.internal(id) {
            Some(i) => read_lock(&self.inner.engine).vector(i),
            None => pending
                .iter()
                .find(|p| p.id == id)
                .map(|p| p.vector.clone()),
        }
    }

    fn records(&self) -> Vec<(u64, Record)> {
        let records = read_lock(&self.inner.records);
        let pending = read_lock(&self.inner.pending);
        let mut all = records.all();
        all.extend(pending.iter().map(|p| (p.id, p.record.clone())));
        all
    }

    fn insert_many(&self, items: Vec<(Record, Vec<f32>)>) -> Result<Vec<u64>, IndexError> {
        for (_, v) in &items {
            self.check_vector(v)?;
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let n = items.len() as u64;
        let mut items = Some(items);
        let mut first_id = 0;
        let seq = self
            .inner
            .wal
            .append(
                |_| {
                    first_id = self.inner.next_id.fetch_add(n, Ordering::Relaxed);
                    items
                        .take()
                        .unwrap_or_default()
                        .into_iter()
                        .enumerate()
                        .map(|(k, (record, vector))| Op::Add {
                            id: first_id + k as u64,
                            record,
                            vector,
                        })
                        .collect()
                },
                |ops| self.apply(ops).map(|_| ()),
            )
            .map_err(wal_err)?;
        self.after_add(seq)?;
        Ok((first_id..first_id + n).collect())
    }

    fn remove_many(&self, ids: &[u64]) -> Result<Vec<bool>, IndexError> {
        let present: Vec<u64> = {
            let records = read_lock(&self.inner.records);
            let pending = read_lock(&self.inner.pending);
            ids.iter()
                .copied()
                .filter(|id| records.internal(*id).is_some() || pending.iter().any(|p| p.id == *id))
                .collect()
        };
        let mut removed = Vec::new();
        if !present.is_empty() {
            let seq = self
                .inner
                .wal
                .append(
                    |_| present.iter().map(|&id| Op::Remove { id }).collect(),
                    |ops| {
                        removed = self.apply(ops)?;
                        Ok(())
                    },
                )
                .map_err(wal_err)?;
            self.inner.wal.sync_to(seq)?;
            self.maybe_checkpoint();
        }
        let gone: std::collections::HashSet<u64> = present
            .iter()
            .zip(&removed)
            .filter(|(_, r)| **r)
            .map(|(id, _)| *id)
            .collect();
        Ok(ids.iter().map(|id| gone.contains(id)).collect())
    }

    fn search(
        &self,
        query: &[f32],
        k: usize,
        opts: &SearchOptions,
    ) -> Result<Vec<Hit>, IndexError> {
        if query.len() != self.inner.dim {
            return Err(IndexError::Dimension {
                got: query.len(),
                expected: self.inner.dim,
            });
        }
        if k == 0 {
            return Ok(Vec::new());
        }
        // One consistent view for the search and the records it returns.
        let records = read_lock(&self.inner.records);
        let pending = read_lock(&self.inner.pending);
        let found = if opts.exact {
            self.exact_locked(&records, &pending, query, k, opts)
        } else {
            let ef = opts.resolve(k, usize::MAX)?.ef;
            let keep = |i: u32| records.accepts(i, opts);
            let filtered = opts.filtered();
            let found = read_lock(&self.inner.engine).search(
                query,
                k,
                ef,
                filtered.then_some(&keep as &(dyn Fn(u32) -> bool + Sync)),
                None,
            )?;
            let found = found
                .into_iter()
                .filter(|(i, _)| records.is_live(*i))
                .filter_map(|(i, d)| records.external(i).map(|e| (e, d)))
                .collect();
            merge_pending(found, &pending, query, k, opts)
        };
        Ok(found
            .into_iter()
            .filter_map(|(id, distance)| {
                lookup(&records, &pending, id).map(|record| Hit {
                    id,
                    distance,
                    record,
                })
            })
            .collect())
    }

    fn flush(&self) -> Result<(), IndexError> {
        self.checkpoint()
    }

    fn stats(&self) -> IndexStats {
        IndexStats {
            engine: self.engine_kind().name().to_string(),
            count: self.len(),
            tombstones: read_lock(&self.inner.engine).tombstones(),
            unindexed: read_lock(&self.inner.pending).len(),
            log_bytes: self.inner.wal.pending_bytes(),
            checkpoints: self.inner.checkpoints.load(Ordering::Relaxed),
            compactions: self.inner.compactions.load(Ordering::Relaxed),
            background_error: self.background_error(),
            background_errors: self.inner.background_errors.load(Ordering::Relaxed),
        }
    }

    fn notice(&self) -> Option<String> {
        self.inner.notice.clone()
    }

    fn snapshot(&self, out: &Path) -> Result<(u64, u64), IndexError> {
        self.snapshot_to(out)
    }
}

/// Hands the heap pages freed by a compaction back to the system. glibc keeps freed memory in
/// its arenas for reuse, so without this a server's resident size stays at its high-water
/// mark (the old and the new engine side by side) after every compaction.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(dim: usize) -> ModelId {
        ModelId::synthetic(dim)
    }

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut v: Vec<f32> = (0..dim)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 2000) as f32 / 1000.0 - 1.0
            })
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }

    /// A new index with the default options in a fresh temporary directory.
    fn fresh(dim: usize) -> (tempfile::TempDir, LocalIndex) {
        let d = tempfile::tempdir().unwrap();
        let idx =
            LocalIndex::create(d.path(), model(dim), None, &CreateOptions::default()).unwrap();
        (d, idx)
    }

    fn rec(i: u64, label: &str) -> Record {
        Record {
            path: format!("/p/{i}.png"),
            sha256: format!("{i:064x}"),
            label: Some(label.into()),
        }
    }

    #[test]
    fn writes_are_visible_at_once_survive_reopen_and_deletes_stick() {
        let dim = 8;
        let (d, idx) = fresh(dim);
        let items: Vec<_> = (0..300u64)
            .map(|i| (rec(i, if i % 3 == 0 { "a" } else { "b" }), unit(i, dim)))
            .collect();
        let ids = idx.insert_many(items).unwrap();
        // Read your writes: found at once, whether or not the applier has moved them yet.
        let q = unit(7, dim);
        let hits = idx.search(&q, 1, &SearchOptions::default()).unwrap();
        assert_eq!(hits[0].id, ids[7]);
        assert!(hits[0].distance < 1e-5);
        assert!(idx.remove(ids[7]).unwrap());
        assert!(
            !idx.remove(ids[7]).unwrap(),
            "a second delete finds nothing"
        );
        let hits = idx.search(&q, 5, &SearchOptions::default()).unwrap();
        assert!(hits.iter().all(|h| h.id != ids[7]));
        idx.wait_indexed().unwrap();
        assert_eq!(idx.stats().unindexed, 0);
        let only_a = SearchOptions {
            label: Some("a".into()),
            ..Default::default()
        };
        let hits = idx.search(&q, 10, &only_a).unwrap();
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|h| h.record.label.as_deref() == Some("a")));
        drop(idx);
        // Reopen: replayed from the log (no checkpoint since create).
        let idx = LocalIndex::open(d.path()).unwrap();
        assert_eq!(idx.len(), 299);
        assert!(idx.record(ids[7]).is_none());
        assert_eq!(idx.record(ids[8]).unwrap().path, "/p/8.png");
        // Checkpoint, reopen from the mapped files: the same answers.
        let before = idx
            .search(&unit(11, dim), 10, &SearchOptions::default())
            .unwrap();
        idx.checkpoint().unwrap();
        assert_eq!(
            idx.stats().log_bytes,
            0,
            "the checkpoint covers the whole log"
        );
        drop(idx);
        let idx = LocalIndex::open(d.path()).unwrap();
        let after = idx
            .search(&unit(11, dim), 10, &SearchOptions::default())
            .unwrap();
        assert_eq!(before, after);
        let exact = SearchOptions {
            exact: true,
            ..Default::default()
        };
        let truth = idx.search(&unit(11, dim), 10, &exact).unwrap();
        let overlap = truth
            .iter()
            .filter(|h| after.iter().any(|a| a.id == h.id))
            .count();
        assert!(overlap >= 9, "recall@10 {overlap}/10");
    }

    #[test]
    fn dropping_an_index_mid_checkpoint_leaves_a_directory_that_reopens_whole() {
        // Every write starts a background checkpoint; the handle is dropped while it is still
        // writing its generation, and the directory is reopened at once. Before the drop
        // waited for it, the reopen could read `CURRENT` just before the old index's
        // checkpoint published a newer generation and deleted the one read.
        let dim = 32;
        let (d, idx) = fresh(dim);
        drop(idx);
        let mut ids = Vec::new();
        for round in 0..8u64 {
            let idx = LocalIndex::open(d.path()).unwrap();
            assert_eq!(idx.len(), ids.len(), "round {round}");
            idx.set_checkpoint_bytes(1);
            let items = (0..4000u64)
                .map(|i| (rec(round * 4000 + i, "x"), unit(round * 4000 + i, dim)))
                .collect();
            ids.extend(idx.insert_many(items).unwrap());
            assert!(
                idx.inner.checkpointing.load(Ordering::Acquire),
                "round {round}"
            );
            drop(idx);
            // Quiet at once: the checkpoint has finished, published and cleaned up, and the
            // directory does not change after the drop returns.
            let listing = || {
                let mut names: Vec<String> = fs::read_dir(d.path())
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                    .filter(|n| n.contains("gen-"))
                    .collect();
                names.sort();
                names
            };
            let names = listing();
            std::thread::sleep(Duration::from_millis(150));
            assert_eq!(listing(), names, "round {round}");
            let current = fs::read_to_string(d.path().join("CURRENT")).unwrap();
            assert_eq!(names, vec![current.trim().to_string()], "round {round}");
        }
        let idx = LocalIndex::open(d.path()).unwrap();
        assert_eq!(idx.len(), ids.len());
        assert!(ids.iter().all(|&id| idx.record(id).is_some()));
    }

    #[test]
    fn a_reader_opens_the_index_while_its_writer_checkpoints() {
        // `htg search` beside a server that writes: each checkpoint publishes a generation and
        // deletes the one before, possibly the one a reader has just read from `CURRENT`.
        let dim = 16;
        let (d, idx) = fresh(dim);
        let writer = {
            let idx = idx.clone();
            std::thread::spawn(move || {
                for round in 0..40u64 {
                    let items = (0..100u64)
                        .map(|i| (rec(round * 100 + i, "x"), unit(round * 100 + i, dim)))
                        .collect();
                    idx.insert_many(items).unwrap();
                    idx.checkpoint().unwrap();
                }
            })
        };
        let mut opened = 0;
        let mut seen = 0;
        while !writer.is_finished() {
            let reader = LocalIndex::open(d.path()).unwrap();
            assert!(reader.len() >= seen, "{} after {seen}", reader.len());
            seen = reader.len();
            opened += 1;
        }
        writer.join().unwrap();
        assert!(opened > 5, "only {opened} opens overlapped the writer");
        assert_eq!(LocalIndex::open(d.path()).unwrap().len(), 4000);
    }

    #[test]
    fn compaction_runs_beside_writes_frees_the_tombstones_and_loses_nothing() {
        for engine in [EngineKind::Htg, EngineKind::HnswRs] {
            compaction_beside_writes(engine);
        }
    }

    fn compaction_beside_writes(engine: EngineKind) {
        let d = tempfile::tempdir().unwrap();
        let dim = 8;
        let opts = CreateOptions {
            engine,
            ..CreateOptions::default()
        };
        let idx = LocalIndex::create(d.path(), model(dim), None, &opts).unwrap();
        let ids = idx
            .insert_many((0..4000u64).map(|i| (rec(i, "x"), unit(i, dim))).collect())
            .unwrap();
        idx.wait_indexed().unwrap();
        // Past the ratio: a quarter of the graph is tombstones.
        let dead: Vec<u64> = ids.iter().copied().step_by(4).collect();
        idx.remove_many(&dead).unwrap();
        // A writer adds and deletes while the compaction rebuilds, so the swap has writes to
        // carry over: adds past its copy, deletes of ids it copied.
        let writer = {
            let idx = idx.clone();
            let ids = ids.clone();
            std::thread::spawn(move || {
                let mut added = Vec::new();
                let mut removed = Vec::new();
                for k in 0..400u64 {
                    added.push((
                        idx.insert(rec(10_000 + k, "y"), &unit(10_000 + k, dim))
                            .unwrap(),
                        10_000 + k,
                    ));
                    let victim = ids[(4 * k + 1) as usize];
                    assert!(idx.remove(victim).unwrap());
                    removed.push(victim);
                }
                (added, removed)
            })
        };
        idx.checkpoint().unwrap();
        let (added, removed) = writer.join().unwrap();
        idx.checkpoint().unwrap();
        let stats = idx.stats();
        assert!(stats.compactions >= 1, "{stats:?}");
        assert_eq!(stats.count, 4000 - 1000 + 400 - 400);
        // Whatever the rebuild did not drop is below the ratio again.
        assert!(stats.tombstones <= 800, "{stats:?}");
        // Nothing is lost: exact search finds every kept record's own vector at distance 0.
        // The graph is checked apart, by recall: HNSW is approximate, and at the default
        // candidate list our engine's graph, rebuilt beside writes, misses a top-1 now and
        // then (0 or 1 of the 772 probes per check in ten local runs; one such miss failed
        // CI when this asserted every probe). A swap that dropped nodes or links misses more
        // than 1%.
        let exact = SearchOptions {
            exact: true,
            ..Default::default()
        };
        let check = |idx: &LocalIndex| {
            let gone: std::collections::HashSet<u64> =
                dead.iter().chain(&removed).copied().collect();
            let mut probes: Vec<(u64, Vec<f32>)> = Vec::new();
            for (i, &id) in ids.iter().enumerate() {
                assert_eq!(idx.record(id).is_none(), gone.contains(&id), "id {id}");
                if !gone.contains(&id) && i % 7 == 0 {
                    let v = unit(i as u64, dim);
                    let hit = &idx.search(&v, 1, &exact).unwrap()[0];
                    let want = (id, format!("/p/{i}.png"));
                    assert_eq!((hit.id, hit.record.path.clone()), want, "{}", hit.distance);
                    probes.push((id, v));
                }
            }
            for &(id, seed) in &added {
                let v = unit(seed, dim);
                let hit = &idx.search(&v, 1, &exact).unwrap()[0];
                assert_eq!(hit.id, id);
                assert!(hit.distance < 1e-5);
                probes.push((id, v));
            }
            let misses: Vec<u64> = probes
                .iter()
                .filter(|(id, v)| idx.search(v, 1, &SearchOptions::default()).unwrap()[0].id != *id)
                .map(|(id, _)| *id)
                .collect();
            assert!(
                misses.len() * 100 <= probes.len(),
                "{engine:?}: HNSW top-1 missed {} of {} records: {misses:?}",
                misses.len(),
                probes.len()
            );
            let hits = idx.search(&unit(3, dim), 50, &exact).unwrap();
            assert!(hits.iter().all(|h| !gone.contains(&h.id)));
        };
        check(&idx);
        drop(idx);
        let idx = LocalIndex::open(d.path()).unwrap();
        assert_eq!(idx.len(), 3000);
        check(&idx);
    }

    #[test]
    fn a_snapshot_restores_and_a_damaged_one_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let dim = 4;
        let idx = LocalIndex::create(
            &d.path().join("i"),
            model(dim),
            None,
            &CreateOptions::default(),
        )
        .unwrap();
        idx.insert_many((0..50u64).map(|i| (rec(i, "x"), unit(i, dim))).collect())
            .unwrap();
        let snap = d.path().join("s.htgsnap");
        let (bytes, _) = idx.snapshot_to(&snap).unwrap();
        assert!(bytes > 50 * 16);
        idx.insert(rec(99, "y"), &unit(99, dim)).unwrap();
        super::super::snapshot::restore(&snap, &d.path().join("r")).unwrap();
        let r = LocalIndex::open(&d.path().join("r")).unwrap();
        assert_eq!(
            r.len(),
            50,
            "the snapshot holds what was there when it was taken"
        );
        let data = std::fs::read(&snap).unwrap();
        std::fs::write(&snap, &data[..data.len() - 10]).unwrap();
        let err = super::super::snapshot::restore(&snap, &d.path().join("r2")).unwrap_err();
        assert!(
            err.to_string().contains("not a valid htg snapshot"),
            "{err}"
        );
        assert!(!d.path().join("r2").join("CURRENT").exists());
        assert!(
            super::super::snapshot::restore(&snap, &d.path().join("r")).is_err(),
            "refuses to overwrite"
        );
    }
}
