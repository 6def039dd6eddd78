//! One module per subcommand; `model` holds what several of them share.

pub mod bench;
pub mod eval;
pub mod index;
pub mod inspect;
pub mod model;
pub mod search;
pub mod serve;
pub mod train;
