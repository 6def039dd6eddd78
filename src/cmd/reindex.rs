//! `htg reindex`: swap an index's model. Re-embeds every live image from its stored bytes
//! into a shadow index beside the live one, then switches atomically; see
//! `htg_retrieval::reindex`. For a server that is running, `POST /admin/reindex` does the
//! same while it keeps serving.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use htg_retrieval::index::{describe, Index, Location};
use htg_retrieval::reindex::{Progress, Reindexer};

use crate::flags::{self, BackendArgs};

/// Arguments of `htg reindex`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Index directory to swap (a Milvus collection is refused: a swap needs local files).
    #[arg(long)]
    pub index: Location,
    /// The new model.
    #[arg(long)]
    pub model: PathBuf,
    /// Where images added over HTTP were kept (default: `<index>/uploads`).
    #[arg(long)]
    pub uploads: Option<PathBuf>,
    /// Switch even if some images cannot be re-read (they are listed, and left out).
    #[arg(long)]
    pub drop_missing: bool,
    /// Inference runtime for the new model.
    #[command(flatten)]
    pub backend: BackendArgs,
}

fn line(p: &Progress) -> String {
    format!(
        "embedded {}/{} (resumed {}, missing {})",
        p.embedded,
        p.total,
        p.resumed,
        p.missing.len()
    )
}

/// Runs `htg reindex`.
pub fn run(args: Args) -> Result<()> {
    let location = &args.index;
    let Some(dir) = location.dir() else {
        bail!("{location}: a model swap needs a local index directory");
    };
    let old = flags::open_index(location)?;
    // Without the `milvus` feature a local index is the only kind.
    #[allow(irrefutable_let_patterns)]
    let Index::Local(local) = &old
    else {
        bail!("{location} is not a local index");
    };
    local.lock_writes().with_context(|| {
        format!(
            "{location} is being written by another process; if it is `htg serve`, ask it to swap instead: POST /admin/reindex"
        )
    })?;
    let embedder: Arc<dyn htg_retrieval::Embedder> =
        Arc::from(flags::load(&args.model, &args.backend)?);
    let uploads = args.uploads.clone().unwrap_or_else(|| dir.join("uploads"));
    let mut r = Reindexer::start(
        dir,
        local,
        Arc::clone(&embedder),
        Some(args.model.to_string_lossy().to_string()),
        &uploads,
    )?;
    if r.progress().resumed > 0 {
        println!(
            "resuming: {} image(s) already embedded by the new model",
            r.progress().resumed
        );
    }
    // The first batch, then twice a second: a progress line shows each step is durable.
    let mut last: Option<std::time::Instant> = None;
    r.catch_up(&old, 1, |p| {
        if last.is_none_or(|t| t.elapsed().as_millis() >= 500) {
            println!("{}", line(p));
            last = Some(std::time::Instant::now());
        }
    })?;
    let result = r.switch(local, args.drop_missing);
    let p = r.progress().clone();
    for m in &p.missing {
        eprintln!("missing: id {} {}: {}", m.id, m.path, m.reason);
    }
    result?;
    println!("{}", line(&p));
    println!(
        "switched {} to model {} ({} images{})",
        location,
        describe(embedder.model_id()),
        p.embedded,
        if p.missing.is_empty() {
            String::new()
        } else {
            format!(", {} left out", p.missing.len())
        }
    );
    Ok(())
}
