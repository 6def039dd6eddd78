//! `htg index`: embed a folder of images into a persisted index, incrementally.

use std::path::PathBuf;

use anyhow::{Context, Result};
use htg_retrieval::index::{self, CreateOptions, EngineKind, Location};
use htg_retrieval::ingest::{index_folder_with_progress, IngestOptions, Progress};
use htg_retrieval::HnswParams;
use htg_retrieval::SearchIndex as _;
use indicatif::{ProgressBar, ProgressStyle};

use crate::flags as model;

/// Arguments of `htg index`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder to walk recursively.
    pub dir: PathBuf,
    /// Index (created if absent): a directory, or `milvus://HOST:PORT/COLLECTION` for a Milvus
    /// collection (credentials from `HTG_MILVUS_TOKEN` or `HTG_MILVUS_USER`/`_PASSWORD`).
    #[arg(long)]
    pub index: Location,
    /// A bundled model's name (`htg models`: photo, emoji, emoji-linear, emoji-scratch) or an ONNX file; defaults to the
    /// model that built the index, else `photo`.
    #[arg(long, value_name = "NAME|PATH")]
    pub model: Option<String>,
    /// Inference runtime.
    #[command(flatten)]
    pub backend: model::BackendArgs,
    /// Images per inference call.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// HNSW links per node (new indexes only).
    #[arg(long, default_value_t = HnswParams::default().m)]
    pub m: usize,
    /// HNSW build candidate list size (new indexes only).
    #[arg(long, default_value_t = HnswParams::default().ef_construction)]
    pub ef_construction: usize,
    /// Vector engine (new indexes only): htg (ours) or hnsw_rs.
    #[arg(long, value_enum, default_value_t)]
    pub engine: EngineKind,
    /// Label each image with its parent folder's name.
    #[arg(long)]
    pub label_from_parent: bool,
    /// After indexing, keep watching the folder: new, changed and deleted files are picked
    /// up within seconds, until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// Pacing of `--watch`.
    #[command(flatten)]
    pub watch_args: super::watch::WatchArgs,
}

/// Indexes the folder and prints a summary; bad files are reported, not fatal.
pub fn run(args: Args) -> Result<()> {
    // Refuse a missing folder before an index is created for it.
    if !args.dir.is_dir() {
        anyhow::bail!(
            "indexing {0}: cannot read folder {0}: not a directory or not found",
            args.dir.display()
        );
    }
    let location = &args.index;
    let existing = if index::exists(location) {
        Some(crate::flags::open_index(location)?)
    } else {
        None
    };
    let plan = model::ModelPlan::resolve(args.model.as_deref(), existing.as_ref(), &args.backend)?;
    let embedder = plan.load()?;
    let model_path = plan.path;
    let index = match existing {
        Some(i) => {
            i.check_model(embedder.model_id())?;
            i
        }
        None => {
            let abs = model_path
                .canonicalize()
                .unwrap_or_else(|_| model_path.clone());
            index::create(
                location,
                embedder.model_id().clone(),
                Some(abs.to_string_lossy().to_string()),
                &CreateOptions {
                    params: HnswParams {
                        m: args.m,
                        ef_construction: args.ef_construction,
                    },
                    engine: args.engine,
                    capacity: 0,
                },
            )?
        }
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} indexing [{bar:30}] {pos}/{len} files, {msg} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let last = parking_lot::Mutex::new(Progress::default());
    let progress = |p: &Progress| {
        *last.lock() = p.clone();
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        bar.set_message(format!(
            "{:.0} images/s, slowest stage: {}",
            p.images_per_s, p.bottleneck
        ));
    };
    let opts = IngestOptions {
        batch_size: args.batch_size,
        label_from_parent: args.label_from_parent,
    };
    let report = index_folder_with_progress(&index, embedder.as_ref(), &args.dir, &opts, &progress)
        .with_context(|| format!("indexing {}", args.dir.display()))?;
    bar.finish_and_clear();
    let p = last.into_inner();
    if p.done > 0 {
        let [prep, infer, insert] = p.busy_s;
        eprintln!(
            "{} files at {:.0} images/s; busy seconds: read+preprocess {prep:.2}, inference {infer:.2}, insert {insert:.2} (slowest: {})",
            p.done, p.images_per_s, p.bottleneck
        );
    }
    for (path, why) in &report.failed {
        eprintln!("skipped {}: {why}", path.display());
    }
    // The writes above are durable, but a background task that failed would otherwise go
    // unseen: its error is printed where the user looks.
    let stats = index.stats();
    if let Some(e) = &stats.background_error {
        eprintln!(
            "warning: {e} ({} background failures; the index's log keeps every write, retried at the next write)",
            stats.background_errors
        );
    }
    println!(
        "embedded {} new or changed, reused {}, unchanged {}, removed {}, skipped {} bad, ignored {} non-image; index holds {} images at {}",
        report.embedded,
        report.reused,
        report.unchanged,
        report.removed,
        report.failed.len(),
        report.ignored,
        index.len(),
        args.index
    );
    if args.watch {
        // The pass above read every file, so the watcher starts from what is indexed.
        let opts = args.watch_args.options(args.label_from_parent, false);
        super::watch::follow(
            std::sync::Arc::new(index),
            std::sync::Arc::from(embedder),
            &args.dir,
            opts,
        )?;
    }
    Ok(())
}
