//! The ONNX Runtime backend: parity with tract on fixture, bundled and real external models,
//! `htg index` / `htg search --backend ort` end to end, library-loading errors, GPU fallback.
//!
//! ONNX Runtime comes from `scripts/fetch-data.sh onnxruntime` and the external models from
//! `scripts/fetch-models.sh`, both cached outside the clone. The tests that need them are
//! `#[ignore]`d with the reason, so a fresh clone's `cargo test` lists them instead of passing
//! them unchecked; `cargo test -- --include-ignored` (what CI runs) fetches and runs them, and
//! a fetch that fails there fails the test. The library is loaded once per process, so tests
//! that need a different (or broken) library run the real `htg` binary instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use htg_retrieval::ort_backend::{ExecutionProvider, OrtEmbedder, OrtOptions};
use htg_retrieval::preprocess::{load_image, preprocess_batch};
use htg_retrieval::{Embedder, TractEmbedder};
use image::DynamicImage;
use ndarray::{Array2, Array4, ArrayD};
use tempfile::TempDir;

use crate::util::{copy_files, fixture, htg, htg_ok, parse_results, root, s, stderr, tiny_model};

/// Max abs difference allowed between the backends' l2-normalised embeddings.
const TOL: f32 = 1e-4;

/// Runs a fetch script and returns its stdout, or why it failed.
fn fetch(script: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(root().join("scripts").join(script))
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {script}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// The ONNX Runtime library path, fetched once per test process.
pub(crate) fn ort_lib() -> Result<PathBuf, String> {
    static LIB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        let out = fetch("fetch-data.sh", &["onnxruntime"])?;
        // The script prints the library path first, then a summary line.
        let lib = out
            .lines()
            .find(|l| l.contains("libonnxruntime"))
            .map(|l| PathBuf::from(l.trim()))
            .ok_or_else(|| format!("no library path in output: {out}"))?;
        if lib.is_file() {
            Ok(lib)
        } else {
            Err(format!("{} does not exist after fetching", lib.display()))
        }
    })
    .clone()
}

/// The external models' cache folder, fetched once per test process.
fn models_dir() -> Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        fetch("fetch-models.sh", &["all"])?;
        let cache = std::env::var_os("HTG_CACHE_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/htg"));
        Ok(cache.join("models"))
    })
    .clone()
}

/// The fetched dependency, or a failure naming what is missing: these tests are ignored
/// unless asked for, and one that was asked for must not pass without its dependency.
macro_rules! require {
    ($e:expr, $what:literal) => {
        match $e {
            Ok(v) => v,
            Err(why) => panic!("{} needs its dependency: {why}", $what),
        }
    };
}

fn ort_options(lib: &Path) -> OrtOptions {
    OrtOptions {
        library: lib.to_path_buf(),
        ..OrtOptions::default()
    }
}

fn images(names: &[&str]) -> Vec<DynamicImage> {
    names
        .iter()
        .map(|n| load_image(&fixture(&format!("images/{n}"))).unwrap())
        .collect()
}

/// Every fixture image (24: 12 emoji classes x 2 vendors), sorted by name.
fn all_fixture_images() -> Vec<DynamicImage> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixture("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    paths.sort();
    assert_eq!(paths.len(), 24);
    paths.iter().map(|p| load_image(p).unwrap()).collect()
}

fn max_abs_diff<'a>(
    a: impl IntoIterator<Item = &'a f32>,
    b: impl IntoIterator<Item = &'a f32>,
) -> f32 {
    a.into_iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Each row of a raw output, flattened and l2-normalised: how outputs that are not embeddings
/// (a detector's rank-3 tensor) are compared on the same scale as embeddings.
fn normalised_rows(raw: &ArrayD<f32>) -> Array2<f32> {
    let n = raw.shape()[0];
    let mut m = raw
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((n, raw.len() / n))
        .unwrap();
    htg_retrieval::embed::l2_normalize_rows(&mut m);
    m
}

/// Asserts the rows are not all the same, so that a parity check could have failed.
fn assert_rows_differ(m: &Array2<f32>, what: &str) {
    let first = m.row(0);
    let spread = m
        .rows()
        .into_iter()
        .map(|r| max_abs_diff(r.iter(), first.iter()))
        .fold(0f32, f32::max);
    assert!(
        spread > 1e-3,
        "{what}: every image embeds the same (spread {spread})"
    );
}

/// Embeds `imgs` on both backends and returns the max abs difference.
fn embed_parity(model: &Path, lib: &Path, imgs: &[DynamicImage]) -> f32 {
    let tract = TractEmbedder::load(model).unwrap();
    let ort = OrtEmbedder::load(model, &ort_options(lib)).unwrap();
    assert_eq!(ort.backend(), "ort");
    assert_eq!(ort.provider(), ExecutionProvider::Cpu);
    assert_eq!(
        tract.model_id(),
        ort.model_id(),
        "same file, same spec, same id"
    );
    let a = tract.embed_images(imgs).unwrap();
    let b = ort.embed_images(imgs).unwrap();
    assert_eq!(a.shape(), b.shape());
    assert_rows_differ(&b, &model.display().to_string());
    max_abs_diff(a.iter(), b.iter())
}

#[test]
#[ignore = "needs ONNX Runtime (scripts/fetch-data.sh onnxruntime)"]
fn tract_and_ort_agree_on_fixture_and_bundled_models() {
    let lib = require!(ort_lib(), "ort parity (fixture models)");
    let imgs = all_fixture_images();
    let mut models = vec![tiny_model(), fixture("models/tiny_nhwc_gap.onnx")];
    let bundled = root().join("models/emoji-scratch.onnx");
    if bundled.exists() {
        models.push(bundled);
    } else {
        eprintln!(
            "note: models/emoji-scratch.onnx not present yet; parity checked on fixtures only"
        );
    }
    for m in &models {
        let d = embed_parity(m, &lib, &imgs);
        eprintln!(
            "parity {}: max abs diff {d:e} over {} images",
            m.display(),
            imgs.len()
        );
        assert!(d < TOL, "{}: max abs diff {d}", m.display());
    }
}

#[test]
#[ignore = "needs ONNX Runtime (scripts/fetch-data.sh onnxruntime)"]
fn ort_batch_size_does_not_change_embeddings() {
    let lib = require!(ort_lib(), "ort batch invariance");
    let e = OrtEmbedder::load(&tiny_model(), &ort_options(&lib)).unwrap();
    let imgs = images(&["1f600-google.png", "1f999-twitter.png", "26fa-google.png"]);
    let all = e.embed_images(&imgs).unwrap();
    for (i, img) in imgs.iter().enumerate() {
        let one = e.embed_images(std::slice::from_ref(img)).unwrap();
        let d = max_abs_diff(one.row(0).iter(), all.row(i).iter());
        assert!(d < 1e-5, "image {i}: {d}");
    }
    // An empty batch is fine, a wrongly shaped one is an error, not a panic.
    assert_eq!(e.embed_images(&[]).unwrap().nrows(), 0);
    let bad = Array4::<f32>::zeros((1, 3, 5, 5));
    assert!(e.embed_tensor(bad.view()).is_err());
}

/// Reads a TensorProto file (an ONNX test reference output) as f32 values.
fn read_pb_tensor(path: &Path) -> Vec<f32> {
    use prost::Message;
    let bytes = std::fs::read(path).unwrap();
    let t = tract_onnx::pb::TensorProto::decode(&bytes[..]).unwrap();
    if !t.float_data.is_empty() {
        return t.float_data;
    }
    t.raw_data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The input the ONNX backend tests feed the light models: `arange(n) / n` in the input shape.
fn onnx_dummy_input(shape: [usize; 4]) -> Array4<f32> {
    let n: usize = shape.iter().product();
    Array4::from_shape_fn(shape, |(a, b, c, d)| {
        let i = ((a * shape[1] + b) * shape[2] + c) * shape[3] + d;
        (i as f64 / n as f64) as f32
    })
}

/// What one external model showed; collected so that every model is tried before asserting.
struct Outcome {
    model: String,
    result: Result<String, String>,
}

fn check_external(model: &Path, lib: &Path, imgs: &[DynamicImage]) -> Result<String, String> {
    let ort = OrtEmbedder::load(model, &ort_options(lib)).map_err(|e| format!("ort: {e}"))?;
    let tract = match TractEmbedder::load(model) {
        Ok(t) => t,
        Err(e) => return Ok(format!("ort loads it; tract cannot: {e}")),
    };
    let batch = preprocess_batch(imgs, ort.spec());
    let raw_t = tract
        .run(batch.view())
        .map_err(|e| format!("tract run: {e}"))?;
    let raw_o = ort.run(batch.view()).map_err(|e| format!("ort run: {e}"))?;
    if raw_t.shape() != raw_o.shape() {
        return Err(format!(
            "output shapes differ: tract {:?}, ort {:?}",
            raw_t.shape(),
            raw_o.shape()
        ));
    }
    let scale = raw_o
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let raw_rel = max_abs_diff(raw_t.iter(), raw_o.iter()) / scale;
    // Embeddings where the output is one (rank 2 or 4); flattened rows otherwise.
    let (a, b, how) = match (
        tract.embed_tensor(batch.view()),
        ort.embed_tensor(batch.view()),
    ) {
        (Ok(a), Ok(b)) => (a, b, "embeddings"),
        _ => (
            normalised_rows(&raw_t),
            normalised_rows(&raw_o),
            "flattened raw output",
        ),
    };
    let d = max_abs_diff(a.iter(), b.iter());
    if d >= TOL {
        return Err(format!("{how} differ by {d:e} (raw relative {raw_rel:e})"));
    }
    // Light models also carry a reference output for the ONNX test input.
    let reference = model.with_file_name(format!(
        "{}_output_0.pb",
        model.file_stem().unwrap().to_string_lossy()
    ));
    let mut extra = String::new();
    if reference.exists() {
        let want = read_pb_tensor(&reference);
        let shape = htg_retrieval::preprocess::batch_shape(1, ort.spec());
        let x = onnx_dummy_input(shape);
        for (name, out) in [("tract", tract.run(x.view())), ("ort", ort.run(x.view()))] {
            let out = out.map_err(|e| format!("{name} on the reference input: {e}"))?;
            let r = max_abs_diff(out.iter(), want.iter());
            if out.len() != want.len() || r >= 1e-4 {
                return Err(format!("{name} differs from the reference output by {r:e}"));
            }
        }
        extra = ", both match the reference output".into();
    }
    Ok(format!(
        "{how} max abs diff {d:e} over {} images (raw relative {raw_rel:e}){extra}",
        imgs.len()
    ))
}

#[test]
#[ignore = "needs ONNX Runtime and the external models (scripts/fetch-data.sh onnxruntime, scripts/fetch-models.sh all)"]
fn tract_and_ort_agree_on_external_models() {
    let lib = require!(ort_lib(), "external-model parity (onnxruntime)");
    let dir = require!(models_dir(), "external-model parity (models)");
    // Two images (batch 2) keep this affordable on 2 cores; fixed-batch-1 models run twice.
    let imgs = images(&["1f600-google.png", "1f999-twitter.png"]);
    let mut models = vec![
        dir.join("nudenet/320n.onnx"),
        dir.join("rapidocr-cls/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    ];
    for net in [
        "resnet50",
        "densenet121",
        "inception_v1",
        "squeezenet",
        "shufflenet",
        "vgg19",
    ] {
        models.push(dir.join(format!("onnx-light/light_{net}.onnx")));
    }
    let outcomes: Vec<Outcome> = models
        .iter()
        .map(|m| Outcome {
            model: m.file_name().unwrap().to_string_lossy().to_string(),
            result: check_external(m, &lib, &imgs),
        })
        .collect();
    for o in &outcomes {
        match &o.result {
            Ok(msg) => eprintln!("external {}: {msg}", o.model),
            Err(msg) => eprintln!("external {}: FAILED {msg}", o.model),
        }
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} external model(s) failed, see stderr",
        failed.len()
    );
}

#[test]
#[ignore = "needs ONNX Runtime (scripts/fetch-data.sh onnxruntime)"]
fn index_and_search_with_ort_end_to_end() {
    let lib = require!(ort_lib(), "ort CLI end to end");
    let tmp = TempDir::new().unwrap();
    let images = tmp.path().join("images");
    copy_files(&fixture("images"), &images);
    let model = tiny_model();
    let ort = ["--backend", "ort", "--ort-lib", s(&lib)];

    let idx = tmp.path().join("idx-ort");
    let mut args = vec![
        "index",
        s(&images),
        "--index",
        s(&idx),
        "--model",
        s(&model),
    ];
    args.extend(ort);
    let out = htg_ok(&args);
    assert!(out.contains("embedded 24 new"), "{out}");

    let query = images.join("1f999-google.png");
    let mut args = vec!["search", "--index", s(&idx), s(&query), "-k", "5", "--json"];
    args.extend(ort);
    let json = htg_ok(&args);
    let hits = parse_results(&json);
    assert_eq!(hits.len(), 5);
    assert!(hits[0].0.ends_with("1f999-google.png"), "{json}");
    assert!(hits[0].1 < 1e-5, "{json}");

    // An index built on tract answers the same ranking when queried on ort (same model id).
    let idx_t = tmp.path().join("idx-tract");
    htg_ok(&[
        "index",
        s(&images),
        "--index",
        s(&idx_t),
        "--model",
        s(&model),
    ]);
    let mut args = vec![
        "search",
        "--index",
        s(&idx_t),
        s(&query),
        "-k",
        "5",
        "--json",
        "--exact",
    ];
    let tract_json = htg_ok(&args);
    args.extend(ort);
    let ort_json = htg_ok(&args);
    let (t, o) = (parse_results(&tract_json), parse_results(&ort_json));
    let names = |v: &[(String, f64, u64)]| v.iter().map(|h| h.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&t), names(&o), "tract {tract_json}\nort {ort_json}");
    for (a, b) in t.iter().zip(&o) {
        assert!((a.1 - b.1).abs() < 1e-4, "distances differ: {a:?} vs {b:?}");
    }
}

/// Runs `htg index` on ort with `extra` flags and `env` and returns (success, stderr).
fn index_with(extra: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let tmp = TempDir::new().unwrap();
    let idx = tmp.path().join("idx");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_htg"));
    cmd.args(["index", s(&fixture("images/formats")), "--index", s(&idx)])
        .args(["--model", s(&tiny_model()), "--backend", "ort"])
        .args(extra)
        .env_remove("ORT_DYLIB_PATH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.success(), stderr(&out))
}

fn assert_one_line_naming(err: &str, path: &str) {
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains(path), "does not name {path}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn missing_or_wrong_library_is_a_one_line_error_naming_the_path() {
    let tmp = TempDir::new().unwrap();
    // Missing, given by flag.
    let missing = tmp.path().join("nope/libonnxruntime.so.1.31.1");
    let (ok, err) = index_with(&["--ort-lib", s(&missing)], &[]);
    assert!(!ok);
    assert_one_line_naming(&err, s(&missing));
    // Missing, given by ORT_DYLIB_PATH.
    let (ok, err) = index_with(&[], &[("ORT_DYLIB_PATH", s(&missing))]);
    assert!(!ok);
    assert_one_line_naming(&err, s(&missing));
    // Neither: the default cache path under HTG_CACHE_DIR.
    let cache = tmp.path().join("cache");
    let (ok, err) = index_with(&[], &[("HTG_CACHE_DIR", s(&cache))]);
    assert!(!ok);
    assert_one_line_naming(&err, s(&cache.join("onnxruntime/libonnxruntime.so.1.31.1")));
    // A file that is not a shared library at all.
    let (ok, err) = index_with(&["--ort-lib", s(&tiny_model())], &[]);
    assert!(!ok);
    assert_one_line_naming(&err, s(&tiny_model()));
    // A real shared library that is not ONNX Runtime.
    if let Some(libm) = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
    ]
    .iter()
    .find(|p| Path::new(p).exists())
    {
        let (ok, err) = index_with(&["--ort-lib", libm], &[]);
        assert!(!ok);
        assert_one_line_naming(&err, libm);
        assert!(err.contains("OrtGetApiBase"), "{err}");
    }
}

#[test]
#[ignore = "needs ONNX Runtime (scripts/fetch-data.sh onnxruntime)"]
fn gpu_provider_falls_back_to_cpu_unless_required() {
    let lib = require!(ort_lib(), "GPU fallback");
    // The CPU library has no CUDA or TensorRT provider, whatever the machine and the build: the
    // command warns once and runs on CPU; with --require-gpu it fails with the reason instead.
    let (ok, err) = index_with(&["--ort-lib", s(&lib), "--ep", "cuda"], &[]);
    assert!(ok, "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("cuda execution provider unavailable"),
        "{err}"
    );

    let (ok, err) = index_with(
        &["--ort-lib", s(&lib), "--ep", "tensorrt", "--require-gpu"],
        &[],
    );
    assert!(!ok);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("--require-gpu"), "{err}");

    // GPU flags make no sense on tract.
    let out = htg(&[
        "index",
        s(&fixture("images/formats")),
        "--index",
        s(&TempDir::new().unwrap().path().join("i")),
        "--model",
        s(&tiny_model()),
        "--backend",
        "tract",
        "--ep",
        "cuda",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--backend ort"), "{}", stderr(&out));
}

/// A GPU is visible to this process (NVIDIA driver device node or `nvidia-smi`).
fn has_gpu() -> bool {
    Path::new("/dev/nvidia0").exists()
        || Command::new("nvidia-smi")
            .arg("-L")
            .output()
            .is_ok_and(|o| o.status.success())
}

#[test]
#[ignore = "needs an NVIDIA GPU, onnxruntime-gpu (scripts/setup-gpu.sh) and `--features cuda`"]
fn gpu_embeddings_match_cpu() {
    assert!(
        has_gpu(),
        "GPU test: no NVIDIA GPU visible (no /dev/nvidia0, no nvidia-smi)"
    );
    // Read at run time, so the check is an assertion the test makes, not a constant.
    let with_cuda = std::hint::black_box(cfg!(feature = "cuda"));
    assert!(
        with_cuda,
        "GPU test: built without the `cuda` feature (cargo test --features cuda)"
    );
    let gpu_lib = htg_retrieval::ort_backend::default_library(ExecutionProvider::Cuda);
    assert!(
        gpu_lib.to_string_lossy().contains("gpu"),
        "GPU test: onnxruntime-gpu not installed (run scripts/setup-gpu.sh)"
    );
    // The CPU library may already be loaded in this process: compare through the binary.
    let tmp = TempDir::new().unwrap();
    let images = tmp.path().join("images");
    copy_files(&fixture("images"), &images);
    let model = tiny_model();
    let query = images.join("1f600-google.png");
    let mut results = Vec::new();
    for ep in ["cpu", "cuda"] {
        let idx = tmp.path().join(format!("idx-{ep}"));
        let common = [
            "--backend",
            "ort",
            "--ort-lib",
            s(&gpu_lib),
            "--ep",
            ep,
            "--require-gpu",
        ];
        let mut args = vec![
            "index",
            s(&images),
            "--index",
            s(&idx),
            "--model",
            s(&model),
        ];
        args.extend(if ep == "cpu" {
            &common[..6]
        } else {
            &common[..]
        });
        htg_ok(&args);
        let mut args = vec![
            "search",
            "--index",
            s(&idx),
            s(&query),
            "-k",
            "5",
            "--json",
            "--exact",
        ];
        args.extend(if ep == "cpu" {
            &common[..6]
        } else {
            &common[..]
        });
        results.push(parse_results(&htg_ok(&args)));
    }
    for (a, b) in results[0].iter().zip(&results[1]) {
        assert_eq!(a.0, b.0);
        assert!((a.1 - b.1).abs() < 1e-3, "{a:?} vs {b:?}");
    }
}

#[test]
#[ignore = "needs ONNX Runtime (scripts/fetch-data.sh onnxruntime)"]
fn ort_rejects_a_second_different_library_in_one_process() {
    let lib = require!(ort_lib(), "second library");
    OrtEmbedder::load(&tiny_model(), &ort_options(&lib)).unwrap();
    let tmp = TempDir::new().unwrap();
    let other = tmp.path().join("libonnxruntime.so.1.31.1");
    std::fs::copy(&lib, &other).unwrap();
    let err = OrtEmbedder::load(&tiny_model(), &ort_options(&other))
        .err()
        .expect("a second library is refused")
        .to_string();
    assert!(
        err.contains(s(&other)) && err.contains("already loaded"),
        "{err}"
    );
    // The environment loaded first is still usable.
    let e = OrtEmbedder::load(&fixture("models/tiny_nhwc_gap.onnx"), &ort_options(&lib)).unwrap();
    let v = e.embed_images(&images(&["26fa-google.png"])).unwrap();
    assert!((v.row(0).dot(&v.row(0)) - 1.0).abs() < 1e-5);
}
