//! The write-ahead log: every add and delete is appended here and fsynced before it is
//! acknowledged, so an index never has to rewrite itself to make one write durable.
//!
//! Layout: segment files `wal-<first seq, 20 digits>.log` in the index directory, each a
//! sequence of entries `[u32 payload length][u32 crc32 of payload][payload]` (little-endian).
//! A payload is `u64 seq`, `u8 op`, then the op's body. Sequence numbers increase by one across
//! segments. A checkpoint rotates to a new segment, writes a generation holding everything up
//! to the last sequence of the old segments, and then deletes those segments.
//!
//! On open, a torn tail (an entry cut short, or the last entry failing its checksum, as a crash
//! mid-append leaves it) is dropped and the file truncated; a bad entry followed by more data is
//! corruption and a clear error, never a silent skip.
//!
//! Group commit: appends write under a short mutex, and [`Wal::sync_to`] fsyncs once for every
//! writer whose entry is already in the file, so concurrent writers share fsyncs.
//!
//! A plain log: [`Wal::lock`] returns a guard that holds the append order, [`WalGuard::append`]
//! writes entries and returns the last sequence number, and the caller applies them itself
//! while it holds the guard. The log knows nothing of the index above it, and the index's
//! `LOCK` file (one writing process) is the index's to take before it writes.

use htg_ann::codec::{self, Cursor};
use parking_lot::{Mutex, MutexGuard};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

pub use super::error::WalError;
use super::types::Record;

/// One logged change.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A record and its vector were added under `id`.
    Add {
        /// External id.
        id: u64,
        /// The record.
        record: Record,
        /// Its l2-normalised vector.
        vector: Vec<f32>,
    },
    /// The record `id` was deleted.
    Remove {
        /// External id.
        id: u64,
    },
}

/// An entry read back from the log.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Position in the total order of writes.
    pub seq: u64,
    /// The change.
    pub op: Op,
}

const OP_ADD: u8 = 1;
const OP_REMOVE: u8 = 2;
/// Largest payload accepted on read: a longer length field is damage, not a record.
const MAX_PAYLOAD: u32 = 64 << 20;

/// Encodes one entry, header included.
pub fn encode(seq: u64, op: &Op) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    codec::put_u64(&mut p, seq);
    match op {
        Op::Add { id, record, vector } => {
            p.push(OP_ADD);
            codec::put_u64(&mut p, *id);
            codec::put_str(&mut p, &record.path);
            codec::put_str(&mut p, &record.sha256);
            match &record.label {
                Some(l) => {
                    p.push(1);
                    codec::put_str(&mut p, l);
                }
                None => p.push(0),
            }
            codec::put_f32s(&mut p, vector);
        }
        Op::Remove { id } => {
            p.push(OP_REMOVE);
            codec::put_u64(&mut p, *id);
        }
    }
    let mut out = Vec::with_capacity(p.len() + codec::FRAME_HEADER);
    codec::put_frame(&mut out, &p);
    out
}

/// Decodes a payload whose checksum already matched.
pub fn decode_payload(p: &[u8]) -> Result<Entry, String> {
    let field = |e: codec::CodecError| e.to_string();
    let mut c = Cursor::new(p);
    let seq = c.u64().map_err(field)?;
    let op = match c.u8().map_err(field)? {
        OP_ADD => {
            let id = c.u64().map_err(field)?;
            let path = c.str().map_err(field)?.to_string();
            let sha256 = c.str().map_err(field)?.to_string();
            let label = match c.u8().map_err(field)? {
                0 => None,
                1 => Some(c.str().map_err(field)?.to_string()),
                t => return Err(format!("label tag {t}")),
            };
            let vector = c.f32s().map_err(field)?;
            Op::Add {
                id,
                record: Record {
                    path,
                    sha256,
                    label,
                },
                vector,
            }
        }
        OP_REMOVE => Op::Remove {
            id: c.u64().map_err(field)?,
        },
        t => return Err(format!("unknown op {t}")),
    };
    if !c.rest().is_empty() {
        return Err(format!("{} bytes after the entry", c.rest().len()));
    }
    Ok(Entry { seq, op })
}

/// Reads every entry of one segment's bytes. Returns the entries and the length of the valid
/// prefix (shorter than `bytes` when the tail is torn).
pub fn parse_segment(path: &Path, bytes: &[u8]) -> Result<(Vec<Entry>, usize), WalError> {
    let mut entries = Vec::new();
    let mut off = 0usize;
    while off < bytes.len() {
        let corrupt = |reason: String| WalError::Corrupt {
            path: path.to_path_buf(),
            offset: off as u64,
            reason,
        };
        if let Ok(len) = Cursor::new(&bytes[off..]).u32() {
            if len > MAX_PAYLOAD {
                // An impossible length with bytes after where it would end is damage; one that
                // runs to or past the end may be the torn header of an entry being written.
                if off + codec::FRAME_HEADER + (len as usize) < bytes.len() {
                    return Err(corrupt(format!("entry length {len} is impossible")));
                }
                break;
            }
        }
        let (payload, used) = match codec::read_frame(&bytes[off..]) {
            codec::Frame::Whole(payload, used) => (payload, used),
            // Torn: the entry runs past the end of the file.
            codec::Frame::Short { .. } => break,
            // Torn: the final entry was cut mid-write.
            codec::Frame::BadChecksum(used) if off + used == bytes.len() => break,
            codec::Frame::BadChecksum(_) => return Err(corrupt("checksum mismatch".into())),
        };
        let entry = decode_payload(payload).map_err(corrupt)?;
        entries.push(entry);
        off += used;
    }
    Ok((entries, off))
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("wal-{first_seq:020}.log")
}

/// The segments in `dir`, oldest first, with their first sequence numbers.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let e = e.map_err(io_err("list", dir))?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name
            .strip_prefix("wal-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

struct Writer {
    file: File,
    path: PathBuf,
    first_seq: u64,
    /// Sequence number the next append gets.
    next_seq: u64,
}

/// Where the writer will start: set on open, used when the first append creates a segment.
struct Pending {
    next_seq: u64,
    /// The newest segment's torn tail, cut off before a new segment follows it.
    torn: Option<(PathBuf, u64)>,
}

/// An open log: appends, group-committed fsyncs and segment rotation. Opening only reads;
/// the first append creates a segment, so read-only users (`htg search` beside a running
/// server) never write.
pub struct Wal {
    dir: PathBuf,
    writer: Mutex<Result<Writer, Pending>>,
    /// Highest sequence number known durable; the mutex also serialises fsyncs.
    synced: Mutex<u64>,
}

/// What [`Wal::open`] found: the log, and the entries after `after_seq` to replay.
pub struct Opened {
    /// The log, ready to append after the last valid entry.
    pub wal: Wal,
    /// Entries with `seq > after_seq`, in order.
    pub replay: Vec<Entry>,
    /// Bytes dropped from a torn tail (0 when the log ended cleanly).
    pub torn_bytes: u64,
}

impl Wal {
    /// Opens (or starts) the log in `dir`. Entries up to `after_seq` are already in the
    /// checkpoint and are not returned; a torn tail of the newest segment is truncated away.
    pub fn open(dir: &Path, after_seq: u64) -> Result<Opened, WalError> {
        let segs = segments(dir)?;
        let mut replay = Vec::new();
        let mut torn = None;
        let mut torn_bytes = 0u64;
        let mut next_seq = after_seq + 1;
        let count = segs.len();
        for (i, (_, path)) in segs.iter().enumerate() {
            let mut bytes = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io_err("read", path))?;
            let (entries, valid) = parse_segment(path, &bytes)?;
            if valid < bytes.len() {
                if i + 1 != count {
                    return Err(WalError::Corrupt {
                        path: path.clone(),
                        offset: valid as u64,
                        reason: "an older segment ends in a torn entry".into(),
                    });
                }
                torn_bytes = (bytes.len() - valid) as u64;
                torn = Some((path.clone(), valid as u64));
            }
            for e in entries {
                if e.seq > after_seq {
                    if e.seq != next_seq {
                        return Err(WalError::Corrupt {
                            path: path.clone(),
                            offset: 0,
                            reason: format!("sequence {} follows {}", e.seq, next_seq - 1),
                        });
                    }
                    next_seq = e.seq + 1;
                    replay.push(e);
                }
            }
        }
        Ok(Opened {
            wal: Wal {
                dir: dir.to_path_buf(),
                writer: Mutex::new(Err(Pending { next_seq, torn })),
                synced: Mutex::new(next_seq - 1),
            },
            replay,
            torn_bytes,
        })
    }

    /// The writer, created on first use: cut a torn tail, start a segment. The caller holds
    /// the index's `LOCK` (the log does not know it exists).
    fn writer<'a>(
        &self,
        slot: &'a mut Result<Writer, Pending>,
    ) -> Result<&'a mut Writer, WalError> {
        if let Err(p) = slot {
            if let Some((path, valid)) = p.torn.take() {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("open", &path))?;
                f.set_len(valid).map_err(io_err("truncate", &path))?;
                f.sync_all().map_err(io_err("fsync", &path))?;
            }
            let (path, file) = create_segment(&self.dir, p.next_seq)?;
            *slot = Ok(Writer {
                file,
                path,
                first_seq: p.next_seq,
                next_seq: p.next_seq,
            });
        }
        match slot {
            Ok(w) => Ok(w),
            Err(_) => unreachable!("the writer was just created"),
        }
    }

    /// Takes the append lock (starting a segment on first use): entries appended under the
    /// guard are in log order, and what the caller does before dropping it (applying them,
    /// allocating ids) happens in that order too.
    pub fn lock(&self) -> Result<WalGuard<'_>, WalError> {
        let mut slot = self.writer.lock();
        self.writer(&mut slot)?;
        Ok(WalGuard { slot })
    }

    /// Bytes appended to the current segment so far.
    pub fn segment_bytes(&self) -> u64 {
        match &*self.writer.lock() {
            Ok(w) => w.file.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Makes every entry up to `seq` durable. One fsync covers all writers that appended
    /// before it started, so concurrent writers share it.
    pub fn sync_to(&self, seq: u64) -> Result<(), WalError> {
        let mut synced = self.synced.lock();
        if *synced >= seq {
            return Ok(());
        }
        let (file, path, upto) = {
            let mut slot = self.writer.lock();
            let w = self.writer(&mut slot)?;
            let f = w.file.try_clone().map_err(io_err("open", &w.path))?;
            (f, w.path.clone(), w.next_seq - 1)
        };
        file.sync_data().map_err(io_err("fsync", &path))?;
        *synced = upto;
        Ok(())
    }

    /// Starts a new segment and runs `snapshot` with the last sequence number of the old
    /// ones while appends are blocked: what it captures is exactly the state after that
    /// entry. Searches are not affected (they never take this lock).
    pub fn rotate_with<T, E: From<WalError>>(
        &self,
        snapshot: impl FnOnce(u64) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut slot = self.writer.lock();
        let w = self.writer(&mut slot)?;
        let last = w.next_seq - 1;
        if w.next_seq != w.first_seq {
            w.file.sync_data().map_err(io_err("fsync", &w.path))?;
            let (path, file) = create_segment(&self.dir, w.next_seq)?;
            w.first_seq = w.next_seq;
            w.file = file;
            w.path = path;
            // `synced` is not raised here: `sync_to` takes it before this lock, so taking it
            // under this lock could deadlock. A later `sync_to` of an entry up to `last` costs
            // one fsync of the new (empty) segment.
        }
        snapshot(last)
    }

    /// Deletes the segments whose entries are all at or below `seq` (covered by a
    /// checkpoint). The segment being appended to is never deleted.
    pub fn truncate_through(&self, seq: u64) -> Result<(), WalError> {
        let current = match &*self.writer.lock() {
            Ok(w) => w.first_seq,
            Err(p) => p.next_seq,
        };
        let segs = segments(&self.dir)?;
        for (i, (first, path)) in segs.iter().enumerate() {
            if *first >= current {
                continue;
            }
            let next_first = segs.get(i + 1).map_or(current, |s| s.0);
            if next_first <= seq + 1 {
                fs::remove_file(path).map_err(io_err("remove", path))?;
            }
        }
        crate::fsio::sync_dir(&self.dir).map_err(io_err("fsync", &self.dir))
    }

    /// Bytes in the segments not yet covered by a checkpoint (what replay would read).
    pub fn pending_bytes(&self) -> u64 {
        segments(&self.dir)
            .map(|s| {
                s.iter()
                    .filter_map(|(_, p)| fs::metadata(p).ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// The sequence number the next append will get.
    pub fn next_seq(&self) -> u64 {
        match &*self.writer.lock() {
            Ok(w) => w.next_seq,
            Err(p) => p.next_seq,
        }
    }
}

/// The append lock, from [`Wal::lock`]: appends under it are in log order.
pub struct WalGuard<'a> {
    slot: MutexGuard<'a, Result<Writer, Pending>>,
}

impl WalGuard<'_> {
    /// The sequence number the next append gets.
    pub fn next_seq(&self) -> u64 {
        match &*self.slot {
            Ok(w) => w.next_seq,
            Err(p) => p.next_seq,
        }
    }

    /// Appends `ops` without syncing; returns the last sequence number. Pass it to
    /// [`Wal::sync_to`] before acknowledging. On a failed write (a full disk) nothing of
    /// `ops` stays in the log.
    pub fn append(&mut self, ops: &[Op]) -> Result<u64, WalError> {
        let Ok(w) = &mut *self.slot else {
            unreachable!("Wal::lock created the writer")
        };
        let first = w.next_seq;
        let mut buf = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            buf.extend_from_slice(&encode(first + i as u64, op));
        }
        let start = w
            .file
            .metadata()
            .map_err(io_err("stat", &w.path.clone()))?
            .len();
        if let Err(e) = w.file.write_all(&buf) {
            // A partial write (a full disk) leaves a torn entry: cut the file back to where
            // this append began, so the next append follows a whole entry. Cutting never
            // needs space; if it fails anyway, the next append cuts it and starts a new
            // segment, as after a crash.
            let path = w.path.clone();
            if w.file.set_len(start).is_err() {
                *self.slot = Err(Pending {
                    next_seq: first,
                    torn: Some((path.clone(), start)),
                });
            }
            return Err(io_err("append to", &path)(e));
        }
        w.next_seq = first + ops.len() as u64;
        Ok(w.next_seq - 1)
    }
}

fn create_segment(dir: &Path, first_seq: u64) -> Result<(PathBuf, File), WalError> {
    let path = dir.join(segment_name(first_seq));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_err("create", &path))?;
    crate::fsio::sync_dir(dir).map_err(io_err("fsync", dir))?;
    Ok((path, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(id: u64) -> Op {
        Op::Add {
            id,
            record: Record {
                path: format!("/img/{id}.png"),
                sha256: "ab".repeat(32),
                label: id.is_multiple_of(2).then(|| "even \"quoted\"".to_string()),
            },
            vector: vec![id as f32, -1.5, 0.25],
        }
    }

    fn append(w: &Wal, ops: &[Op]) -> u64 {
        let s = w.lock().unwrap().append(ops).unwrap();
        w.sync_to(s).unwrap();
        s
    }

    #[test]
    fn entries_round_trip_and_replay_after_the_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let o = Wal::open(d.path(), 0).unwrap();
        assert!(o.replay.is_empty());
        append(&o.wal, &[add(1), add(2)]);
        append(&o.wal, &[Op::Remove { id: 1 }]);
        drop(o);
        let o = Wal::open(d.path(), 0).unwrap();
        let ops: Vec<Op> = o.replay.iter().map(|e| e.op.clone()).collect();
        assert_eq!(ops, vec![add(1), add(2), Op::Remove { id: 1 }]);
        assert_eq!(
            o.replay.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        drop(o);
        let o = Wal::open(d.path(), 2).unwrap();
        assert_eq!(
            o.replay.len(),
            1,
            "entries covered by the checkpoint are skipped"
        );
        assert_eq!(o.wal.next_seq(), 4);
    }

    #[test]
    fn a_torn_tail_is_dropped_and_a_corrupt_middle_refused() {
        let d = tempfile::tempdir().unwrap();
        let o = Wal::open(d.path(), 0).unwrap();
        append(&o.wal, &[add(1), add(2), add(3)]);
        drop(o);
        let (_, path) = segments(d.path()).unwrap().remove(0);
        let full = fs::read(&path).unwrap();
        assert!(!full.is_empty());
        // Torn: cut the last entry in half.
        fs::write(&path, &full[..full.len() - 7]).unwrap();
        let o = Wal::open(d.path(), 0).unwrap();
        assert_eq!(o.replay.len(), 2);
        assert!(o.torn_bytes > 0);
        assert_eq!(
            o.wal.next_seq(),
            3,
            "appends continue after the last good entry"
        );
        drop(o);
        // Corrupt middle: flip a byte inside the first entry's payload.
        let (_, path) = segments(d.path()).unwrap().remove(0);
        let mut bytes = fs::read(&path).unwrap();
        bytes[20] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let err = Wal::open(d.path(), 0).err().expect("corruption is refused");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn rotation_and_truncation_keep_only_uncovered_entries() {
        let d = tempfile::tempdir().unwrap();
        let o = Wal::open(d.path(), 0).unwrap();
        append(&o.wal, &[add(1), add(2)]);
        let covered = o.wal.rotate_with(Ok::<u64, WalError>).unwrap();
        assert_eq!(covered, 2);
        append(&o.wal, &[add(3)]);
        o.wal.truncate_through(covered).unwrap();
        drop(o);
        let o = Wal::open(d.path(), covered).unwrap();
        assert_eq!(o.replay.len(), 1);
        assert_eq!(o.replay[0].seq, 3);
    }

    #[test]
    fn concurrent_writers_all_become_durable() {
        let d = tempfile::tempdir().unwrap();
        let o = Wal::open(d.path(), 0).unwrap();
        let wal = &o.wal;
        std::thread::scope(|s| {
            for t in 0..8u64 {
                s.spawn(move || {
                    for i in 0..25 {
                        append(wal, &[add(t * 100 + i)]);
                    }
                });
            }
        });
        drop(o);
        let o = Wal::open(d.path(), 0).unwrap();
        assert_eq!(o.replay.len(), 200);
    }

    #[test]
    fn garbage_never_panics() {
        let p = Path::new("x");
        for bytes in [
            vec![],
            vec![1, 2, 3],
            vec![255; 8],
            vec![4, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
        ] {
            let _ = parse_segment(p, &bytes);
        }
        assert!(decode_payload(&[0; 9]).is_err());
    }
}
