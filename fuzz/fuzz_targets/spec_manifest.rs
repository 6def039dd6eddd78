//! The model spec from a manifest JSON (`<model>.json` beside the ONNX file): any bytes
//! resolve to a validated spec or a `SpecError`, never a panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use htg_retrieval::ModelSpec;
use libfuzzer_sys::fuzz_target;

/// A directory holding the bundled model, written once.
fn model_path() -> &'static (tempfile::TempDir, PathBuf) {
    static P: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    P.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, include_bytes!("../../models/emoji-scratch.onnx")).expect("write");
        (dir, path)
    })
}

fuzz_target!(|data: &[u8]| {
    let (_, onnx) = model_path();
    std::fs::write(htg_retrieval::spec::manifest_path(onnx), data).expect("write manifest");
    if let Ok(spec) = ModelSpec::resolve(onnx) {
        spec.validate().expect("a resolved spec is valid");
    }
});
