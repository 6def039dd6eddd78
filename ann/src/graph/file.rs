//! The index file: a versioned, checksummed binary layout that [`Graph::open`] maps into memory
//! and searches in place, so opening a large index costs a checksum pass, not a parse.
//!
//! All numbers are little-endian. The file is a 512-byte header followed by sections, each at
//! a 64-byte aligned offset:
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic `HTGHNSW\0` |
//! | 8 | format version (`u32`, 1) |
//! | 12 | header length (`u32`, 512) |
//! | 16 | dim, M, M0, ef_construction, distance (0 L2Sq, 1 Dot), flags (bit 0: quantised) — `u32` each |
//! | 40 | count (`u64`), seed (`u64`) |
//! | 56 | entry id (`u32`, `u32::MAX` if empty), entry level (`u32`) |
//! | 64 | tombstones (`u64`), vector stride (`u32`), code stride (`u32`), section count (`u32`) |
//! | 96 | section table: kind, crc32, offset, length, reserved (`u32, u32, u64, u64, u64`) |
//! | 508 | crc32 of bytes 0..508 |
//!
//! Sections: 1 vectors (`count * stride` f32), 2 layer-0 links (`count * (1 + M0)` u32),
//! 3 levels (`count` u8), 4 upper links (for each node above layer 0, in id order,
//! `level * (1 + M)` u32), 5 tombstones (`ceil(count / 64)` u64), 6 quantiser (`dim` f32
//! minima, then the step), 7 codes (`count * code stride` u8).
//!
//! Writing goes to a temporary file beside the target, which is fsynced, renamed over the
//! target, and the directory fsynced: a crash leaves the old file or the new one, never a mix.

use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::store::{Buf, Pod};
use super::{unpack, Distance, Graph, GraphParams, Quant, NOT_READY, NO_ENTRY};
use crate::codec::{self, Cursor};
use crate::{io_err, kernels, AnnError};

const MAGIC: &[u8; 8] = b"HTGHNSW\0";
/// Format version this build writes and reads.
pub const VERSION: u32 = 1;
const HEADER: usize = 512;
const TABLE: usize = 96;
const ENTRY: usize = 32;
const MAX_SECTIONS: usize = 12;

const S_VECTORS: u32 = 1;
const S_LINKS0: u32 = 2;
const S_LEVELS: u32 = 3;
const S_UPPER: u32 = 4;
const S_DELETED: u32 = 5;
const S_QUANT: u32 = 6;
const S_CODES: u32 = 7;

fn bytes_of<T: Pod>(v: &[T]) -> &[u8] {
    // SAFETY: `Pod` types have no padding and any byte view of them is valid.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

struct Section {
    kind: u32,
    crc: u32,
    offset: u64,
    len: u64,
}

/// Streams sections into the file, recording offset, length and crc32 of each.
struct Writer<W: Write + Seek> {
    w: W,
    pos: u64,
    sections: Vec<Section>,
    crc: crc32fast::Hasher,
}

impl<W: Write + Seek> Writer<W> {
    fn begin(&mut self, kind: u32) -> std::io::Result<()> {
        let pad = (64 - self.pos % 64) % 64;
        self.w.write_all(&[0u8; 64][..pad as usize])?;
        self.pos += pad;
        self.sections.push(Section {
            kind,
            crc: 0,
            offset: self.pos,
            len: 0,
        });
        self.crc = crc32fast::Hasher::new();
        Ok(())
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.w.write_all(b)?;
        self.crc.update(b);
        self.pos += b.len() as u64;
        Ok(())
    }

    fn end(&mut self) {
        let s = self.sections.last_mut().expect("begin first");
        s.len = self.pos - s.offset;
        s.crc = std::mem::take(&mut self.crc).finalize();
    }
}

impl Graph {
    /// Writes the graph to `path` atomically (temporary file, fsync, rename, directory fsync);
    /// returns the file size. Inserts should be paused (the owner's write lock): a node still
    /// being inserted is left out, and links to it are dropped.
    pub fn save(&self, path: &Path) -> Result<u64, AnnError> {
        let len = self.len();
        let count = (0..len as u32).position(|i| !self.ready(i)).unwrap_or(len);
        let entry = self.entry.load(Ordering::Acquire);
        let (eid, elevel) = if entry == NO_ENTRY || count == 0 {
            (u32::MAX, 0)
        } else {
            unpack(entry)
        };
        if eid != u32::MAX && eid as usize >= count {
            return Err(AnnError::Param(
                "an insert is raising the entry point; save with inserts paused".into(),
            ));
        }
        crate::fsio::write_atomic_with(path, |file| {
            self.write_to(file.try_clone()?, count, eid, elevel as u32)
                .map(|_| ())
        })
        .map_err(io_err("write", path))?;
        let size = fs::metadata(path).map_err(io_err("stat", path))?.len();
        Ok(size)
    }

    fn write_to(&self, file: File, count: usize, eid: u32, elevel: u32) -> std::io::Result<File> {
        let mut w = Writer {
            w: BufWriter::with_capacity(1 << 20, file),
            pos: 0,
            sections: Vec::new(),
            crc: crc32fast::Hasher::new(),
        };
        w.w.write_all(&[0u8; HEADER])?;
        w.pos = HEADER as u64;

        w.begin(S_VECTORS)?;
        w.put(bytes_of(self.vectors.slice(0, count * self.stride)))?;
        w.end();

        let keep = |id: u32| (id as usize) < count;
        let mut ids = Vec::new();
        let mut row = vec![0u32; 1 + self.m0];
        w.begin(S_LINKS0)?;
        for i in 0..count as u32 {
            Self::read_list(self.links(i, 0), &mut ids);
            row.fill(0);
            let mut n = 0;
            for &id in ids.iter().filter(|&&id| keep(id)) {
                row[1 + n] = id;
                n += 1;
            }
            row[0] = n as u32;
            w.put(bytes_of(&row))?;
        }
        w.end();

        let levels: Vec<u8> = (0..count)
            .map(|i| self.levels[i].load(Ordering::Acquire))
            .collect();
        w.begin(S_LEVELS)?;
        w.put(&levels)?;
        w.end();

        let mut row = vec![0u32; 1 + self.params.m];
        w.begin(S_UPPER)?;
        for (i, &lv) in levels.iter().enumerate() {
            for l in 1..=lv as usize {
                Self::read_list(self.links(i as u32, l), &mut ids);
                row.fill(0);
                let mut n = 0;
                for &id in ids.iter().filter(|&&id| keep(id)) {
                    row[1 + n] = id;
                    n += 1;
                }
                row[0] = n as u32;
                w.put(bytes_of(&row))?;
            }
        }
        w.end();

        let words: Vec<u64> = (0..count.div_ceil(64))
            .map(|i| {
                let mut x = self.deleted[i].load(Ordering::Acquire);
                if (i + 1) * 64 > count && !count.is_multiple_of(64) {
                    x &= (1u64 << (count % 64)) - 1;
                }
                x
            })
            .collect();
        let tombstones: u64 = words.iter().map(|w| w.count_ones() as u64).sum();
        w.begin(S_DELETED)?;
        w.put(bytes_of(&words))?;
        w.end();

        let mut code_stride = 0u32;
        if let Some(q) = &self.quant {
            code_stride = q.code_stride as u32;
            w.begin(S_QUANT)?;
            w.put(bytes_of(&q.lo))?;
            w.put(&q.step.to_le_bytes())?;
            w.end();
            w.begin(S_CODES)?;
            w.put(q.codes.slice(0, count * q.code_stride))?;
            w.end();
        }

        // The header, field by field at the offsets the table at the top gives (the table
        // starts at TABLE, the seal is the last 4 bytes).
        let mut h = Vec::with_capacity(HEADER);
        h.extend_from_slice(MAGIC);
        let distance = match self.params.distance {
            Distance::L2Sq => 0,
            Distance::Dot => 1,
        };
        for v in [
            VERSION,
            HEADER as u32,
            self.dim as u32,
            self.params.m as u32,
            self.m0 as u32,
            self.params.ef_construction as u32,
            distance,
            self.quant.is_some() as u32,
        ] {
            codec::put_u32(&mut h, v);
        }
        codec::put_u64(&mut h, count as u64);
        codec::put_u64(&mut h, self.params.seed);
        codec::put_u32(&mut h, eid);
        codec::put_u32(&mut h, elevel);
        codec::put_u64(&mut h, tombstones);
        codec::put_u32(&mut h, self.stride as u32);
        codec::put_u32(&mut h, code_stride);
        codec::put_u32(&mut h, w.sections.len() as u32);
        h.resize(TABLE, 0);
        for s in &w.sections {
            codec::put_u32(&mut h, s.kind);
            codec::put_u32(&mut h, s.crc);
            codec::put_u64(&mut h, s.offset);
            codec::put_u64(&mut h, s.len);
            codec::put_u64(&mut h, 0);
        }
        h.resize(HEADER - 4, 0);
        codec::seal(&mut h);
        w.w.seek(SeekFrom::Start(0))?;
        w.w.write_all(&h)?;
        w.w.into_inner().map_err(|e| e.into_error())
    }

    /// Opens an index file written by [`Graph::save`]: the header and every section's checksum
    /// are verified, and the links validated, so a truncated or altered file is an error; then
    /// vectors, layer-0 links and codes are read straight from the map. On unix they are
    /// mapped copy-on-write with room to grow in place (`store.rs`), so writes can follow
    /// at once and never copy the file or write to it; elsewhere the graph is read-only until
    /// [`Graph::reserve`] copies it into memory.
    ///
    /// The file must not be modified while mapped; [`Graph::save`] replaces files by rename,
    /// which leaves an open map intact.
    pub fn open(path: &Path) -> Result<Graph, AnnError> {
        let bad = |reason: String| AnnError::Format {
            path: path.to_path_buf(),
            reason,
        };
        if cfg!(target_endian = "big") {
            return Err(bad("index files are little-endian; this CPU is not".into()));
        }
        let file = File::open(path).map_err(io_err("open", path))?;
        // SAFETY: the file is not modified while mapped (documented above).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err("map", path))?;
        let map = Arc::new(map);
        let b: &[u8] = &map;
        if b.len() < HEADER {
            return Err(bad(format!("{} bytes is shorter than the header", b.len())));
        }
        if &b[0..8] != MAGIC {
            return Err(bad("wrong magic bytes".into()));
        }
        // Every offset read is inside the header, whose length was checked above.
        let u32_at = |at: usize| Cursor::new(&b[at..]).u32().unwrap_or_default();
        let u64_at = |at: usize| Cursor::new(&b[at..]).u64().unwrap_or_default();
        let version = u32_at(8);
        if version != VERSION {
            return Err(bad(format!(
                "format version {version}, this build reads {VERSION}"
            )));
        }
        if codec::unseal(&b[..HEADER]).is_none() {
            return Err(bad("header checksum mismatch".into()));
        }
        let dim = u32_at(16) as usize;
        let m = u32_at(20) as usize;
        let m0 = u32_at(24) as usize;
        let efc = u32_at(28) as usize;
        let distance = match u32_at(32) {
            0 => Distance::L2Sq,
            1 => Distance::Dot,
            d => return Err(bad(format!("unknown distance {d}"))),
        };
        let flags = u32_at(36);
        let count = u64_at(40);
        let seed = u64_at(48);
        let eid = u32_at(56);
        let elevel = u32_at(60) as usize;
        let stride = u32_at(72) as usize;
        let code_stride = u32_at(76) as usize;
        let nsec = u32_at(80) as usize;
        let params = GraphParams {
            m,
            ef_construction: efc,
            distance,
            seed,
        };
        params.validate().map_err(|e| bad(e.to_string()))?;
        if m0 != 2 * m || stride != super::row_stride(dim) || count >= u32::MAX as u64 {
            return Err(bad("inconsistent header fields".into()));
        }
        let count = count as usize;
        let mut g = Graph::new(dim, params, 0).map_err(|e| bad(e.to_string()))?;
        if nsec > MAX_SECTIONS {
            return Err(bad(format!("{nsec} sections")));
        }
        let mut sections: Vec<(u32, usize, usize)> = Vec::new();
        // The big sections that queries read (links, and the f32 vectors unless codes stand in
        // for them) are checksummed below through the maps that will serve them: reading them
        // faults their pages in there once, where a separate read-only map would fault them
        // in, be torn down when `open` returns, and leave every page to fault again on the
        // first queries (0.54 s to a first answer at 1M before the copy-on-write maps, 0.65 s
        // with them and the checksums read through the other map).
        let deferred = |kind: u32| {
            kind == S_LINKS0 || kind == S_CODES || (kind == S_VECTORS && flags & 1 == 0)
        };
        let mut crcs: Vec<(u32, u32)> = Vec::new();
        for i in 0..nsec {
            let at = TABLE + i * ENTRY;
            let (kind, crc, off, len) =
                (u32_at(at), u32_at(at + 4), u64_at(at + 8), u64_at(at + 16));
            let end = off.checked_add(len).filter(|&e| e <= b.len() as u64);
            let Some(end) = end else {
                return Err(bad(format!(
                    "section {kind} runs past the end of the file (truncated?)"
                )));
            };
            if off % 64 != 0 || off < HEADER as u64 {
                return Err(bad(format!("section {kind} is misplaced")));
            }
            let (off, end) = (off as usize, end as usize);
            if deferred(kind) {
                crcs.push((kind, crc));
            } else if crc32fast::hash(&b[off..end]) != crc {
                return Err(bad(format!("section {kind} checksum mismatch")));
            }
            sections.push((kind, off, end - off));
        }
        let verify = |kind: u32, bytes: &[u8]| -> Result<(), AnnError> {
            match crcs.iter().find(|c| c.0 == kind) {
                Some(&(_, crc)) if crc32fast::hash(bytes) != crc => {
                    Err(bad(format!("section {kind} checksum mismatch")))
                }
                _ => Ok(()),
            }
        };
        let find = |kind: u32, want: usize| -> Result<usize, AnnError> {
            let s = sections.iter().find(|s| s.0 == kind);
            match s {
                Some(&(_, off, len)) if len == want => Ok(off),
                Some(&(_, _, len)) => Err(bad(format!(
                    "section {kind} holds {len} bytes, expected {want}"
                ))),
                None => Err(bad(format!("section {kind} is missing"))),
            }
        };
        let vec_off = find(S_VECTORS, count * stride * 4)?;
        let links_off = find(S_LINKS0, count * (1 + m0) * 4)?;
        let levels_off = find(S_LEVELS, count)?;
        let levels = &b[levels_off..levels_off + count];
        if let Some(i) = levels.iter().position(|&l| l as usize > super::MAX_LEVEL) {
            return Err(bad(format!("node {i} has level {}", levels[i])));
        }
        let upper_words: usize = levels.iter().map(|&l| l as usize * (1 + m)).sum();
        let upper_off = find(S_UPPER, upper_words * 4)?;
        let deleted_off = find(S_DELETED, count.div_ceil(64) * 8)?;

        // Room for the rows that follow an opened file: as much again (address space only,
        // see `store.rs`), so the engine's growth (by half) stays in place the first time.
        let room = count.max(1024) * 2;
        #[cfg(unix)]
        macro_rules! section {
            ($off:expr, $rows:expr, $stride:expr) => {
                // Where the system refuses the address space (strict overcommit), the
                // read-only view: then the first write copies, as without this.
                Ok::<_, AnnError>(
                    Buf::private(&file, $off, $rows * $stride, room * $stride)
                        .unwrap_or_else(|_| Buf::mapped(&map, $off, $rows * $stride)),
                )
            };
        }
        #[cfg(not(unix))]
        macro_rules! section {
            ($off:expr, $rows:expr, $stride:expr) => {
                Ok::<_, AnnError>(Buf::mapped(&map, $off, $rows * $stride))
            };
        }
        let links0: Buf<u32> = section!(links_off, count, 1 + m0)?;
        // An f32 graph's vectors are checksummed on a second thread while this one checks
        // the links: the two passes fault in and read separate sections, and together they
        // are most of the time to a first answer at 1M.
        let vectors: Buf<f32> = section!(vec_off, count, stride)?;
        // The node's name is formatted only for the message: formatting it for each of 1M
        // nodes cost more than checking their links.
        let check_list = |list: &[u32], cap: usize, what: &dyn Fn() -> String| {
            let n = list[0] as usize;
            if n > cap {
                return Err(bad(format!("{}: {n} links, at most {cap}", what())));
            }
            if list[1..1 + n].iter().any(|&id| id as usize >= count) {
                return Err(bad(format!("{}: a link names no node", what())));
            }
            Ok(())
        };
        let check_links0 = || -> Result<(), AnnError> {
            verify(S_LINKS0, links0.bytes())?;
            for (i, list) in links0.all().chunks_exact(1 + m0).enumerate() {
                check_list(list, m0, &|| format!("node {i}"))?;
            }
            Ok(())
        };
        if flags & 1 == 0 {
            let vbytes = vectors.bytes();
            std::thread::scope(|s| {
                let v = s.spawn(|| verify(S_VECTORS, vbytes));
                let l = check_links0();
                // A panic on the checksum thread is a bug; surface it as one.
                let v = v.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                l.and(v)
            })?;
        } else {
            check_links0()?;
        }
        let upper_all: &[u8] = &b[upper_off..upper_off + upper_words * 4];
        let mut words = upper_all
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")));
        let upper: Vec<OnceLock<Box<[AtomicU32]>>> = (0..count).map(|_| OnceLock::new()).collect();
        for (i, &l) in levels.iter().enumerate() {
            if l == 0 {
                continue;
            }
            let w: Vec<u32> = words.by_ref().take(l as usize * (1 + m)).collect();
            for (j, list) in w.chunks_exact(1 + m).enumerate() {
                check_list(list, m, &|| format!("node {i} layer {}", j + 1))?;
                if list[1..1 + list[0] as usize]
                    .iter()
                    .any(|&n| (levels[n as usize] as usize) < j + 1)
                {
                    return Err(bad(format!(
                        "node {i} layer {}: link below its layer",
                        j + 1
                    )));
                }
            }
            let _ = upper[i].set(w.into_iter().map(AtomicU32::new).collect());
        }
        if count > 0 {
            if eid as usize >= count || levels[eid as usize] as usize != elevel {
                return Err(bad("entry point is not a node of its level".into()));
            }
        } else if eid != u32::MAX {
            return Err(bad("entry point in an empty graph".into()));
        }
        let deleted: Vec<AtomicU64> = b[deleted_off..deleted_off + count.div_ceil(64) * 8]
            .chunks_exact(8)
            .map(|c| AtomicU64::new(u64::from_le_bytes(c.try_into().expect("8 bytes"))))
            .collect();
        let tombstones: usize = deleted
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as usize)
            .sum();

        if flags & 1 != 0 {
            if distance != Distance::L2Sq || code_stride < dim {
                return Err(bad("inconsistent quantiser fields".into()));
            }
            let qoff = find(S_QUANT, dim * 4 + 4)?;
            let q: Vec<f32> = b[qoff..qoff + dim * 4 + 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            let step = q[dim];
            if !(step.is_finite() && step > 0.0) || q.iter().any(|x| !x.is_finite()) {
                return Err(bad("quantiser holds an invalid range".into()));
            }
            let coff = find(S_CODES, count * code_stride)?;
            let codes: Buf<u8> = section!(coff, count, code_stride)?;
            verify(S_CODES, codes.bytes())?;
            g.quant = Some(Quant {
                lo: q[..dim].to_vec(),
                step,
                code_stride,
                codes,
            });
        }

        g.capacity = count;
        g.len = AtomicUsize::new(count);
        // A quantised graph reads its f32 vectors only to rescore a few candidates per
        // query: they were checksummed through the read-only map, which is unmapped when
        // `open` returns, so their pages stay out of this process until a query needs them,
        // and there is no read-ahead there.
        g.vectors = vectors;
        if g.quant.is_some() {
            g.vectors.advise_random();
        }
        g.links0 = links0;
        g.levels = levels.iter().map(|&l| AtomicU8::new(l)).collect();
        debug_assert!(g
            .levels
            .iter()
            .all(|l| l.load(Ordering::Relaxed) != NOT_READY));
        g.upper = upper;
        g.locks = (0..count).map(|_| Mutex::new(())).collect();
        g.gens = (0..count).map(|_| AtomicU32::new(0)).collect();
        g.entry = AtomicU64::new(if count == 0 {
            NO_ENTRY
        } else {
            super::pack(eid, elevel)
        });
        g.deleted = deleted;
        g.tombstones = AtomicUsize::new(tombstones);
        g.kernels = kernels::best();
        Ok(g)
    }
}
