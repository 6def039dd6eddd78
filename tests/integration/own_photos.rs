//! `htg train --data DIR --backbone efficientnet-lite0` on a labelled folder of real photos,
//! end to end: the head trains on cached backbone features, the merged model indexes and
//! serves like any other, and search finds same-class neighbours. Plus the folder's bad input.
//!
//! The folder is made here from the committed CC0 photos (`tests/fixtures/photos/gallery`):
//! one class per photo, five crops of it per class, so a class is "this scene", as a
//! catalogue's classes would be "this product".

use std::path::{Path, PathBuf};
use std::process::Command;

use image::imageops::FilterType;
use serde_json::Value;
use tempfile::TempDir;

use crate::http::{multipart, Server};
use crate::util::{fixture, htg_ok, s};

const CONFIG: &str = "method = \"htg\"\nsteps = 60\nclasses_per_batch = 4\nimages_per_class = 2\n\
checkpoint_every = 0\n\n[feature]\nembedding_dim = 32\n\n[augment]\ncrop_pad = 0\nhflip = false\n\
jitter = 0.0\n";

/// Five crops (corners and centre, 70% of each side) of each of the first `classes` gallery
/// photos, 200 px on the long side, as JPEG: `<dir>/<photo>/<n>.jpg`.
fn labelled_folder(dir: &Path, classes: usize) -> Vec<String> {
    let mut photos: Vec<PathBuf> = std::fs::read_dir(fixture("photos/gallery"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    photos.sort();
    let mut names = Vec::new();
    for p in photos.iter().take(classes) {
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        let img = image::open(p).unwrap();
        let (w, h) = (img.width(), img.height());
        let (cw, ch) = (w * 7 / 10, h * 7 / 10);
        let class = dir.join(&name);
        std::fs::create_dir_all(&class).unwrap();
        let at = [
            (0, 0),
            (w - cw, 0),
            (0, h - ch),
            (w - cw, h - ch),
            ((w - cw) / 2, (h - ch) / 2),
        ];
        for (i, (x, y)) in at.into_iter().enumerate() {
            img.crop_imm(x, y, cw, ch)
                .resize(200, 200, FilterType::Triangle)
                .to_rgb8()
                .save(class.join(format!("{i}.jpg")))
                .unwrap();
        }
        names.push(name);
    }
    names
}

/// `htg` with the feature cache and bundled models in `cache`: the test owns what it reuses.
fn htg_in(cache: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_htg"))
        .args(args)
        .env("HTG_CACHE_DIR", cache)
        .output()
        .expect("htg runs")
}

/// `htg train --data <data> --backbone efficientnet-lite0 --config <config> --out <out>`,
/// plus `extra`, with its cache in `cache`; asserts success and returns stdout and stderr.
fn train_head(
    cache: &Path,
    data: &Path,
    config: &Path,
    out: &Path,
    extra: &[&str],
) -> (String, String) {
    let mut args = vec![
        "train",
        "--data",
        s(data),
        "--backbone",
        "efficientnet-lite0",
        "--config",
        s(config),
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    ok(htg_in(cache, &args))
}

fn ok(out: std::process::Output) -> (String, String) {
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "stdout: {o}\nstderr: {e}");
    (o, e)
}

#[test]
#[cfg_attr(
    not(feature = "train"),
    ignore = "needs a build with --features train (the README's test command has it)"
)]
fn a_head_trained_on_a_labelled_photo_folder_indexes_serves_and_finds_its_class() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let names = labelled_folder(&data, 8);
    // One file that does not decode: skipped and named, not fatal.
    std::fs::write(data.join(&names[0]).join("broken.jpg"), b"not a jpeg").unwrap();
    let cache = tmp.path().join("cache");
    let config = tmp.path().join("head.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let out = tmp.path().join("run");
    let train = |seed: &str| train_head(&cache, &data, &config, &out, &["--seed", seed]);
    let (stdout, stderr) = train("1");
    assert!(
        stderr.contains("broken.jpg") && stderr.contains("left out, does not decode"),
        "{stderr}"
    );
    // 8 classes × 5 crops, every image's features computed once.
    assert!(stderr.contains("40 computed, 40 in the cache"), "{stderr}");
    assert!(stdout.contains("R@1"), "{stdout}");
    // The config names the backbone by the sha256 of the bundled photo model.
    let cfg = std::fs::read_to_string(out.join("config.toml")).unwrap();
    let photo = htg_retrieval::embed::sha256_hex(
        &std::fs::read(crate::util::root().join("models/photo.onnx")).unwrap(),
    );
    assert!(cfg.contains(&format!("sha256 = \"{photo}\"")), "{cfg}");
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert!(metrics["onnx_vs_burn_max_abs_diff"].as_f64().unwrap() <= 1e-4);

    // A rerun (another seed) reads every feature from the cache.
    let (_, stderr) = train("2");
    assert!(stderr.contains("0 computed, 40 in the cache"), "{stderr}");
    // The raw-backbone floor of the same folder, from the same cache.
    let json = tmp.path().join("floor.json");
    let (stdout, _) = ok(htg_in(
        &cache,
        &[
            "eval",
            "--backbone",
            "efficientnet-lite0",
            "--data",
            s(&data),
            "--json",
            s(&json),
        ],
    ));
    assert!(stdout.contains("R@1"), "{stdout}");
    let floor: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(floor["queries"].as_u64(), Some(20), "{floor}");

    // The merged model indexes the unseen classes' photos like any model.
    let model = out.join("model.onnx");
    let unseen = tmp.path().join("unseen");
    for n in &names[4..] {
        for e in std::fs::read_dir(data.join(n)).unwrap() {
            let p = e.unwrap().path();
            std::fs::create_dir_all(&unseen).unwrap();
            std::fs::copy(
                &p,
                unseen.join(format!("{n}-{}", p.file_name().unwrap().to_string_lossy())),
            )
            .unwrap();
        }
    }
    let idx = tmp.path().join("idx");
    htg_ok(&[
        "index",
        s(&unseen),
        "--index",
        s(&idx),
        "--model",
        s(&model),
    ]);
    let query = data.join(&names[5]).join("0.jpg");
    let json = htg_ok(&["search", "--index", s(&idx), s(&query), "-k", "3", "--json"]);
    let hits = crate::util::parse_results(&json);
    assert_eq!(hits.len(), 3);
    for (path, _, _) in &hits {
        assert!(
            Path::new(path)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&names[5]),
            "{hits:?}"
        );
    }

    // And serves: an uploaded crop finds its class first.
    let server = Server::start(&idx, &[]);
    let bytes = std::fs::read(data.join(&names[6]).join("4.jpg")).unwrap();
    let (ct, body) = multipart(&[("image", Some("q.jpg"), &bytes)]);
    let r = server.post("/search?k=2", &ct, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_str(&r.text()).unwrap();
    let first = v["results"][0]["path"].as_str().unwrap();
    assert!(
        Path::new(first)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&names[6]),
        "{v}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "train"),
    ignore = "needs a build with --features train (the README's test command has it)"
)]
fn a_photo_folder_with_one_image_in_a_class_an_empty_class_or_a_non_utf8_name_is_refused() {
    let tmp = TempDir::new().unwrap();
    let cache = tmp.path().join("cache");
    let data = tmp.path().join("data");
    let names = labelled_folder(&data, 4);
    let train = |data: &Path| {
        htg_in(
            &cache,
            &[
                "train",
                "--data",
                s(data),
                "--backbone",
                "efficientnet-lite0",
                "--steps",
                "2",
                "--out",
                s(&tmp.path().join("run")),
            ],
        )
    };
    let err = |o: std::process::Output| {
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // A class whose images all but one do not decode.
    let one = data.join(&names[1]);
    for i in 1..5 {
        std::fs::write(one.join(format!("{i}.jpg")), b"garbage").unwrap();
    }
    let e = err(train(&data));
    assert!(
        e.contains(&format!("{:?}", names[1])) && e.contains("at least 2"),
        "{e}"
    );
    std::fs::remove_dir_all(&one).unwrap();
    // An empty class folder.
    std::fs::create_dir_all(&one).unwrap();
    let e = err(train(&data));
    assert!(e.contains("has no images"), "{e}");
    std::fs::remove_dir_all(&one).unwrap();
    // A class name that is not UTF-8.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let bad = data.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::copy(data.join(&names[0]).join("0.jpg"), bad.join("0.jpg")).unwrap();
        std::fs::copy(data.join(&names[0]).join("1.jpg"), bad.join("1.jpg")).unwrap();
        let e = err(train(&data));
        assert!(e.contains("not valid UTF-8"), "{e}");
        std::fs::remove_dir_all(&bad).unwrap();
    }
    // An unknown backbone name.
    let o = htg_in(
        &cache,
        &[
            "train",
            "--data",
            s(&data),
            "--backbone",
            "resnet-9000",
            "--out",
            s(&tmp.path().join("r")),
        ],
    );
    let e = err(o);
    assert!(
        e.contains("resnet-9000") && e.contains("efficientnet-lite0"),
        "{e}"
    );
}

/// The head's layers as written into the merged file: `(weight [in, out], bias)` per Gemm.
fn head_layers(model: &Path) -> Vec<(ndarray::Array2<f32>, ndarray::Array1<f32>)> {
    use prost::Message;
    let proto = tract_onnx::pb::ModelProto::decode(&std::fs::read(model).unwrap()[..]).unwrap();
    let g = proto.graph.unwrap();
    let init = |name: &str| {
        g.initializer
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no initializer {name}"))
            .clone()
    };
    g.node
        .iter()
        .filter(|n| n.name.starts_with("head/") && n.op_type == "Gemm")
        .map(|n| {
            let (w, b) = (init(&n.input[1]), init(&n.input[2]));
            let shape = (w.dims[0] as usize, w.dims[1] as usize);
            (
                ndarray::Array2::from_shape_vec(shape, w.float_data).unwrap(),
                ndarray::Array1::from_vec(b.float_data),
            )
        })
        .collect()
}

/// The merged file on tract and on ONNX Runtime against the backbone (the bundled photo model
/// with its 2×2 grid output, on tract) and the head computed apart, here, from the merged
/// file's own weights.
#[test]
#[cfg_attr(
    feature = "train",
    ignore = "needs ONNX Runtime (scripts/fetch-data.sh onnxruntime)"
)]
#[cfg_attr(
    not(feature = "train"),
    ignore = "needs ONNX Runtime (scripts/fetch-data.sh onnxruntime) and a build with --features train"
)]
fn the_merged_model_on_tract_and_ort_equals_the_backbone_then_the_head() {
    use htg_retrieval::embed::{l2_normalize_rows, to_vectors, Embedder, TractEmbedder};
    use htg_retrieval::ort_backend::{OrtEmbedder, OrtOptions};
    let lib = crate::ort::ort_lib().unwrap_or_else(|why| panic!("ONNX Runtime: {why}"));
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let names = labelled_folder(&data, 4);
    let config = tmp.path().join("head.toml");
    // A hidden layer, so the graft's ReLU between the two Gemms is covered too, and the grid
    // tap, so the grafted pooling is.
    std::fs::write(
        &config,
        CONFIG.replace("steps = 60", "steps = 10")
            + "\n[backbone]\nname = \"efficientnet-lite0\"\n\
               sha256 = \"bcfaefeb64b6a451a31068074271534525ce4c3b239c6797832db338331aca20\"\n\
               grid = 2\nfeatures = 5120\nhead_hidden = 64\n",
    )
    .unwrap();
    let out = tmp.path().join("run");
    let cache = tmp.path().join("cache");
    train_head(&cache, &data, &config, &out, &[]);
    let model = out.join("model.onnx");
    let layers = head_layers(&model);
    assert_eq!(layers.len(), 2, "a hidden layer and the output layer");
    let images: Vec<image::DynamicImage> = names
        .iter()
        .map(|n| image::open(data.join(n).join("0.jpg")).unwrap())
        .collect();
    let grid_file = cache.join("features/bcfaefeb64b6a451-grid2.onnx");
    let backbone = TractEmbedder::load(&grid_file).unwrap();
    assert_eq!(backbone.spec().embedding_dim, 5120);
    let input = htg_retrieval::preprocess::preprocess_batch(&images, backbone.spec());
    let mut x = to_vectors(backbone.run(input.view()).unwrap(), backbone.spec()).unwrap();
    for (i, (w, b)) in layers.iter().enumerate() {
        x = x.dot(w) + b;
        if i + 1 < layers.len() {
            x.mapv_inplace(|v| v.max(0.0));
        }
    }
    l2_normalize_rows(&mut x);
    let tract = TractEmbedder::load(&model).unwrap();
    let ort = OrtEmbedder::load(
        &model,
        &OrtOptions {
            library: lib,
            ..OrtOptions::default()
        },
    )
    .unwrap();
    for e in [&tract as &dyn Embedder, &ort] {
        assert_eq!(e.spec().embedding_dim, 32);
        let got = e.embed_images(&images).unwrap();
        let diff = (&got - &x).iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(diff <= 1e-4, "{}: max |diff| {diff}", e.backend());
    }
}
