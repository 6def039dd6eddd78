//! `htg search`: the indexed images nearest to a query image.

use std::path::PathBuf;

use anyhow::{Context, Result};
use htg_retrieval::SearchIndex as _;
use htg_retrieval::SearchOptions;
use serde::Serialize;

use crate::flags as model;

/// Arguments of `htg search`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Index: a directory or `milvus://HOST:PORT/COLLECTION`.
    #[arg(long)]
    pub index: htg_retrieval::index::Location,
    /// Query image.
    pub image: PathBuf,
    /// Number of neighbours.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// HNSW candidate list size (default max(k, 64)); 1..=10000, as over HTTP.
    #[arg(long, value_parser = parse_ef)]
    pub ef: Option<usize>,
    /// Exact brute-force search instead of HNSW.
    #[arg(long)]
    pub exact: bool,
    /// Print `{"results":[{"path","distance","id"}]}`.
    #[arg(long)]
    pub json: bool,
    /// Query model, a bundled name or an ONNX file; must be the one that built the index
    /// (default: that one).
    #[arg(long, value_name = "NAME|PATH")]
    pub model: Option<String>,
    /// Inference runtime.
    #[command(flatten)]
    pub backend: model::BackendArgs,
    /// Only images with this label.
    #[arg(long)]
    pub label: Option<String>,
    /// Only images at most this far from the query (squared L2 between unit vectors,
    /// 0..=4, as over HTTP); none that close prints no rows (`{"results":[]}`).
    #[arg(long, value_name = "D", value_parser = parse_max_distance)]
    pub max_distance: Option<f32>,
}

/// The range `SearchOptions::resolve` holds every search to, checked while parsing flags.
fn parse_max_distance(s: &str) -> Result<f32, String> {
    let d: f32 = s.parse().map_err(|e| format!("{e}"))?;
    htg_retrieval::index::check_max_distance(d)
        .map(|()| d)
        .map_err(|e| e.to_string())
}

/// The range the HTTP API enforces (`SearchOptions::resolve`, the one check), so the CLI
/// cannot ask the index for more.
fn parse_ef(s: &str) -> Result<usize, String> {
    let ef: usize = s.parse().map_err(|e| format!("{e}"))?;
    let opts = SearchOptions {
        ef: Some(ef),
        ..SearchOptions::default()
    };
    match opts.resolve(1, usize::MAX) {
        Ok(_) => Ok(ef),
        Err(htg_retrieval::IndexError::Param(m)) => Err(m),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Serialize)]
struct Row {
    path: String,
    distance: f32,
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
}

/// Embeds the query, searches, prints nearest first.
pub fn run(args: Args) -> Result<()> {
    let index = model::open_index(&args.index)?;
    let embedder =
        model::ModelPlan::resolve(args.model.as_deref(), Some(&index), &args.backend)?.load()?;
    index.check_model(embedder.model_id())?;
    let img = htg_retrieval::preprocess::load_image(&args.image)
        .with_context(|| format!("query image {}", args.image.display()))?;
    let q = embedder.embed_images(std::slice::from_ref(&img))?;
    let opts = SearchOptions {
        ef: args.ef,
        exact: args.exact,
        label: args.label,
        path_prefix: None,
        max_distance: args.max_distance,
    };
    let hits = index.search(
        q.row(0).as_slice().expect("row is contiguous"),
        args.k,
        &opts,
    )?;
    let rows: Vec<Row> = hits
        .into_iter()
        .map(|h| Row {
            path: h.record.path,
            distance: h.distance,
            id: h.id,
            label: h.record.label,
        })
        .collect();
    if args.json {
        println!("{}", serde_json::json!({ "results": rows }));
    } else {
        println!("{:>4}  {:>10}  {:>8}  path", "rank", "distance", "id");
        for (i, r) in rows.iter().enumerate() {
            println!(
                "{:>4}  {:>10.6}  {:>8}  {}",
                i + 1,
                r.distance,
                r.id,
                r.path
            );
        }
    }
    Ok(())
}
