//! `htg bench index` and the data sets it reads.
//!
//! The parent validates everything, makes or reads a data set directory, then runs each build
//! point as `htg bench point` in a child process: one build's allocations cannot inflate the
//! next one's peak memory, and a child measures what a fresh process needs, as the Python peers
//! do. Children print one [`BuildResult`] as JSON on stdout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use htg_ann::dataset::{self, Dataset, SynthParams};
use htg_ann::hnsw::{self, BuildParams, Index, Metric, Searcher};
use htg_ann::npy::{self, Matrix};
use htg_ann::{exact, stats};
use htg_retrieval::index::{CreateOptions, EngineKind};
use htg_retrieval::{HnswParams, LocalIndex, SearchIndex, SearchOptions};
use serde::{Deserialize, Serialize};

use super::args::{EmbedDataArgs, ExportArgs, IndexArgs, PointArgs, Source, SynthArgs};
use super::machine::{self, Machine};
use super::report::{self, BuildResult, DatasetInfo, IndexReport, RunInfo, SearchResult};

/// Neighbours asked per query: recall@10 needs 10.
const K: usize = 10;

/// `dataset.json`: where a data set directory came from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatasetMeta {
    /// Short name for reports and plots.
    pub name: String,
    /// How it was made.
    pub source: String,
    /// Seed of the generator or the query hold-out.
    pub seed: u64,
}

fn read_meta(dir: &Path) -> DatasetMeta {
    std::fs::read(dir.join("dataset.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| DatasetMeta {
            name: dir
                .file_name()
                .map_or("dataset".into(), |n| n.to_string_lossy().to_string()),
            source: "unknown".into(),
            seed: 0,
        })
}

/// Computes exact ground truth and writes the directory.
fn write_dataset(
    dir: &Path,
    base: Matrix<f32>,
    queries: Matrix<f32>,
    gt_depth: usize,
    meta: &DatasetMeta,
) -> Result<Dataset> {
    if gt_depth < K {
        bail!("--gt-depth {gt_depth} is below {K}, the depth recall@10 needs");
    }
    let depth = gt_depth.min(base.rows);
    let t = Instant::now();
    let gt = exact::ground_truth(&base, &queries, depth)?;
    let d = Dataset { base, queries, gt };
    d.validate()?;
    d.save(dir)?;
    let json = serde_json::to_vec_pretty(meta)?;
    std::fs::write(dir.join("dataset.json"), json)
        .with_context(|| format!("writing {}", dir.join("dataset.json").display()))?;
    eprintln!(
        "data set {}: {} base x {}, {} queries, exact top-{depth} in {:.1} s -> {}",
        meta.name,
        d.base.rows,
        d.base.cols,
        d.queries.rows,
        t.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(d)
}

/// Vectors of an htg index (id order) or a .npy file, as a matrix, with a name and a source.
fn read_vectors(source: &Source) -> Result<(Matrix<f32>, String, String)> {
    if let Some(idx) = &source.index {
        let index = crate::flags::open_index(&idx.into())?;
        let dim = index.dim();
        let mut data = Vec::with_capacity(index.len() * dim);
        for (id, _) in index.records() {
            let v = index
                .vector(id)
                .with_context(|| format!("index {} lost the vector of id {id}", idx.display()))?;
            data.extend_from_slice(&v);
        }
        let name = idx
            .file_name()
            .map_or("index".into(), |n| n.to_string_lossy().to_string());
        let m = Matrix {
            rows: index.len(),
            cols: dim,
            data,
        };
        let origin = format!("vectors of htg index {name}");
        return Ok((m, name, origin));
    }
    if let Some(file) = &source.vectors {
        let m: Matrix<f32> = npy::read(file)?;
        let name = file
            .file_stem()
            .map_or("vectors".into(), |n| n.to_string_lossy().to_string());
        return Ok((m, name.clone(), format!("vectors file {name}.npy")));
    }
    bail!("one of --dataset, --index or --vectors is required")
}

/// Base and queries from --index/--vectors (with --queries or a hold-out).
fn split_source(
    source: &Source,
    queries: Option<&Path>,
    holdout: usize,
    seed: u64,
) -> Result<(Matrix<f32>, Matrix<f32>, DatasetMeta)> {
    let (vectors, name, origin) = read_vectors(source)?;
    if vectors.rows == 0 || vectors.cols == 0 {
        bail!("{origin} holds no vectors");
    }
    let (base, q, how) = match queries {
        Some(qf) => {
            let q: Matrix<f32> = npy::read(qf)?;
            if q.cols != vectors.cols {
                bail!(
                    "{} has dimension {}, the vectors {}",
                    qf.display(),
                    q.cols,
                    vectors.cols
                );
            }
            (vectors, q, "separate queries".to_string())
        }
        None => {
            let n = vectors.rows;
            let (b, q) = dataset::hold_out(&vectors, holdout, seed)
                .with_context(|| format!("{origin} has {n} vectors; lower --holdout"))?;
            (b, q, format!("{holdout} held-out queries, seed {seed}"))
        }
    };
    Ok((
        base,
        q,
        DatasetMeta {
            name,
            source: format!("{origin}; {how}"),
            seed,
        },
    ))
}

/// `htg bench dataset synth`.
pub fn run_synth(a: SynthArgs) -> Result<()> {
    let p = SynthParams {
        n: a.n,
        queries: a.queries,
        dim: a.dim,
        clusters: a.clusters,
        spread: a.spread,
        seed: a.seed,
    };
    let (base, queries) = dataset::clustered(&p)?;
    let meta = DatasetMeta {
        name: format!("synth-{}x{}", a.n, a.dim),
        source: format!(
            "clustered synthetic: {} Gaussian clusters, spread {}, l2-normalised, {} queries from the same mixture",
            a.clusters, a.spread, a.queries
        ),
        seed: a.seed,
    };
    write_dataset(&a.out, base, queries, a.gt_depth, &meta)?;
    Ok(())
}

/// `htg bench dataset export`.
pub fn run_export(a: ExportArgs) -> Result<()> {
    if a.source.dataset.is_some() {
        bail!("bench dataset export reads --index or --vectors, not --dataset");
    }
    let (base, queries, meta) = split_source(&a.source, None, a.holdout, a.seed)?;
    write_dataset(&a.out, base, queries, a.gt_depth, &meta)?;
    Ok(())
}

/// `htg bench dataset embed` without the training crate, whose data loaders it reads.
#[cfg(not(feature = "train"))]
pub fn run_embed_data(_a: EmbedDataArgs) -> Result<()> {
    bail!("`htg bench dataset embed` reads the training data sets: rebuild with `--features train`")
}

/// `htg bench dataset embed`: a named data set through a model, as training evaluates it.
#[cfg(feature = "train")]
pub fn run_embed_data(a: EmbedDataArgs) -> Result<()> {
    use htg_training::data::{DataSource, EvalProtocol, ImageSet};
    let plan = crate::flags::ModelPlan::resolve(a.model.as_deref(), None, &a.backend)?;
    let embedder = plan.load()?;
    let model_path = plan.path;
    let source = DataSource::resolve(&a.data)?;
    let split = source.load(embedder.spec(), None)?;
    let mut sets: Vec<&ImageSet> = vec![&split.train];
    match &split.eval {
        EvalProtocol::QueryGallery { query, gallery } => sets.extend([query, gallery]),
        EvalProtocol::LeaveOneOut(s) => sets.push(s),
    }
    let total: usize = sets.iter().map(|s| s.len()).sum();
    let limit = a.limit.unwrap_or(total).min(total);
    let dim = embedder.spec().embedding_dim;
    let mut data = Vec::with_capacity(limit * dim);
    let t = Instant::now();
    let mut left = limit;
    for set in sets {
        if left == 0 {
            break;
        }
        let v = htg_training::eval::embed_with(embedder.as_ref(), set)?;
        let take = v.nrows().min(left);
        for row in v.outer_iter().take(take) {
            data.extend(row.iter().copied());
        }
        left -= take;
    }
    eprintln!(
        "embedded {limit} images of {} in {:.1} s",
        split.name,
        t.elapsed().as_secs_f64()
    );
    let vectors = Matrix {
        rows: limit,
        cols: dim,
        data,
    };
    let (base, queries) = dataset::hold_out(&vectors, a.holdout, a.seed)
        .with_context(|| format!("{} gave {limit} vectors; lower --holdout", split.name))?;
    let model = model_path
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy().to_string());
    let meta = DatasetMeta {
        name: format!("{}-{model}", split.name),
        source: format!(
            "{limit} images of {} embedded by {model} ({}); {} held-out queries, seed {}",
            split.name,
            embedder.backend(),
            a.holdout,
            a.seed
        ),
        seed: a.seed,
    };
    write_dataset(&a.out, base, queries, a.gt_depth, &meta)?;
    Ok(())
}

use tempfile::TempDir;

/// A directory for one build point, removed when dropped (`tempfile`, the workspace's one).
fn temp_dir(tag: &str) -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("htg-bench-{tag}-"))
        .tempdir()
        .context("creating a temporary directory")
}

/// A distance named on the command line, by clap's own names.
fn metric(name: &str) -> Result<Metric> {
    <Metric as clap::ValueEnum>::from_str(name, false)
        .map_err(|_| anyhow::anyhow!("unknown distance {name:?} (l2, dot, l2sq)"))
}

/// A local engine named in a list that also holds `milvus` and `exact`, by clap's own names.
fn engine_kind(name: &str) -> Result<EngineKind> {
    <EngineKind as clap::ValueEnum>::from_str(name, false)
        .map_err(|_| anyhow::anyhow!("unknown engine {name:?} (htg, hnsw_rs)"))
}

fn validate(a: &IndexArgs) -> Result<Vec<Metric>> {
    let metrics = a
        .distance
        .iter()
        .map(|d| metric(d))
        .collect::<Result<Vec<_>, _>>()?;
    for &m in &a.m {
        for &efc in &a.ef_construction {
            BuildParams {
                m,
                ef_construction: efc,
                metric: Metric::L2,
            }
            .validate()?;
        }
    }
    for e in &a.engine {
        if e == "milvus" {
            if a.milvus.is_none() {
                bail!("--engine milvus needs --milvus HOST:PORT");
            }
        } else {
            engine_kind(e)?;
        }
    }
    if a.ef.is_empty()
        || a.m.is_empty()
        || a.ef_construction.is_empty()
        || metrics.is_empty()
        || a.engine.is_empty()
    {
        bail!("--m, --ef-construction, --ef and --distance each need at least one value");
    }
    // The bound every search is held to (`SearchOptions::resolve`), so a sweep measures only
    // what the CLI and the server can ask for.
    for &ef in &a.ef {
        let opts = SearchOptions {
            ef: Some(ef),
            ..SearchOptions::default()
        };
        if let Err(e) = opts.resolve(1, usize::MAX) {
            match e {
                htg_retrieval::IndexError::Param(m) => bail!("{m}"),
                other => return Err(other.into()),
            }
        }
    }
    if a.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    if !(a.min_seconds.is_finite() && (0.0..=600.0).contains(&a.min_seconds)) {
        bail!("--min-seconds must be within 0..=600");
    }
    Ok(metrics)
}

/// `htg bench index`.
pub fn run_index(a: IndexArgs) -> Result<()> {
    let metrics = validate(&a)?;
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let machine = Machine::detect();
    let unix_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();

    // The data set directory every child (and the peers) read.
    let mut _temp = None;
    let dir = match &a.source.dataset {
        Some(d) => {
            Dataset::load(d)?;
            d.clone()
        }
        None => {
            let (base, queries, meta) =
                split_source(&a.source, a.queries.as_deref(), a.holdout, a.seed)?;
            let dir = match &a.save_dataset {
                Some(d) => d.clone(),
                None => {
                    let t = temp_dir("data")?;
                    let p = t.path().to_path_buf();
                    _temp = Some(t);
                    p
                }
            };
            write_dataset(&dir, base, queries, 100, &meta)?;
            dir
        }
    };
    let data = Dataset::load(&dir)?;
    if data.gt.cols < K.min(data.base.rows) {
        bail!(
            "{} has {} neighbours per query; recall@10 needs {}",
            dir.join(dataset::GT).display(),
            data.gt.cols,
            K.min(data.base.rows)
        );
    }
    let meta = read_meta(&dir);
    let normalized = data.normalized();
    if metrics.contains(&Metric::Dot) && !normalized {
        bail!(
            "--distance dot needs l2-normalised vectors, and {} are not",
            meta.name
        );
    }
    let info = DatasetInfo {
        name: meta.name.clone(),
        n: data.base.rows,
        dim: data.base.cols,
        queries: data.queries.rows,
        normalized,
    };
    drop(data);

    let exe = std::env::current_exe().context("locating the htg binary")?;
    let efs =
        a.ef.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(",");
    let mut points: Vec<(String, String, usize, usize)> = Vec::new();
    if !a.no_exact {
        points.push(("exact".into(), "l2sq".into(), 0, 0));
    }
    for engine in &a.engine {
        let kernels: Vec<&str> = match engine.as_str() {
            "htg" | "milvus" => vec!["l2sq"],
            _ => metrics.iter().map(|m| m.name()).collect(),
        };
        for kernel in kernels {
            for &m in &a.m {
                for &efc in &a.ef_construction {
                    points.push((engine.clone(), kernel.into(), m, efc));
                }
            }
        }
    }
    let mut builds = Vec::new();
    for (i, (library, distance, m, efc)) in points.iter().enumerate() {
        eprintln!(
            "[{}/{}] {library} {distance} M={m} efc={efc} ...",
            i + 1,
            points.len()
        );
        let dump = if a.disk_size && library != "exact" && library != "milvus" {
            Some(temp_dir("dump")?)
        } else {
            None
        };
        let mut cmd = Command::new(&exe);
        cmd.args([
            "bench",
            "point",
            "--library",
            library,
            "--distance",
            distance,
        ])
        .arg("--dataset")
        .arg(&dir)
        .args(["--m", &m.to_string(), "--ef-construction", &efc.to_string()])
        .args(["--ef", &efs, "--threads", &threads.to_string()])
        .args(["--min-seconds", &a.min_seconds.to_string()]);
        if let Some(d) = &dump {
            cmd.arg("--dump-dir").arg(d.path());
        }
        if library == "htg" {
            cmd.args(["--quantize", &a.quantize]);
        }
        if let (Some(addr), "milvus") = (&a.milvus, library.as_str()) {
            cmd.args(["--milvus", addr]);
        }
        let out = cmd.output().context("starting a bench child process")?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().last().unwrap_or("no message").trim();
            bail!(
                "build point {library} {distance} M={m} efc={efc} failed ({}): {}",
                out.status,
                last.trim_start_matches("error: ")
            );
        }
        let b: BuildResult =
            serde_json::from_slice(&out.stdout).context("reading a bench child's result")?;
        eprintln!(
            "    built in {:.2} s, peak {:.0} MiB; best R@10 {:.4}",
            b.build_s,
            b.peak_rss_mib,
            b.searches
                .iter()
                .map(|s| s.recall_at_10)
                .fold(0.0, f64::max)
        );
        builds.push(b);
    }

    let report = IndexReport {
        schema: report::SCHEMA.into(),
        dataset: info,
        machine,
        run: RunInfo {
            tool: "htg".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            git_commit: machine::git_commit(),
            seed: a.seed,
            k: K,
            threads,
            min_seconds: a.min_seconds,
            // The program as `htg`, not its local path.
            command: std::iter::once("htg".to_string())
                .chain(std::env::args().skip(1))
                .collect(),
            unix_time,
        },
        builds,
    };
    println!(
        "{} ({} x {}, {} queries), {} threads, load {:?}",
        report.dataset.name,
        report.dataset.n,
        report.dataset.dim,
        report.dataset.queries,
        threads,
        report.machine.load_avg
    );
    print!("{}", report::table(&report.builds));
    if let Some(parent) = a.json.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&a.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", a.json.display()))?;
    println!("wrote {}", a.json.display());
    let plots = match &a.plots {
        Some(p) if p.as_os_str() == "-" => None,
        Some(p) => Some(p.clone()),
        None => Some(
            a.json
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        ),
    };
    if let Some(dir) = plots {
        let prefix = a
            .json
            .file_stem()
            .map_or("bench".into(), |s| s.to_string_lossy().to_string());
        for p in super::plot::draw(&[report], &dir, &prefix)? {
            println!("wrote {}", p.display());
        }
    }
    Ok(())
}

/// Builds the production index (`LocalIndex`, engine from `a.library`) over `base` in a
/// directory: rows go in through the write-ahead log in batches of 10k (row i gets id i + 1)
/// and the build is timed until the graph holds them all; then a checkpoint, whose directory
/// size is the index's size on disk.
fn build_local(a: &PointArgs, base: &Matrix<f32>) -> Result<(Built, f64, u64, TempDir)> {
    let dir = temp_dir("local")?;
    let at = a
        .dump_dir
        .clone()
        .unwrap_or_else(|| dir.path().to_path_buf())
        .join("index");
    let model = htg_retrieval::ModelId::synthetic(base.cols);
    let index = LocalIndex::create(
        &at,
        model,
        None,
        &CreateOptions {
            params: HnswParams {
                m: a.m,
                ef_construction: a.ef_construction,
            },
            engine: engine_kind(&a.library)?,
            capacity: base.rows,
        },
    )?;
    let t = Instant::now();
    let first_id = insert_rows(&index, base)?;
    // Acknowledged is not yet indexed: the build ends when the graph holds every vector.
    index.wait_indexed()?;
    // Codes are trained on the whole base, so quantising is part of the build's time.
    if a.quantize == "int8" {
        index.quantize()?;
    }
    let build_s = t.elapsed().as_secs_f64();
    index.flush()?;
    let bytes = dir_size(&at);
    let built = Built {
        index: index.into(),
        first_id,
        drop_at: None,
    };
    Ok((built, build_s, bytes, dir))
}

/// An index a build point made through the production seam, and how its ids map to rows.
struct Built {
    index: htg_retrieval::index::Index,
    /// The id of row 0; rows were inserted in order, so row i has id `first_id + i`.
    first_id: u64,
    /// A Milvus collection to drop when the point ends.
    drop_at: Option<String>,
}

impl Drop for Built {
    fn drop(&mut self) {
        if let Some(loc) = self.drop_at.take() {
            #[cfg(feature = "milvus")]
            if let Err(e) = htg_retrieval::index::milvus::MilvusIndex::drop_collection(&loc) {
                eprintln!("warning: could not drop {loc}: {e}");
            }
            #[cfg(not(feature = "milvus"))]
            let _ = loc;
        }
    }
}

/// Inserts `base` in row order in batches of 10k; returns row 0's id after checking that the
/// ids are consecutive (what the recall computation relies on).
fn insert_rows(index: &dyn SearchIndex, base: &Matrix<f32>) -> Result<u64> {
    let mut first = None;
    let mut expect = 0u64;
    for (c, chunk) in base.data.chunks(base.cols * 10_000).enumerate() {
        let items = chunk
            .chunks(base.cols)
            .enumerate()
            .map(|(i, v)| (synthetic_record(c * 10_000 + i), v.to_vec()))
            .collect();
        for id in index.insert_many(items)? {
            let f = *first.get_or_insert(id);
            if id != f + expect {
                bail!("the index gave id {id} to row {expect}; consecutive ids expected");
            }
            expect += 1;
        }
    }
    Ok(first.unwrap_or(0))
}

/// Builds a fresh Milvus collection over `base` on the `--milvus` server: the build is timed
/// until the rows are flushed (sealed and indexed on a real cluster).
fn build_milvus(a: &PointArgs, base: &Matrix<f32>) -> Result<(Built, f64)> {
    let addr = a
        .milvus
        .as_deref()
        .context("--library milvus needs --milvus HOST:PORT")?;
    let loc = format!(
        "milvus://{addr}/htg_bench_{}_{}_{}",
        std::process::id(),
        a.m,
        a.ef_construction
    );
    let params = HnswParams {
        m: a.m,
        ef_construction: a.ef_construction,
    };
    let model = htg_retrieval::ModelId::synthetic(base.cols);
    let t = Instant::now();
    let index = htg_retrieval::index::create(
        &loc,
        model,
        None,
        &CreateOptions {
            params,
            ..CreateOptions::default()
        },
    )?;
    let mut built = Built {
        index,
        first_id: 0,
        drop_at: Some(loc),
    };
    built.first_id = insert_rows(&built.index, base)?;
    built.index.flush()?;
    Ok((built, t.elapsed().as_secs_f64()))
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_size(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A record for synthetic row `i`.
pub fn synthetic_record(i: usize) -> htg_retrieval::Record {
    htg_retrieval::Record {
        path: format!("synthetic/{i}.png"),
        sha256: format!("{i:064x}"),
        label: None,
    }
}

/// `htg bench point`: one build and its searches, JSON on stdout.
pub fn run_point(a: PointArgs) -> Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads.max(1))
        .build_global()
        .context("starting the thread pool")?;
    let data = Dataset::load(&a.dataset)?;
    let rss_before = machine::rss_mib();
    let metric = metric(&a.distance)?;
    let production = a.library == "htg"
        || a.library == "milvus"
        || (a.library == "hnsw_rs" && a.distance == "l2");
    let (index, local, build_s, bytes) = match a.library.as_str() {
        "exact" => (None, None, 0.0, 0),
        "milvus" => {
            let (built, build_s) = build_milvus(&a, &data.base)?;
            (None, Some(built), build_s, 0)
        }
        "htg" | "hnsw_rs" if production => {
            let (local, build_s, bytes, _dir) = build_local(&a, &data.base)?;
            (None, Some(local), build_s, bytes)
        }
        "hnsw_rs" => {
            let t = Instant::now();
            let index = Index::build(
                &data.base,
                BuildParams {
                    m: a.m,
                    ef_construction: a.ef_construction,
                    metric,
                },
            )?;
            let build_s = t.elapsed().as_secs_f64();
            let bytes = match &a.dump_dir {
                Some(d) => index.dump(d)?,
                None => 0,
            };
            (Some(index), None, build_s, bytes)
        }
        other => bail!("unknown library {other:?} (htg, hnsw_rs, milvus, exact)"),
    };
    let built = index.is_some() || local.is_some();
    let efs: Vec<usize> = if built { a.ef.clone() } else { vec![0] };
    let mut searches = Vec::new();
    for ef in efs {
        let opts = SearchOptions {
            ef: Some(ef.max(K)),
            ..SearchOptions::default()
        };
        // Rows went in in order into a fresh index: row = id - first id.
        let production = |q: &[f32], k: usize| -> Vec<usize> {
            local.as_ref().map_or_else(Vec::new, |l| {
                l.index
                    .search(q, k, &opts)
                    .map(|hits| hits.iter().map(|h| (h.id - l.first_id) as usize).collect())
                    .unwrap_or_default()
            })
        };
        let engine = match (&index, &local) {
            (Some(i), _) => Searcher::Hnsw(i, ef.max(K)),
            (None, Some(_)) => Searcher::Custom(&production, data.base.cols),
            (None, None) => Searcher::Exact(&data.base),
        };
        let serial = hnsw::search_serial(engine, &data.queries, K, a.min_seconds)?;
        let qps_all = hnsw::search_parallel(engine, &data.queries, K, a.min_seconds)?;
        let us = |p: f64| stats::percentile(&serial.latencies_ns, p) as f64 / 1000.0;
        searches.push(SearchResult {
            // The effective candidate list: both engines search with max(ef, k).
            ef: if built { ef.max(K) } else { 0 },
            recall_at_1: stats::recall(&serial.found, &data.gt, 1),
            recall_at_10: stats::recall(&serial.found, &data.gt, K),
            qps_1t: serial.queries as f64 / serial.seconds,
            qps_all,
            p50_us: us(50.0),
            p95_us: us(95.0),
            p99_us: us(99.0),
        });
    }
    let result = BuildResult {
        library: a.library.clone(),
        library_version: if a.library == "hnsw_rs" {
            "0.3.5".into()
        } else if a.library == "milvus" {
            format!("milvus at {}", a.milvus.as_deref().unwrap_or("?"))
        } else {
            format!("htg {}", env!("CARGO_PKG_VERSION"))
        },
        engine: match (&index, &local, a.library.as_str()) {
            (_, Some(_), "milvus") => "htg_retrieval::index::milvus::MilvusIndex".into(),
            (_, Some(_), lib) => {
                format!("htg_retrieval::index::LocalIndex on htg_ann::engine::Engine ({lib})")
            }
            (Some(_), None, _) => format!("htg_ann::hnsw::Index (hnsw_rs, {})", a.distance),
            (None, None, _) => "htg_ann::exact".into(),
        },
        distance: if a.quantize == "int8" && a.library == "htg" {
            "int8".into()
        } else {
            a.distance.clone()
        },
        m: if built { a.m } else { 0 },
        ef_construction: if built { a.ef_construction } else { 0 },
        build_s,
        index_bytes: bytes,
        peak_rss_mib: machine::peak_rss_mib(),
        rss_before_build_mib: rss_before,
        searches,
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
