//! Data: the image sets and the zero-shot split that training and evaluation share.
//!
//! - [`sources`]: readers for image folders, IDX, the emoji vendor sets and the MNIST-5k CSV;
//! - [`split`]: the class-disjoint halves of numerically labelled sets;
//! - [`sampler`]: P×K batches;
//! - [`augment`]: batch assembly with augmentation.
//!
//! Every image goes through `htg_retrieval::preprocess::preprocess_batch` with the model's
//! [`ModelSpec`], so training sees exactly the tensors that serving will compute (one source
//! of truth for decoding, alpha on white, resizing and normalisation). IDX and CSV pixels are
//! wrapped as `ImageLuma8` and take the same path.
//!
//! Zero-shot protocol: classes are ordered (by name or codepoints, or by numeric label), the
//! first half trains and the second half is evaluated, so evaluation sees only unseen classes.

mod augment;
mod sampler;
mod sources;
mod split;

use std::path::PathBuf;

use htg_retrieval::spec::ModelSpec;
use image::DynamicImage;

use crate::config::EmojiConfig;
use crate::features::Backbone;
use crate::TrainError;

pub use augment::make_batch;
pub use sampler::PkSampler;
use sources::{load_emoji, load_fashion, load_folder, load_mnist5k};
pub use sources::{parse_idx, parse_mnist_csv, EMOJI_VENDORS};

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

    /// Encodes `images` as `enc` says: preprocessed pixels, or a backbone's features
    /// (`chw = [D, 1, 1]`, so F's input keeps one shape whatever F is).
    pub fn encode(
        images: &[DynamicImage],
        labels: Vec<usize>,
        enc: Encoder<'_>,
    ) -> Result<ImageSet, TrainError> {
        match enc {
            Encoder::Pixels(spec) => ImageSet::from_images(images, labels, spec),
            Encoder::Backbone(b) => {
                if images.len() != labels.len() {
                    return Err(TrainError::Data(
                        "images and labels differ in length".into(),
                    ));
                }
                Ok(ImageSet {
                    data: b.features(images)?,
                    labels,
                    chw: [b.config().features, 1, 1],
                })
            }
        }
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

/// What F is fed: the same loaders serve a CNN trained on pixels and a head trained on a
/// frozen backbone's cached features.
#[derive(Clone, Copy, Debug)]
pub enum Encoder<'a> {
    /// Pixels preprocessed as `spec` says.
    Pixels(&'a ModelSpec),
    /// The backbone's raw feature vector of each image.
    Backbone(&'a Backbone),
}

impl Encoder<'_> {
    /// The preprocessing images get: the spec itself, or the backbone's.
    pub fn spec(&self) -> &ModelSpec {
        match self {
            Encoder::Pixels(s) => s,
            Encoder::Backbone(b) => b.spec(),
        }
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
    /// The query set and the set searched: the same set twice under leave-one-out. Code
    /// that only needs "the query's images and the images it can retrieve" then reads the
    /// same under both protocols.
    pub fn sets(&self) -> (&ImageSet, &ImageSet) {
        match self {
            EvalProtocol::QueryGallery { query, gallery } => (query, gallery),
            EvalProtocol::LeaveOneOut(s) => (s, s),
        }
    }

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
    /// Name of each unseen class, indexed by its evaluation label (folder names, emoji short
    /// names, Fashion-MNIST article names, digits), so reports can say which classes a model
    /// confuses rather than which label numbers.
    pub eval_names: Vec<String>,
    /// Per training image, where it comes from, for sets with vendors (emoji): `vendor +
    /// 4·variant`, with vendors 0 = Google, 1 = Twitter, 2 = Apple, 3 = Facebook (the
    /// order of [`EMOJI_VENDORS`]) and variant 1 for a skin-tone variant, 0 for the
    /// base image. `None` for single-source sets.
    pub train_vendor: Option<Vec<u8>>,
    /// The class-disjoint validation split carved from the training classes
    /// ([`ZeroShotSplit::carve_validation`]); `None` until carved.
    pub val: Option<EvalProtocol>,
    /// Files left out because they did not decode, each with the reason (folders only).
    pub skipped: Vec<String>,
}

impl ZeroShotSplit {
    /// Moves `n` training classes, drawn with `seed`, into a validation split evaluated like
    /// the test: Google → Twitter base images for emoji, leave-one-out otherwise. The
    /// remaining training classes are relabelled `0..train_classes`. At least two classes
    /// must stay on each side.
    pub fn carve_validation(mut self, n: usize, seed: u64) -> Result<ZeroShotSplit, TrainError> {
        if n == 0 {
            return Ok(self);
        }
        let k = self.train_classes;
        if n < 2 || n + 2 > k {
            return Err(TrainError::Config(format!(
                "val_classes = {n}: need 2 ≤ val_classes ≤ {} (the training split has {k} classes)",
                k.saturating_sub(2)
            )));
        }
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        let mut is_val = vec![false; k];
        for c in rand::seq::index::sample(&mut rng, k, n) {
            is_val[c] = true;
        }
        // New labels: training classes keep their order, validation classes theirs.
        let mut new_label = vec![0usize; k];
        let (mut nt, mut nv) = (0, 0);
        for c in 0..k {
            if is_val[c] {
                new_label[c] = nv;
                nv += 1;
            } else {
                new_label[c] = nt;
                nt += 1;
            }
        }
        let set = &self.train;
        let pick = |keep: &dyn Fn(usize) -> bool| -> ImageSet {
            let mut data = Vec::new();
            let mut labels = Vec::new();
            for i in 0..set.len() {
                if keep(i) {
                    data.extend_from_slice(set.sample(i));
                    labels.push(new_label[set.labels[i]]);
                }
            }
            ImageSet {
                data,
                labels,
                chw: set.chw,
            }
        };
        let vendor = self.train_vendor.as_deref();
        let val = match vendor {
            Some(v) => EvalProtocol::QueryGallery {
                query: pick(&|i| is_val[set.labels[i]] && v[i] == 0),
                gallery: pick(&|i| is_val[set.labels[i]] && v[i] == 1),
            },
            None => EvalProtocol::LeaveOneOut(pick(&|i| is_val[set.labels[i]])),
        };
        let train = pick(&|i| !is_val[set.labels[i]]);
        let train_vendor = vendor.map(|v| {
            (0..set.len())
                .filter(|&i| !is_val[set.labels[i]])
                .map(|i| v[i])
                .collect()
        });
        self.train = train;
        self.train_vendor = train_vendor;
        self.train_classes = nt;
        self.val = Some(val);
        Ok(self)
    }
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

/// Where the fetch script puts data sets when the tests and CI run it:
/// `$HTG_CACHE_DIR/data`, else `$HOME/.cache/htg/data`.
pub fn cache_data_dir() -> Option<PathBuf> {
    std::env::var_os("HTG_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/htg")))
        .map(|c| c.join("data"))
}

impl DataSource {
    /// Resolves `--data`: a known name looks in `$HTG_DATA_DIR/<name>` when that is set, else
    /// in `data/<name>` and then in the cache the tests and CI fetch into
    /// (`$HTG_CACHE_DIR/data`, default `$HOME/.cache/htg/data`); anything else is a
    /// class-per-subfolder directory.
    pub fn resolve(name_or_dir: &str) -> Result<DataSource, TrainError> {
        let roots: Vec<PathBuf> = match std::env::var_os("HTG_DATA_DIR") {
            Some(d) => vec![PathBuf::from(d)],
            None => std::iter::once(PathBuf::from("data"))
                .chain(cache_data_dir())
                .collect(),
        };
        let named = |n: &str| -> Result<PathBuf, TrainError> {
            if let Some(p) = roots.iter().map(|r| r.join(n)).find(|p| p.is_dir()) {
                return Ok(p);
            }
            let tried: Vec<String> = roots
                .iter()
                .map(|r| r.join(n).display().to_string())
                .collect();
            Err(TrainError::Data(format!(
                "data set {n:?} not found at {}; run `scripts/fetch-data.sh {n}` (or set HTG_DATA_DIR)",
                tried.join(" or ")
            )))
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
        self.load_with(Encoder::Pixels(spec), max_classes, &EmojiConfig::default())
    }

    /// [`DataSource::load`], with emoji's training classes shaped by `emoji`: other vendors'
    /// images added, categories left out. The test classes and the Google → Twitter
    /// protocol stay as they are. The other data sets have no vendors or categories, so
    /// anything but the default is refused for them.
    pub fn load_with(
        &self,
        spec: Encoder<'_>,
        max_classes: Option<usize>,
        emoji: &EmojiConfig,
    ) -> Result<ZeroShotSplit, TrainError> {
        if !emoji.is_default() && !matches!(self, DataSource::Emoji(_)) {
            return Err(TrainError::Config(format!(
                "[emoji] is set, but only the emoji data set has vendors and categories, not {}",
                self.name()
            )));
        }
        match self {
            DataSource::Emoji(d) => load_emoji(d, spec, max_classes, emoji),
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rand::rngs::StdRng;

    use super::sources::load_folder;
    use super::*;
    use crate::config::AugmentConfig;
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
        let e = load_folder(dir.path(), Encoder::Pixels(&spec), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 class folder"), "{e}");
        // An empty class: clear error naming it.
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        let e = load_folder(dir.path(), Encoder::Pixels(&spec), None)
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
        let s = load_folder(dir.path(), Encoder::Pixels(&spec), None).unwrap();
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
    fn validation_is_class_disjoint_and_relabelled() {
        // 6 classes × 4 images; tags 0,1,4,5 (base and variant of Google and Twitter) per
        // class as emoji would tag them.
        let n = 24;
        let split = ZeroShotSplit {
            name: "t".into(),
            train: ImageSet {
                data: (0..n).map(|i| i as f32).collect(),
                labels: (0..n).map(|i| i / 4).collect(),
                chw: [1, 1, 1],
            },
            train_classes: 6,
            eval: EvalProtocol::LeaveOneOut(ImageSet {
                data: vec![0.0; 2],
                labels: vec![0, 0],
                chw: [1, 1, 1],
            }),
            eval_names: vec!["x".into()],
            train_vendor: Some((0..n).map(|i| [0u8, 1, 4, 5][i % 4]).collect()),
            val: None,
            skipped: Vec::new(),
        };
        let s = split.clone().carve_validation(2, 7).unwrap();
        assert_eq!(s.train_classes, 4);
        assert_eq!(s.train.len(), 16);
        assert_eq!(s.train_vendor.as_ref().unwrap().len(), 16);
        assert_eq!(s.train.class_count(), 4);
        assert!(s.train.labels.iter().all(|&l| l < 4));
        let Some(EvalProtocol::QueryGallery { query, gallery }) = &s.val else {
            panic!("vendored sets validate query vs gallery")
        };
        assert_eq!((query.len(), gallery.len()), (2, 2));
        // Original class of a sample = value / 4; no validation class remains in training.
        let val_classes: Vec<usize> = query.data.iter().map(|&v| v as usize / 4).collect();
        assert!(s
            .train
            .data
            .iter()
            .all(|&v| !val_classes.contains(&(v as usize / 4))));
        // Queries are Google base images (vendor 0), the gallery Twitter base (vendor 1).
        assert!(query.data.iter().all(|&v| (v as usize).is_multiple_of(4)));
        assert!(gallery.data.iter().all(|&v| v as usize % 4 == 1));
        // Same seed, same split; too many classes is an error.
        let again = split.clone().carve_validation(2, 7).unwrap();
        assert_eq!(again.train.data, s.train.data);
        assert!(split.carve_validation(5, 7).is_err());
    }

    #[test]
    fn cross_vendor_sampling_pairs_vendors() {
        // Class 0: a Google image and its variant, and one Twitter image; class 1 likewise.
        let labels = [0, 0, 0, 1, 1, 1];
        let vendor = [0u8, 4, 1, 0, 4, 5];
        let s = PkSampler::with_vendors(&labels, &vendor).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..50 {
            let b = s.sample(2, 2, &mut rng);
            for pair in b.chunks(2) {
                assert_ne!(vendor[pair[0]] % 4, vendor[pair[1]] % 4, "{b:?}");
            }
        }
        // Four vendors (Google, Twitter, Apple, Facebook, one a variant): K = 4 draws each
        // vendor once.
        let labels = [0, 0, 0, 0, 0, 1, 1, 1, 1];
        let vendor = [0u8, 4, 1, 2, 7, 0, 1, 2, 3];
        let s = PkSampler::with_vendors(&labels, &vendor).unwrap();
        for _ in 0..50 {
            let b = s.sample(2, 4, &mut rng);
            for group in b.chunks(4) {
                let mut v: Vec<u8> = group.iter().map(|&i| vendor[i] % 4).collect();
                v.sort_unstable();
                assert_eq!(v, [0, 1, 2, 3], "{b:?}");
            }
        }
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
