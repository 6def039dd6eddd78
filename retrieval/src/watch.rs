//! Folders that index themselves: `htg serve --watch DIR` and `htg index --watch`.
//!
//! A [`Watcher`] owns one thread. File events (inotify through `notify`) only say *which*
//! paths to look at; what to do is decided from the file system itself, so a lost, merged or
//! reordered event costs nothing but a later look:
//! - a path that is a file with an image extension is indexed once its size and modification
//!   time have stayed the same for [`WatchOptions::settle`] (a file still being copied keeps
//!   changing and waits);
//! - a file that does not decode is retried with a growing delay ([`WatchOptions::attempts`]
//!   in all), because a writer that pauses longer than the settle time leaves a truncated file
//!   that decodes once it is complete; after the last attempt it is reported, and looked at
//!   again only when it changes;
//! - a path that is gone removes the records under it (a file, or a whole folder);
//! - a new folder (created, or moved in) is walked.
//!
//! A periodic rescan ([`WatchOptions::rescan`]) compares every file's size and time with what
//! the watcher last saw, for file systems that send no events (network mounts) and for events
//! the kernel dropped. Writes go through the [`Sink`], whose adds are durable through the
//! index's log before it returns, so a kill loses nothing the watcher reported as indexed; a
//! restart reads each file's sha256 again and re-embeds only what changed while it was down.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use ndarray::{Array3, Axis};
use notify::Watcher as _;

use crate::embed::{sha256_hex, Embedder};
use crate::index::{Record, SearchIndex};
use crate::ingest::IMAGE_EXTENSIONS;

/// How a watcher paces itself.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// How long a file's size and modification time must stay unchanged before it is read.
    pub settle: Duration,
    /// How often every watched folder is walked again, whatever the events said.
    pub rescan: Duration,
    /// Reads of a file that does not decode before it is reported as failed.
    pub attempts: u32,
    /// Files read and embedded together.
    pub batch: usize,
    /// Label each image with its parent folder's name (as `htg index --label-from-parent`).
    pub label_from_parent: bool,
    /// On start, read every file and compare its sha256 with the index (a server that was
    /// down may have missed changes). Off when an indexing pass has just done exactly that.
    pub verify_on_start: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            settle: Duration::from_millis(1000),
            rescan: Duration::from_secs(60),
            attempts: 5,
            batch: 32,
            label_from_parent: false,
            verify_on_start: true,
        }
    }
}

/// What a watcher has done and is waiting on, for `/stats` and the CLI.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct WatchStatus {
    /// The watched folders, as given (canonical paths).
    pub folders: Vec<String>,
    /// True while file events arrive; false means changes are found by rescans only.
    pub events: bool,
    /// Files waiting to settle, to be retried, or to be read.
    pub queued: usize,
    /// Images added or replaced since the watcher started.
    pub indexed: u64,
    /// Records removed because their file went away.
    pub removed: u64,
    /// Files looked at whose indexed copy was already current.
    pub unchanged: u64,
    /// Files given up on (they do not decode after every attempt).
    pub failed: u64,
    /// Completed walks of every folder (the first one included).
    pub scans: u64,
    /// The last thing that went wrong (a file that does not decode, a write the index
    /// refused), with its path; `null` until something does.
    pub last_error: Option<String>,
}

/// Why a watcher cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// A folder to watch is missing or not a folder.
    #[error("cannot watch {path}: {reason}")]
    Folder {
        /// The folder given.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The watcher's thread could not be started.
    #[error("cannot start the watcher thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Why one file could not be added.
#[derive(Debug, Clone, PartialEq)]
pub enum AddFailure {
    /// The bytes are not an image the model can read (yet: a file may still be incomplete).
    Image(String),
    /// The index or the model failed: the file is fine and is retried as it is.
    Write(String),
}

/// Where a watcher's changes go: an index with the model that embeds for it.
pub trait Sink: Send + Sync {
    /// Every indexed image, by id (the watcher keeps only those under its folders).
    fn records(&self) -> Vec<(u64, Record)>;
    /// Embeds and inserts the files, in order, one outcome each; those that succeed are
    /// durable before this returns.
    fn add(&self, files: Vec<(Record, Vec<u8>)>) -> Vec<Result<u64, AddFailure>>;
    /// Removes images by id; durable before this returns.
    fn remove(&self, ids: &[u64]) -> Result<(), String>;
}

/// A [`Sink`] straight over an index and a model (`htg index --watch`).
pub struct IndexSink {
    /// The index written to.
    pub index: Arc<dyn SearchIndex>,
    /// The model that built it.
    pub embedder: Arc<dyn Embedder>,
}

impl Sink for IndexSink {
    fn records(&self) -> Vec<(u64, Record)> {
        self.index.records()
    }

    fn add(&self, files: Vec<(Record, Vec<u8>)>) -> Vec<Result<u64, AddFailure>> {
        let spec = self.embedder.spec().clone();
        let mut out: Vec<Result<u64, AddFailure>> = Vec::with_capacity(files.len());
        let mut ready: Vec<(usize, Record, Array3<f32>)> = Vec::new();
        for (i, (record, bytes)) in files.into_iter().enumerate() {
            match crate::ingest::prepare_bytes(&bytes, &spec) {
                Ok(t) => {
                    ready.push((i, record, t));
                    out.push(Ok(0));
                }
                Err(e) => out.push(Err(AddFailure::Image(e.to_string()))),
            }
        }
        if ready.is_empty() {
            return out;
        }
        let fail_all = |out: &mut Vec<Result<u64, AddFailure>>, why: String| {
            for (i, _, _) in &ready {
                out[*i] = Err(AddFailure::Write(why.clone()));
            }
        };
        let views: Vec<_> = ready.iter().map(|(_, _, t)| t.view()).collect();
        let tensor = match ndarray::stack(Axis(0), &views) {
            Ok(t) => t,
            Err(e) => {
                fail_all(&mut out, format!("batching the images: {e}"));
                return out;
            }
        };
        let vectors = match self.embedder.embed_tensor(tensor.view()) {
            Ok(v) => v,
            Err(e) => {
                fail_all(&mut out, e.to_string());
                return out;
            }
        };
        let items: Vec<(Record, Vec<f32>)> = ready
            .iter()
            .zip(vectors.rows())
            .map(|((_, r, _), v)| (r.clone(), v.to_vec()))
            .collect();
        match self.index.insert_many(items) {
            Ok(ids) => {
                for ((i, _, _), id) in ready.iter().zip(ids) {
                    out[*i] = Ok(id);
                }
            }
            Err(e) => fail_all(&mut out, e.to_string()),
        }
        out
    }

    fn remove(&self, ids: &[u64]) -> Result<(), String> {
        self.index
            .remove_many(ids)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// What the watcher thread shares with its owner.
struct Shared {
    status: Mutex<WatchStatus>,
    stop: AtomicBool,
}

/// A cheap handle on a running watcher's status (what `/stats` holds).
#[derive(Clone)]
pub struct StatusHandle(Arc<Shared>);

impl StatusHandle {
    /// The status now.
    pub fn get(&self) -> WatchStatus {
        self.0.status.lock().clone()
    }
}

/// A running watcher; dropping it stops the thread after the file it is on.
pub struct Watcher {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    /// Watches `folders` (recursively) into `sink`. The first walk runs on the watcher's
    /// thread, so this returns at once.
    pub fn start(
        folders: &[PathBuf],
        sink: Arc<dyn Sink>,
        opts: WatchOptions,
    ) -> Result<Watcher, WatchError> {
        let mut dirs = Vec::with_capacity(folders.len());
        for f in folders {
            let canonical = f.canonicalize().map_err(|e| WatchError::Folder {
                path: f.clone(),
                reason: e.to_string(),
            })?;
            if !canonical.is_dir() {
                return Err(WatchError::Folder {
                    path: f.clone(),
                    reason: "not a folder".into(),
                });
            }
            dirs.push(canonical);
        }
        let shared = Arc::new(Shared {
            status: Mutex::new(WatchStatus {
                folders: dirs.iter().map(|d| d.display().to_string()).collect(),
                ..WatchStatus::default()
            }),
            stop: AtomicBool::new(false),
        });
        let inner = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("htg-watch".into())
            .spawn(move || Loop::new(dirs, sink, opts, inner).run())
            .map_err(WatchError::Thread)?;
        Ok(Watcher {
            shared,
            thread: Some(thread),
        })
    }

    /// A handle that reads the status after the watcher is moved or dropped.
    pub fn handle(&self) -> StatusHandle {
        StatusHandle(Arc::clone(&self.shared))
    }

    /// The status now.
    pub fn status(&self) -> WatchStatus {
        self.handle().get()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A file's size and modification time: what "it changed" means without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
    }
}

/// A path waiting to be looked at.
struct Pending {
    /// The stamp at the last look (`None`: not looked at yet).
    last: Option<Stamp>,
    /// When the stamp last changed.
    since: Instant,
    /// Earliest next look.
    due: Instant,
    /// Reads that did not decode.
    attempts: u32,
}

/// Granularity of the loop: events are gathered this long before paths are looked at.
const TICK: Duration = Duration::from_millis(100);

/// Delay before retrying a write the index refused (a full disk, say).
const WRITE_RETRY: Duration = Duration::from_secs(5);

struct Loop {
    dirs: Vec<PathBuf>,
    sink: Arc<dyn Sink>,
    opts: WatchOptions,
    shared: Arc<Shared>,
    /// Files handled, with the stamp they had then: rescans compare against it.
    known: HashMap<PathBuf, Stamp>,
    pending: HashMap<PathBuf, Pending>,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

impl Loop {
    fn new(
        dirs: Vec<PathBuf>,
        sink: Arc<dyn Sink>,
        opts: WatchOptions,
        shared: Arc<Shared>,
    ) -> Loop {
        Loop {
            dirs,
            sink,
            opts,
            shared,
            known: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    fn status(&self, f: impl FnOnce(&mut WatchStatus)) {
        f(&mut self.shared.status.lock());
    }

    fn run(mut self) {
        let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
        let mut native = match notify::recommended_watcher(move |e| {
            let _ = tx.send(e);
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                let why = format!(
                    "file events unavailable ({e}); rescanning every {:?}",
                    self.opts.rescan
                );
                self.status(|s| s.last_error = Some(why));
                None
            }
        };
        let mut events = native.is_some();
        if let Some(w) = native.as_mut() {
            for d in &self.dirs {
                if let Err(e) = w.watch(d, notify::RecursiveMode::Recursive) {
                    let why = format!(
                        "file events unavailable for {} ({e}); rescanning every {:?}",
                        d.display(),
                        self.opts.rescan
                    );
                    self.status(|s| s.last_error = Some(why));
                    events = false;
                }
            }
        }
        self.status(|s| s.events = events);
        self.first_scan();
        let mut last_scan = Instant::now();
        while !self.shared.stop.load(Ordering::SeqCst) {
            match rx.recv_timeout(TICK) {
                Ok(first) => {
                    self.event(first);
                    while let Ok(more) = rx.try_recv() {
                        self.event(more);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if events {
                        events = false;
                        self.status(|s| s.events = false);
                    }
                    std::thread::sleep(TICK);
                }
            }
            if last_scan.elapsed() >= self.opts.rescan {
                self.rescan();
                last_scan = Instant::now();
            }
            self.work();
        }
        drop(native);
    }

    fn event(&mut self, e: notify::Result<notify::Event>) {
        match e {
            Ok(ev) => {
                if matches!(ev.kind, notify::EventKind::Access(_)) {
                    // Reads (ours included) change nothing; a close after writing is also
                    // an Access event and is the hint that a copy finished.
                    if !matches!(
                        ev.kind,
                        notify::EventKind::Access(notify::event::AccessKind::Close(
                            notify::event::AccessMode::Write
                        ))
                    ) {
                        return;
                    }
                }
                for p in ev.paths {
                    self.touch(p);
                }
            }
            Err(e) => {
                // Typically the kernel's queue overflowed: events were lost, so walk now.
                self.status(|s| s.last_error = Some(format!("file events: {e}; rescanning")));
                self.rescan();
            }
        }
    }

    /// Marks a path to be looked at now; a file is then read once its stamp has held for
    /// the settle time.
    fn touch(&mut self, path: PathBuf) {
        let now = Instant::now();
        let p = self.pending.entry(path).or_insert(Pending {
            last: None,
            since: now,
            due: now,
            attempts: 0,
        });
        p.due = p.due.min(now);
    }

    /// Every image file under the folders, with its stamp.
    fn walk(&self, dir: &Path) -> Vec<(PathBuf, Stamp)> {
        walkdir::WalkDir::new(dir)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file() && is_image(e.path()))
            .filter_map(|e| {
                e.metadata()
                    .ok()
                    .map(|m| (e.path().to_path_buf(), stamp(&m)))
            })
            .collect()
    }

    fn under_folders(&self, path: &str) -> bool {
        self.dirs.iter().any(|d| Path::new(path).starts_with(d))
    }

    fn first_scan(&mut self) {
        let indexed: HashSet<String> = self
            .sink
            .records()
            .into_iter()
            .map(|(_, r)| r.path)
            .filter(|p| self.under_folders(p))
            .collect();
        let mut seen = HashSet::new();
        let now = Instant::now();
        for d in self.dirs.clone() {
            for (path, st) in self.walk(&d) {
                let key = path.to_string_lossy().to_string();
                seen.insert(key.clone());
                if !self.opts.verify_on_start && indexed.contains(&key) {
                    self.known.insert(path, st);
                    continue;
                }
                // Files on disk before the watcher started are not being written (or the
                // settle check catches them when they are): looked at right away.
                self.pending.insert(
                    path,
                    Pending {
                        last: Some(st),
                        since: now - self.opts.settle,
                        due: now,
                        attempts: 0,
                    },
                );
            }
        }
        // Records whose file went away while nobody watched.
        for p in indexed.difference(&seen) {
            self.touch(PathBuf::from(p));
        }
        self.status(|s| s.scans += 1);
    }

    fn rescan(&mut self) {
        let mut seen = HashSet::new();
        for d in self.dirs.clone() {
            for (path, st) in self.walk(&d) {
                if self.known.get(&path) != Some(&st) && !self.pending.contains_key(&path) {
                    self.touch(path.clone());
                }
                seen.insert(path);
            }
        }
        let gone: Vec<PathBuf> = self
            .known
            .keys()
            .filter(|p| !seen.contains(*p))
            .cloned()
            .collect();
        for p in gone {
            self.touch(p);
        }
        self.status(|s| s.scans += 1);
    }

    /// Looks at every path that is due: settles, reads, adds, removes.
    fn work(&mut self) {
        let now = Instant::now();
        let due: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut ready: Vec<(PathBuf, Stamp)> = Vec::new();
        let mut gone: Vec<PathBuf> = Vec::new();
        for path in due {
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => {
                    // A folder created or moved in: look at what it holds.
                    self.pending.remove(&path);
                    for (f, _) in self.walk(&path) {
                        self.touch(f);
                    }
                }
                Ok(m) if m.is_file() && is_image(&path) => {
                    let st = stamp(&m);
                    let settle = self.opts.settle;
                    let Some(p) = self.pending.get_mut(&path) else {
                        continue;
                    };
                    if p.last != Some(st) {
                        p.last = Some(st);
                        p.since = now;
                        p.due = now + settle;
                    } else if now.duration_since(p.since) < settle {
                        p.due = p.since + settle;
                    } else {
                        ready.push((path, st));
                    }
                }
                Ok(_) => {
                    // Not an image (or not a regular file): nothing to index.
                    self.pending.remove(&path);
                }
                Err(_) => {
                    self.pending.remove(&path);
                    gone.push(path);
                }
            }
        }
        if !gone.is_empty() {
            self.remove_gone(&gone);
        }
        for chunk in ready.chunks(self.opts.batch.max(1)) {
            if self.shared.stop.load(Ordering::SeqCst) {
                break;
            }
            self.add(chunk);
        }
        let queued = self.pending.len();
        self.status(|s| s.queued = queued);
    }

    fn remove_gone(&mut self, gone: &[PathBuf]) {
        let records = self.sink.records();
        let mut ids = Vec::new();
        for g in gone {
            self.known.retain(|k, _| !k.starts_with(g));
            for (id, r) in &records {
                if Path::new(&r.path).starts_with(g) {
                    ids.push(*id);
                }
            }
        }
        if ids.is_empty() {
            return;
        }
        match self.sink.remove(&ids) {
            Ok(()) => self.status(|s| s.removed += ids.len() as u64),
            Err(e) => {
                let why = format!("removing {} images: {e}", ids.len());
                self.status(|s| s.last_error = Some(why));
                // Looked at again later: the paths are still gone then.
                let retry = Instant::now() + WRITE_RETRY;
                for g in gone {
                    self.pending.insert(
                        g.clone(),
                        Pending {
                            last: None,
                            since: retry,
                            due: retry,
                            attempts: 0,
                        },
                    );
                }
            }
        }
    }

    fn add(&mut self, files: &[(PathBuf, Stamp)]) {
        let by_path: HashMap<String, (u64, String)> = self
            .sink
            .records()
            .into_iter()
            .map(|(id, r)| (r.path, (id, r.sha256)))
            .collect();
        let mut batch: Vec<(Record, Vec<u8>)> = Vec::new();
        let mut meta: Vec<(PathBuf, Stamp, Option<u64>)> = Vec::new();
        for (path, st) in files {
            let key = path.to_string_lossy().to_string();
            let bytes = match std::fs::read(path) {
                Ok(b) => b,
                Err(_) => {
                    // Gone or unreadable between the look and the read: looked at again.
                    self.touch(path.clone());
                    continue;
                }
            };
            let sha = sha256_hex(&bytes);
            let old = by_path.get(&key);
            if old.is_some_and(|(_, s)| *s == sha) {
                self.pending.remove(path);
                self.known.insert(path.clone(), *st);
                self.status(|s| s.unchanged += 1);
                continue;
            }
            let label = self
                .opts
                .label_from_parent
                .then(|| path.parent().and_then(|d| d.file_name()))
                .flatten()
                .map(|n| n.to_string_lossy().to_string());
            batch.push((
                Record {
                    path: key,
                    sha256: sha,
                    label,
                },
                bytes,
            ));
            meta.push((path.clone(), *st, old.map(|(id, _)| *id)));
        }
        if batch.is_empty() {
            return;
        }
        let outcomes = self.sink.add(batch);
        let mut replaced = Vec::new();
        for ((path, st, old), outcome) in meta.into_iter().zip(outcomes) {
            match outcome {
                Ok(_) => {
                    self.pending.remove(&path);
                    self.known.insert(path, st);
                    replaced.extend(old);
                    self.status(|s| s.indexed += 1);
                }
                Err(AddFailure::Image(why)) => {
                    let Some(p) = self.pending.get_mut(&path) else {
                        continue;
                    };
                    p.attempts += 1;
                    if p.attempts >= self.opts.attempts {
                        self.pending.remove(&path);
                        self.known.insert(path.clone(), st);
                        let msg = format!("{}: {why}", path.display());
                        self.status(|s| {
                            s.failed += 1;
                            s.last_error = Some(msg);
                        });
                    } else {
                        // Perhaps still being written with pauses: wait longer each time.
                        p.due = Instant::now() + self.opts.settle * (1 << p.attempts.min(6));
                    }
                }
                Err(AddFailure::Write(why)) => {
                    if let Some(p) = self.pending.get_mut(&path) {
                        p.due = Instant::now() + WRITE_RETRY;
                    }
                    let msg = format!("{}: {why}", path.display());
                    self.status(|s| s.last_error = Some(msg));
                }
            }
        }
        if !replaced.is_empty() {
            // The new version is durable first, so the path is never without a record.
            if let Err(e) = self.sink.remove(&replaced) {
                let msg = format!("dropping {} replaced images: {e}", replaced.len());
                self.status(|s| s.last_error = Some(msg));
            }
        }
    }
}
