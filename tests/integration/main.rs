//! The single integration-test binary of the `htg` package (one link step, as in ripgrep).
//!
//! Modules:
//! - `util`: paths of fixtures, running the real `htg` binary, temporary copies.
//! - `architecture`: no import cycles between modules; `src/` stays a thin layer.
//! - `spec`: model spec resolution from metadata, manifest and graph, and its errors.
//! - `golden`: the tiny fixture model on tract against onnxruntime's golden output.
//! - `formats`: every supported image encoding decodes and embeds like its PNG source.
//! - `cli`: `htg index` / `htg search` / `htg inspect-model` end to end on fixture images.
//! - `bad_input`: corrupt and odd files, missing and mismatched models, killed saves.
//! - `http`: `htg serve` over real HTTP: every endpoint, every bad input, restart, SIGTERM.
//! - `crash`: SIGKILL during concurrent writes (20 rounds), torn and corrupt log entries.
//! - `browser`: the search page in headless Chromium (playwright-core), with a screenshot.
//! - `emoji_slice`: 100 real emoji classes from both vendors (fetched into a cache).
//! - `eval_report`: `htg eval --hard-pairs`: the HTML report is self-contained, its counts
//!   add up to the misses behind R@1, `--compare` of a model with itself changes nothing.
//! - `bench`: `htg bench` sweeps, reports, plots and their bad input.
//! - `milvus`: the index contract on a local directory and on Milvus Lite; `htg index`,
//!   `serve` and `migrate` over a Milvus collection.
//! - `reindex`: model swaps: `htg reindex` killed, resumed and switched; `POST /admin/reindex`
//!   on a live server under concurrent search and add load.
//! - `duplicates`: `htg duplicates` and `GET /duplicates` on the photo fixtures and their
//!   modified copies (pair precision and recall), and each bundled model's calibrated default.
//! - `photo`: the bundled photo model: golden outputs and ImageNet classes on tract and ort,
//!   modified copies of real photos finding their originals, EXIF orientation and formats.
//! - `own_photos`: `htg train --backbone` on a labelled folder of real photos, then index,
//!   serve and search with the merged model; the folder's bad input.
//! - `watch`: `htg serve --watch` and `htg index --watch`: copies, deletes and slow writes
//!   picked up within seconds, nothing re-embedded after a restart, nothing lost to a kill.
//! - `old_release`: an index written by release 0.1.0 (checkpoint and an unreplayed log)
//!   opens, replays and takes new writes.
//! - `ort`: the ONNX Runtime backend: parity with tract (fixture, bundled and external models),
//!   CLI end to end, library-loading errors, GPU fallback.
//!
//! Tests that need what a fresh machine lacks (ONNX Runtime, Milvus Lite, Chromium, a GPU, the
//! benchmark peers, root for a tmpfs) are `#[ignore = "needs …"]`: `cargo test` lists them
//! with the reason, and `cargo test -- --include-ignored` runs them (README.md, "Tests").

mod util;

mod architecture;
mod bad_input;
mod bench;
mod browser;
mod cli;
mod crash;
mod duplicates;
mod emoji_slice;
mod eval_report;
mod formats;
mod golden;
mod http;
mod milvus;
mod old_release;
mod ort;
mod own_photos;
mod photo;
mod reindex;
mod spec;
mod watch;
