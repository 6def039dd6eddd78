//! `htg snapshot`: one checksummed file holding a consistent copy of an index (taken while a
//! server keeps writing), and its restore.

use std::path::PathBuf;

use anyhow::Result;
use htg_retrieval::index::{snapshot, Location};
use htg_retrieval::SearchIndex as _;

/// Arguments of `htg snapshot`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

/// The `htg snapshot` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Write a snapshot of an index (a checkpoint plus its log position) to a file.
    Create {
        /// Index: a directory (a Milvus collection has no snapshots; use Milvus's backup).
        #[arg(long)]
        index: Location,
        /// Snapshot file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a snapshot into an empty directory; a truncated or altered file is refused.
    Restore {
        /// Snapshot file.
        file: PathBuf,
        /// Directory to restore the index into (must not hold an index).
        #[arg(long)]
        index: PathBuf,
    },
}

/// Runs `htg snapshot`.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Create { index, out } => {
            let idx = crate::flags::open_index(&index)?;
            let (bytes, seq) = idx.snapshot(&out)?;
            println!(
                "wrote {} ({bytes} bytes, {} images, log position {seq})",
                out.display(),
                idx.len()
            );
        }
        Command::Restore { file, index } => {
            snapshot::restore(&file, &index)?;
            let idx = crate::flags::open_index(&Location::Dir(index.clone()))?;
            println!(
                "restored {} into {}: {} images",
                file.display(),
                index.display(),
                idx.len()
            );
        }
    }
    Ok(())
}
