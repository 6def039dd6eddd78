//! `htg bench`: measurements users can trust and compare, in the style of ann-benchmarks.
//!
//! - `bench index`: HNSW recall, QPS, latency, build time, disk size and memory over a sweep of
//!   M, ef_construction and ef, every build in its own child process (`bench point`);
//! - `bench dataset`: the data set directories htg and the Python peers share;
//! - `bench plot`: plots and ratio tables over htg's and the peers' reports together;
//! - `bench embed`: images/s split into decode, preprocess and inference;
//! - `bench quality`: retrieval metrics through the training evaluation code.
//!
//! See docs/BENCHMARKS.md for the numbers and the commands that made them.

use anyhow::Result;

use crate::bench;
use crate::bench::args::{
    DatasetCommand, DuplicatesArgs, EmbedArgs, IndexArgs, PlotArgs, PointArgs, WritesArgs,
};

/// Arguments of `htg bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

/// The `htg bench` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Sweep HNSW build (M, ef_construction) and query (ef) parameters: recall, QPS, latency,
    /// build time, index size and peak memory; table, JSON and SVG plots.
    Index(IndexArgs),
    /// Write a data set directory (base.npy, queries.npy, gt.npy) for `bench index` and peers.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Plot and compare `bench index` reports (htg's and benches/peers/ann_peers.py's).
    Plot(PlotArgs),
    /// Images/s of a model at several batch sizes, split into decode, preprocess, inference.
    Embed(EmbedArgs),
    /// Acknowledged adds/s and per-add latency at growing index sizes and writer counts, and
    /// search latency during writes (the production index path, in-process).
    Writes(WritesArgs),
    /// `htg duplicates` over a synthetic index with planted near copies: time, peak memory,
    /// recall of the planted pairs.
    Duplicates(DuplicatesArgs),
    /// Retrieval metrics (Recall@K, NMI, MAP@R) of a model on a data set, as `htg eval`
    /// (built with the `train` feature).
    #[cfg(feature = "train")]
    Quality(super::eval::Args),
    /// One build point of `bench index` (internal: run in a child process for clean memory).
    #[command(hide = true)]
    Point(PointArgs),
}

/// Runs `htg bench`.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Index(a) => bench::sweep::run_index(a),
        Command::Point(a) => bench::sweep::run_point(a),
        Command::Dataset(DatasetCommand::Synth(a)) => bench::sweep::run_synth(a),
        Command::Dataset(DatasetCommand::Export(a)) => bench::sweep::run_export(a),
        Command::Dataset(DatasetCommand::Embed(a)) => bench::sweep::run_embed_data(a),
        Command::Plot(a) => bench::plot::run(a),
        Command::Embed(a) => bench::embed::run(a),
        Command::Writes(a) => bench::writes::run(a),
        Command::Duplicates(a) => bench::duplicates::run(a),
        #[cfg(feature = "train")]
        Command::Quality(a) => super::eval::run(a),
    }
}
