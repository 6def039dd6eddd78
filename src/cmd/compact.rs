//! `htg compact`: rebuild an index's graph from its live records. Deleted slots are reused by
//! later adds, so this is maintenance for an index that shrank for good, not routine work.

use anyhow::Result;
use htg_retrieval::index::Location;
use htg_retrieval::SearchIndex as _;

/// Arguments of `htg compact`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Index directory (a Milvus collection compacts itself).
    #[arg(long)]
    pub index: Location,
}

/// Runs `htg compact`.
pub fn run(args: Args) -> Result<()> {
    let idx = crate::flags::open_index(&args.index)?;
    let before = idx.stats();
    idx.compact()?;
    let after = idx.stats();
    println!(
        "compacted {}: {} images, {} deleted slots dropped ({} left)",
        idx.location(),
        after.count,
        before.tombstones.saturating_sub(after.tombstones),
        after.tombstones
    );
    Ok(())
}
