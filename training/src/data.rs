//! Data: readers for the four sources, the zero-shot split, P×K sampling and augmentation.
//!
//! Every image goes through `htg_retrieval::preprocess::preprocess_batch` with the model's
//! [`ModelSpec`], so training sees exactly the tensors that serving will compute (one source
//! of truth for decoding, alpha on white, resizing and normalisation). IDX and CSV pixels are
//! wrapped as `ImageLuma8` and take the same path.
//!
//! Zero-shot protocol: classes are ordered (by name or codepoints, or by numeric label), the
//! first half trains and the second half is evaluated, so evaluation sees only unseen classes.

use std::io::Read;
use std::path::{Path, PathBuf};

use htg_retrieval::spec::ModelSpec;
use image::DynamicImage;
use rand::rngs::StdRng;
use rand::Rng;
use rayon::prelude::*;

use crate::config::AugmentConfig;
use crate::TrainError;

/// Preprocessed images with integer labels, stored as one flat buffer in the spec's layout
/// (`[N, C, H, W]` for training, which always uses NCHW).
#[derive(Clone, Debug)]
pub struct ImageSet {
    /// Normalised values, image after image.
    pub data: Vec<f32>,
    /// Label of each image.
    pub labels: Vec<usize>,
    /// Shape of one image: `[C, H, W]` (or `[H, W, C]` for an NHWC evaluation spec).
    pub chw: [usize; 3],
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values of one image.
    pub fn sample(&self, i: usize) -> &[f32] {
        let n = self.chw.iter().product::<usize>();
        &self.data[i * n..(i + 1) * n]
    }

    /// Number of distinct labels.
    pub fn class_count(&self) -> usize {
        let mut l = self.labels.clone();
        l.sort_unstable();
        l.dedup();
        l.len()
    }

    /// Preprocesses `images` with `spec` into a set.
    pub fn from_images(
        images: &[DynamicImage],
        labels: Vec<usize>,
        spec: &ModelSpec,
    ) -> Result<ImageSet, TrainError> {
        if images.len() != labels.len() {
            return Err(TrainError::Data(
                "images and labels differ in length".into(),
            ));
        }
        let batch = htg_retrieval::preprocess::preprocess_batch(images, spec);
        let s = batch.shape();
        let chw = [s[1], s[2], s[3]];
        let data = batch.into_iter().collect();
        Ok(ImageSet { data, labels, chw })
    }

    /// The images at `idx` as an `ndarray` batch (for the tract embedder).
    pub fn to_array4(&self, idx: std::ops::Range<usize>) -> ndarray::Array4<f32> {
        let n = self.chw.iter().product::<usize>();
        let [c, h, w] = self.chw;
        let v = self.data[idx.start * n..idx.end * n].to_vec();
        ndarray::Array4::from_shape_vec((idx.len(), c, h, w), v)
            .expect("slice length matches the shape")
    }
}

/// How the unseen classes are evaluated.
#[derive(Clone, Debug)]
pub enum EvalProtocol {
    /// Queries searched in a separate gallery (emoji: Google queries, Twitter gallery).
    QueryGallery {
        /// Query images.
        query: ImageSet,
        /// Gallery images.
        gallery: ImageSet,
    },
    /// Every image is a query against all the others.
    LeaveOneOut(ImageSet),
}

impl EvalProtocol {
    /// Short description for reports.
    pub fn describe(&self) -> String {
        match self {
            EvalProtocol::QueryGallery { query, gallery } => format!(
                "{} queries vs {} gallery images, {} unseen classes",
                query.len(),
                gallery.len(),
                gallery.class_count()
            ),
            EvalProtocol::LeaveOneOut(s) => format!(
                "leave-one-out over {} images, {} unseen classes",
                s.len(),
                s.class_count()
            ),
        }
    }
}

/// A zero-shot split: training classes and a disjoint set of evaluation classes.
#[derive(Clone, Debug)]
pub struct ZeroShotSplit {
    /// Data set name (`emoji`, `fashion-mnist`, `mnist5k` or the folder path).
    pub name: String,
    /// Training images; labels are `0..train_classes`.
    pub train: ImageSet,
    /// Number of training classes (K of the (K+1)-way discriminator).
    pub train_classes: usize,
    /// Evaluation on the unseen classes.
    pub eval: EvalProtocol,
}

/// Where a data set comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    /// Emoji vendor sets: `<dir>/{google,twitter}/64/*.png` and `<dir>/emoji.json`.
    Emoji(PathBuf),
    /// Fashion-MNIST IDX files (optionally gzip-compressed) in `<dir>`.
    FashionMnist(PathBuf),
    /// `<dir>/mnist_5k.csv(.gz)`: 784 pixels then the label, per row.
    Mnist5k(PathBuf),
    /// A folder with one subfolder per class.
    Folder(PathBuf),
}

impl DataSource {
    /// Resolves `--data`: a known name looks in `$HTG_DATA_DIR/<name>` (default `data/<name>`),
    /// anything else is a class-per-subfolder directory.
    pub fn resolve(name_or_dir: &str) -> Result<DataSource, TrainError> {
        let root = std::env::var_os("HTG_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("data"));
        let named = |n: &str| -> Result<PathBuf, TrainError> {
            let p = root.join(n);
            if p.is_dir() {
                Ok(p)
            } else {
                Err(TrainError::Data(format!(
                    "data set {n:?} not found at {}; run `scripts/fetch-data.sh {n}` (or set HTG_DATA_DIR)",
                    p.display()
                )))
            }
        };
        match name_or_dir {
            "emoji" => Ok(DataSource::Emoji(named("emoji")?)),
            "fashion-mnist" => Ok(DataSource::FashionMnist(named("fashion-mnist")?)),
            "mnist5k" => Ok(DataSource::Mnist5k(named("mnist5k")?)),
            dir => {
                let p = PathBuf::from(dir);
                if p.is_dir() {
                    Ok(DataSource::Folder(p))
                } else {
                    Err(TrainError::Data(format!(
                        "{dir:?} is neither a known data set (emoji, fashion-mnist, mnist5k) nor a directory"
                    )))
                }
            }
        }
    }

    /// Name recorded in metadata and reports.
    pub fn name(&self) -> String {
        match self {
            DataSource::Emoji(_) => "emoji".into(),
            DataSource::FashionMnist(_) => "fashion-mnist".into(),
            DataSource::Mnist5k(_) => "mnist5k".into(),
            DataSource::Folder(p) => format!(
                "folder:{}",
                p.file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
        }
    }

    /// Loads the zero-shot split, preprocessed with `spec`. `max_classes` keeps only the first
    /// classes (in the split's order) before halving, for quick tests.
    pub fn load(
        &self,
        spec: &ModelSpec,
        max_classes: Option<usize>,
    ) -> Result<ZeroShotSplit, TrainError> {
        match self {
            DataSource::Emoji(d) => load_emoji(d, spec, max_classes),
            DataSource::FashionMnist(d) => load_fashion(d, spec, max_classes),
            DataSource::Mnist5k(d) => load_mnist5k(d, spec, max_classes),
            DataSource::Folder(d) => load_folder(d, spec, max_classes),
        }
        .map(|mut s| {
            s.name = self.name();
            s
        })
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
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

fn idx_images(path: &Path) -> Result<(Vec<DynamicImage>, usize, usize), TrainError> {
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

fn idx_labels(path: &Path) -> Result<Vec<usize>, TrainError> {
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

/// Splits labelled images whose labels are `0..classes` into train (`< classes/2`) and eval.
fn numeric_split(
    train_imgs: Vec<DynamicImage>,
    train_labels: Vec<usize>,
    eval_imgs: Vec<DynamicImage>,
    eval_labels: Vec<usize>,
    spec: &ModelSpec,
    max_classes: Option<usize>,
) -> Result<ZeroShotSplit, TrainError> {
    let classes = train_labels
        .iter()
        .chain(&eval_labels)
        .max()
        .map_or(0, |m| m + 1);
    let classes = max_classes.map_or(classes, |m| m.min(classes));
    if classes < 4 {
        return Err(TrainError::Data(format!(
            "{classes} classes; the zero-shot split needs at least 4 (half train, half unseen)"
        )));
    }
    let half = classes / 2;
    let pick = |imgs: Vec<DynamicImage>, labels: Vec<usize>, lo: usize, hi: usize| {
        let (i, l): (Vec<_>, Vec<_>) = imgs
            .into_iter()
            .zip(labels)
            .filter(|(_, l)| (lo..hi).contains(l))
            .map(|(i, l)| (i, l - lo))
            .unzip();
        (i, l)
    };
    let (ti, tl) = pick(train_imgs, train_labels, 0, half);
    let (ei, el) = pick(eval_imgs, eval_labels, half, classes);
    check_classes(&tl, half, "training")?;
    check_classes(&el, classes - half, "evaluation")?;
    Ok(ZeroShotSplit {
        name: String::new(),
        train: ImageSet::from_images(&ti, tl, spec)?,
        train_classes: half,
        eval: EvalProtocol::LeaveOneOut(ImageSet::from_images(&ei, el, spec)?),
    })
}

fn check_classes(labels: &[usize], classes: usize, what: &str) -> Result<(), TrainError> {
    let mut count = vec![0usize; classes];
    for &l in labels {
        count[l] += 1;
    }
    if let Some(c) = count.iter().position(|&c| c < 2) {
        return Err(TrainError::Data(format!(
            "{what} class {c} has {} image(s); every class needs at least 2",
            count[c]
        )));
    }
    Ok(())
}

/// Fashion-MNIST: classes 0–4 of the training file train; classes 5–9 of the test file are
/// evaluated (leave-one-out).
fn load_fashion(
    dir: &Path,
    spec: &ModelSpec,
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
    numeric_split(ti, tl, ei, el, spec, max_classes)
}

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
fn load_mnist5k(
    dir: &Path,
    spec: &ModelSpec,
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

const IMAGE_EXTS: &[&str] = &["png", "jpg", "jpeg", "gif", "bmp", "webp"];

/// A folder with one subfolder per class (sorted by name): the first half of the classes
/// trains, the second half is evaluated leave-one-out. Images may have any size.
fn load_folder(
    dir: &Path,
    spec: &ModelSpec,
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
        classes.push((entry.file_name().to_string_lossy().into_owned(), files));
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
    if let Some((name, _)) = classes.iter().find(|(_, f)| f.len() < 2) {
        return Err(TrainError::Data(format!(
            "class folder {name:?} has a single image; every class needs at least 2"
        )));
    }
    let half = classes.len() / 2;
    let gather =
        |cs: &[(String, Vec<PathBuf>)]| -> Result<(Vec<DynamicImage>, Vec<usize>), TrainError> {
            let mut paths = Vec::new();
            let mut labels = Vec::new();
            for (i, (_, files)) in cs.iter().enumerate() {
                paths.extend(files.iter().cloned());
                labels.extend(std::iter::repeat_n(i, files.len()));
            }
            Ok((load_all(&paths)?, labels))
        };
    let (ti, tl) = gather(&classes[..half])?;
    let (ei, el) = gather(&classes[half..])?;
    Ok(ZeroShotSplit {
        name: String::new(),
        train: ImageSet::from_images(&ti, tl, spec)?,
        train_classes: half,
        eval: EvalProtocol::LeaveOneOut(ImageSet::from_images(&ei, el, spec)?),
    })
}

#[derive(serde::Deserialize)]
struct EmojiEntry {
    unified: String,
    image: String,
    #[serde(default)]
    has_img_google: bool,
    #[serde(default)]
    has_img_twitter: bool,
    #[serde(default)]
    skin_variations: Option<std::collections::BTreeMap<String, EmojiVariant>>,
}

#[derive(serde::Deserialize)]
struct EmojiVariant {
    image: String,
    #[serde(default)]
    has_img_google: bool,
    #[serde(default)]
    has_img_twitter: bool,
}

/// Emoji: a class is a base emoji present in both vendors, ordered by codepoints. The first
/// half trains on both vendors' images (skin-tone variants count as extra images of their
/// base emoji); on the unseen half, the Google image is the query and the Twitter images
/// are the gallery (base images only).
fn load_emoji(
    dir: &Path,
    spec: &ModelSpec,
    max_classes: Option<usize>,
) -> Result<ZeroShotSplit, TrainError> {
    let json_path = dir.join("emoji.json");
    let text = std::fs::read_to_string(&json_path).map_err(io_err(&json_path))?;
    let entries: Vec<EmojiEntry> = serde_json::from_str(&text)
        .map_err(|e| TrainError::Data(format!("{}: {e}", json_path.display())))?;
    let g = dir.join("google").join("64");
    let t = dir.join("twitter").join("64");
    let mut classes: Vec<&EmojiEntry> = entries
        .iter()
        .filter(|e| {
            e.has_img_google
                && e.has_img_twitter
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
    let mut train_paths = Vec::new();
    let mut train_labels = Vec::new();
    for (i, e) in classes[..half].iter().enumerate() {
        train_paths.push(g.join(&e.image));
        train_paths.push(t.join(&e.image));
        train_labels.extend([i, i]);
        for v in e.skin_variations.iter().flat_map(|m| m.values()) {
            for (has, vendor) in [(v.has_img_google, &g), (v.has_img_twitter, &t)] {
                let p = vendor.join(&v.image);
                if has && p.is_file() {
                    train_paths.push(p);
                    train_labels.push(i);
                }
            }
        }
    }
    let eval = &classes[half..];
    let q_paths: Vec<PathBuf> = eval.iter().map(|e| g.join(&e.image)).collect();
    let g_paths: Vec<PathBuf> = eval.iter().map(|e| t.join(&e.image)).collect();
    let labels: Vec<usize> = (0..eval.len()).collect();
    Ok(ZeroShotSplit {
        name: String::new(),
        train: ImageSet::from_images(&load_all(&train_paths)?, train_labels, spec)?,
        train_classes: half,
        eval: EvalProtocol::QueryGallery {
            query: ImageSet::from_images(&load_all(&q_paths)?, labels.clone(), spec)?,
            gallery: ImageSet::from_images(&load_all(&g_paths)?, labels, spec)?,
        },
    })
}

/// Draws P×K batches: P distinct classes, K images each (with replacement only when a class
/// has fewer than K images).
#[derive(Clone, Debug)]
pub struct PkSampler {
    by_class: Vec<Vec<usize>>,
}

impl PkSampler {
    /// Indexes `labels` by class. Needs at least two classes with two or more images.
    pub fn new(labels: &[usize]) -> Result<PkSampler, TrainError> {
        let classes = labels.iter().max().map_or(0, |m| m + 1);
        let mut by_class = vec![Vec::new(); classes];
        for (i, &l) in labels.iter().enumerate() {
            by_class[l].push(i);
        }
        by_class.retain(|c| c.len() >= 2);
        if by_class.len() < 2 {
            return Err(TrainError::Data(format!(
                "{} class(es) with at least two images; triplets need at least 2",
                by_class.len()
            )));
        }
        Ok(PkSampler { by_class })
    }

    /// Number of usable classes.
    pub fn classes(&self) -> usize {
        self.by_class.len()
    }

    /// Indices of one batch, grouped by class (`P = min(p, classes)`).
    pub fn sample(&self, p: usize, k: usize, rng: &mut StdRng) -> Vec<usize> {
        let p = p.min(self.by_class.len());
        let mut out = Vec::with_capacity(p * k);
        for c in rand::seq::index::sample(rng, self.by_class.len(), p) {
            let members = &self.by_class[c];
            if members.len() >= k {
                for j in rand::seq::index::sample(rng, members.len(), k) {
                    out.push(members[j]);
                }
            } else {
                for _ in 0..k {
                    out.push(members[rng.random_range(0..members.len())]);
                }
            }
        }
        out
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn grey_spec(size: u32) -> ModelSpec {
        crate::model::input_spec(&crate::config::FeatureConfig {
            input_size: size,
            color: crate::config::InputColor::Grey,
            ..Default::default()
        })
    }

    #[test]
    fn idx_round_trip_and_errors() {
        let mut b = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend(0..12u8);
        let (dims, px) = parse_idx(&b).unwrap();
        assert_eq!(dims, vec![2, 2, 3]);
        assert_eq!(px.len(), 12);
        assert!(parse_idx(&b[..15]).is_err());
        assert!(parse_idx(&[1, 2, 3, 4]).is_err());
    }

    #[test]
    fn csv_rows() {
        let row = |label: u32| {
            let mut v = vec!["0".to_string(); 784];
            v.push(label.to_string());
            v.join(",")
        };
        let (imgs, labels) = parse_mnist_csv(&format!("{}\n{}\n", row(3), row(7))).unwrap();
        assert_eq!(imgs.len(), 2);
        assert_eq!(labels, vec![3, 7]);
        assert!(parse_mnist_csv("1,2,3\n").is_err());
        assert!(parse_mnist_csv("").is_err());
    }

    fn write_png(path: &Path, w: u32, h: u32, v: u8) {
        image::RgbImage::from_pixel(w, h, image::Rgb([v, 255 - v, v / 2]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn folder_errors_and_mixed_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let spec = grey_spec(16);
        // One class: clear error.
        std::fs::create_dir(dir.path().join("a")).unwrap();
        write_png(&dir.path().join("a/1.png"), 10, 10, 1);
        write_png(&dir.path().join("a/2.png"), 10, 10, 2);
        let e = load_folder(dir.path(), &spec, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 class folder"), "{e}");
        // An empty class: clear error naming it.
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        let e = load_folder(dir.path(), &spec, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"empty\"") && e.contains("no images"), "{e}");
        std::fs::remove_dir(dir.path().join("empty")).unwrap();
        // Four classes with mixed sizes: resized, not rejected.
        for (i, c) in ["b", "c", "d"].iter().enumerate() {
            std::fs::create_dir(dir.path().join(c)).unwrap();
            write_png(&dir.path().join(format!("{c}/1.png")), 7 + i as u32, 30, 10);
            write_png(&dir.path().join(format!("{c}/2.jpg")), 64, 9, 200);
        }
        let s = load_folder(dir.path(), &spec, None).unwrap();
        assert_eq!(s.train_classes, 2);
        assert_eq!(s.train.len(), 4);
        assert_eq!(s.train.chw, [1, 16, 16]);
        match &s.eval {
            EvalProtocol::LeaveOneOut(e) => assert_eq!(e.len(), 4),
            _ => panic!("folder evaluates leave-one-out"),
        }
    }

    #[test]
    fn missing_named_data_is_a_clear_error() {
        let e = DataSource::resolve("/definitely/not/here").unwrap_err();
        assert!(e.to_string().contains("neither"), "{e}");
    }

    #[test]
    fn pk_sampler_groups_and_needs_two_classes() {
        let labels = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3];
        let s = PkSampler::new(&labels).unwrap();
        assert_eq!(s.classes(), 3); // class 3 has one image
        let mut rng = StdRng::seed_from_u64(1);
        let b = s.sample(2, 4, &mut rng);
        assert_eq!(b.len(), 8);
        assert!(b[..4].iter().all(|&i| labels[i] == labels[b[0]]));
        assert!(b[4..].iter().all(|&i| labels[i] == labels[b[4]]));
        assert_ne!(labels[b[0]], labels[b[4]]);
        assert!(PkSampler::new(&[0, 0, 1]).is_err());
    }

    #[test]
    fn augmentation_off_is_identity() {
        let set = ImageSet {
            data: (0..2 * 3 * 4 * 5).map(|v| v as f32).collect(),
            labels: vec![0, 1],
            chw: [3, 4, 5],
        };
        let aug = AugmentConfig {
            crop_pad: 0,
            hflip: false,
            jitter: 0.0,
        };
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(
            make_batch(&set, &[1, 0], &aug, &mut rng)[..60],
            set.data[60..]
        );
    }
}
