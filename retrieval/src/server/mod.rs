//! `htg serve`: the HTTP search service (actix-web), laid out as qdrant's actix layer is.
//!
//! - [`routes`]: one file per resource, each handler thin: parse, call [`service`], answer;
//! - [`service`]: what the handlers share (decode, embed through the [`batcher`], search,
//!   add, remove, find files), run off the async workers;
//! - [`error`]: the API's error enum and the one mapping from errors to HTTP statuses;
//! - [`input`]: bounded bodies, multipart, raw images and search parameters;
//! - [`config`]: defaults, then a TOML file, then `HTG__*` variables, validated at start;
//! - [`metrics`]: Prometheus text;
//! - [`auth`]: API keys (full and read-only); [`tls`]: HTTPS; CORS is `actix-cors`;
//! - [`admin`]: background tasks (a live model swap) and their status.
//!
//! The index is shared as an `Arc<Index>` that synchronises inside: searches never
//! wait for writes, and a write (add or delete) is durable (logged and fsynced) before it is
//! acknowledged, so every acknowledged write survives a crash or restart.
//!
//! The index, its model and that model's inference queue travel together as one
//! [`Serving`]: a request takes the current one once and uses it throughout, so a model swap
//! ([`admin`]) replaces all three in one step and no answer mixes two models. Writes also
//! hold [`State::writes`] (shared), which the swap takes exclusively for its last step.

pub mod admin;
pub mod auth;
pub mod batcher;
pub mod config;
pub mod error;
pub mod input;
pub mod metrics;
pub mod routes;
pub mod service;
pub mod thumbs;
pub mod tls;
pub mod watching;

use parking_lot::RwLock;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::index::Index;
use crate::{Embedder, IndexStats, ModelSpec, SearchIndex as _};
use actix_cors::Cors;
use actix_web::body::MessageBody;
use actix_web::dev::{Service as _, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::Condition;
use actix_web::{web, App, HttpServer};

pub use config::Config;
use error::ApiError;

/// The index with the model whose vectors it holds: what a model swap replaces as a whole.
pub struct Serving {
    /// The index; it synchronises inside, and a write returns once it is durable. A model
    /// swap matches on its kind (only a local index can be swapped).
    pub index: Arc<Index>,
    /// How images are fed to the model.
    pub spec: ModelSpec,
    /// The model's inference queue.
    pub batcher: batcher::Batcher,
    /// Where the model was loaded from, for `/stats`.
    pub model_path: Option<String>,
}

impl Serving {
    /// The index served with `embedder`'s inference queue (started here).
    pub fn start(
        index: Arc<Index>,
        embedder: Arc<dyn Embedder>,
        model_path: Option<String>,
        config: &Config,
        metrics: &Arc<metrics::Metrics>,
    ) -> Serving {
        Serving {
            spec: embedder.spec().clone(),
            batcher: batcher::Batcher::start(embedder, &config.batch, Arc::clone(metrics)),
            index,
            model_path,
        }
    }

    /// The served model's sha256, as answers and `/stats` name it.
    pub fn model_sha256(&self) -> String {
        self.index.model().sha256
    }
}

/// Everything the handlers share, behind `web::Data` (an `Arc`).
pub struct State {
    /// Validated configuration.
    pub config: Config,
    /// The index and model now serving; see [`State::serving`].
    serving: RwLock<Arc<Serving>>,
    /// Held shared by every write (add, delete) from before it embeds until it is durable,
    /// and exclusively by a model swap's last step, so no write lands in the old index
    /// after the new one has been caught up.
    pub writes: tokio::sync::RwLock<()>,
    /// Model swaps: where the index lives and how to load a model (absent: no swaps).
    pub admin: Option<admin::Admin>,
    /// Background tasks and their status.
    pub tasks: admin::Tasks,
    /// Prometheus registry.
    pub metrics: Arc<metrics::Metrics>,
    /// False before the server listens and once shutdown begins (`/readyz`).
    pub ready: AtomicBool,
    /// Where images added over HTTP are stored, named by content hash.
    pub uploads: PathBuf,
    /// Where `POST /snapshots` writes (beside the uploads).
    pub snapshots: PathBuf,
    /// The API keys (as digests), checked before routing.
    pub keys: auth::Keys,
    /// Turns for decoding large images (`max_concurrent_large_decodes`).
    pub large_decodes: Arc<tokio::sync::Semaphore>,
    /// The calibrated near-duplicate distance of a model, by its sha256 (`GET /duplicates`
    /// without `max_distance`): looked up per request, so it follows a model swap.
    pub duplicate_distance: DuplicateDistance,
    /// The folder watcher's status (`htg serve --watch`), set once it has started.
    pub watch: std::sync::OnceLock<crate::watch::StatusHandle>,
    /// Thumbnails already made (`GET /images/{id}/thumb`).
    pub thumbs: thumbs::Thumbs,
}

/// How the server learns a model's calibrated duplicate distance from its sha256 (the
/// binary knows its bundled models; see `loader::duplicate_distance`).
pub type DuplicateDistance = fn(&str) -> Option<f32>;

/// No model has a calibrated distance: `GET /duplicates` then needs `max_distance`.
pub fn no_duplicate_distance(_sha256: &str) -> Option<f32> {
    None
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding or running the listener failed.
    #[error("cannot serve on {addr}: {source}")]
    Io {
        /// Configured address.
        addr: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A folder to watch cannot be watched.
    #[error(transparent)]
    Watch(#[from] crate::watch::WatchError),
}

impl State {
    /// The index and model now serving: take it once per request and use it throughout.
    pub fn serving(&self) -> Arc<Serving> {
        Arc::clone(&self.serving.read())
    }

    /// Makes `next` the one that serves (a model swap's switch); requests that already took
    /// the previous one finish on it.
    pub fn install(&self, next: Serving) {
        *self.serving.write() = Arc::new(next);
    }
}

/// Folders the server keeps indexed (`htg serve --watch`).
pub struct Watch {
    /// The folders, watched recursively.
    pub folders: Vec<PathBuf>,
    /// How the watcher paces itself.
    pub options: crate::watch::WatchOptions,
}

/// Serves `index` with `embedder` until SIGTERM or SIGINT, then drains in-flight requests (up
/// to `shutdown_timeout_s`) and stops the inference threads. With `admin`, the model can be
/// swapped while serving (`POST /admin/reindex`).
///
/// The caller has checked that `embedder` is the model that built `index`.
pub fn serve(
    config: Config,
    index: Index,
    embedder: Arc<dyn Embedder>,
    uploads: PathBuf,
    admin: Option<admin::Admin>,
    duplicate_distance: DuplicateDistance,
    watch: Option<Watch>,
) -> Result<(), ServeError> {
    let tls = tls::server_config(&config.tls)?;
    let state = new_state_with(
        config.clone(),
        index,
        embedder,
        uploads,
        admin,
        duplicate_distance,
    );
    let watcher = match watch {
        Some(w) => {
            let sink = watching::ServerSink::new(state.clone())
                .map_err(crate::watch::WatchError::Thread)?;
            let watcher = crate::watch::Watcher::start(&w.folders, Arc::new(sink), w.options)?;
            let _ = state.watch.set(watcher.handle());
            Some(watcher)
        }
        None => None,
    };
    let io = |source| ServeError::Io {
        addr: config.addr.clone(),
        source,
    };
    let result = actix_web::rt::System::new().block_on(run(state.clone(), config.clone(), tls));
    // The watcher finishes the file it is on and lets go of the state.
    drop(watcher);
    // Dropping the last reference stops the inference threads after their queued batches.
    drop(state);
    result.map_err(io)
}

/// The shared state of a server over `index`, with its inference threads started: what
/// [`serve`] runs and what in-process tests hand to [`app`]. Model swaps are off.
pub fn new_state(
    config: Config,
    index: impl Into<Index>,
    embedder: Arc<dyn Embedder>,
    uploads: PathBuf,
) -> web::Data<State> {
    new_state_with(
        config,
        index,
        embedder,
        uploads,
        None,
        no_duplicate_distance,
    )
}

/// [`new_state`], with model swaps through `admin` and calibrated duplicate distances.
pub fn new_state_with(
    config: Config,
    index: impl Into<Index>,
    embedder: Arc<dyn Embedder>,
    uploads: PathBuf,
    admin: Option<admin::Admin>,
    duplicate_distance: DuplicateDistance,
) -> web::Data<State> {
    let metrics = Arc::new(metrics::Metrics::default());
    let index = Arc::new(index.into());
    let model_path = index.model_path();
    let serving = Serving::start(index, embedder, model_path, &config, &metrics);
    let turns = match config.max_concurrent_large_decodes {
        0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        n => n,
    };
    web::Data::new(State {
        keys: auth::Keys::from_config(&config),
        large_decodes: Arc::new(tokio::sync::Semaphore::new(turns)),
        duplicate_distance,
        watch: std::sync::OnceLock::new(),
        thumbs: thumbs::Thumbs::default(),
        serving: RwLock::new(Arc::new(serving)),
        writes: tokio::sync::RwLock::new(()),
        admin,
        tasks: admin::Tasks::default(),
        config,
        metrics,
        ready: AtomicBool::new(false),
        snapshots: uploads
            .parent()
            .map_or_else(|| PathBuf::from("snapshots"), |p| p.join("snapshots")),
        uploads,
    })
}

/// The whole application (routes, extractor error shapes, request metrics) over `state`: the
/// listener runs one per worker, and tests drive it in-process with `actix_web::test`.
pub fn app(
    state: web::Data<State>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let cors_enabled = !state.config.cors.allowed_origins.is_empty();
    let cors = cors(&state.config.cors);
    App::new()
        .app_data(state)
        .app_data(
            web::QueryConfig::default().error_handler(|e, _| {
                ApiError::BadRequest(format!("bad query string: {e}")).into()
            }),
        )
        .app_data(web::PathConfig::default().error_handler(|_, req| {
            ApiError::NotFound(format!("no such image: {}", req.path())).into()
        }))
        .configure(routes::configure)
        .default_service(web::to(routes::not_found))
        // Keys are checked before routing, so an unknown route without a key is a 401 too.
        .wrap_fn(|req, srv| {
            use futures_util::future::{ready, Either, FutureExt as _};
            let refused = req
                .app_data::<web::Data<State>>()
                .and_then(|s| s.keys.check_request(&req).err());
            match refused {
                None => Either::Left(
                    srv.call(req)
                        .map(|r| r.map(ServiceResponse::map_into_left_body)),
                ),
                Some(e) => Either::Right(ready(Ok(req.error_response(e).map_into_right_body()))),
            }
        })
        // Outside the key check, so a browser's preflight and a 401 both carry CORS headers.
        .wrap(Condition::new(cors_enabled, cors))
        .wrap_fn(|req, srv| {
            let start = Instant::now();
            let state = req.app_data::<web::Data<State>>().cloned();
            let method = req.method().to_string();
            let fut = srv.call(req);
            async move {
                let res = fut.await;
                if let Some(state) = state {
                    let (status, route) = match &res {
                        Ok(r) => (r.status().as_u16(), r.request().match_pattern()),
                        Err(e) => (e.as_response_error().status_code().as_u16(), None),
                    };
                    let route = route.unwrap_or_else(|| "unmatched".into());
                    state
                        .metrics
                        .request(&method, &route, status, start.elapsed());
                }
                res
            }
        })
}

/// The CORS policy: the configured origins may call every route with a key header.
fn cors(config: &config::CorsConfig) -> Cors {
    use actix_web::http::header;
    let mut cors = Cors::default()
        .allowed_methods(["GET", "HEAD", "POST", "DELETE"])
        .allowed_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::HeaderName::from_static(auth::API_KEY_HEADER),
        ])
        .expose_headers([header::RETRY_AFTER, header::ALLOW, header::WWW_AUTHENTICATE])
        .max_age(usize::try_from(config.max_age_s).ok());
    for origin in &config.allowed_origins {
        cors = if origin == "*" {
            cors.allow_any_origin()
        } else {
            cors.allowed_origin(origin)
        };
    }
    cors
}

async fn run(
    state: web::Data<State>,
    config: Config,
    tls: Option<rustls::ServerConfig>,
) -> std::io::Result<()> {
    let app_state = state.clone();
    let mut server = HttpServer::new(move || app(app_state.clone()))
        .disable_signals()
        .shutdown_timeout(config.shutdown_timeout_s);
    if config.workers > 0 {
        server = server.workers(config.workers);
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server = match tls {
        Some(tls) => server.bind_rustls_0_23(&config.addr, tls)?,
        None => server.bind(&config.addr)?,
    };
    let addrs = server.addrs();
    let running = server.run();
    let handle = running.handle();
    for addr in addrs {
        // The integration tests and scripts read this line to learn a port chosen by the OS.
        println!("htg serve: listening on {scheme}://{addr}");
    }
    let _ = std::io::stdout().flush();
    state.ready.store(true, Ordering::SeqCst);
    use tokio::signal::unix::{signal, SignalKind};
    for kind in [SignalKind::terminate(), SignalKind::interrupt()] {
        let mut sig = signal(kind)?;
        let handle = handle.clone();
        let state = state.clone();
        actix_web::rt::spawn(async move {
            if sig.recv().await.is_some() {
                state.ready.store(false, Ordering::SeqCst);
                eprintln!("htg serve: signal received, finishing in-flight requests");
                handle.stop(true).await;
            }
        });
    }
    actix_web::rt::spawn(report_background_failures(state.clone()));
    running.await?;
    eprintln!("htg serve: stopped");
    Ok(())
}

/// How often the server looks for a new background failure to print.
const BACKGROUND_POLL: Duration = Duration::from_secs(2);

/// Prints each background failure of the index (a checkpoint on a full disk, adds the applier
/// could not index) to stderr once, and its recovery: nobody waits on those tasks, and an
/// operator reads the server's log before its `/readyz` or `/stats`.
async fn report_background_failures(state: web::Data<State>) {
    let mut seen = (0, None);
    loop {
        actix_web::rt::time::sleep(BACKGROUND_POLL).await;
        let stats = state.serving().index.stats();
        if let Some(line) = background_report(&mut seen, &stats) {
            eprintln!("{line}");
        }
    }
}

/// The line to print for `now`, given what was printed last (`seen`: the failure count and
/// the failure outstanding then), and updates `seen`.
fn background_report(seen: &mut (u64, Option<String>), now: &IndexStats) -> Option<String> {
    let line = match (&seen.1, &now.background_error) {
        (_, Some(e)) if now.background_errors != seen.0 || seen.1.as_ref() != Some(e) => {
            Some(format!(
                "htg serve: background failure ({} since the index was opened): {e}; \
                 /readyz answers 503 until it clears",
                now.background_errors
            ))
        }
        (Some(_), None) => Some("htg serve: background work recovered".to_string()),
        _ => None,
    };
    *seen = (now.background_errors, now.background_error.clone());
    line
}

/// Milliseconds since `start`, for `took_ms` fields.
pub fn ms_since(start: Instant) -> f64 {
    let d: Duration = start.elapsed();
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_background_failure_is_printed_once_and_so_is_its_recovery() {
        let at = |n, e: Option<&str>| IndexStats {
            background_errors: n,
            background_error: e.map(str::to_string),
            ..IndexStats::default()
        };
        let mut seen = (0, None);
        assert_eq!(background_report(&mut seen, &at(0, None)), None);
        let line = background_report(&mut seen, &at(1, Some("disk full"))).unwrap();
        assert!(
            line.contains("(1 since the index was opened): disk full"),
            "{line}"
        );
        assert_eq!(
            background_report(&mut seen, &at(1, Some("disk full"))),
            None
        );
        // The same message failing again is a new failure.
        let line = background_report(&mut seen, &at(2, Some("disk full"))).unwrap();
        assert!(line.contains("(2 since"), "{line}");
        assert_eq!(
            background_report(&mut seen, &at(2, None)).as_deref(),
            Some("htg serve: background work recovered")
        );
        assert_eq!(background_report(&mut seen, &at(2, None)), None);
    }
}
