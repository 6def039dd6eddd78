//! `htg migrate`: copy an index to another location (a directory or a Milvus collection)
//! with its model provenance, records and stored vectors: nothing is re-embedded, so moving
//! a million images to Milvus (or back) costs a copy, not an inference run.

use anyhow::{bail, Context, Result};
use htg_retrieval::index::{self, CreateOptions, EngineKind, Location};
use htg_retrieval::SearchIndex as _;
use indicatif::{ProgressBar, ProgressStyle};

use crate::flags::open_index;

/// Arguments of `htg migrate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Index to copy from: a directory or `milvus://HOST:PORT/COLLECTION`.
    #[arg(long)]
    pub from: Location,
    /// Where to copy to (must not hold an index yet): a directory or a Milvus URI.
    #[arg(long)]
    pub to: Location,
    /// Vector engine when the destination is a directory: htg or hnsw_rs.
    #[arg(long, value_enum, default_value_t)]
    pub engine: EngineKind,
    /// Records per write.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
}

/// Copies every live record and its vector; ids are assigned afresh by the destination.
pub fn run(args: Args) -> Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let src = open_index(&args.from)?;
    if index::exists(&args.to) {
        bail!(
            "{} already holds an index; migrate into a new location",
            args.to
        );
    }
    let dst = index::create(
        &args.to,
        src.model(),
        src.model_path(),
        &CreateOptions {
            params: src.params(),
            engine: args.engine,
            capacity: src.len(),
        },
    )
    .with_context(|| format!("creating {}", args.to))?;
    let records = src.records();
    let bar = ProgressBar::new(records.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} copying [{bar:30}] {pos}/{len} {per_sec}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut copied = 0usize;
    for chunk in records.chunks(args.batch) {
        let ids: Vec<u64> = chunk.iter().map(|(id, _)| *id).collect();
        let vectors = src.vectors(&ids);
        let mut items = Vec::with_capacity(chunk.len());
        for ((id, record), v) in chunk.iter().zip(vectors) {
            let v =
                v.with_context(|| format!("{}: record {id} has no stored vector", args.from))?;
            items.push((record.clone(), v));
        }
        dst.insert_many(items)
            .with_context(|| format!("writing to {}", args.to))?;
        copied += chunk.len();
        bar.set_position(copied as u64);
    }
    dst.flush()?;
    bar.finish_and_clear();
    println!(
        "copied {copied} records and their vectors from {} to {} (model {}, not re-embedded)",
        args.from,
        args.to,
        index::describe(&src.model())
    );
    Ok(())
}
