//! The write path: one add path (fresh ids or ids the caller chose) and deletes. A write
//! takes the index's `LOCK`, then the log's append lock; under it ids are allocated, the ops
//! appended and applied in memory, so memory changes in log order; then the log is synced
//! (one fsync shared by concurrent writers) before the write returns.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use super::{read_lock, write_lock, LocalIndex, PendingAdd, HELP_MIN, MAX_PENDING};
use crate::index::error::IndexError;
use crate::index::types::Record;
use crate::index::wal::{Entry, Op};

/// Whose ids an add uses.
enum Ids {
    /// The next ones the index hands out.
    Fresh,
    /// Ones the caller chose (a model swap keeps every image's id), one per item.
    Chosen(Vec<u64>),
}

impl LocalIndex {
    /// Adds records under ids the caller chose (a model swap keeps every image's id); ids
    /// already present are refused. Durable on return.
    pub fn insert_with_ids(&self, items: Vec<(u64, Record, Vec<f32>)>) -> Result<(), IndexError> {
        let (ids, items): (Vec<u64>, Vec<(Record, Vec<f32>)>) =
            items.into_iter().map(|(id, r, v)| (id, (r, v))).unzip();
        self.add(Ids::Chosen(ids), items).map(|_| ())
    }

    /// Adds records under the next ids; returns them once durable.
    pub(super) fn insert_fresh(
        &self,
        items: Vec<(Record, Vec<f32>)>,
    ) -> Result<Vec<u64>, IndexError> {
        self.add(Ids::Fresh, items)
    }

    /// The one add path: check, log, apply, sync, then keep the pending buffer bounded and
    /// start a checkpoint when the log has grown.
    fn add(&self, ids: Ids, items: Vec<(Record, Vec<f32>)>) -> Result<Vec<u64>, IndexError> {
        for (_, v) in &items {
            self.check_vector(v)?;
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        if let Ids::Chosen(chosen) = &ids {
            let records = read_lock(&self.inner.records);
            let pending = read_lock(&self.inner.pending);
            let mut seen = HashSet::new();
            for id in chosen {
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
        self.hold_lock()?;
        let (seq, ids) = {
            let mut log = self.inner.wal.lock()?;
            // Under the append lock: ids follow the log's order.
            let n = items.len() as u64;
            let ids: Vec<u64> = match ids {
                Ids::Fresh => {
                    let first = self.inner.next_id.fetch_add(n, Ordering::Relaxed);
                    (first..first + n).collect()
                }
                Ids::Chosen(chosen) => {
                    let top = chosen.iter().map(|id| id + 1).max().unwrap_or(0);
                    self.inner.next_id.fetch_max(top, Ordering::Relaxed);
                    chosen
                }
            };
            let ops: Vec<Op> = ids
                .iter()
                .zip(items)
                .map(|(&id, (record, vector))| Op::Add { id, record, vector })
                .collect();
            let seq = log.append(&ops)?;
            self.apply(&ops)?;
            (seq, ids)
        };
        self.after_add(seq)?;
        Ok(ids)
    }

    /// Removes records; for each id, whether it was there. Durable on return.
    pub(super) fn remove_ids(&self, ids: &[u64]) -> Result<Vec<bool>, IndexError> {
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
            self.hold_lock()?;
            let seq = {
                let mut log = self.inner.wal.lock()?;
                let ops: Vec<Op> = present.iter().map(|&id| Op::Remove { id }).collect();
                let seq = log.append(&ops)?;
                removed = self.apply(&ops)?;
                seq
            };
            self.inner.wal.sync_to(seq)?;
            self.maybe_checkpoint();
        }
        let gone: HashSet<u64> = present
            .iter()
            .zip(&removed)
            .filter(|(_, r)| **r)
            .map(|(id, _)| *id)
            .collect();
        Ok(ids.iter().map(|id| gone.contains(id)).collect())
    }

    pub(super) fn replay(&self, entries: Vec<Entry>) -> Result<(), IndexError> {
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
        // batches while the index already answers. It waits for the applier's lock, so the
        // replayed deletes' slots are queued (free at once: no search started before them)
        // before the replayed adds look for slots.
        let _one = self.inner.apply_lock.lock();
        self.apply(&ops)?;
        self.refill_free_slots();
        Ok(())
    }

    /// Applies logged ops in memory (under the log's append lock, or while replaying): adds
    /// join the pending buffer (searched exactly at once, moved into the graph by the
    /// applier), so a write's cost does not grow with the index; deletes apply directly.
    pub(super) fn apply(&self, ops: &[Op]) -> Result<Vec<bool>, IndexError> {
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
                        self.free_slot(internal);
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
            *flag.lock() = true;
            cv.notify_one();
        }
        Ok(out)
    }

    /// What every add does once its ops are appended: make them durable, keep the pending
    /// buffer bounded, and start a checkpoint when the log has grown.
    pub(super) fn after_add(&self, seq: u64) -> Result<(), IndexError> {
        self.inner.wal.sync_to(seq)?;
        // A bulk load outruns the applier: past a bound, the writer helps it, so the pending
        // buffer (and the exact scan every search does over it) stays small. It helps in
        // proportion to the overshoot: a single add one past the bound moves a small batch
        // (a batch of 4,096 made single writes of 2.2 s where fsync is free), a bulk load
        // big ones.
        loop {
            let over = read_lock(&self.inner.pending)
                .len()
                .saturating_sub(MAX_PENDING);
            if over == 0 || self.drain_once(over.clamp(HELP_MIN, 4096))? == 0 {
                break;
            }
        }
        self.maybe_checkpoint();
        Ok(())
    }
}
