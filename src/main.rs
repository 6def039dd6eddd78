//! `htg`: train image embeddings with Hard Triplet Generation and search images with them.
//!
//! The binary is a thin layer over `htg-training` and `htg-retrieval`: argument parsing,
//! progress bars and printing. Errors reach the user as one line on stderr with exit status 1.

mod bench;
mod cmd;
mod flags;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "htg",
    version,
    about = "Hard Triplet Generation embeddings and similar-image search"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Embed every image under a folder into an index (incremental).
    Index(cmd::index::Args),
    /// Find the indexed images nearest to an image.
    Search(cmd::search::Args),
    /// List groups of near-duplicate images and exact copies in an index, the largest
    /// image of each first.
    Duplicates(cmd::duplicates::Args),
    /// Show how a model will be fed (resolved spec), or why it can't be.
    InspectModel(cmd::inspect::Args),
    /// List the bundled models (`--model NAME`), the default first.
    Models(cmd::models::Args),
    /// Train the feature network (HTG or a triplet-mining baseline) and export it to ONNX.
    #[cfg(feature = "train")]
    Train(cmd::train::Args),
    /// Train the feature network (not in this build: needs `--features train`).
    #[cfg(not(feature = "train"))]
    Train(cmd::unbuilt::Args),
    /// Evaluate a model's retrieval quality on unseen classes.
    #[cfg(feature = "train")]
    Eval(cmd::eval::Args),
    /// Evaluate a model's retrieval quality (not in this build: needs `--features train`).
    #[cfg(not(feature = "train"))]
    Eval(cmd::unbuilt::Args),
    /// Serve similar-image search over HTTP (JSON API, web page, metrics).
    Serve(cmd::serve::Args),
    /// Measure: index recall/QPS/latency against peers, embedding speed, retrieval quality.
    Bench(cmd::bench::Args),
    /// Write or restore a consistent snapshot of an index.
    Snapshot(cmd::snapshot::Args),
    /// Rebuild an index's graph from its live images, dropping deleted slots (maintenance:
    /// adds reuse deleted slots, so an index needs this only after it shrank for good).
    Compact(cmd::compact::Args),
    /// Copy an index's records and vectors to another location (local or Milvus), without
    /// re-embedding.
    Migrate(cmd::migrate::Args),
    /// Swap an index's model: re-embed every image from its stored bytes into a shadow
    /// index, then switch atomically (resumable).
    Reindex(cmd::reindex::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serve = matches!(cli.command, Command::Serve(_));
    tune_allocator(serve);
    if !serve {
        restore_sigpipe();
    }
    let result = match cli.command {
        Command::Index(a) => cmd::index::run(a),
        Command::Search(a) => cmd::search::run(a),
        Command::Duplicates(a) => cmd::duplicates::run(a),
        Command::InspectModel(a) => cmd::inspect::run(a),
        Command::Models(a) => cmd::models::run(a),
        #[cfg(feature = "train")]
        Command::Train(a) => cmd::train::run(a),
        #[cfg(not(feature = "train"))]
        Command::Train(a) => cmd::unbuilt::run("train", "train", a),
        #[cfg(feature = "train")]
        Command::Eval(a) => cmd::eval::run(a),
        #[cfg(not(feature = "train"))]
        Command::Eval(a) => cmd::unbuilt::run("eval", "train", a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Snapshot(a) => cmd::snapshot::run(a),
        Command::Compact(a) => cmd::compact::run(a),
        Command::Migrate(a) => cmd::migrate::run(a),
        Command::Reindex(a) => cmd::reindex::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` joins the context chain into one readable line.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Chooses how glibc's allocator trades memory for speed, per command.
///
/// Batch commands (`index`, `bench`, `reindex`, …) keep freed memory for the next call: tract
/// allocates its im2col and packing buffers on every inference call, and with glibc's defaults
/// they were mapped and unmapped each time; the page faults that followed cost up to half of
/// tract's time at batch 8 and 32 (`perf`, docs/BACKENDS.md).
///
/// `serve` runs for weeks and must give memory back: there, every allocation from 1 MiB up
/// gets its own mapping, returned when freed, so a compaction's old engine and records leave
/// the resident size (the soak in docs/RELIABILITY.md measured both settings).
fn tune_allocator(serve: bool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called once at start-up, before any thread exists; mallopt takes plain integers.
    unsafe {
        if serve {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        } else {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = serve;
}

/// Lets `htg search … | head` end quietly, as Unix tools do, instead of panicking in `println!`
/// on a closed pipe. Not for `serve`, where a client hanging up must never end the process.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called once at start-up, before any thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
