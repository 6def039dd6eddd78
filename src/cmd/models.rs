//! `htg models`: the models compiled into the binary, by the name `--model` takes.

use anyhow::Result;
use htg_retrieval::embed::sha256_hex;
use htg_retrieval::spec::{decode_proto, ModelSpec};

use crate::flags::BUNDLED;

/// Arguments of `htg models`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print one JSON object per model instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Lists every bundled model with its input, dimension, hash and card line; the first is the
/// default.
pub fn run(args: Args) -> Result<()> {
    for (i, m) in BUNDLED.iter().enumerate() {
        let name = std::path::Path::new(m.name);
        let spec = ModelSpec::resolve_proto(name, &decode_proto(name, m.bytes)?)?;
        let sha = sha256_hex(m.bytes);
        let input = format!("{}x{} {}", spec.width, spec.height, spec.resize);
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "name": m.name,
                    "default": i == 0,
                    "sha256": sha,
                    "bytes": m.bytes.len(),
                    "input": input,
                    "dim": spec.embedding_dim,
                    "summary": m.summary,
                    "duplicate_distance": m.duplicate_distance,
                })
            );
        } else {
            let default = if i == 0 { " (default)" } else { "" };
            println!("{}{default}", m.name);
            println!(
                "    {input}, {}-d, {:.1} MB, sha256 {}",
                spec.embedding_dim,
                m.bytes.len() as f64 / 1e6,
                &sha[..16]
            );
            println!("    {}", m.summary);
            if let Some(d) = m.duplicate_distance {
                println!("    near-duplicates within {d} (htg duplicates' default)");
            }
        }
    }
    Ok(())
}
