//! Readers of the four data sources, each returning a [`ZeroShotSplit`] preprocessed with the
//! model's spec: IDX (Fashion-MNIST), the MNIST-5k CSV, class-per-subfolder folders and the
//! emoji vendor sets.

use std::io::Read;
use std::path::{Path, PathBuf};

use image::DynamicImage;
use rayon::prelude::*;

use super::split::numeric_split;
use super::{Encoder, EvalProtocol, ImageSet, ZeroShotSplit};
use crate::config::EmojiConfig;
use crate::TrainError;

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a file, transparently gunzipping it when it starts with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, TrainError> {
    let raw = std::fs::read(path).map_err(io_err(path))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(io_err(path))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Finds `<dir>/<stem>` or `<dir>/<stem>.gz`.
fn find_file(dir: &Path, stem: &str) -> Result<PathBuf, TrainError> {
    for cand in [dir.join(stem), dir.join(format!("{stem}.gz"))] {
        if cand.is_file() {
            return Ok(cand);
        }
    }
    Err(TrainError::Data(format!(
        "missing {stem}(.gz) in {}",
        dir.display()
    )))
}

/// Parses an IDX file: returns the dimensions and the raw bytes (u8 data only).
pub fn parse_idx(bytes: &[u8]) -> Result<(Vec<usize>, &[u8]), TrainError> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(TrainError::Data("not an IDX file (bad magic)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(TrainError::Data(format!(
            "IDX element type 0x{:02x} is not unsigned byte",
            bytes[2]
        )));
    }
    let nd = bytes[3] as usize;
    let header = 4 + 4 * nd;
    if bytes.len() < header {
        return Err(TrainError::Data("IDX header is truncated".into()));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() - header != n {
        return Err(TrainError::Data(format!(
            "IDX payload has {} bytes, dimensions {:?} need {n}",
            bytes.len() - header,
            dims
        )));
    }
    Ok((dims, &bytes[header..]))
}

pub(super) fn idx_images(path: &Path) -> Result<(Vec<DynamicImage>, usize, usize), TrainError> {
    let bytes = read_maybe_gz(path)?;
    let (dims, px) =
        parse_idx(&bytes).map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
    let [n, h, w] = dims[..] else {
        return Err(TrainError::Data(format!(
            "{}: expected 3 IDX dimensions, got {dims:?}",
            path.display()
        )));
    };
    let imgs = px
        .chunks_exact(h * w)
        .map(|c| {
            DynamicImage::ImageLuma8(
                image::GrayImage::from_raw(w as u32, h as u32, c.to_vec())
                    .expect("chunk has h*w bytes"),
            )
        })
        .collect::<Vec<_>>();
    debug_assert_eq!(imgs.len(), n);
    Ok((imgs, h, w))
}

pub(super) fn idx_labels(path: &Path) -> Result<Vec<usize>, TrainError> {
    let bytes = read_maybe_gz(path)?;
    let (dims, v) =
        parse_idx(&bytes).map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
    if dims.len() != 1 {
        return Err(TrainError::Data(format!(
            "{}: labels must be 1-D, got {dims:?}",
            path.display()
        )));
    }
    Ok(v.iter().map(|&b| b as usize).collect())
}

/// Fashion-MNIST: classes 0–4 of the training file train; classes 5–9 of the test file are
/// evaluated (leave-one-out).
pub(super) fn load_fashion(
    dir: &Path,
    spec: Encoder<'_>,
    max_classes: Option<usize>,
) -> Result<ZeroShotSplit, TrainError> {
    let (ti, _, _) = idx_images(&find_file(dir, "train-images-idx3-ubyte")?)?;
    let tl = idx_labels(&find_file(dir, "train-labels-idx1-ubyte")?)?;
    let (ei, _, _) = idx_images(&find_file(dir, "t10k-images-idx3-ubyte")?)?;
    let el = idx_labels(&find_file(dir, "t10k-labels-idx1-ubyte")?)?;
    if ti.len() != tl.len() || ei.len() != el.len() {
        return Err(TrainError::Data(
            "Fashion-MNIST image and label counts differ".into(),
        ));
    }
    numeric_split(ti, tl, ei, el, spec, max_classes, &|l| {
        FASHION_NAMES
            .get(l)
            .map_or_else(|| l.to_string(), |n| n.to_string())
    })
}

/// Fashion-MNIST's article names by label, as its README lists them.
const FASHION_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Parses the MNIST-5k CSV: 785 comma-separated integers per row, 784 pixels then the label.
pub fn parse_mnist_csv(text: &str) -> Result<(Vec<DynamicImage>, Vec<usize>), TrainError> {
    let mut imgs = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Result<Vec<u32>, _> = line.split(',').map(|s| s.trim().parse::<u32>()).collect();
        let v = v.map_err(|e| TrainError::Data(format!("CSV line {}: {e}", i + 1)))?;
        if v.len() != 785 {
            return Err(TrainError::Data(format!(
                "CSV line {} has {} values, expected 785 (784 pixels and a label)",
                i + 1,
                v.len()
            )));
        }
        let px: Vec<u8> = v[..784].iter().map(|&p| p.min(255) as u8).collect();
        imgs.push(DynamicImage::ImageLuma8(
            image::GrayImage::from_raw(28, 28, px).expect("784 bytes"),
        ));
        labels.push(v[784] as usize);
    }
    if imgs.is_empty() {
        return Err(TrainError::Data("the CSV has no rows".into()));
    }
    Ok((imgs, labels))
}

/// MNIST-5k: digits 0–4 train, digits 5–9 are evaluated (leave-one-out).
pub(super) fn load_mnist5k(
    dir: &Path,
    spec: Encoder<'_>,
    max_classes: Option<usize>,
) -> Result<ZeroShotSplit, TrainError> {
    let path = find_file(dir, "mnist_5k.csv")?;
    let text = String::from_utf8(read_maybe_gz(&path)?)
        .map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
    let (imgs, labels) = parse_mnist_csv(&text)?;
    numeric_split(
        imgs.clone(),
        labels.clone(),
        imgs,
        labels,
        spec,
        max_classes,
        &|l| format!("digit {l}"),
    )
}

fn load_all(paths: &[PathBuf]) -> Result<Vec<DynamicImage>, TrainError> {
    paths
        .par_iter()
        .map(|p| {
            htg_retrieval::preprocess::load_image(p)
                .map_err(|e| TrainError::Data(format!("{}: {e}", p.display())))
        })
        .collect()
}

const IMAGE_EXTS: &[&str] = &["png", "jpg", "jpeg", "gif", "bmp", "webp", "tif", "tiff"];

/// A folder with one subfolder per class (sorted by name): the first half of the classes
/// trains, the second half is evaluated leave-one-out. Images may have any size.
pub(super) fn load_folder(
    dir: &Path,
    spec: Encoder<'_>,
    max_classes: Option<usize>,
) -> Result<ZeroShotSplit, TrainError> {
    let mut classes: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let p = entry.path();
        if !p.is_dir() {
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&p)
            .map_err(io_err(&p))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| {
                f.is_file()
                    && f.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
            })
            .collect();
        files.sort();
        let name = entry.file_name().into_string().map_err(|raw| {
            TrainError::Data(format!(
                "class folder {:?} in {}: its name is not valid UTF-8 (class names go into \
                 reports and metadata as text); rename it",
                raw.to_string_lossy(),
                dir.display()
            ))
        })?;
        classes.push((name, files));
    }
    classes.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some((name, _)) = classes.iter().find(|(_, f)| f.is_empty()) {
        return Err(TrainError::Data(format!(
            "class folder {name:?} in {} has no images",
            dir.display()
        )));
    }
    if let Some(m) = max_classes {
        classes.truncate(m);
    }
    if classes.len() < 4 {
        return Err(TrainError::Data(format!(
            "{} has {} class folder(s); the zero-shot split needs at least 4 (half train, half unseen)",
            dir.display(),
            classes.len()
        )));
    }
    // A file that does not decode is left out and named, not fatal: one bad photo in a
    // collection must not stop a run. JPEGs decode at the reduced DCT scale the input allows,
    // so a folder of camera photos does not hold full-size pixels in memory.
    let input = spec.spec();
    let mut skipped = Vec::new();
    let mut decoded: Vec<(String, Vec<DynamicImage>)> = Vec::new();
    for (name, files) in classes {
        let imgs: Vec<Result<DynamicImage, String>> = files
            .par_iter()
            .map(|p| {
                std::fs::read(p)
                    .map_err(|e| e.to_string())
                    .and_then(|b| {
                        htg_retrieval::preprocess::decode_for(&b, input, MAX_PIXELS)
                            .map_err(|e| e.to_string())
                    })
                    .map_err(|e| format!("{}: {e}", p.display()))
            })
            .collect();
        let mut good = Vec::new();
        for r in imgs {
            match r {
                Ok(i) => good.push(i),
                Err(m) => skipped.push(m),
            }
        }
        decoded.push((name, good));
    }
    if let Some((name, f)) = decoded.iter().find(|(_, f)| f.len() < 2) {
        return Err(TrainError::Data(format!(
            "class folder {name:?} has {} image(s) that decode; every class needs at least 2{}",
            f.len(),
            if skipped.is_empty() {
                String::new()
            } else {
                format!(" (skipped: {})", skipped.join("; "))
            }
        )));
    }
    let half = decoded.len() / 2;
    let gather = |cs: Vec<(String, Vec<DynamicImage>)>| {
        let mut imgs = Vec::new();
        let mut labels = Vec::new();
        for (i, (_, files)) in cs.into_iter().enumerate() {
            labels.extend(std::iter::repeat_n(i, files.len()));
            imgs.extend(files);
        }
        (imgs, labels)
    };
    let eval_names = decoded[half..].iter().map(|(n, _)| n.clone()).collect();
    let rest = decoded.split_off(half);
    let (ti, tl) = gather(decoded);
    let (ei, el) = gather(rest);
    Ok(ZeroShotSplit {
        name: String::new(),
        train: ImageSet::encode(&ti, tl, spec)?,
        train_classes: half,
        eval: EvalProtocol::LeaveOneOut(ImageSet::encode(&ei, el, spec)?),
        eval_names,
        train_vendor: None,
        val: None,
        skipped,
    })
}

/// Pixels above which a folder image is refused (and skipped): a decompression bomb must
/// not take the machine's memory. 100 MP covers any camera.
const MAX_PIXELS: u64 = 100_000_000;

#[derive(serde::Deserialize)]
struct EmojiEntry {
    unified: String,
    #[serde(default)]
    short_name: Option<String>,
    #[serde(default)]
    category: Option<String>,
    image: String,
    #[serde(flatten)]
    has: HasImg,
    #[serde(default)]
    skin_variations: Option<std::collections::BTreeMap<String, EmojiVariant>>,
}

#[derive(serde::Deserialize)]
struct EmojiVariant {
    image: String,
    #[serde(flatten)]
    has: HasImg,
}

/// Which vendors draw an emoji or one of its skin-tone variants (`emoji.json`'s flags).
#[derive(serde::Deserialize)]
struct HasImg {
    #[serde(default)]
    has_img_google: bool,
    #[serde(default)]
    has_img_twitter: bool,
    #[serde(default)]
    has_img_apple: bool,
    #[serde(default)]
    has_img_facebook: bool,
}

/// The emoji vendors, in tag order ([`super::ZeroShotSplit::train_vendor`]): Google and
/// Twitter define the classes and the evaluation; Apple and Facebook can only add training
/// images.
pub const EMOJI_VENDORS: [&str; 4] = ["google", "twitter", "apple", "facebook"];

impl HasImg {
    /// The flags in the order of [`EMOJI_VENDORS`].
    fn vendors(&self) -> [bool; 4] {
        [
            self.has_img_google,
            self.has_img_twitter,
            self.has_img_apple,
            self.has_img_facebook,
        ]
    }
}

/// Emoji: a class is a base emoji present in both Google's and Twitter's sets, ordered by
/// codepoints. The first half trains on both vendors' images (skin-tone variants count as
/// extra images of their base emoji), plus those of each of `emoji.extra_vendors` (Apple,
/// Facebook) that has the emoji, less the classes of `emoji.exclude_categories`; on the
/// unseen half, the Google image is the query and the Twitter images are the gallery (base
/// images only), whatever `emoji` holds.
pub(super) fn load_emoji(
    dir: &Path,
    spec: Encoder<'_>,
    max_classes: Option<usize>,
    emoji: &EmojiConfig,
) -> Result<ZeroShotSplit, TrainError> {
    let extra_vendors = &emoji.extra_vendors;
    let json_path = dir.join("emoji.json");
    let text = std::fs::read_to_string(&json_path).map_err(io_err(&json_path))?;
    let entries: Vec<EmojiEntry> = serde_json::from_str(&text)
        .map_err(|e| TrainError::Data(format!("{}: {e}", json_path.display())))?;
    let g = dir.join("google").join("64");
    let t = dir.join("twitter").join("64");
    // The vendors whose images train: Google and Twitter, then the extra ones, by tag.
    let mut vendors: Vec<(usize, PathBuf)> = vec![(0, g.clone()), (1, t.clone())];
    for name in extra_vendors {
        let v = match EMOJI_VENDORS.iter().position(|n| n == name) {
            Some(v) if v >= 2 => v,
            _ => {
                return Err(TrainError::Config(format!(
                    "emoji.extra_vendors: {name:?} is not an extra emoji vendor (apple or facebook)"
                )))
            }
        };
        let vdir = dir.join(name).join("64");
        if !vdir.is_dir() {
            return Err(TrainError::Data(format!(
                "{} is missing: emoji.extra_vendors names {name:?} (scripts/fetch-data.sh \
                 emoji fetches it)",
                vdir.display()
            )));
        }
        vendors.push((v, vdir));
    }
    let mut classes: Vec<&EmojiEntry> = entries
        .iter()
        .filter(|e| {
            e.has.has_img_google
                && e.has.has_img_twitter
                && g.join(&e.image).is_file()
                && t.join(&e.image).is_file()
        })
        .collect();
    classes.sort_by(|a, b| a.unified.cmp(&b.unified));
    if let Some(m) = max_classes {
        classes.truncate(m);
    }
    if classes.len() < 4 {
        return Err(TrainError::Data(format!(
            "{} has {} emoji with both vendors' images; need at least 4",
            dir.display(),
            classes.len()
        )));
    }
    let half = classes.len() / 2;
    let excluded = |e: &EmojiEntry| {
        let c = e.category.as_deref().unwrap_or_default();
        emoji.exclude_categories.iter().any(|x| x == c)
    };
    let train: Vec<&EmojiEntry> = classes[..half]
        .iter()
        .copied()
        .filter(|e| !excluded(e))
        .collect();
    if let Some(x) = emoji.exclude_categories.iter().find(|x| {
        !entries
            .iter()
            .any(|e| e.category.as_deref() == Some(x.as_str()))
    }) {
        return Err(TrainError::Config(format!(
            "emoji.exclude_categories: {x:?} is no category of {}",
            json_path.display()
        )));
    }
    if train.len() < 2 {
        return Err(TrainError::Data(format!(
            "emoji.exclude_categories {:?} leave {} training classes; need at least 2",
            emoji.exclude_categories,
            train.len()
        )));
    }
    let mut train_paths = Vec::new();
    let mut train_labels = Vec::new();
    let mut train_vendor = Vec::new();
    for (i, e) in train.iter().enumerate() {
        let mut add = |has: bool, p: PathBuf, tag: usize| {
            if has && p.is_file() {
                train_paths.push(p);
                train_labels.push(i);
                train_vendor.push(tag as u8);
            }
        };
        let variants = || e.skin_variations.iter().flat_map(|m| m.values());
        // Google's and Twitter's base images first (tags 0 and 1), then their skin-tone
        // variants: the order of the two-vendor data, which extra vendors only append to.
        add(true, g.join(&e.image), 0);
        add(true, t.join(&e.image), 1);
        for v in variants() {
            for (vendor, vdir) in &vendors[..2] {
                add(v.has.vendors()[*vendor], vdir.join(&v.image), vendor + 4);
            }
        }
        for (vendor, vdir) in &vendors[2..] {
            add(e.has.vendors()[*vendor], vdir.join(&e.image), *vendor);
            for v in variants() {
                add(v.has.vendors()[*vendor], vdir.join(&v.image), vendor + 4);
            }
        }
    }
    let eval = &classes[half..];
    let q_paths: Vec<PathBuf> = eval.iter().map(|e| g.join(&e.image)).collect();
    let g_paths: Vec<PathBuf> = eval.iter().map(|e| t.join(&e.image)).collect();
    let labels: Vec<usize> = (0..eval.len()).collect();
    Ok(ZeroShotSplit {
        name: String::new(),
        train: ImageSet::encode(&load_all(&train_paths)?, train_labels, spec)?,
        train_classes: train.len(),
        eval: EvalProtocol::QueryGallery {
            query: ImageSet::encode(&load_all(&q_paths)?, labels.clone(), spec)?,
            gallery: ImageSet::encode(&load_all(&g_paths)?, labels, spec)?,
        },
        eval_names: eval
            .iter()
            .map(|e| e.short_name.clone().unwrap_or_else(|| e.unified.clone()))
            .collect(),
        train_vendor: Some(train_vendor),
        val: None,
        skipped: Vec::new(),
    })
}
