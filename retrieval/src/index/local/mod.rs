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
//! it covers. A delete leaves a tombstone in the graph, and its slot, after a short grace
//! ([`DEFAULT_REUSE_GRACE`]), takes the vector of a later add ([`htg_ann::graph::Graph::replace`]),
//! so the graph stays the size of its live data under add/delete churn without a rebuild.
//! A rebuild from the live vectors is the explicit [`LocalIndex::compact`] (`htg compact`),
//! for an index that shrank for good; on `hnsw_rs`, which cannot reuse a slot, the next
//! checkpoint runs it once tombstones pass a fifth of the graph. Either way searches and
//! writes go on meanwhile.
//! Searches take only read locks and never wait for a write's fsync or a checkpoint.
//! On open, the checkpoint is mapped (graph and records are not parsed whole) and the log is
//! replayed; a torn last entry is dropped, a corrupt one in the middle is refused. An open that
//! overlaps another process's checkpoint starts again from the new `CURRENT`, and dropping the
//! last handle waits for the index's own checkpoint in flight, so the directory is quiet after.
//!
//! The files: this one (the types, open, create, the `LOCK`), [`write`] (the one add path and
//! deletes), [`applier`] (pending adds into the graph, background failures), [`checkpoint`]
//! (checkpoints, compaction, snapshots) and [`search`] (searches and the [`SearchIndex`] impl).

mod applier;
mod checkpoint;
mod search;
#[cfg(test)]
mod tests;
mod write;

use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::{io_err, IndexError};
use super::legacy;
use super::records::Records;
use super::seam::CreateOptions;
use super::types::{HnswParams, Record};
use super::wal::Wal;
use crate::embed::ModelId;
use htg_ann::engine::{Engine, EngineKind};

/// Current on-disk format version (1: JSON records and an `hnsw_rs` dump, read by
/// [`legacy`]; 2: engine file, `records.bin` and a write-ahead log).
pub const FORMAT_VERSION: u32 = 2;

/// Default log size that triggers a background checkpoint.
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 64 << 20;

/// How long a deleted slot rests before an add reuses it. Searches are safe without it: they
/// hold the records' read lock, which a delete waits out, and the graph checks slot
/// generations. The rest is for the graph's own writers: inserts in flight when the delete
/// landed may still be choosing the old vector as a neighbour, and they finish before the
/// slot changes meaning.
pub const DEFAULT_REUSE_GRACE: Duration = Duration::from_millis(100);

/// Acknowledged adds allowed to wait for the graph before writers help move them in.
pub(super) const MAX_PENDING: usize = 8192;

/// The fewest pending adds a writer past [`MAX_PENDING`] moves in: enough that helping
/// outpaces one writer's adds, few enough that the add waiting on it stays a short write.
pub(super) const HELP_MIN: usize = 64;

/// What `meta.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Meta {
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
    /// Deleted engine slots waiting to take new vectors, oldest first, with when each was
    /// freed (see [`applier`]): the graph then stays the size of its live data under churn.
    free: Mutex<VecDeque<(u32, Instant)>>,
    /// How long a freed slot rests before it is reused, in milliseconds.
    reuse_grace_ms: AtomicU64,
    /// Set while a compaction rebuilds from its copy: no slot is reused meanwhile, since the
    /// rebuild would carry the copied vector over under the slot's new record.
    compacting: AtomicBool,
    /// What the background threads last failed at, until they succeed again: nobody waits on
    /// them, so this is how a full disk under a background checkpoint becomes visible
    /// (`/stats`, `/readyz`, `/metrics`, `htg index`).
    background: Mutex<Background>,
    /// Background failures since open (a counter: each failed attempt).
    background_errors: AtomicU64,
    /// Set when the last user handle drops: no new background checkpoint starts after it.
    closed: AtomicBool,
    /// The `LOCK` file, held from the first write (or [`LocalIndex::lock_writes`]) on.
    lock_file: Mutex<Option<File>>,
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
pub(super) const CHECKPOINT_RETRY: Duration = Duration::from_secs(1);

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
        let handle = self.0.ckpt_thread.lock().take();
        if let Some(h) = handle {
            // The thread records its own error; a panic in it has nothing left to report.
            let _ = h.join();
        }
    }
}

fn read_lock<T>(l: &RwLock<T>) -> parking_lot::RwLockReadGuard<'_, T> {
    l.read()
}

fn write_lock<T>(l: &RwLock<T>) -> parking_lot::RwLockWriteGuard<'_, T> {
    l.write()
}

/// Attempts to take the index's `LOCK` file before concluding another process writes.
const LOCK_TRIES: u32 = 41;
/// Pause between two attempts.
const LOCK_WAIT: Duration = Duration::from_millis(50);

/// Takes `lock` within `tries` attempts, `wait` apart; whether it is now held. The answer
/// comes from the attempts themselves, so a lock taken by the last one is kept, not dropped.
fn lock_with_retries(lock: &File, tries: u32, wait: Duration) -> bool {
    for attempt in 0..tries {
        if lock.try_lock().is_ok() {
            return true;
        }
        if attempt + 1 < tries {
            std::thread::sleep(wait);
        }
    }
    false
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
        let engine = Engine::new(
            opts.engine,
            dim,
            opts.params.graph(),
            opts.capacity.max(1024),
        )?;
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
            free: Mutex::new(VecDeque::new()),
            reuse_grace_ms: AtomicU64::new(DEFAULT_REUSE_GRACE.as_millis() as u64),
            compacting: AtomicBool::new(false),
            background: Mutex::new(Background::default()),
            background_errors: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            lock_file: Mutex::new(None),
            notice,
        });
        let index = LocalIndex {
            _owner: Some(Arc::new(Owner(Arc::clone(&inner)))),
            inner,
        };
        index.refill_free_slots();
        index.spawn_applier();
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
                // The graph and the records are separate files, each checksummed and
                // validated whole: opened side by side, the slower one sets the time to a
                // first answer, not their sum.
                let (engine, records) = std::thread::scope(|s| {
                    let records = s.spawn(|| Records::open(&gdir.join("records.bin")));
                    let engine = Engine::open(meta.engine, &gdir, meta.dim, meta.hnsw.graph());
                    let records = records
                        .join()
                        .unwrap_or_else(|p| std::panic::resume_unwind(p));
                    (engine, records)
                });
                let (engine, records) = (engine?, records?);
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
        let mut engine = Engine::new(EngineKind::Htg, v1.dim, v1.hnsw.graph(), rows.len())?;
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
    /// view has gone stale. It also starts the log's segment.
    pub fn lock_writes(&self) -> Result<(), IndexError> {
        self.hold_lock()?;
        drop(self.inner.wal.lock()?);
        Ok(())
    }

    /// Holds the `LOCK` file from now until the index closes: one writing process per index.
    /// Every write and checkpoint calls this first; only the first call opens the file.
    pub(super) fn hold_lock(&self) -> Result<(), IndexError> {
        let mut held = self.inner.lock_file.lock();
        if held.is_some() {
            return Ok(());
        }
        let path = self.inner.dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        // A handle of this process that was just dropped may still be finishing a batch:
        // wait briefly before concluding someone else writes.
        if !lock_with_retries(&lock, LOCK_TRIES, LOCK_WAIT) {
            return Err(IndexError::Io {
                op: "lock",
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    "another process is writing this index",
                ),
            });
        }
        *held = Some(lock);
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

    /// How long a deleted slot rests before an add may reuse it ([`DEFAULT_REUSE_GRACE`]).
    pub fn set_reuse_grace(&self, grace: Duration) {
        self.inner
            .reuse_grace_ms
            .store(grace.as_millis() as u64, Ordering::Relaxed);
    }

    /// Queues a slot just deleted for reuse, when the engine can reuse slots.
    pub(super) fn free_slot(&self, slot: u32) {
        if read_lock(&self.inner.engine).reuses_slots() {
            self.inner.free.lock().push_back((slot, Instant::now()));
        }
    }

    /// Rebuilds the reuse queue from the records' deleted slots (on open, after the log's
    /// replay and after a compaction renumbers the slots); they are all past their grace, as
    /// no search predates them. The caller holds the applier's lock or runs before the
    /// applier, so no slot is queued while an add holds it.
    pub(super) fn refill_free_slots(&self) {
        // Records, then engine, then the queue: the order a delete takes them in
        // (`apply` holds the records while it queues), so the two never wait on each other.
        let records = read_lock(&self.inner.records);
        let reuses = read_lock(&self.inner.engine).reuses_slots();
        let mut free = self.inner.free.lock();
        free.clear();
        if !reuses {
            return;
        }
        let past = Instant::now()
            .checked_sub(Duration::from_millis(
                self.inner.reuse_grace_ms.load(Ordering::Relaxed),
            ))
            .unwrap_or_else(Instant::now);
        free.extend(records.dead_slots().map(|i| (i, past)));
    }

    /// Takes up to `max` freed slots whose grace is over, oldest first.
    pub(super) fn take_free_slots(&self, max: usize) -> Vec<u32> {
        let grace = Duration::from_millis(self.inner.reuse_grace_ms.load(Ordering::Relaxed));
        let now = Instant::now();
        let mut free = self.inner.free.lock();
        let mut out = Vec::new();
        while out.len() < max {
            match free.front() {
                Some(&(slot, at)) if now.duration_since(at) >= grace => {
                    free.pop_front();
                    out.push(slot);
                }
                _ => break,
            }
        }
        out
    }

    pub(super) fn check_vector(&self, v: &[f32]) -> Result<(), IndexError> {
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
