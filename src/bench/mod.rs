//! The engine of `htg bench`: sweeps, reports, plots, and the flags they read ([`args`]);
//! `cmd::bench` only dispatches. It lives in the binary because `bench index` runs each build
//! point in a child process of this same executable, so each point's peak memory is its own.
//!
//! - [`machine`]: what the numbers were measured on, and the process's peak memory;
//! - [`report`]: the JSON schema shared with `benches/peers/ann_peers.py`, and the tables;
//! - [`sweep`]: `bench index` (parent) and `bench point` (one build in a child process);
//! - [`plot`]: recall/QPS and latency SVGs over any number of reports;
//! - [`embed`]: images/s split into decode, preprocess and inference;
//! - [`writes`]: acknowledged adds/s and latency as the index grows, and searches during writes;
//! - [`duplicates`]: `htg duplicates` over a synthetic index with planted copies: time, peak memory.

pub mod args;
pub mod duplicates;
pub mod embed;
pub mod machine;
pub mod plot;
pub mod report;
pub mod sweep;
pub mod writes;
