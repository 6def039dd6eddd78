//! One module per subcommand; flags several of them share are in `crate::flags`.

pub mod bench;
pub mod compact;
pub mod duplicates;
#[cfg(feature = "train")]
pub mod eval;
pub mod index;
pub mod inspect;
pub mod migrate;
pub mod models;
pub mod reindex;
pub mod search;
pub mod serve;
pub mod snapshot;
#[cfg(feature = "train")]
pub mod train;
#[cfg(not(feature = "train"))]
pub mod unbuilt;
pub mod watch;
