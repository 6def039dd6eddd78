//! The engine of `htg bench`: sweeps, reports, plots. `cmd::bench` holds the flags.
//!
//! - [`machine`]: what the numbers were measured on, and the process's peak memory;
//! - [`report`]: the JSON schema shared with `benches/peers/ann_peers.py`, and the tables;
//! - [`sweep`]: `bench index` (parent) and `bench point` (one build in a child process);
//! - [`plot`]: recall/QPS and latency SVGs over any number of reports;
//! - [`embed`]: images/s split into decode, preprocess and inference.

pub mod embed;
pub mod machine;
pub mod plot;
pub mod report;
pub mod sweep;
