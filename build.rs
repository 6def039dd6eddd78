//! Embeds `models/default.onnx` into the `htg` binary when the file exists, so `--model` can be
//! omitted: the bundled model is the default.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(htg_default_model)");
    println!("cargo::rerun-if-changed=models/default.onnx");
    if std::path::Path::new("models/default.onnx").is_file() {
        println!("cargo::rustc-cfg=htg_default_model");
    }
}
