//! Checkpoints (a new generation written while appends wait, `CURRENT` swapped, the log it
//! covers deleted), compaction (explicit with our engine, whose deleted slots are reused; run
//! first by a checkpoint when tombstones pass a fifth of an `hnsw_rs` graph), and snapshots
//! (a checkpoint packed into one file).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{read_lock, write_lock, LocalIndex, Meta, CHECKPOINT_RETRY, FORMAT_VERSION};
use crate::index::error::{io_err, IndexError};
use crate::index::records::Records;
use htg_ann::engine::Engine;

/// Tombstones past this fraction of the graph start a checkpoint that compacts them away.
pub(super) const COMPACT_RATIO: f64 = 0.2;

impl LocalIndex {
    /// Starts a background checkpoint when the log has grown past the threshold, or when
    /// tombstones call for a compaction (which the checkpoint runs first).
    pub(super) fn maybe_checkpoint(&self) {
        let threshold = self.inner.checkpoint_bytes.load(Ordering::Relaxed);
        let due = self.inner.wal.segment_bytes() >= threshold || self.compaction_due();
        if due {
            self.start_checkpoint();
        }
    }

    /// Whether tombstones call for a rebuild on their own: only on an engine that cannot
    /// reuse their slots (`hnsw_rs`). Ours gives deleted slots to the next adds, so a
    /// rebuild is the explicit [`LocalIndex::compact`] (`htg compact`), not routine work.
    fn compaction_due(&self) -> bool {
        let engine = read_lock(&self.inner.engine);
        !engine.reuses_slots() && engine.needs_compaction(COMPACT_RATIO)
    }

    /// Rebuilds the graph from its live vectors now, whatever the tombstones, and writes a
    /// checkpoint of the result: the maintenance behind `htg compact`, for an index that
    /// shrank for good (deletes not followed by adds keep their slots until reused).
    /// Searches and writes go on meanwhile, as in a routine compaction.
    pub fn compact(&self) -> Result<(), IndexError> {
        let _one = self.inner.ckpt.lock();
        self.hold_lock()?;
        self.compact_online()?;
        self.checkpoint_locked().map(|_| ())
    }

    /// Runs a checkpoint on a background thread unless one is running or the index is
    /// closing. Its failure is kept in `background` until a later checkpoint succeeds.
    pub(super) fn start_checkpoint(&self) {
        if self.inner.checkpointing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.background();
        // Held across the spawn, so two writers that start checkpoints one after the other
        // store their handles in the same order.
        let mut slot = self.inner.ckpt_thread.lock();
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

    /// Tries a failed background checkpoint again once its pause is over (the applier calls
    /// this as it wakes), so the failure clears when space returns even if no write comes.
    pub(super) fn retry_failed_checkpoint(&self) {
        let due = {
            let b = self.inner.background.lock();
            b.checkpoint.is_some() && b.retry_at.is_none_or(|t| Instant::now() >= t)
        };
        if due {
            self.start_checkpoint();
        }
    }

    /// A handle for the index's own threads: it does not count as a user's, so it never
    /// joins the checkpoint thread (which may be the one holding it).
    pub(super) fn background(&self) -> LocalIndex {
        LocalIndex {
            inner: Arc::clone(&self.inner),
            _owner: None,
        }
    }

    /// Writes a checkpoint of everything logged so far and deletes the log it covers.
    /// Appends wait while the generation is written; searches do not.
    pub fn checkpoint(&self) -> Result<(), IndexError> {
        let _one = self.inner.ckpt.lock();
        self.checkpoint_locked().map(|_| ())
    }

    /// Rebuilds the engine from its live vectors while searches and writes go on, then swaps
    /// it in: the tombstones' memory is freed, and an index under steady add/delete churn stays
    /// the size of its live data. The rebuild works on a copy taken under the applier's lock
    /// (milliseconds); the writes that land meanwhile (adds past the copy, deletes of copied
    /// ids) are replayed onto the new engine at the swap, under the applier's lock and the
    /// records' write lock, which is the only pause searches see.
    /// Makes the graph traverse 8-bit codes from now on (trained on the vectors it holds; later
    /// adds are encoded with the same ranges, and a compaction quantises its rebuild again).
    /// Taken under the applier's lock and the engine's write lock, so no insert is half-encoded;
    /// the next checkpoint writes the codes.
    pub fn quantize(&self) -> Result<(), IndexError> {
        let _one = self.inner.apply_lock.lock();
        Ok(write_lock(&self.inner.engine).quantize()?)
    }

    fn compact_online(&self) -> Result<(), IndexError> {
        let inner = &self.inner;
        /// Lets slots be reused again however the compaction ends.
        struct Reuse<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Reuse<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let (kind, live, data, n0, _reuse) = {
            let _one = inner.apply_lock.lock();
            // From the copy to the swap no add reuses a slot: only slots past the copy's end
            // can then be new, and those are carried over below.
            inner.compacting.store(true, Ordering::Release);
            let reuse = Reuse(&inner.compacting);
            let engine = read_lock(&inner.engine);
            let (live, data) = engine.live_rows();
            (engine.kind(), live, data, engine.len(), reuse)
        };
        let mut fresh = Engine::build(kind, inner.dim, inner.params.graph(), data)?;

        let _one = inner.apply_lock.lock();
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
        // Still under the applier's lock: no add takes a slot numbered for the old engine.
        self.refill_free_slots();
        drop(_one);
        drop(old);
        drop(old_records);
        release_free_memory();
        inner.compactions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes a consistent snapshot of the index to `out` while writes go on: a checkpoint,
    /// then its files packed into one checksummed file (see [`crate::index::snapshot`]). Returns the
    /// snapshot's size and the log position it contains.
    pub fn snapshot_to(&self, out: &Path) -> Result<(u64, u64), IndexError> {
        // Holding the checkpoint lock keeps the generation from being replaced while it is
        // copied; appends continue into the log meanwhile.
        let _one = self.inner.ckpt.lock();
        let (gdir, seq) = self.checkpoint_locked()?;
        let size = crate::index::snapshot::write(&gdir, out)?;
        Ok((size, seq))
    }

    /// The checkpoint itself; the caller holds `ckpt`. Returns the new generation directory
    /// and the last log sequence number it contains.
    fn checkpoint_locked(&self) -> Result<(PathBuf, u64), IndexError> {
        let inner = &self.inner;
        // A checkpoint writes: the one writing process holds the `LOCK`.
        self.hold_lock()?;
        // Before the log is held: the rebuild runs while appends go on.
        if self.compaction_due() {
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
            let _one = inner.apply_lock.lock();
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
            let mut b = inner.background.lock();
            b.checkpoint = None;
            b.retry_at = None;
        }
        Ok((final_dir, covered))
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
