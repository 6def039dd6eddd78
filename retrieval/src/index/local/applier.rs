//! The applier: moves acknowledged adds from the pending buffer into the graph, on a
//! background thread (and on writers' threads when a bulk load outruns it), and keeps what
//! background work failed at so that it is seen.

use parking_lot::{Condvar, Mutex};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{read_lock, write_lock, Background, Inner, LocalIndex, PendingAdd};
use crate::index::error::IndexError;

impl LocalIndex {
    /// Moves up to `max` pending adds into the graph; returns how many were taken. Inserts run
    /// through the engine's `&self` path, concurrently with searches; the hand-over from the
    /// pending buffer to the records is one critical section, so a search sees each add
    /// exactly once.
    pub(super) fn drain_once(&self, max: usize) -> Result<usize, IndexError> {
        let inner = &self.inner;
        let _one = inner.apply_lock.lock();
        let batch: Vec<PendingAdd> = read_lock(&inner.pending)
            .iter()
            .take(max)
            .cloned()
            .collect();
        if batch.is_empty() {
            return Ok(0);
        }
        // Deleted slots past their grace take the first adds; the rest grow the graph.
        let reuse = if read_lock(&inner.engine).reuses_slots()
            && !inner.compacting.load(Ordering::Acquire)
        {
            self.take_free_slots(batch.len())
        } else {
            Vec::new()
        };
        let (again, fresh) = batch.split_at(reuse.len());
        if !read_lock(&inner.engine).has_room(fresh.len()) {
            write_lock(&inner.engine).reserve(fresh.len())?;
        }
        if !again.is_empty() {
            let items: Vec<(u32, &[f32])> = reuse
                .iter()
                .zip(again)
                .map(|(&slot, p)| (slot, p.vector.as_slice()))
                .collect();
            let engine = read_lock(&inner.engine);
            if let Err(e) = engine.replace_many(&items) {
                // Some slots may hold their new vector already: dead again, and queued again.
                for &slot in &reuse {
                    engine.delete(slot)?;
                }
                drop(engine);
                let mut free = inner.free.lock();
                for &slot in reuse.iter().rev() {
                    free.push_front((slot, std::time::Instant::now()));
                }
                return Err(e.into());
            }
        }
        let vectors: Vec<&[f32]> = fresh.iter().map(|p| p.vector.as_slice()).collect();
        let ids = read_lock(&inner.engine).insert_many(&vectors)?;
        let mut order: Vec<(u32, usize)> = ids
            .iter()
            .enumerate()
            .map(|(k, &i)| (i, again.len() + k))
            .collect();
        order.sort_unstable();
        let mut records = write_lock(&inner.records);
        let mut pending = write_lock(&inner.pending);
        let taken: std::collections::HashSet<u64> = batch.iter().map(|p| p.id).collect();
        let still: std::collections::HashSet<u64> = pending
            .iter()
            .filter(|p| taken.contains(&p.id))
            .map(|p| p.id)
            .collect();
        let placed = reuse.iter().zip(again).map(|(&slot, p)| (slot, p, true));
        let grown = order.into_iter().map(|(i, k)| (i, &batch[k], false));
        for (internal, p, reused) in placed.chain(grown) {
            if reused {
                records.reuse(internal, p.id, p.record.clone())?;
            } else {
                records.push(internal, p.id, p.record.clone())?;
            }
            if !still.contains(&p.id) {
                // Deleted while it was being inserted: the slot is dead, and free again.
                records.remove(p.id);
                read_lock(&inner.engine).delete(internal)?;
                self.free_slot(internal);
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

    /// Records a background failure: counted, and kept for [`IndexStats::background_error`].
    pub(super) fn background_failed(&self, note: impl FnOnce(&mut Background)) {
        self.inner.background_errors.fetch_add(1, Ordering::Relaxed);
        note(&mut self.inner.background.lock());
    }

    /// The background failure outstanding now, if any: a checkpoint that could not be
    /// written (the log still holds every acknowledged write, but it cannot be cut), or
    /// adds the applier could not move into the graph.
    pub fn background_error(&self) -> Option<String> {
        let b = self.inner.background.lock();
        match (&b.checkpoint, &b.applier) {
            (Some(c), Some(a)) => Some(format!("{c}; {a}")),
            (Some(e), None) | (None, Some(e)) => Some(e.clone()),
            (None, None) => None,
        }
    }

    /// Starts the applier thread; it holds the index only while it works.
    pub(super) fn spawn_applier(&self) {
        let weak = Arc::downgrade(&self.inner);
        let wake = Arc::clone(&self.inner.wake);
        std::thread::Builder::new()
            .name("htg-index-applier".into())
            .spawn(move || applier(weak, wake))
            .expect("spawning the index applier thread");
    }
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
                // A closed index's pending adds are in its log, and the next open replays
                // them: moving them in here would keep the whole index alive (its graph,
                // its records) for as long as the backlog takes, beside its successor.
                if index.inner.closed.load(Ordering::Acquire) {
                    return;
                }
                match index.drain_once(1024) {
                    Ok(n) => {
                        index.inner.background.lock().applier = None;
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
        let mut woken = flag.lock();
        if !*woken {
            cv.wait_for(&mut woken, Duration::from_millis(200));
        }
        *woken = false;
    }
}
