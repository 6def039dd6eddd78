//! What the handlers share: decode, embed, search, add, remove, find files.
//!
//! CPU and disk work runs on actix's blocking pool (`web::block`) and inference on the
//! batcher's threads, so the async workers only move bytes. Index locks are taken inside the
//! blocking closures and never held across an `.await`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::embed::sha256_hex;
use crate::ingest::stored_bytes;
use crate::preprocess::{dimensions, tensor_from_bytes, PreprocessError};
use crate::SearchIndex as _;
use crate::{Record, SearchOptions};
use actix_web::web::{self, Bytes};
use ndarray::Array3;
use serde::Serialize;

use super::error::ApiError;
use super::{Serving, State};
use crate::ModelSpec;
use std::sync::Arc;

/// One search result as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HitOut {
    /// Image id (stable across restarts).
    pub id: u64,
    /// Path the image was indexed from (or stored at, for uploads).
    pub path: String,
    /// Squared Euclidean distance between unit vectors (0..=4), nearest first.
    pub distance: f32,
    /// Label, when the image has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Decodes and preprocesses images on the blocking pool, applying the limits.
///
/// Every image's size is read from its header first (no pixels decoded): one above
/// `max_pixels` is refused, and so is a request whose images together exceed
/// `decode_budget_pixels`. A request holding an image above `large_decode_pixels` then waits
/// for one of the `max_concurrent_large_decodes` turns before decoding, so a few clients
/// sending small files that decode to huge images queue among themselves instead of taking
/// every core from everyone else.
pub async fn prepare(
    state: &web::Data<State>,
    spec: &ModelSpec,
    images: Vec<Bytes>,
) -> Result<Vec<Array3<f32>>, ApiError> {
    let several = images.len() > 1;
    let config = &state.config;
    let mut total = 0u64;
    let mut large = false;
    for (i, bytes) in images.iter().enumerate() {
        let bad = |e| ApiError::bad_image(several.then_some(i + 1), e);
        let (width, height) = dimensions(bytes).map_err(bad)?;
        let pixels = u64::from(width) * u64::from(height);
        if pixels > config.max_pixels {
            return Err(bad(PreprocessError::TooLarge {
                width,
                height,
                limit: config.max_pixels,
            }));
        }
        total = total.saturating_add(pixels);
        large |= pixels > config.large_decode_pixels;
    }
    if total > config.decode_budget_pixels {
        return Err(ApiError::DecodeBudget {
            pixels: total,
            budget: config.decode_budget_pixels,
        });
    }
    let permit = if large {
        let wait = Instant::now();
        let permit = std::sync::Arc::clone(&state.large_decodes)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Unavailable("the server is shutting down".into()))?;
        state.metrics.decode_wait(wait.elapsed());
        Some(permit)
    } else {
        None
    };
    let state = state.clone();
    let spec = spec.clone();
    web::block(move || {
        let _turn = permit;
        images
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let start = Instant::now();
                let t = tensor_from_bytes(bytes, &spec, state.config.max_pixels)
                    .map_err(|e| ApiError::bad_image(several.then_some(i + 1), e))?;
                state.metrics.decode(start.elapsed());
                Ok(t)
            })
            .collect()
    })
    .await?
}

/// Decodes and embeds images with `serving`'s model: one unit vector each, in order.
pub async fn embed(
    state: &web::Data<State>,
    serving: &Serving,
    images: Vec<Bytes>,
) -> Result<Vec<Vec<f32>>, ApiError> {
    // While these decode, a batch being gathered waits for them (up to `max_delay_us`).
    let announced = serving.batcher.announce(images.len());
    let tensors = prepare(state, &serving.spec, images).await?;
    serving.batcher.embed(tensors, Some(announced)).await
}

/// The largest |value| a query vector of `dim` values may hold: `dim` squares of it still
/// sum to a finite f32, so distances stay finite. A per-value bound, unlike "the squared sum
/// fits", is one the OpenAPI document can state (`minimum`/`maximum` on the items), rounded
/// down to three significant digits so that rounding in the sum cannot cross `f32::MAX`.
pub fn max_component(dim: usize) -> f32 {
    let b = (f64::from(f32::MAX) / dim.max(1) as f64).sqrt();
    let scale = 10f64.powi(b.log10().floor() as i32 - 2);
    ((b / scale).floor() * scale) as f32
}

/// Refuses vectors that would poison distance computations: non-finite values (JSON numbers
/// beyond f32 become infinite) and values above [`max_component`] (their squares' sum would
/// overflow, and distances would be NaN).
pub fn check_finite(v: &[f32]) -> Result<(), ApiError> {
    let max = max_component(v.len());
    let norm2: f32 = v.iter().map(|x| x * x).sum();
    if v.iter().all(|x| x.is_finite() && x.abs() <= max) && norm2.is_finite() {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(format!(
            "vector values must be finite and within ±{max:e} (for {} values, so that their squared sum fits in f32)",
            v.len()
        )))
    }
}

/// Searches each query for its `k` nearest images in `serving`'s index (the one whose model
/// embedded the queries), leaving out `exclude` (the query image of a by-id search).
pub async fn search(
    state: &web::Data<State>,
    serving: Arc<Serving>,
    queries: Vec<Vec<f32>>,
    k: usize,
    opts: SearchOptions,
    exclude: Option<u64>,
) -> Result<Vec<Vec<HitOut>>, ApiError> {
    let state = state.clone();
    web::block(move || {
        let index = &serving.index;
        queries
            .iter()
            .map(|q| {
                let start = Instant::now();
                let want = k + usize::from(exclude.is_some());
                let hits = index.search(q, want, &opts)?;
                state.metrics.search(start.elapsed());
                Ok(hits
                    .into_iter()
                    .filter(|h| Some(h.id) != exclude)
                    .take(k)
                    .map(|h| HitOut {
                        id: h.id,
                        path: h.record.path,
                        distance: h.distance,
                        label: h.record.label,
                    })
                    .collect())
            })
            .collect()
    })
    .await?
}

/// The stored vector of an indexed image.
pub async fn vector_of(serving: Arc<Serving>, id: u64) -> Result<Vec<f32>, ApiError> {
    web::block(move || {
        serving
            .index
            .vector(id)
            .ok_or_else(|| ApiError::NotFound(format!("no image with id {id}")))
    })
    .await?
}

/// An image to add.
pub struct NewImage {
    /// Encoded bytes.
    pub bytes: Bytes,
    /// Path to record (default: where the upload is stored).
    pub path: Option<String>,
    /// Label to record.
    pub label: Option<String>,
}

/// An image that was added.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Added {
    /// Its new id.
    pub id: u64,
    /// Recorded path.
    pub path: String,
    /// Recorded label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Adds images (all or none): embeds them, stores their bytes under the uploads folder, and
/// inserts them; the index has made them durable before this returns.
///
/// The write gate is held from before embedding until the insert is durable, so a model
/// swap never switches between the two: the image lands in the index whose model embedded it.
pub async fn add(state: &web::Data<State>, items: Vec<NewImage>) -> Result<Vec<Added>, ApiError> {
    let _write = state.writes.read().await;
    let serving = state.serving();
    let vectors = embed(
        state,
        &serving,
        items.iter().map(|i| i.bytes.clone()).collect(),
    )
    .await?;
    let state = state.clone();
    web::block(move || {
        let mut entries = Vec::with_capacity(items.len());
        for (item, vector) in items.into_iter().zip(vectors) {
            let sha = sha256_hex(&item.bytes);
            let stored = store_upload(&state.uploads, &sha, &item.bytes)?;
            let record = Record {
                path: item
                    .path
                    .unwrap_or_else(|| stored.to_string_lossy().to_string()),
                sha256: sha,
                label: item.label,
            };
            entries.push((record, vector));
        }
        let records: Vec<Record> = entries.iter().map(|(r, _)| r.clone()).collect();
        // Durable when it returns (logged and fsynced); an error means nothing was added.
        let ids = serving.index.insert_many(entries)?;
        Ok(ids
            .into_iter()
            .zip(records)
            .map(|(id, r)| Added {
                id,
                path: r.path,
                label: r.label,
            })
            .collect())
    })
    .await?
}

/// Writes an upload as `<sha256>.<ext>` atomically (temporary file, fsync, rename, fsync dir).
fn store_upload(dir: &Path, sha: &str, bytes: &[u8]) -> Result<PathBuf, ApiError> {
    let io = |what: &str, e: std::io::Error| {
        if super::error::io_is_disk_full(&e) {
            ApiError::InsufficientStorage(format!("{what} upload: {e}"))
        } else {
            ApiError::Internal(format!("{what} upload: {e}"))
        }
    };
    let ext = image::guess_format(bytes)
        .ok()
        .and_then(|f| f.extensions_str().first().copied())
        .unwrap_or("img");
    fs::create_dir_all(dir).map_err(|e| io("creating folder for", e))?;
    let target = dir.join(format!("{sha}.{ext}"));
    if target.is_file() {
        return Ok(target);
    }
    crate::fsio::write_atomic(&target, bytes).map_err(|e| io("writing", e))?;
    Ok(target)
}

/// Removes an image; the removal is durable before this returns.
pub async fn remove(state: &web::Data<State>, id: u64) -> Result<(), ApiError> {
    let _write = state.writes.read().await;
    let serving = state.serving();
    web::block(move || {
        if !serving.index.remove(id)? {
            return Err(ApiError::NotFound(format!("no image with id {id}")));
        }
        Ok(())
    })
    .await?
}

/// The bytes of an indexed image, for thumbnails.
///
/// Only files named by the index are read, and a file is served only when its sha256 is the
/// one recorded: a path that now holds other bytes (or a path a client made up when adding an
/// image) serves nothing. Uploads are found by their hash in the uploads folder.
pub async fn file(state: &web::Data<State>, id: u64) -> Result<(Vec<u8>, &'static str), ApiError> {
    let state = state.clone();
    web::block(move || {
        let record = indexed(&state, id)?;
        let bytes = verified_bytes(&state, id, &record)?;
        let mime = image::guess_format(&bytes)
            .map(|f| f.to_mime_type())
            .unwrap_or("application/octet-stream");
        Ok((bytes, mime))
    })
    .await?
}

/// The record of `id`, or 404.
fn indexed(state: &State, id: u64) -> Result<Record, ApiError> {
    state
        .serving()
        .index
        .record(id)
        .ok_or_else(|| ApiError::NotFound(format!("no image with id {id}")))
}

/// The bytes `record` names, only if their sha256 is still the recorded one; else 404.
fn verified_bytes(state: &State, id: u64, record: &Record) -> Result<Vec<u8>, ApiError> {
    stored_bytes(record, &state.uploads)
        .map_err(|_| ApiError::NotFound(format!("the file of image {id} is no longer available")))
}

/// A JPEG thumbnail of an indexed image, at most `size` pixels on its long side, and the
/// file's sha256 (the thumbnail's `ETag`). Made from the same verified bytes as [`file`], once
/// per file and size ([`crate::server::thumbs`]).
pub async fn thumb(
    state: &web::Data<State>,
    id: u64,
    size: u32,
) -> Result<(Bytes, String), ApiError> {
    let state = state.clone();
    web::block(move || {
        let record = indexed(&state, id)?;
        if let Some(t) = state.thumbs.get(&record.sha256, size) {
            return Ok((t, record.sha256));
        }
        let bytes = verified_bytes(&state, id, &record)?;
        let t = crate::preprocess::thumbnail_jpeg(&bytes, size, state.config.max_pixels).map_err(
            |e| {
                ApiError::Internal(format!(
                    "image {id} was indexed but cannot be thumbnailed now: {e}"
                ))
            },
        )?;
        let t = Bytes::from(t);
        state.thumbs.put(&record.sha256, size, t.clone());
        Ok((t, record.sha256))
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_value_bound_keeps_the_squared_sum_finite() {
        for dim in [1, 3, 64, 128, 1280, 4096, 65_536] {
            let max = max_component(dim);
            assert!(max > 0.0 && max.is_finite(), "{dim}");
            let at = vec![max; dim];
            assert!(check_finite(&at).is_ok(), "{dim}: {max}");
            let mut over = at.clone();
            over[0] = max * 1.001;
            assert!(check_finite(&over).is_err(), "{dim}");
        }
        assert!(check_finite(&[f32::NAN]).is_err());
        assert!(check_finite(&[f32::INFINITY, 0.0]).is_err());
    }
}
