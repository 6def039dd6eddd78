//! `htg serve`: the HTTP search service over an index (see `docs/HTTP.md`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use htg_retrieval::SearchIndex as _;

use crate::flags as model;
use htg_retrieval::index::{Index, Location};
use htg_retrieval::server::{self, Config};

/// Arguments of `htg serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Index to serve: a directory (added images are saved under it), or
    /// `milvus://HOST:PORT/COLLECTION`.
    #[arg(long)]
    pub index: Location,
    /// Where images added over HTTP are kept (default: `<index>/uploads`; for a Milvus
    /// collection, `uploads/<host>_<port>_<collection>` under the cache directory).
    #[arg(long)]
    pub uploads: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:8080; wins over the config file and `HTG__ADDR`.
    #[arg(long)]
    pub addr: Option<String>,
    /// TOML config file, layered over the defaults and under `HTG__*` variables.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Query model, a bundled name or an ONNX file; must be the one that built the index
    /// (default: that one).
    #[arg(long, value_name = "NAME|PATH")]
    pub model: Option<String>,
    /// Inference runtime.
    #[command(flatten)]
    pub backend: model::BackendArgs,
    /// Keep this folder indexed while serving (repeatable): new, changed and deleted files
    /// are picked up within seconds, durable like any add; `/stats` shows the queue.
    #[arg(long, value_name = "DIR")]
    pub watch: Vec<PathBuf>,
    /// Label watched images with their parent folder's name.
    #[arg(long, requires = "watch")]
    pub label_from_parent: bool,
    /// Pacing of `--watch`.
    #[command(flatten)]
    pub watch_args: super::watch::WatchArgs,
}

/// Loads and validates everything, then serves until SIGTERM or SIGINT.
pub fn run(args: Args) -> Result<()> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars())
        .context("refusing to start on this configuration")?;
    if let Some(addr) = args.addr {
        config.addr = addr;
        config
            .validate()
            .context("refusing to start on this configuration")?;
    }
    let index = model::open_index(&args.index)?;
    let mut plan = model::ModelPlan::resolve(args.model.as_deref(), Some(&index), &args.backend)?;
    if args.backend.backend.is_none() {
        plan.runtimes.runtime = config.backend;
    }
    let embedder = plan.load()?;
    index.check_model(embedder.model_id())?;
    let location = &args.index;
    let uploads = match (args.uploads, location) {
        (Some(dir), _) => dir,
        (None, Location::Dir(dir)) => dir.join("uploads"),
        (None, Location::Milvus(url)) => {
            let name: String = url
                .split_once("://")
                .map_or(url.as_str(), |(_, rest)| rest)
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let dir = htg_retrieval::ort_backend::cache_dir()
                .join("uploads")
                .join(name);
            eprintln!("note: images added over HTTP are kept in {}", dir.display());
            dir
        }
    };
    let admin = match (&index, location.dir()) {
        (Index::Local(local), Some(root)) => {
            // The one writer from the start: `htg index` or `htg reindex` beside this server
            // is refused instead of writing under it.
            local
                .lock_writes()
                .with_context(|| format!("{location} is being written by another process"))?;
            let runtimes = plan.runtimes.clone();
            let load: server::admin::ModelLoader =
                Arc::new(move |p: &std::path::Path| runtimes.load(p).map_err(|e| format!("{e:#}")));
            Some(server::admin::Admin {
                root: root.to_path_buf(),
                load,
            })
        }
        _ => None,
    };
    for dir in &args.watch {
        if !dir.is_dir() {
            anyhow::bail!(
                "--watch {0}: cannot read folder {0}: not a directory or not found",
                dir.display()
            );
        }
    }
    let watch = (!args.watch.is_empty()).then(|| server::Watch {
        folders: args.watch.clone(),
        // The server may have been down while files changed: each file's sha256 is read
        // again at start, and only what changed is embedded.
        options: args.watch_args.options(args.label_from_parent, true),
    });
    server::serve(
        config,
        index,
        Arc::from(embedder),
        uploads,
        admin,
        model::duplicate_distance_of,
        watch,
    )?;
    Ok(())
}
