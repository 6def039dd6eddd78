//! Image decoding and normalisation into a model-ready batch.
//!
//! Training and serving both call [`preprocess_batch`], so an image is turned into numbers the
//! same way everywhere. The rules are documented in `docs/MODEL_SPEC.md`: EXIF orientation is
//! applied, alpha is composited on white, 16-bit images are reduced to 8 bit, and the resize uses
//! the `Triangle` (bilinear) filter, either stretching to the input size or (for photo models)
//! scaling the short side and cutting the centre, as the spec's `resize` says.
//!
//! A photo is usually far larger than the model's input, and a JPEG can be decoded at 1/2, 1/4
//! or 1/8 of its size by a reduced inverse DCT for a fraction of the work. [`tensor_from_bytes`]
//! knows the size the spec needs, so it decodes at the smallest such scale that still gives at
//! least that many pixels, then resizes the rest of the way as usual (what PIL's `draft()` does).

use std::io::Cursor;
use std::path::{Path, PathBuf};

use fast_image_resize::PixelType;
use image::metadata::Orientation;
use image::{imageops::FilterType, DynamicImage, GrayImage, ImageDecoder, ImageReader, RgbImage};
use ndarray::{Array3, Array4, ArrayViewMut3};
use rayon::prelude::*;

use crate::spec::{Color, Layout, ModelSpec, Resize};

/// Largest decoded image accepted, in pixels: a guard against decompression bombs.
pub const DEFAULT_MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// Resize filter used everywhere (documented in `docs/MODEL_SPEC.md`).
pub const RESIZE_FILTER: FilterType = FilterType::Triangle;

/// Why an image could not be turned into model input.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File tried.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("empty file (0 bytes)")]
    Empty,
    /// The bytes are not a supported image format.
    #[error("not a supported image (PNG, JPEG, GIF, BMP, WebP, TIFF)")]
    UnknownFormat,
    /// The codec rejected the bytes.
    #[error("cannot decode image: {0}")]
    Decode(String),
    /// The image exceeds the pixel limit.
    #[error("image is {width}x{height}, above the limit of {limit} pixels")]
    TooLarge {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Limit in pixels.
        limit: u64,
    },
}

/// Decodes image bytes of any supported format at full size, upright (EXIF orientation applied),
/// refusing images above `max_pixels`.
pub fn decode_with_limit(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, PreprocessError> {
    decode_scaled(bytes, max_pixels, None)
}

/// How many pixels a reduced JPEG decode must still leave, upright.
#[derive(Clone, Copy, Debug)]
enum Need {
    /// What a model's resize step reads.
    Spec(Resize, u32, u32),
    /// A thumbnail: the long side at least this.
    LongSide(u32),
}

impl Need {
    fn met(self, w: u32, h: u32) -> bool {
        match self {
            Need::Spec(Resize::Stretch, width, height) => w >= width && h >= height,
            Need::Spec(Resize::ShortSide(s), _, _) => w.min(h) >= s,
            Need::LongSide(s) => w.max(h) >= s,
        }
    }
}

/// As [`decode_with_limit`], but a JPEG may come out smaller: at the smallest DCT scale
/// (1, 1/2, 1/4, 1/8) that still leaves enough pixels for `spec` (both sides at least the input
/// size when stretching, the short side at least `S` for `short_side:S`). Other formats decode
/// at full size.
pub fn decode_for(
    bytes: &[u8],
    spec: &ModelSpec,
    max_pixels: u64,
) -> Result<DynamicImage, PreprocessError> {
    decode_scaled(
        bytes,
        max_pixels,
        Some(Need::Spec(spec.resize, spec.width, spec.height)),
    )
}

/// A JPEG thumbnail whose long side is at most `size`, upright, alpha composited on white:
/// what `GET /images/{id}/thumb` serves instead of a full photo. A large JPEG is decoded at the
/// smallest DCT scale that still leaves `size` pixels, so a 24-megapixel photo costs a
/// fraction of a full decode.
pub fn thumbnail_jpeg(
    bytes: &[u8],
    size: u32,
    max_pixels: u64,
) -> Result<Vec<u8>, PreprocessError> {
    let size = size.max(1);
    let img = decode_scaled(bytes, max_pixels, Some(Need::LongSide(size)))?;
    let img = if img.width().max(img.height()) > size {
        img.thumbnail(size, size)
    } else {
        img
    };
    let rgb = rgb_on_white(&img);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 82)
        .encode_image(&rgb)
        .map_err(|e| PreprocessError::Decode(format!("cannot encode the thumbnail: {e}")))?;
    Ok(out)
}

fn decode_scaled(
    bytes: &[u8],
    max_pixels: u64,
    need: Option<Need>,
) -> Result<DynamicImage, PreprocessError> {
    let (width, height) = dimensions(bytes)?;
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(PreprocessError::TooLarge {
            width,
            height,
            limit: max_pixels,
        });
    }
    let decode_err = |e: image::ImageError| PreprocessError::Decode(e.to_string());
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| PreprocessError::Decode(e.to_string()))?;
    if reader.format() == Some(image::ImageFormat::Jpeg) {
        return decode_jpeg(bytes, need);
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(16));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    // A file whose orientation tag is unreadable is still an image: shown as stored.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// The DCT scale denominator (1, 2, 4 or 8) for a `w x h` JPEG (as stored) whose upright form
/// must still serve `spec`: the largest that leaves enough pixels.
pub fn jpeg_scale_for(w: u32, h: u32, swap_axes: bool, spec: &ModelSpec) -> u32 {
    scale_for(
        w,
        h,
        swap_axes,
        Need::Spec(spec.resize, spec.width, spec.height),
    )
}

fn scale_for(w: u32, h: u32, swap_axes: bool, need: Need) -> u32 {
    let (w, h) = if swap_axes { (h, w) } else { (w, h) };
    [8, 4, 2]
        .into_iter()
        .find(|&d| need.met(w.div_ceil(d), h.div_ceil(d)))
        .unwrap_or(1)
}

/// JPEG through `jpeg-decoder`: the codec with a reduced-size inverse DCT (`scale`), CMYK and
/// YCCK output, and access to the EXIF block.
fn decode_jpeg(bytes: &[u8], need: Option<Need>) -> Result<DynamicImage, PreprocessError> {
    let jpeg_err = |e: jpeg_decoder::Error| PreprocessError::Decode(e.to_string());
    let mut d = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    d.read_info().map_err(jpeg_err)?;
    let info = d
        .info()
        .ok_or_else(|| PreprocessError::Decode("JPEG header without a frame".into()))?;
    let orientation = d
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let swap = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    let (mut w, mut h) = (u32::from(info.width), u32::from(info.height));
    if let Some(need) = need {
        let denom = scale_for(w, h, swap, need);
        if denom > 1 {
            let (rw, rh) = d
                .scale(w.div_ceil(denom) as u16, h.div_ceil(denom) as u16)
                .map_err(jpeg_err)?;
            (w, h) = (u32::from(rw), u32::from(rh));
        }
    }
    let pixels = d.decode().map_err(jpeg_err)?;
    let n = w as usize * h as usize;
    let short = || PreprocessError::Decode("JPEG decoder returned too few pixels".into());
    let mut img = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => {
            DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, pixels).ok_or_else(short)?)
        }
        jpeg_decoder::PixelFormat::L16 => {
            // 16-bit lossless JPEG, big-endian samples.
            let v: Vec<u16> = pixels
                .chunks_exact(2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .collect();
            DynamicImage::ImageLuma16(image::ImageBuffer::from_raw(w, h, v).ok_or_else(short)?)
        }
        jpeg_decoder::PixelFormat::RGB24 => {
            DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, pixels).ok_or_else(short)?)
        }
        jpeg_decoder::PixelFormat::CMYK32 => {
            if pixels.len() < n * 4 {
                return Err(short());
            }
            DynamicImage::ImageRgb8(
                RgbImage::from_raw(w, h, cmyk_to_rgb(&pixels[..n * 4])).ok_or_else(short)?,
            )
        }
    };
    img.apply_orientation(orientation);
    Ok(img)
}

/// CMYK (as `jpeg-decoder` returns it: ink amounts, 255 = full ink, Adobe's inversion already
/// undone) to RGB by the naive formula, as browsers and PIL do without a colour profile.
fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(cmyk.len() / 4 * 3);
    for p in cmyk.chunks_exact(4) {
        let k = 255 - u32::from(p[3]);
        for &c in &p[..3] {
            out.push(((255 - u32::from(c)) * k / 255) as u8);
        }
    }
    out
}

/// Width and height from the image's header, without decoding pixels: what limits and
/// budgets are checked against before any decoding cost is paid.
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::Empty);
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| PreprocessError::Decode(e.to_string()))?;
    if reader.format().is_none() {
        return Err(PreprocessError::UnknownFormat);
    }
    reader
        .into_dimensions()
        .map_err(|e| PreprocessError::Decode(e.to_string()))
}

/// Image bytes to one model input `[C, H, W]` (or `[H, W, C]`) in the spec's layout: decode
/// (refusing more than `max_pixels`), resize and normalise. The one path from bytes to a
/// tensor that ingest, the server and the load bench share.
pub fn tensor_from_bytes(
    bytes: &[u8],
    spec: &ModelSpec,
    max_pixels: u64,
) -> Result<Array3<f32>, PreprocessError> {
    let img = decode_for(bytes, spec, max_pixels)?;
    let shape = batch_shape(1, spec);
    let mut t = Array3::<f32>::zeros((shape[1], shape[2], shape[3]));
    write_normalised(&img, spec, t.view_mut());
    Ok(t)
}

/// Decodes image bytes with [`DEFAULT_MAX_PIXELS`].
pub fn decode(bytes: &[u8]) -> Result<DynamicImage, PreprocessError> {
    decode_with_limit(bytes, DEFAULT_MAX_PIXELS)
}

/// Reads and decodes one image file.
pub fn load_image(path: &Path) -> Result<DynamicImage, PreprocessError> {
    let bytes = std::fs::read(path).map_err(|source| PreprocessError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    decode(&bytes)
}

/// Flattens any colour type to 8-bit RGB, compositing alpha on white.
pub fn rgb_on_white(img: &DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let owned;
    let rgba = match img {
        DynamicImage::ImageRgba8(i) => i,
        other => {
            owned = other.to_rgba8();
            &owned
        }
    };
    let (w, h) = rgba.dimensions();
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    for p in rgba.as_raw().chunks_exact(4) {
        let a = u32::from(p[3]);
        let blend = |c: u8| ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        out.extend_from_slice(&[blend(p[0]), blend(p[1]), blend(p[2])]);
    }
    RgbImage::from_raw(w, h, out).expect("3 bytes per pixel")
}

/// The resized 8-bit pixels a model sees, before normalisation: RGB or luma.
pub enum Resized {
    /// Three channels, in RGB order.
    Rgb(RgbImage),
    /// One luma channel.
    Grey(GrayImage),
}

/// Composites, converts to the spec's colour and resizes to the spec's size (stretched, or the
/// centre of the short-side resize).
pub fn resize_for(img: &DynamicImage, spec: &ModelSpec) -> Resized {
    let rgb = rgb_on_white(img);
    let (w, h) = (spec.width, spec.height);
    let crop = source_crop(rgb.dimensions(), spec);
    match spec.color {
        Color::Grey => {
            let grey = DynamicImage::ImageRgb8(rgb).to_luma8();
            Resized::Grey(resize_if_needed(grey, w, h, crop, PixelType::U8))
        }
        Color::Rgb | Color::Bgr => Resized::Rgb(resize_if_needed(rgb, w, h, crop, PixelType::U8x3)),
    }
}

/// The part of a `sw x sh` source that lands in the model's input, as `(left, top, width,
/// height)` in source pixels: all of it when stretching; for `short_side:S`, the centred window
/// that a resize to short side `S` followed by a centre crop keeps. Resizing that window straight
/// to the input size does both steps in one pass, at the same scale.
pub fn source_crop((sw, sh): (u32, u32), spec: &ModelSpec) -> Option<(f64, f64, f64, f64)> {
    let Resize::ShortSide(s) = spec.resize else {
        return None;
    };
    let scale = f64::from(s) / f64::from(sw.min(sh));
    let cw = (f64::from(spec.width) / scale).min(f64::from(sw));
    let ch = (f64::from(spec.height) / scale).min(f64::from(sh));
    Some((
        (f64::from(sw) - cw) / 2.0,
        (f64::from(sh) - ch) / 2.0,
        cw,
        ch,
    ))
}

thread_local! {
    /// fast_image_resize keeps scratch buffers and filter coefficients in its resizer; one per
    /// thread saves their allocation per image.
    static RESIZER: std::cell::RefCell<fast_image_resize::Resizer> =
        std::cell::RefCell::new(fast_image_resize::Resizer::new());
}

/// Resizes with the bilinear (`Triangle`) convolution of [`RESIZE_FILTER`], through
/// fast_image_resize's SIMD kernels (about 10x `image::imageops::resize` at the same filter;
/// the two agree to one grey level, the rounding of their fixed-point and float arithmetic).
fn resize_if_needed<P>(
    img: image::ImageBuffer<P, Vec<u8>>,
    w: u32,
    h: u32,
    crop: Option<(f64, f64, f64, f64)>,
    pixel: PixelType,
) -> image::ImageBuffer<P, Vec<u8>>
where
    P: image::Pixel<Subpixel = u8> + 'static,
{
    let (sw, sh) = img.dimensions();
    let whole = (0.0, 0.0, f64::from(sw), f64::from(sh));
    if (sw, sh) == (w, h) && crop.is_none_or(|c| c == whole) {
        return img;
    }
    let fast = || -> Option<image::ImageBuffer<P, Vec<u8>>> {
        let src = fast_image_resize::images::ImageRef::new(sw, sh, img.as_raw(), pixel).ok()?;
        let mut dst = fast_image_resize::images::Image::new(w, h, pixel);
        let mut options = fast_image_resize::ResizeOptions::new().resize_alg(
            fast_image_resize::ResizeAlg::Convolution(fast_image_resize::FilterType::Bilinear),
        );
        if let Some((left, top, cw, ch)) = crop {
            options = options.crop(left, top, cw, ch);
        }
        RESIZER
            .with_borrow_mut(|r| r.resize(&src, &mut dst, &options))
            .ok()?;
        image::ImageBuffer::from_raw(w, h, dst.into_vec())
    };
    // The slow path only runs if fast_image_resize refuses the buffer (it does not for these
    // pixel types; kept so that no image can fail here).
    fast().unwrap_or_else(|| match crop {
        None => image::imageops::resize(&img, w, h, RESIZE_FILTER),
        Some((left, top, cw, ch)) => {
            let (l, t) = (left.round() as u32, top.round() as u32);
            let (cw, ch) = ((cw.round() as u32).max(1), (ch.round() as u32).max(1));
            let view = image::imageops::crop_imm(&img, l, t, cw, ch).to_image();
            image::imageops::resize(&view, w, h, RESIZE_FILTER)
        }
    })
}

/// Writes one image into `out`, shaped `[C, H, W]` or `[H, W, C]` as the spec's layout says.
pub fn write_normalised(img: &DynamicImage, spec: &ModelSpec, mut out: ArrayViewMut3<f32>) {
    let resized = resize_for(img, spec);
    let (raw, channels): (&[u8], usize) = match &resized {
        Resized::Rgb(i) => (i.as_raw(), 3),
        Resized::Grey(i) => (i.as_raw(), 1),
    };
    let bgr = spec.color == Color::Bgr;
    // Per-channel affine map: (p * scale - mean) / std == p * a + b.
    let coef: Vec<(f32, f32)> = (0..channels)
        .map(|c| (spec.scale / spec.std[c], -spec.mean[c] / spec.std[c]))
        .collect();
    let src_channel = |c: usize| if bgr { channels - 1 - c } else { c };
    let plane = spec.width as usize * spec.height as usize;
    // Contiguous output (every batch tensor): one pass per channel plane, no indexing.
    if let Some(dst) = out.as_slice_mut() {
        match spec.layout {
            Layout::Nchw => {
                for (c, &(a, b)) in coef.iter().enumerate() {
                    let sc = src_channel(c);
                    let plane_out = &mut dst[c * plane..(c + 1) * plane];
                    for (o, px) in plane_out.iter_mut().zip(raw.chunks_exact(channels)) {
                        *o = f32::from(px[sc]) * a + b;
                    }
                }
            }
            Layout::Nhwc => {
                for (o, px) in dst
                    .chunks_exact_mut(channels)
                    .zip(raw.chunks_exact(channels))
                {
                    for (c, &(a, b)) in coef.iter().enumerate() {
                        o[c] = f32::from(px[src_channel(c)]) * a + b;
                    }
                }
            }
        }
        return;
    }
    let w = spec.width as usize;
    for (i, px) in raw.chunks_exact(channels).enumerate() {
        let (y, x) = (i / w, i % w);
        for (c, &(a, b)) in coef.iter().enumerate() {
            let v = f32::from(px[src_channel(c)]) * a + b;
            match spec.layout {
                Layout::Nchw => out[[c, y, x]] = v,
                Layout::Nhwc => out[[y, x, c]] = v,
            }
        }
    }
}

/// Shape of a batch of `n` images for `spec`.
pub fn batch_shape(n: usize, spec: &ModelSpec) -> [usize; 4] {
    let (c, h, w) = (
        spec.color.channels(),
        spec.height as usize,
        spec.width as usize,
    );
    match spec.layout {
        Layout::Nchw => [n, c, h, w],
        Layout::Nhwc => [n, h, w, c],
    }
}

/// Preprocesses images in parallel into one batch in the spec's layout.
pub fn preprocess_batch(images: &[DynamicImage], spec: &ModelSpec) -> Array4<f32> {
    let mut batch = Array4::<f32>::zeros(batch_shape(images.len(), spec));
    batch
        .outer_iter_mut()
        .into_par_iter()
        .zip(images.par_iter())
        .for_each(|(slot, img)| write_normalised(img, spec, slot));
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Pooling;
    use image::{Rgba, RgbaImage};

    fn spec(layout: Layout, color: Color, w: u32, h: u32) -> ModelSpec {
        let c = color.channels();
        ModelSpec {
            input_name: "x".into(),
            output_name: "y".into(),
            layout,
            height: h,
            width: w,
            resize: Default::default(),
            color,
            scale: 1.0 / 255.0,
            mean: [0.485, 0.456, 0.406][..c].to_vec(),
            std: [0.229, 0.224, 0.225][..c].to_vec(),
            pooling: Pooling::None,
            embedding_dim: 4,
        }
    }

    /// A deterministic RGBA test card with partial transparency.
    fn card(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgba8(RgbaImage::from_fn(w, h, |x, y| {
            Rgba([
                (x * 37 % 256) as u8,
                (y * 91 % 256) as u8,
                ((x + y) * 13 % 256) as u8,
                ((x * y) % 256) as u8,
            ])
        }))
    }

    /// Reference: the spec's formula, one pixel at a time, with no shared code paths.
    fn naive(img: &DynamicImage, s: &ModelSpec) -> Vec<f32> {
        let rgba = img.to_rgba8();
        let composited = RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            let p = rgba.get_pixel(x, y).0;
            let a = p[3] as f64 / 255.0;
            let f = |c: u8| (c as f64 * a + 255.0 * (1.0 - a)).round() as u8;
            image::Rgb([f(p[0]), f(p[1]), f(p[2])])
        });
        let resized = image::imageops::resize(&composited, s.width, s.height, FilterType::Triangle);
        let grey = DynamicImage::ImageRgb8(resized.clone()).to_luma8();
        let c = s.color.channels();
        let (h, w) = (s.height as usize, s.width as usize);
        let mut out = vec![0f32; c * h * w];
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    let px = match s.color {
                        Color::Rgb => resized.get_pixel(x as u32, y as u32).0[ch],
                        Color::Bgr => resized.get_pixel(x as u32, y as u32).0[2 - ch],
                        Color::Grey => grey.get_pixel(x as u32, y as u32).0[0],
                    };
                    let v = (px as f32 * s.scale - s.mean[ch]) / s.std[ch];
                    let idx = match s.layout {
                        Layout::Nchw => ch * h * w + y * w + x,
                        Layout::Nhwc => (y * w + x) * c + ch,
                    };
                    out[idx] = v;
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_reference_for_every_layout_and_colour() {
        let img = card(45, 29);
        for layout in [Layout::Nchw, Layout::Nhwc] {
            for color in [Color::Rgb, Color::Bgr, Color::Grey] {
                let s = spec(layout, color, 16, 12);
                let got = preprocess_batch(std::slice::from_ref(&img), &s);
                assert_eq!(got.shape(), &batch_shape(1, &s));
                let want = naive(&img, &s);
                let max = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                // The rounding of the alpha blend may differ by one grey level.
                assert!(
                    max < 1.0 / 255.0 / 0.224 + 1e-4,
                    "{layout:?} {color:?}: {max}"
                );
            }
        }
    }

    #[test]
    fn jpeg_scale_is_the_smallest_that_leaves_enough_pixels() {
        let mut s = spec(Layout::Nchw, Color::Rgb, 224, 224);
        s.resize = Resize::ShortSide(256);
        // 12 MP: 3000 / 8 = 375 >= 256.
        assert_eq!(jpeg_scale_for(4000, 3000, false, &s), 8);
        // 1600 x 1200: 1/8 gives 150, 1/4 gives 300.
        assert_eq!(jpeg_scale_for(1600, 1200, false, &s), 4);
        assert_eq!(jpeg_scale_for(600, 400, false, &s), 1);
        let mut s = spec(Layout::Nchw, Color::Rgb, 300, 100);
        assert_eq!(jpeg_scale_for(2400, 800, false, &s), 8);
        // Turned a quarter by its orientation, the stored width becomes the height.
        assert_eq!(jpeg_scale_for(800, 2400, true, &s), 8);
        // Upright as stored, the 800 px side must hold the 300 px width: 1/2 at most.
        assert_eq!(jpeg_scale_for(800, 2400, false, &s), 2);
        s.resize = Resize::Stretch;
        assert_eq!(jpeg_scale_for(299, 99, false, &s), 1);
    }

    #[test]
    fn thumbnails_keep_the_aspect_ratio_and_never_upscale() {
        let jpeg = |w: u32, h: u32| {
            let img = RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x % 251) as u8, (y % 241) as u8, 90])
            });
            let mut out = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
                .encode_image(&img)
                .unwrap();
            out
        };
        // 2400 x 1200 decodes at 1/8 (300 px long side >= 256), then shrinks to 256 x 128.
        let t =
            decode(&thumbnail_jpeg(&jpeg(2400, 1200), 256, DEFAULT_MAX_PIXELS).unwrap()).unwrap();
        assert_eq!((t.width(), t.height()), (256, 128));
        // A portrait JPEG: the long side is the height.
        let t = decode(&thumbnail_jpeg(&jpeg(300, 900), 128, DEFAULT_MAX_PIXELS).unwrap()).unwrap();
        assert_eq!(t.height(), 128);
        assert!((t.width() as i32 - 43).abs() <= 1, "{}", t.width());
        // Smaller than asked: served at its own size.
        let t = decode(&thumbnail_jpeg(&jpeg(40, 30), 256, DEFAULT_MAX_PIXELS).unwrap()).unwrap();
        assert_eq!((t.width(), t.height()), (40, 30));
        assert!(matches!(
            thumbnail_jpeg(b"not an image", 64, DEFAULT_MAX_PIXELS),
            Err(PreprocessError::UnknownFormat)
        ));
    }

    #[test]
    fn short_side_crop_keeps_the_centred_window_at_the_aspect_ratio() {
        let mut s = spec(Layout::Nchw, Color::Rgb, 224, 224);
        assert_eq!(source_crop((640, 480), &s), None);
        s.resize = Resize::ShortSide(256);
        // 480 -> 256 is a scale of 0.5333; 224 px of output cover 420 px of source.
        let (l, t, w, h) = source_crop((640, 480), &s).unwrap();
        assert!(
            (w - 420.0).abs() < 1e-9 && (h - 420.0).abs() < 1e-9,
            "{w} {h}"
        );
        assert!(
            (l - 110.0).abs() < 1e-9 && (t - 30.0).abs() < 1e-9,
            "{l} {t}"
        );
        // The result equals resizing the short side, then cutting the centre, to within the
        // rounding of one grey level plus bilinear edge effects.
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(640, 480, |x, y| {
            image::Rgb([(x / 3) as u8, (y / 2) as u8, ((x + y) / 5) as u8])
        }));
        let rgb = img.to_rgb8();
        let Resized::Rgb(ours) = resize_for(&img, &s) else {
            panic!("rgb")
        };
        let big = image::imageops::resize(&rgb, 341, 256, FilterType::Triangle);
        let naive = image::imageops::crop_imm(&big, 58, 16, 224, 224).to_image();
        let diff: f64 = ours
            .as_raw()
            .iter()
            .zip(naive.as_raw())
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .sum::<f64>()
            / ours.as_raw().len() as f64;
        // A smooth gradient: a sub-pixel offset between the two windows shows as well under
        // one grey level on average.
        assert!(diff < 1.0, "mean abs difference {diff}");
        assert_eq!(ours.dimensions(), (224, 224));
    }

    #[test]
    fn cmyk_converts_by_the_profile_free_formula() {
        assert_eq!(cmyk_to_rgb(&[0, 0, 0, 0]), vec![255, 255, 255]);
        assert_eq!(cmyk_to_rgb(&[255, 0, 0, 0]), vec![0, 255, 255]);
        assert_eq!(cmyk_to_rgb(&[0, 0, 0, 255]), vec![0, 0, 0]);
        assert_eq!(cmyk_to_rgb(&[0, 128, 0, 128]), vec![127, 63, 127]);
    }

    #[test]
    fn transparent_pixels_become_white() {
        let img = DynamicImage::ImageRgba8(RgbaImage::from_pixel(4, 4, Rgba([0, 0, 0, 0])));
        let rgb = rgb_on_white(&img);
        assert!(rgb.pixels().all(|p| p.0 == [255, 255, 255]));
    }

    #[test]
    fn sixteen_bit_is_reduced_to_eight() {
        let img = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
            2,
            2,
            image::Rgb([65535u16, 0, 32896]),
        ));
        let rgb = rgb_on_white(&img);
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 0, 128]);
    }

    #[test]
    fn bad_bytes_give_precise_errors() {
        assert!(matches!(decode(b""), Err(PreprocessError::Empty)));
        assert!(matches!(
            decode(b"hello, I am text"),
            Err(PreprocessError::UnknownFormat)
        ));
        let mut png = Vec::new();
        card(8, 8)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png.truncate(png.len() / 2);
        assert!(matches!(decode(&png), Err(PreprocessError::Decode(_))));
    }

    #[test]
    fn pixel_limit_is_enforced_before_decoding() {
        let mut png = Vec::new();
        card(100, 100)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert!(matches!(
            decode_with_limit(&png, 9_999),
            Err(PreprocessError::TooLarge {
                width: 100,
                height: 100,
                ..
            })
        ));
        assert!(decode_with_limit(&png, 10_000).is_ok());
    }
}
