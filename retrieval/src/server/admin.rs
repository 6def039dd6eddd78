//! Background tasks of the admin API: a live model swap ([`start_reindex`]) and the status
//! that `GET /admin/tasks/{id}` reports.
//!
//! The swap runs [`crate::reindex`] on its own thread while the server keeps answering from
//! the old index: passes carry writes that arrive meanwhile into the shadow; then the thread
//! takes [`State::writes`] exclusively (in-flight writes finish, new ones wait), runs the last
//! pass, writes the switch to disk and installs the new [`Serving`]. A search that took the
//! old `Serving` finishes on it; every later request gets the new one. Any failure before the
//! switch leaves the old index serving and the reason in the task status.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::web;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::{Serving, State};
use crate::reindex::{Progress, ReindexError, Reindexer};
use crate::{Embedder, SearchIndex as _};

/// Loads a model for a swap the way the server's command line would (same runtime choice).
pub type ModelLoader = Arc<dyn Fn(&Path) -> Result<Box<dyn Embedder>, String> + Send + Sync>;

/// What the server needs to swap its model: the index directory as the user named it (the
/// swap writes its `ACTIVE` there) and a model loader.
#[derive(Clone)]
pub struct Admin {
    /// The index directory the server was started on.
    pub root: PathBuf,
    /// Loads the new model.
    pub load: ModelLoader,
}

/// Where a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Re-embedding while the old model serves.
    Embedding,
    /// Writes wait while the last changes are carried over and the switch is written.
    Switching,
    /// The new model serves.
    Succeeded,
    /// Stopped; the old model still serves (see `error`).
    Failed,
}

/// A task's status, as `GET /admin/tasks/{id}` answers it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TaskStatus {
    /// Task id.
    pub id: u64,
    /// Always `reindex`.
    pub kind: &'static str,
    /// Where it is.
    pub state: TaskState,
    /// The new model's path, as given.
    pub model: String,
    /// The new model's sha256.
    pub model_sha256: String,
    /// Progress of the re-embedding.
    pub progress: Progress,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Start time, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// Seconds since the start (until the end, once finished).
    pub elapsed_s: f64,
    /// How long writes waited for the switch, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch_ms: Option<f64>,
}

/// The tasks this server has run (the newest few) and the swap count.
#[derive(Default)]
pub struct Tasks {
    /// Claimed by the one swap that may run (from its request until its thread ends).
    busy: AtomicBool,
    next: AtomicU64,
    swaps: AtomicU64,
    all: Mutex<BTreeMap<u64, Arc<Mutex<TaskStatus>>>>,
}

/// Finished tasks kept for `GET /admin/tasks/{id}`.
const KEEP: usize = 16;

impl Tasks {
    /// A task's status.
    pub fn get(&self, id: u64) -> Option<TaskStatus> {
        let all = self.all.lock();
        all.get(&id).map(|t| t.lock().clone())
    }

    /// Model swaps completed since the server started.
    pub fn swaps(&self) -> u64 {
        self.swaps.load(Ordering::Relaxed)
    }

    /// Claims the right to run a swap; false when one is starting or running.
    fn claim(&self) -> bool {
        self.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn release(&self) {
        self.busy.store(false, Ordering::Release);
    }

    fn running(&self) -> Option<u64> {
        let all = self.all.lock();
        all.iter().find_map(|(id, t)| {
            let s = t.lock().state;
            matches!(s, TaskState::Embedding | TaskState::Switching).then_some(*id)
        })
    }

    fn add(&self, status: TaskStatus) -> Arc<Mutex<TaskStatus>> {
        let t = Arc::new(Mutex::new(status));
        let mut all = self.all.lock();
        let id = t.lock().id;
        all.insert(id, Arc::clone(&t));
        while all.len() > KEEP {
            let Some(oldest) = all.keys().next().copied() else {
                break;
            };
            all.remove(&oldest);
        }
        t
    }
}

fn update(task: &Mutex<TaskStatus>, f: impl FnOnce(&mut TaskStatus)) {
    f(&mut task.lock());
}

/// Starts swapping the served model for the one at `model`: loads it and opens the shadow
/// index here (so a bad model or a second swap is refused at once), then re-embeds and
/// switches on a background thread. Returns the task's first status.
pub async fn start_reindex(
    state: &web::Data<State>,
    model: String,
    drop_missing: bool,
) -> Result<TaskStatus, ApiError> {
    if state.admin.is_none() {
        return Err(ApiError::Forbidden(
            "model swaps are off on this server (it serves a remote index, or was started in-process)".into(),
        ));
    }
    if state.config.api_key.is_empty() {
        return Err(ApiError::Forbidden(
            "admin operations need `api_key` set in the server's configuration".into(),
        ));
    }
    if !state.tasks.claim() {
        return Err(ApiError::Conflict(match state.tasks.running() {
            Some(id) => format!("model swap {id} is still running (GET /admin/tasks/{id})"),
            None => "a model swap is starting".into(),
        }));
    }
    let started = begin(state, model, drop_missing).await;
    if started.is_err() {
        state.tasks.release();
    }
    started
}

/// [`start_reindex`] once the swap is claimed.
async fn begin(
    state: &web::Data<State>,
    model: String,
    drop_missing: bool,
) -> Result<TaskStatus, ApiError> {
    let Some(admin) = state.admin.clone() else {
        return Err(ApiError::Internal("no admin configuration".into()));
    };
    let st = state.clone();
    let given = model.clone();
    let (reindexer, embedder) = web::block(move || -> Result<_, ApiError> {
        let path = PathBuf::from(&model);
        if !path.is_file() {
            return Err(ApiError::BadRequest(format!(
                "no model file at {model:?} on the server"
            )));
        }
        let embedder: Arc<dyn Embedder> = Arc::from(
            (admin.load)(&path)
                .map_err(|e| ApiError::BadRequest(format!("cannot load model {model:?}: {e}")))?,
        );
        let serving = st.serving();
        let old = serving
            .index
            .local_only("model swaps")
            .map_err(ApiError::Index)?;
        let reindexer = Reindexer::start(
            &admin.root,
            old,
            Arc::clone(&embedder),
            Some(model),
            &st.uploads,
        )
        .map_err(|e| match e {
            ReindexError::SameModel(_) => ApiError::Conflict(e.to_string()),
            ReindexError::Index(i) => ApiError::Index(i),
            other => ApiError::Internal(other.to_string()),
        })?;
        Ok((reindexer, embedder))
    })
    .await??;
    let id = state.tasks.next.fetch_add(1, Ordering::Relaxed) + 1;
    let status = TaskStatus {
        id,
        kind: "reindex",
        state: TaskState::Embedding,
        model: given,
        model_sha256: embedder.model_id().sha256.clone(),
        progress: reindexer.progress().clone(),
        error: None,
        started_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default(),
        elapsed_s: 0.0,
        switch_ms: None,
    };
    let task = state.tasks.add(status.clone());
    let st = state.clone();
    std::thread::Builder::new()
        .name(format!("htg-reindex-{id}"))
        .spawn(move || {
            run(st.clone(), task, reindexer, embedder, drop_missing);
            st.tasks.release();
        })
        .map_err(|e| ApiError::Internal(format!("starting the swap thread: {e}")))?;
    Ok(status)
}

/// Catch-up passes while the old model serves, then the switch under the write gate.
fn run(
    state: web::Data<State>,
    task: Arc<Mutex<TaskStatus>>,
    mut reindexer: Reindexer,
    embedder: Arc<dyn Embedder>,
    drop_missing: bool,
) {
    let start = Instant::now();
    let old = state.serving();
    let result = (|| -> Result<(), ReindexError> {
        let old_local = old.index.local_only("model swaps")?;
        reindexer.catch_up(old.index.as_ref(), 8, |p| {
            update(&task, |t| {
                t.progress = p.clone();
                t.elapsed_s = start.elapsed().as_secs_f64();
            })
        })?;
        update(&task, |t| t.state = TaskState::Switching);
        let gate = Instant::now();
        let _writes = state.writes.blocking_write();
        let model_path = reindexer.shadow().model_path();
        let switched = reindexer.switch(old_local, drop_missing);
        update(&task, |t| t.progress = reindexer.progress().clone());
        let index = switched?;
        let serving = Serving::start(
            Arc::new(index.into()),
            embedder,
            model_path,
            &state.config,
            &state.metrics,
        );
        state.install(serving);
        state.tasks.swaps.fetch_add(1, Ordering::Relaxed);
        update(&task, |t| {
            t.switch_ms = Some(gate.elapsed().as_secs_f64() * 1e3);
        });
        Ok(())
    })();
    update(&task, |t| {
        t.elapsed_s = start.elapsed().as_secs_f64();
        match result {
            Ok(()) => t.state = TaskState::Succeeded,
            Err(e) => {
                t.state = TaskState::Failed;
                t.error = Some(e.to_string());
            }
        }
    });
}
