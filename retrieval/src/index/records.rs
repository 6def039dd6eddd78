//! The record store: what the index knows about each image, addressed by the engine's internal
//! id, in a compact binary file that is memory-mapped on open instead of parsed whole.
//!
//! File `records.bin` (little-endian):
//! `magic "HTGRECS1"`, `u64 count`, `u64 ext_id × count`, `u64 offset × (count + 1)` into the
//! blob, the blob (per record: `u8 live`, `str path`, `str sha256`, `u8 has_label`
//! [`str label`], each `str` a `u32` length and UTF-8 bytes), then a `u32` crc32 of everything
//! before it. A truncated or altered file fails its checksum and is refused.
//!
//! Records added since the checkpoint live in memory after the mapped ones; deletions are a
//! bitset over internal ids. Filters compare the mapped bytes without allocating.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use htg_ann::codec::{self, put_str, Cursor};
use memmap2::Mmap;

use super::error::IndexError;
use super::types::{Record, SearchOptions};

const MAGIC: &[u8; 8] = b"HTGRECS1";

/// One mapped checkpoint of records.
struct Mapped {
    map: Mmap,
    count: usize,
}

impl Mapped {
    fn u64_at(&self, o: usize) -> u64 {
        Cursor::new(&self.map[o..]).u64().unwrap_or_default()
    }

    fn ext_id(&self, i: usize) -> u64 {
        self.u64_at(16 + i * 8)
    }

    fn offset(&self, i: usize) -> usize {
        self.u64_at(16 + self.count * 8 + i * 8) as usize
    }

    fn blob_start(&self) -> usize {
        16 + self.count * 8 + (self.count + 1) * 8
    }

    /// The encoded bytes of record `i` (validated at open).
    fn raw(&self, i: usize) -> &[u8] {
        let b = self.blob_start();
        &self.map[b + self.offset(i)..b + self.offset(i + 1)]
    }
}

/// Fields of an encoded record, borrowed.
struct Fields<'a> {
    live: bool,
    path: &'a str,
    sha256: &'a str,
    label: Option<&'a str>,
}

fn parse(b: &[u8]) -> Option<Fields<'_>> {
    let mut c = Cursor::new(b);
    let live = c.u8().ok()? == 1;
    let path = c.str().ok()?;
    let sha256 = c.str().ok()?;
    let label = match c.u8().ok()? {
        0 => None,
        1 => Some(c.str().ok()?),
        _ => return None,
    };
    c.rest().is_empty().then_some(Fields {
        live,
        path,
        sha256,
        label,
    })
}

fn encode(r: &Record, live: bool, out: &mut Vec<u8>) {
    out.push(u8::from(live));
    put_str(out, &r.path);
    put_str(out, &r.sha256);
    match &r.label {
        Some(l) => {
            out.push(1);
            put_str(out, l);
        }
        None => out.push(0),
    }
}

/// Records by internal id, with the external-id map.
#[derive(Default)]
pub struct Records {
    mapped: Option<Mapped>,
    /// Records at internal ids `mapped.count..`.
    extra: Vec<Record>,
    /// Records put into reused slots of the mapped range (the map itself is read-only).
    reused: HashMap<u32, Record>,
    /// Internal → external id, every slot (live or not).
    ext: Vec<u64>,
    /// External → internal id, live records only.
    int: HashMap<u64, u32>,
    /// Deleted internal ids, one bit each.
    dead: Vec<u64>,
}

impl Records {
    /// Slots (live and deleted).
    pub fn slots(&self) -> usize {
        self.ext.len()
    }

    /// Live records.
    pub fn live(&self) -> usize {
        self.int.len()
    }

    /// The internal id of a live external id.
    pub fn internal(&self, ext: u64) -> Option<u32> {
        self.int.get(&ext).copied()
    }

    /// The external id of internal slot `i`.
    pub fn external(&self, i: u32) -> Option<u64> {
        self.ext.get(i as usize).copied()
    }

    fn is_dead(&self, i: usize) -> bool {
        self.dead
            .get(i / 64)
            .is_some_and(|w| w >> (i % 64) & 1 == 1)
    }

    /// The deleted slots, ascending: what a reopened index can reuse.
    pub fn dead_slots(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.ext.len() as u32).filter(|&i| self.is_dead(i as usize))
    }

    /// Whether internal id `i` is a live record (not deleted, and already added).
    pub fn is_live(&self, i: u32) -> bool {
        (i as usize) < self.ext.len() && !self.is_dead(i as usize)
    }

    fn with_fields<T>(&self, i: u32, f: impl FnOnce(Fields<'_>) -> T) -> Option<T> {
        let i = i as usize;
        if i >= self.ext.len() {
            return None;
        }
        // Only a mapped slot can have been reused into the side map, and the lookup is
        // skipped while it is empty: filters call this for every node a search visits.
        let reused = match &self.mapped {
            Some(m) if i < m.count && !self.reused.is_empty() => self.reused.get(&(i as u32)),
            _ => None,
        };
        match &self.mapped {
            Some(m) if i < m.count && reused.is_none() => parse(m.raw(i)).map(f),
            _ => {
                let base = self.mapped.as_ref().map_or(0, |m| m.count);
                let r = match reused {
                    Some(r) => r,
                    None => self.extra.get(i - base)?,
                };
                Some(f(Fields {
                    live: true,
                    path: &r.path,
                    sha256: &r.sha256,
                    label: r.label.as_deref(),
                }))
            }
        }
    }

    /// The record at internal id `i`, if live.
    pub fn get(&self, i: u32) -> Option<Record> {
        if !self.is_live(i) {
            return None;
        }
        self.with_fields(i, |f| Record {
            path: f.path.to_string(),
            sha256: f.sha256.to_string(),
            label: f.label.map(str::to_string),
        })
    }

    /// Whether the live record at `i` passes the search filters, without allocating.
    pub fn accepts(&self, i: u32, opts: &SearchOptions) -> bool {
        self.is_live(i)
            && self
                .with_fields(i, |f| {
                    opts.label.as_deref().is_none_or(|l| f.label == Some(l))
                        && opts
                            .path_prefix
                            .as_deref()
                            .is_none_or(|p| f.path.starts_with(p))
                })
                .unwrap_or(false)
    }

    /// Appends a live record at the next internal id, which must be `i`.
    pub fn push(&mut self, i: u32, ext: u64, r: Record) -> Result<(), IndexError> {
        if i as usize != self.ext.len() {
            return Err(IndexError::Corrupt {
                path: Default::default(),
                reason: format!(
                    "engine gave internal id {i}, the record store expected {}",
                    self.ext.len()
                ),
            });
        }
        self.extra.push(r);
        self.ext.push(ext);
        self.int.insert(ext, i);
        Ok(())
    }

    /// Puts a live record into deleted slot `i`, which the engine has just reused.
    pub fn reuse(&mut self, i: u32, ext: u64, r: Record) -> Result<(), IndexError> {
        let slot = i as usize;
        if slot >= self.ext.len() || !self.is_dead(slot) {
            return Err(IndexError::Corrupt {
                path: Default::default(),
                reason: format!("engine reused slot {i}, which holds no deleted record"),
            });
        }
        let base = self.mapped.as_ref().map_or(0, |m| m.count);
        if slot < base {
            self.reused.insert(i, r);
        } else {
            self.extra[slot - base] = r;
        }
        self.ext[slot] = ext;
        self.int.insert(ext, i);
        self.dead[slot / 64] &= !(1 << (i % 64));
        Ok(())
    }

    /// Marks the record with external id `ext` deleted; returns its internal id.
    pub fn remove(&mut self, ext: u64) -> Option<u32> {
        let i = self.int.remove(&ext)?;
        self.set_dead(i);
        Some(i)
    }

    /// Every live record with its external id, in internal-id order.
    pub fn all(&self) -> Vec<(u64, Record)> {
        (0..self.ext.len() as u32)
            .filter_map(|i| self.get(i).map(|r| (self.ext[i as usize], r)))
            .collect()
    }

    /// Keeps only the slots `map` sends somewhere, renumbered (after an engine compaction).
    /// A kept slot that is deleted stays deleted at its new place: an online compaction keeps
    /// the slots deleted while it rebuilt, tombstoned in the new engine too.
    pub fn remap(&self, map: &[Option<u32>]) -> Result<Records, IndexError> {
        let mut out = Records::default();
        let mut kept: Vec<(u32, u32)> = map
            .iter()
            .enumerate()
            .filter_map(|(old, new)| new.map(|n| (n, old as u32)))
            .collect();
        kept.sort_unstable();
        for (new, old) in kept {
            let r = self
                .with_fields(old, |f| Record {
                    path: f.path.to_string(),
                    sha256: f.sha256.to_string(),
                    label: f.label.map(str::to_string),
                })
                .ok_or_else(|| IndexError::Corrupt {
                    path: Default::default(),
                    reason: format!("compaction kept slot {old}, which holds no record"),
                })?;
            let ext = self.ext[old as usize];
            if self.is_dead(old as usize) {
                // Pushed dead: the live slot of a reused external id keeps its mapping.
                out.extra.push(r);
                out.ext.push(ext);
                out.set_dead(new);
            } else {
                out.push(new, ext, r)?;
            }
        }
        Ok(out)
    }

    fn set_dead(&mut self, i: u32) {
        let w = i as usize / 64;
        if self.dead.len() <= w {
            self.dead.resize(w + 1, 0);
        }
        self.dead[w] |= 1 << (i % 64);
    }

    /// Encodes every slot into the `records.bin` format.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.ext.len();
        let mut blob = Vec::with_capacity(n * 96);
        let mut offsets = Vec::with_capacity(n + 1);
        for i in 0..n as u32 {
            offsets.push(blob.len() as u64);
            let live = self.is_live(i);
            let ok = self.with_fields(i, |f| {
                encode(
                    &Record {
                        path: f.path.to_string(),
                        sha256: f.sha256.to_string(),
                        label: f.label.map(str::to_string),
                    },
                    live,
                    &mut blob,
                )
            });
            if ok.is_none() {
                // Unreachable for a store that passed validation; keep the slot well-formed.
                encode(&Record::default(), false, &mut blob);
            }
        }
        offsets.push(blob.len() as u64);
        let mut out = Vec::with_capacity(16 + n * 16 + 8 + blob.len() + 4);
        out.extend_from_slice(MAGIC);
        codec::put_u64(&mut out, n as u64);
        for e in &self.ext {
            codec::put_u64(&mut out, *e);
        }
        for o in offsets {
            codec::put_u64(&mut out, o);
        }
        out.extend_from_slice(&blob);
        codec::seal(&mut out);
        out
    }

    /// Maps and validates `records.bin`.
    pub fn open(path: &Path) -> Result<Records, IndexError> {
        let bad = |reason: String| IndexError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|source| IndexError::Io {
            op: "open",
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: index files are written once, by rename, and never modified in place, so the
        // map does not change under us.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| IndexError::Io {
            op: "map",
            path: path.to_path_buf(),
            source,
        })?;
        if map.len() < 16 + 8 + 4 || &map[..8] != MAGIC {
            return Err(bad(
                "not an htg records file (bad magic or too short)".into()
            ));
        }
        let body = codec::unseal(&map)
            .ok_or_else(|| bad("records.bin fails its checksum (truncated or altered)".into()))?;
        let count = Cursor::new(&body[8..]).u64().unwrap_or(u64::MAX);
        let count = usize::try_from(count)
            .ok()
            .filter(|c| c.checked_mul(16).is_some_and(|b| b + 24 <= body.len()))
            .ok_or_else(|| bad(format!("records.bin claims {count} records")))?;
        let m = Mapped { map, count };
        let blob_len = m.map.len() - 4 - m.blob_start();
        let mut prev = 0;
        for i in 0..=count {
            let o = m.offset(i);
            if o < prev || o > blob_len || (i == 0 && o != 0) || (i == count && o != blob_len) {
                return Err(bad(format!("record offset {i} is out of order")));
            }
            prev = o;
        }
        let mut out = Records {
            ext: (0..count).map(|i| m.ext_id(i)).collect(),
            ..Records::default()
        };
        out.dead = vec![0; count.div_ceil(64)];
        // Sized once: growing to 1M entries rehashes twenty times.
        out.int.reserve(count);
        for i in 0..count {
            let f = parse(m.raw(i)).ok_or_else(|| bad(format!("record {i} is malformed")))?;
            if f.live {
                if out.int.insert(out.ext[i], i as u32).is_some() {
                    return Err(bad(format!("id {} is stored twice", out.ext[i])));
                }
            } else {
                out.dead[i / 64] |= 1 << (i % 64);
            }
        }
        out.mapped = Some(m);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> Record {
        Record {
            path: format!("/a/{i}.png"),
            sha256: format!("{i:064x}"),
            label: i.is_multiple_of(2).then(|| format!("l{i}")),
        }
    }

    #[test]
    fn encode_open_round_trip_with_deletions_and_filters() {
        let mut r = Records::default();
        for i in 0..5u32 {
            r.push(i, 100 + u64::from(i), rec(u64::from(i))).unwrap();
        }
        assert_eq!(r.remove(101), Some(1));
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("records.bin");
        std::fs::write(&p, r.encode()).unwrap();
        let mut o = Records::open(&p).unwrap();
        assert_eq!(o.all(), r.all());
        assert_eq!(o.get(1), None, "deleted stays deleted");
        assert_eq!(o.internal(104), Some(4));
        let opts = SearchOptions {
            label: Some("l2".into()),
            ..Default::default()
        };
        assert!(o.accepts(2, &opts));
        assert!(!o.accepts(4, &opts));
        o.push(5, 105, rec(5)).unwrap();
        assert_eq!(o.get(5), Some(rec(5)));
        assert!(
            o.push(9, 1, rec(9)).is_err(),
            "ids must follow the engine's"
        );
    }

    #[test]
    fn a_damaged_file_is_refused() {
        let mut r = Records::default();
        r.push(0, 7, rec(7)).unwrap();
        let bytes = r.encode();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("records.bin");
        for cut in [bytes.len() - 1, 20, 3] {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            assert!(Records::open(&p).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[30] ^= 1;
        std::fs::write(&p, &flipped).unwrap();
        assert!(Records::open(&p).is_err());
    }
}
