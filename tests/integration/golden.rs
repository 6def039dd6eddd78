//! tract reproduces onnxruntime's output for the tiny fixture model (golden file made by
//! `tests/fixtures/models/make_golden.py`).

use htg_retrieval::{Embedder, TractEmbedder};
use ndarray::{Array4, ArrayD};

use crate::util::{fixture, tiny_model};

/// A JSON array of number arrays, flattened row after row.
fn rows_flat(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter())
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn tract_matches_onnxruntime_golden_output() {
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("models/tiny_golden.json")).unwrap())
            .unwrap();
    let shape: Vec<usize> = golden["input_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let flat: Vec<f32> = rows_flat(&golden["input"]);
    let input = Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), flat).unwrap();
    let e = TractEmbedder::load(&tiny_model()).unwrap();
    let raw: ArrayD<f32> = e.run(input.view()).unwrap();
    let want: Vec<f32> = rows_flat(&golden["output"]);
    assert_eq!(raw.len(), want.len());
    let max = raw
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max < 1e-4, "max abs diff {max}");
    // Normalised embeddings have unit length.
    let emb = e.embed_tensor(input.view()).unwrap();
    for row in emb.rows() {
        assert!((row.dot(&row) - 1.0).abs() < 1e-5);
    }
}

#[test]
fn batch_size_does_not_change_embeddings() {
    let e = TractEmbedder::load(&tiny_model()).unwrap();
    let imgs: Vec<_> = ["1f600-google.png", "1f999-twitter.png", "26fa-google.png"]
        .iter()
        .map(|n| htg_retrieval::preprocess::load_image(&fixture(&format!("images/{n}"))).unwrap())
        .collect();
    let all = e.embed_images(&imgs).unwrap();
    for (i, img) in imgs.iter().enumerate() {
        let one = e.embed_images(std::slice::from_ref(img)).unwrap();
        let d = (&one.row(0) - &all.row(i))
            .mapv(f32::abs)
            .fold(0f32, |a, b| a.max(*b));
        assert!(d < 1e-5, "image {i}: {d}");
    }
}
