//! `htg inspect-model`: the resolved spec of a model, or the precise reason it can't resolve.

use std::path::PathBuf;

use anyhow::{Context, Result};
use htg_retrieval::spec::{htg_metadata, manifest_path, ModelSpec};

/// Arguments of `htg inspect-model`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// ONNX model file.
    pub model: PathBuf,
    /// Print the spec as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Prints the spec, where it came from, and the model's informational metadata.
pub fn run(args: Args) -> Result<()> {
    let spec = ModelSpec::resolve(&args.model)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&spec)?);
        return Ok(());
    }
    let bytes = std::fs::read(&args.model).context("reading model")?;
    let proto = htg_retrieval::spec::decode_proto(&args.model, &bytes)?;
    let manifest = manifest_path(&args.model);
    println!("model     {}", args.model.display());
    println!("sha256    {}", htg_retrieval::embed::sha256_hex(&bytes));
    println!(
        "manifest  {}",
        if manifest.is_file() {
            manifest.display().to_string()
        } else {
            "none".into()
        }
    );
    println!("\nresolved spec:");
    print!("{spec}");
    let extra: Vec<_> = htg_metadata(&proto)
        .into_iter()
        .filter(|(k, _)| k.starts_with("htg.train."))
        .collect();
    if !extra.is_empty() {
        println!("\ntraining metadata:");
        for (k, v) in extra {
            println!("{k:<20} {v}");
        }
    }
    Ok(())
}
