//! Snapshots: one checksummed file holding a consistent checkpoint of a local index, taken
//! while writes go on, and restored into a directory that then opens as that index.
//!
//! Format: `magic "HTGSNAP1"`, `u32 files`, per file `u32 name length`, name, `u64 length`,
//! bytes; then the sha256 of everything before it (32 bytes). A truncated or altered snapshot
//! fails the hash (or the framing) and is refused before anything is written.

use std::fs;
use std::path::{Path, PathBuf};

use htg_ann::codec::{self, CodecError, Cursor};
use sha2::{Digest, Sha256};

use super::error::{io_err, IndexError};

const MAGIC: &[u8; 8] = b"HTGSNAP1";

/// Packs every file of generation directory `gdir` into `out` (written atomically).
pub fn write(gdir: &Path, out: &Path) -> Result<u64, IndexError> {
    let mut names: Vec<String> = fs::read_dir(gdir)
        .map_err(io_err("list", gdir))?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    let mut buf = Vec::new();
    buf.extend_from_slice(MAGIC);
    codec::put_u32(&mut buf, names.len() as u32);
    for name in &names {
        let p = gdir.join(name);
        let bytes = fs::read(&p).map_err(io_err("read", &p))?;
        codec::put_str(&mut buf, name);
        codec::put_u64(&mut buf, bytes.len() as u64);
        buf.extend_from_slice(&bytes);
    }
    let digest = Sha256::digest(&buf);
    buf.extend_from_slice(&digest);
    crate::fsio::write_atomic(out, &buf).map_err(io_err("write", out))?;
    Ok(buf.len() as u64)
}

fn bad(path: &Path, reason: impl Into<String>) -> IndexError {
    IndexError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("not a valid htg snapshot: {}", reason.into()),
    }
}

/// Checks and unpacks a snapshot: the files it holds, by name.
pub fn read(path: &Path) -> Result<Vec<(String, Vec<u8>)>, IndexError> {
    let data = fs::read(path).map_err(io_err("read", path))?;
    if data.len() < MAGIC.len() + 4 + 32 || &data[..8] != MAGIC {
        return Err(bad(path, "bad magic or too short"));
    }
    let (body, digest) = data.split_at(data.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(bad(path, "checksum mismatch (truncated or altered)"));
    }
    let mut c = Cursor::new(&body[8..]);
    let framing = |e: CodecError| match e {
        CodecError::NotUtf8 => bad(path, "a name is not UTF-8"),
        CodecError::Truncated { .. } | CodecError::Overflow => {
            bad(path, "a file runs past the end")
        }
    };
    let count = c.u32().map_err(framing)? as usize;
    let mut files = Vec::new();
    for _ in 0..count {
        let name = c.str().map_err(framing)?.to_string();
        if name.is_empty() || name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Err(bad(path, format!("file name {name:?}")));
        }
        let len = c.u64().map_err(framing)?;
        let len = usize::try_from(len).map_err(|_| bad(path, "file too large"))?;
        files.push((name, c.take(len).map_err(framing)?.to_vec()));
    }
    if !c.rest().is_empty() {
        return Err(bad(path, "bytes after the last file"));
    }
    if !files.iter().any(|(n, _)| n == "meta.json") {
        return Err(bad(path, "no meta.json"));
    }
    Ok(files)
}

/// Restores `snapshot` into `dir` (which must not hold an index): one generation, `CURRENT`
/// naming it, no log. Returns the generation directory.
pub fn restore(snapshot: &Path, dir: &Path) -> Result<PathBuf, IndexError> {
    let files = read(snapshot)?;
    // An index (or a model-swapped one, whose `ACTIVE` names where it lives) is already
    // there: the files `local` reads first. Checked by name, so the snapshot format does not
    // depend on the index that reads it.
    if dir.join("CURRENT").exists() || dir.join("ACTIVE").exists() {
        return Err(IndexError::Param(format!(
            "{} already holds an index; restore into an empty directory",
            dir.display()
        )));
    }
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let gen = "gen-restored".to_string();
    let tmp = dir.join(format!(".tmp-{gen}"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
    for (name, bytes) in &files {
        let p = tmp.join(name);
        crate::fsio::write_synced(&p, bytes).map_err(io_err("write", &p))?;
    }
    crate::fsio::sync_dir(&tmp).map_err(io_err("fsync", &tmp))?;
    let gdir = dir.join(&gen);
    fs::rename(&tmp, &gdir).map_err(io_err("rename", &tmp))?;
    let current = dir.join("CURRENT");
    crate::fsio::write_atomic(&current, gen.as_bytes()).map_err(io_err("write", &current))?;
    Ok(gdir)
}
