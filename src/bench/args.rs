//! The flags of every `htg bench` subcommand, owned by the engine that reads them.

use std::path::PathBuf;

use crate::flags::BackendArgs;

/// Where `bench index` takes its vectors from.
#[derive(clap::Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct Source {
    /// A data set directory (`htg bench dataset ...` writes one).
    #[arg(long, value_name = "DIR")]
    pub dataset: Option<PathBuf>,
    /// An htg index: its stored vectors, with --holdout of them as queries.
    #[arg(long, value_name = "IDX")]
    pub index: Option<PathBuf>,
    /// A .npy file of f32 vectors (N x D); queries come from --queries or --holdout.
    #[arg(long, value_name = "FILE")]
    pub vectors: Option<PathBuf>,
}

/// Arguments of `htg bench index`.
#[derive(clap::Args, Debug)]
pub struct IndexArgs {
    #[command(flatten)]
    pub source: Source,
    /// Query vectors (.npy, f32) for --vectors; without it --holdout rows become queries.
    #[arg(long, value_name = "FILE", requires = "vectors")]
    pub queries: Option<PathBuf>,
    /// Vectors held out as queries for --index or --vectors without --queries.
    #[arg(long, default_value_t = 1000)]
    pub holdout: usize,
    /// Keep the data set made from --index/--vectors here (for the peers); else a temporary one.
    #[arg(long, value_name = "DIR")]
    pub save_dataset: Option<PathBuf>,
    /// Links per node, comma-separated (2..=256).
    #[arg(long, value_delimiter = ',', default_value = "16")]
    pub m: Vec<usize>,
    /// Build candidate list sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "200")]
    pub ef_construction: Vec<usize>,
    /// Query candidate list sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,16,32,64,128,256")]
    pub ef: Vec<usize>,
    /// Engines, comma-separated: htg (our graph, what `htg index` builds) and hnsw_rs (the
    /// design card's library). Both run through the production index (`LocalIndex`: log,
    /// records, checkpoint), except hnsw_rs with a --distance other than l2.
    /// `milvus` builds each point in a fresh collection on the --milvus server (dropped after)
    /// and searches it through the same index seam.
    #[arg(long, value_delimiter = ',', default_value = "htg")]
    pub engine: Vec<String>,
    /// Milvus server (HOST:PORT) for --engine milvus.
    #[arg(long, value_name = "HOST:PORT")]
    pub milvus: Option<String>,
    /// Distance kernels for hnsw_rs, comma-separated: l2 (DistL2, its production path), dot
    /// (DistDot, unit vectors only), l2sq (htg's squared-L2 kernel plugged into hnsw_rs).
    /// htg always uses squared L2.
    #[arg(long, value_delimiter = ',', default_value = "l2")]
    pub distance: Vec<String>,
    /// Skip the brute-force baseline.
    #[arg(long)]
    pub no_exact: bool,
    /// Threads for building and the all-threads pass [default: all].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Each timed search pass repeats the queries until this many seconds have passed.
    #[arg(long, default_value_t = 0.5)]
    pub min_seconds: f64,
    /// Seed of the query hold-out.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench-index.json")]
    pub json: PathBuf,
    /// Directory for the SVG plots [default: beside --json]; `-` for none.
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
    /// Also persist each index to measure its size on disk (slower at large N).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub disk_size: bool,
    /// `int8`: the htg engine traverses 8-bit codes after its build (f32 rescoring), reported
    /// as distance `int8`; `none`: f32 throughout.
    #[arg(long, default_value = "none", value_parser = ["none", "int8"])]
    pub quantize: String,
}

/// Arguments of the hidden `htg bench point`.
#[derive(clap::Args, Debug)]
pub struct PointArgs {
    /// Data set directory.
    #[arg(long)]
    pub dataset: PathBuf,
    /// `htg`, `hnsw_rs` or `exact`.
    #[arg(long)]
    pub library: String,
    /// Distance kernel (l2, dot, l2sq).
    #[arg(long, default_value = "l2")]
    pub distance: String,
    /// Links per node.
    #[arg(long, default_value_t = 16)]
    pub m: usize,
    /// Build candidate list size.
    #[arg(long, default_value_t = 200)]
    pub ef_construction: usize,
    /// Query candidate list sizes.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub ef: Vec<usize>,
    /// Threads for building and the all-threads pass.
    #[arg(long)]
    pub threads: usize,
    /// Minimum seconds per timed pass.
    #[arg(long, default_value_t = 0.5)]
    pub min_seconds: f64,
    /// Where to persist the index to measure its size; none: skip.
    #[arg(long)]
    pub dump_dir: Option<PathBuf>,
    /// Milvus server (HOST:PORT) for --library milvus.
    #[arg(long)]
    pub milvus: Option<String>,
    /// `int8`: quantise the htg index after its build (see `htg bench index --quantize`).
    #[arg(long, default_value = "none", value_parser = ["none", "int8"])]
    pub quantize: String,
}

/// `htg bench dataset` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum DatasetCommand {
    /// The standard clustered synthetic set: Gaussian clusters, l2-normalised, seeded.
    Synth(SynthArgs),
    /// Vectors stored in an htg index (or a .npy file), with held-out queries.
    Export(ExportArgs),
    /// Embeddings of a named data set (emoji, fashion-mnist, mnist5k, a class folder) by a
    /// model, loaded and preprocessed as training's evaluation does, with held-out queries.
    Embed(EmbedDataArgs),
}

/// Arguments of `htg bench dataset embed`.
#[derive(clap::Args, Debug)]
pub struct EmbedDataArgs {
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Data set: `emoji`, `fashion-mnist`, `mnist5k` (under $HTG_DATA_DIR) or a class-per-subfolder
    /// folder.
    #[arg(long)]
    pub data: String,
    /// A bundled model's name or an ONNX file [default: the bundled default, `photo`].
    #[arg(long, value_name = "NAME|PATH")]
    pub model: Option<String>,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Embed at most this many images (the first ones of the train, then evaluation, sets).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Vectors held out as queries.
    #[arg(long, default_value_t = 1000)]
    pub holdout: usize,
    /// Exact neighbours kept per query in gt.npy.
    #[arg(long, default_value_t = 100)]
    pub gt_depth: usize,
    /// Seed of the data (synth) or of the query hold-out.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Arguments of `htg bench dataset synth`.
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Base vectors.
    #[arg(long, default_value_t = 100_000)]
    pub n: usize,
    /// Queries.
    #[arg(long, default_value_t = 1000)]
    pub queries: usize,
    /// Dimension.
    #[arg(long, default_value_t = 128)]
    pub dim: usize,
    /// Gaussian clusters.
    #[arg(long, default_value_t = 100)]
    pub clusters: usize,
    /// Offset norm from the cluster centre, relative to the centre's.
    #[arg(long, default_value_t = 0.6)]
    pub spread: f64,
    /// Exact neighbours kept per query in gt.npy.
    #[arg(long, default_value_t = 100)]
    pub gt_depth: usize,
    /// Seed of the data (synth) or of the query hold-out.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Arguments of `htg bench dataset export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub source: Source,
    /// Vectors held out as queries.
    #[arg(long, default_value_t = 1000)]
    pub holdout: usize,
    /// Exact neighbours kept per query in gt.npy.
    #[arg(long, default_value_t = 100)]
    pub gt_depth: usize,
    /// Seed of the data (synth) or of the query hold-out.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Arguments of `htg bench plot`.
#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// Reports to draw together (same data set).
    #[arg(required = true)]
    pub reports: Vec<PathBuf>,
    /// Output directory for the SVGs.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// File name prefix of the SVGs.
    #[arg(long, default_value = "bench")]
    pub prefix: String,
    /// Recall@10 at which QPS and build time are compared.
    #[arg(long, default_value_t = 0.95)]
    pub target_recall: f64,
}

/// Arguments of `htg bench embed`.
#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// A bundled model's name or an ONNX file [default: the bundled default, `photo`].
    #[arg(long, value_name = "NAME|PATH")]
    pub model: Option<String>,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Images to use [default: $HTG_DATA_DIR/emoji, else ~/.cache/htg/data/emoji].
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    pub batches: Vec<usize>,
    /// Images per batch size (read once, reused).
    #[arg(long, default_value_t = 256)]
    pub limit: usize,
    /// Where to write the JSON report; none: only the table.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Runtimes to measure in this run, comma-separated (e.g. `tract,ort`), each on the same
    /// images, batch sizes and thread count, with ratios between them [default: --backend].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub backends: Vec<htg_retrieval::loader::Runtime>,
    /// Python with the `onnxruntime` package: also time ONNX Runtime's own Python API
    /// (benches/peers/ort_python.py) on the same model, batch sizes and threads.
    #[arg(long, value_name = "PYTHON")]
    pub python: Option<PathBuf>,
    /// Least inference time per backend and batch size, in seconds (passes over the images
    /// repeat until it is reached).
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Measure everything this many times, interleaved, so that load from other processes
    /// shows as spread between rounds rather than as a bias against one runtime.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Decode JPEGs at full size (no reduced-scale DCT), to measure what the scaling saves.
    #[arg(long)]
    pub full_decode: bool,
}

/// Arguments of `htg bench writes`.
#[derive(clap::Args, Debug)]
pub struct WritesArgs {
    /// Stored vectors before the timed writes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    pub sizes: Vec<usize>,
    /// Concurrent writer threads, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub writers: Vec<usize>,
    /// Vector dimension.
    #[arg(long, default_value_t = 96)]
    pub dim: usize,
    /// Seconds of timed writes per point.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Churn at a steady size: each writer deletes the oldest stored image after every add,
    /// and the report adds delete latencies, the longest write, memory against the start of
    /// the writes, and recall@10 against exact search at the end.
    #[arg(long)]
    pub churn: bool,
    /// Engine: htg or hnsw_rs.
    #[arg(long, value_enum, default_value_t)]
    pub engine: htg_ann::engine::EngineKind,
    /// Links per node.
    #[arg(long, default_value_t = 16)]
    pub m: usize,
    /// Build candidate list size.
    #[arg(long, default_value_t = 200)]
    pub ef_construction: usize,
    /// Seed of the synthetic vectors.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep the indexes under this directory [default: a temporary one, removed after].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Where to write the JSON report.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Arguments of `htg bench duplicates`.
#[derive(clap::Args, Debug)]
pub struct DuplicatesArgs {
    /// Random unit vectors.
    #[arg(long, default_value_t = 100_000)]
    pub n: usize,
    /// Of those, how many get a near copy (added on top of `n`).
    #[arg(long, default_value_t = 5_000)]
    pub planted: usize,
    /// Vector dimension.
    #[arg(long, default_value_t = 128)]
    pub dim: usize,
    /// Standard deviation of the noise added per component to make a copy.
    #[arg(long, default_value_t = 0.02)]
    pub noise: f64,
    /// The distance `duplicates` links within.
    #[arg(long, default_value_t = 0.2)]
    pub max_distance: f32,
    /// Neighbours searched per vector.
    #[arg(long, default_value_t = htg_retrieval::duplicates::DEFAULT_NEIGHBOURS)]
    pub neighbours: usize,
    /// Seed of the vectors.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to write the JSON report.
    #[arg(long)]
    pub json: Option<PathBuf>,
}
