//! Model spec resolution: metadata, manifest override, graph inference and clear errors.

use htg_retrieval::spec::{Color, Layout, ModelSpec, Pooling};
use htg_retrieval::{Embedder, TractEmbedder};

use crate::util::{fixture, htg, stderr, tiny_model};

#[test]
fn metadata_gives_the_full_spec() {
    let s = ModelSpec::resolve(&tiny_model()).unwrap();
    assert_eq!(s.input_name, "image");
    assert_eq!(s.output_name, "embedding");
    assert_eq!((s.layout, s.width, s.height), (Layout::Nchw, 32, 32));
    assert_eq!(s.color, Color::Rgb);
    assert_eq!(s.mean, vec![0.5, 0.5, 0.5]);
    assert_eq!(s.std, vec![0.25, 0.25, 0.25]);
    assert_eq!((s.pooling, s.embedding_dim), (Pooling::None, 32));
}

#[test]
fn manifest_describes_an_nhwc_grey_model_with_a_rank4_output() {
    let path = fixture("models/tiny_nhwc_gap.onnx");
    let s = ModelSpec::resolve(&path).unwrap();
    assert_eq!(
        (s.layout, s.color, s.pooling),
        (Layout::Nhwc, Color::Grey, Pooling::Gap)
    );
    let e = TractEmbedder::load(&path).unwrap();
    let img = htg_retrieval::preprocess::load_image(&fixture("images/1f600-google.png")).unwrap();
    let v = e.embed_images(&[img.clone(), img]).unwrap();
    assert_eq!(v.shape(), &[2, 4]);
    assert!((v.row(0).dot(&v.row(0)) - 1.0).abs() < 1e-5);
}

#[test]
fn graph_inference_fills_names_and_shape_but_missing_normalisation_is_named() {
    let err = ModelSpec::resolve(&fixture("models/no_meta.onnx"))
        .unwrap_err()
        .to_string();
    // Names, layout and size come from the graph; colour of a 3-channel input is ambiguous.
    assert!(err.contains("htg.color"), "{err}");
    assert!(err.contains("no_meta.json"), "{err}");
    let out = htg(&[
        "inspect-model",
        fixture("models/no_meta.onnx").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert_eq!(e.lines().count(), 1, "one line: {e}");
    assert!(e.starts_with("error: ") && e.contains("htg.color"), "{e}");
}

#[test]
fn inspect_model_prints_the_resolved_spec() {
    let out = crate::util::htg_ok(&["inspect-model", tiny_model().to_str().unwrap()]);
    assert!(out.contains("htg.layout") && out.contains("NCHW"), "{out}");
    assert!(
        out.contains("htg.embedding_dim") && out.contains("32"),
        "{out}"
    );
}
