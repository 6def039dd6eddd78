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
    /// Show how a model will be fed (resolved spec), or why it can't be.
    InspectModel(cmd::inspect::Args),
    /// Train the feature network (HTG or a triplet-mining baseline) and export it to ONNX.
    Train(cmd::train::Args),
    /// Evaluate a model's retrieval quality on unseen classes.
    Eval(cmd::eval::Args),
    /// Serve similar-image search over HTTP (JSON API, web page, metrics).
    Serve(cmd::serve::Args),
    /// Measure: index recall/QPS/latency against peers, embedding speed, retrieval quality.
    Bench(cmd::bench::Args),
    /// Write or restore a consistent snapshot of an index.
    Snapshot(cmd::snapshot::Args),
    /// Copy an index's records and vectors to another location (local or Milvus), without
    /// re-embedding.
    Migrate(cmd::migrate::Args),
    /// Swap an index's model: re-embed every image from its stored bytes into a shadow
    /// index, then switch atomically (resumable).
    Reindex(cmd::reindex::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        restore_sigpipe();
    }
    let result = match cli.command {
        Command::Index(a) => cmd::index::run(a),
        Command::Search(a) => cmd::search::run(a),
        Command::InspectModel(a) => cmd::inspect::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Snapshot(a) => cmd::snapshot::run(a),
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

/// Lets `htg search … | head` end quietly, as Unix tools do, instead of panicking in `println!`
/// on a closed pipe. Not for `serve`, where a client hanging up must never end the process.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called once at start-up, before any thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
