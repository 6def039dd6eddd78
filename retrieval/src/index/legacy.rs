//! Reading indexes written by earlier releases (format 1: `meta.json`, `records.json`,
//! `vectors.f32` and an `hnsw_rs` dump in one generation directory), so that upgrading htg
//! never strands an index. The vectors are re-inserted into the current engine; the next
//! checkpoint writes the current format.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde::Deserialize;

use super::error::{io_err, IndexError};
use super::types::{HnswParams, Record};
use crate::embed::ModelId;

/// What format 1's `meta.json` held.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaV1 {
    #[allow(dead_code)]
    format_version: u32,
    model: ModelId,
    model_path: Option<String>,
    dim: usize,
    hnsw: HnswParams,
    next_id: u64,
    #[allow(dead_code)]
    tombstones: Vec<u64>,
    #[allow(dead_code)]
    hnsw_basename: String,
}

/// A format-1 generation, read whole.
pub struct V1 {
    /// The model that built it.
    pub model: ModelId,
    /// Where that model was loaded from.
    pub model_path: Option<String>,
    /// Vector dimension.
    pub dim: usize,
    /// HNSW parameters.
    pub hnsw: HnswParams,
    /// Next external id to hand out.
    pub next_id: u64,
    /// Live records with their vectors, by id.
    pub rows: Vec<(u64, Record, Vec<f32>)>,
}

/// Reads the format-1 generation directory `gdir` of the index in `dir`.
pub fn read(dir: &Path, gdir: &Path) -> Result<V1, IndexError> {
    let corrupt = |reason: String| IndexError::Corrupt {
        path: dir.to_path_buf(),
        reason,
    };
    let read = |name: &str| {
        let p = gdir.join(name);
        fs::read(&p).map_err(io_err("read", gdir))
    };
    let meta: MetaV1 = serde_json::from_slice(&read("meta.json")?)
        .map_err(|e| corrupt(format!("meta.json: {e}")))?;
    let records: BTreeMap<u64, Record> = serde_json::from_slice(&read("records.json")?)
        .map_err(|e| corrupt(format!("records.json: {e}")))?;
    let raw = read("vectors.f32")?;
    let dim = meta.dim;
    if dim == 0 || raw.len() != records.len() * dim * 4 {
        return Err(corrupt(format!(
            "vectors.f32 has {} bytes, expected {} records x {dim} x 4",
            raw.len(),
            records.len()
        )));
    }
    let rows = records
        .into_iter()
        .zip(raw.chunks_exact(dim * 4))
        .map(|((id, r), v)| {
            let v = v
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (id, r, v)
        })
        .collect();
    Ok(V1 {
        model: meta.model,
        model_path: meta.model_path,
        dim,
        hnsw: meta.hnsw,
        next_id: meta.next_id,
        rows,
    })
}
