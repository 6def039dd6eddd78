//! The model spec from ONNX metadata: the bundled model with its `metadata_props` replaced by
//! fuzzed `key=value` lines resolves to a validated spec or a `SpecError`, never a panic.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use htg_retrieval::ModelSpec;
use libfuzzer_sys::fuzz_target;
use tract_onnx::pb;

fn model() -> &'static pb::ModelProto {
    static M: OnceLock<pb::ModelProto> = OnceLock::new();
    M.get_or_init(|| {
        let bytes = include_bytes!("../../models/emoji-scratch.onnx");
        htg_retrieval::spec::decode_proto(Path::new("default.onnx"), bytes).expect("bundled model")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut proto = model().clone();
    proto.metadata_props = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| pb::StringStringEntryProto {
            key: k.to_string(),
            value: v.to_string(),
        })
        .collect();
    // No manifest exists beside this path, so only the metadata and the graph speak.
    if let Ok(spec) = ModelSpec::resolve_proto(Path::new("/nonexistent/fuzz.onnx"), &proto) {
        spec.validate().expect("a resolved spec is valid");
    }
});
