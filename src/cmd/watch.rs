//! `--watch` on the command line: flags shared by `htg index` and `htg serve`, and the wait
//! of `htg index --watch` until Ctrl-C.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use htg_retrieval::watch::{IndexSink, WatchOptions, WatchStatus, Watcher};
use htg_retrieval::{Embedder, SearchIndex};

/// How a watcher paces itself.
#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    /// Milliseconds a file's size and time must hold before it is read (a copy in progress
    /// keeps changing).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=600_000))]
    pub watch_settle_ms: u64,
    /// Seconds between full walks of the watched folders, for file systems without events
    /// (network mounts) and events the kernel dropped.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub watch_rescan_s: u64,
}

impl WatchArgs {
    /// The watcher's options.
    pub fn options(&self, label_from_parent: bool, verify_on_start: bool) -> WatchOptions {
        WatchOptions {
            settle: Duration::from_millis(self.watch_settle_ms),
            rescan: Duration::from_secs(self.watch_rescan_s),
            label_from_parent,
            verify_on_start,
            ..WatchOptions::default()
        }
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Keeps `dir` indexed until SIGINT or SIGTERM, printing a line for each change; every
/// write is durable when it is printed.
pub fn follow(
    index: Arc<dyn SearchIndex>,
    embedder: Arc<dyn Embedder>,
    dir: &Path,
    opts: WatchOptions,
) -> Result<()> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let sink = Arc::new(IndexSink {
        index: Arc::clone(&index),
        embedder,
    });
    let watcher = Watcher::start(&[dir.to_path_buf()], sink, opts)
        .with_context(|| format!("watching {}", dir.display()))?;
    eprintln!(
        "watching {} (Ctrl-C to stop); every line below is durable",
        dir.display()
    );
    let mut last = WatchStatus {
        events: true,
        ..WatchStatus::default()
    };
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        let now = watcher.status();
        report(&last, &now);
        last = now;
    }
    drop(watcher);
    index.flush().context("saving the index")?;
    eprintln!(
        "stopped watching: {} indexed, {} removed, {} failed; index holds {} images",
        last.indexed,
        last.removed,
        last.failed,
        index.len()
    );
    Ok(())
}

fn report(before: &WatchStatus, now: &WatchStatus) {
    if before.events && !now.events {
        eprintln!("watch: no file events here; finding changes by rescans only");
    }
    if now.indexed > before.indexed || now.removed > before.removed {
        println!(
            "watch: indexed {} (+{}), removed {} (+{}), queued {}",
            now.indexed,
            now.indexed - before.indexed,
            now.removed,
            now.removed - before.removed,
            now.queued
        );
    }
    if now.last_error != before.last_error {
        if let Some(e) = &now.last_error {
            eprintln!("watch: {e}");
        }
    }
}
