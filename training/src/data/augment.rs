//! Batch assembly with augmentation (random crop by padding, horizontal flip, brightness and
//! contrast jitter).

use rand::rngs::StdRng;
use rand::Rng;

use super::ImageSet;
use crate::config::AugmentConfig;

/// Copies the images at `idx` into one NCHW buffer, augmenting each as configured.
pub fn make_batch(
    set: &ImageSet,
    idx: &[usize],
    aug: &AugmentConfig,
    rng: &mut StdRng,
) -> Vec<f32> {
    let [c, h, w] = set.chw;
    let n = c * h * w;
    let mut out = vec![0f32; idx.len() * n];
    for (slot, &i) in out.chunks_exact_mut(n).zip(idx) {
        let src = set.sample(i);
        let pad = aug.crop_pad as i64;
        let (dx, dy) = if pad > 0 {
            (rng.random_range(-pad..=pad), rng.random_range(-pad..=pad))
        } else {
            (0, 0)
        };
        let flip = aug.hflip && rng.random_bool(0.5);
        for ch in 0..c {
            let (a, b) = if aug.jitter > 0.0 {
                (
                    1.0 + rng.random_range(-aug.jitter..=aug.jitter),
                    rng.random_range(-aug.jitter..=aug.jitter),
                )
            } else {
                (1.0, 0.0)
            };
            for y in 0..h {
                let sy = (y as i64 + dy).clamp(0, h as i64 - 1) as usize;
                for x in 0..w {
                    let xx = if flip { w - 1 - x } else { x };
                    let sx = (xx as i64 + dx).clamp(0, w as i64 - 1) as usize;
                    slot[(ch * h + y) * w + x] = src[(ch * h + sy) * w + sx] * a + b;
                }
            }
        }
    }
    out
}
