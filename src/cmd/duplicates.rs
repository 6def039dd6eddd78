//! `htg duplicates`: groups of near-duplicate images and exact copies in an index.

use anyhow::{Context, Result};
use htg_retrieval::duplicates::{self, DuplicateOptions, Kind};
use htg_retrieval::SearchIndex as _;
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `htg duplicates`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Index: a directory or `milvus://HOST:PORT/COLLECTION`.
    #[arg(long)]
    pub index: htg_retrieval::index::Location,
    /// Link images at most this far apart (squared L2 between unit vectors, 0..=4)
    /// [default: the index's model's calibrated distance, models/README.md; required for a
    /// model without one].
    #[arg(long, value_name = "D", value_parser = parse_max_distance)]
    pub max_distance: Option<f32>,
    /// Neighbours searched per image: a group larger than this is still found through
    /// chains of links.
    #[arg(long, default_value_t = duplicates::DEFAULT_NEIGHBOURS as u16, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub neighbours: u16,
    /// HNSW candidate list size (default max(k, 64)); 1..=10000.
    #[arg(long)]
    pub ef: Option<usize>,
    /// Print the whole report as JSON (`{"groups":[{"kind","representative","members"}]}`).
    #[arg(long)]
    pub json: bool,
}

fn parse_max_distance(s: &str) -> Result<f32, String> {
    let d: f32 = s.parse().map_err(|e| format!("{e}"))?;
    htg_retrieval::index::check_max_distance(d)
        .map(|()| d)
        .map_err(|e| e.to_string())
}

/// Finds the groups and prints them, largest first.
pub fn run(args: Args) -> Result<()> {
    let index = crate::flags::open_index(&args.index)?;
    let calibrated = crate::flags::duplicate_distance_of(&index.model().sha256);
    let max_distance = args.max_distance.or(calibrated).with_context(|| {
        format!(
            "{} was built with a model that has no calibrated duplicate distance (`htg models` shows the models that have one): give --max-distance",
            args.index
        )
    })?;
    let mut opts = DuplicateOptions::new(max_distance);
    opts.neighbours = usize::from(args.neighbours);
    opts.ef = args.ef;
    if let Some(dir) = args.index.dir() {
        opts.uploads = Some(dir.join("uploads"));
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} searching [{bar:30}] {pos}/{len} images, eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let report = duplicates::find(&index, &opts, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("finding duplicates in {}", args.index))?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let source = if args.max_distance.is_some() {
        "given"
    } else {
        "the model's calibrated default"
    };
    println!(
        "{} images, {} searches; max_distance {max_distance} ({source}), {} neighbours: {} near-duplicate groups, {} exact-copy groups",
        report.images, report.searches, report.neighbours, report.near_groups, report.exact_groups
    );
    for (n, g) in report.groups.iter().enumerate() {
        let kind = match g.kind {
            Kind::Exact => "exact copies",
            Kind::Near => "near-duplicates",
        };
        println!("\ngroup {} ({kind}, {} images):", n + 1, g.members.len());
        for (i, m) in g.members.iter().enumerate() {
            let role = if i == 0 { "keep" } else { "    " };
            let size = match (m.pixels, m.bytes) {
                (Some(p), Some(b)) => format!("{p} px, {b} B"),
                (None, Some(b)) => format!("{b} B"),
                _ => "file gone".into(),
            };
            let exact = if m.exact { " (exact copy)" } else { "" };
            println!(
                "  {role} {:>8.4}  {:>8}  {}  [{size}]{exact}",
                m.distance, m.id, m.path
            );
        }
    }
    Ok(())
}
