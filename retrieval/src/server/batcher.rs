//! Dynamic batching: concurrent queries are gathered into one inference call.
//!
//! Handlers never run the model: they queue a preprocessed image and await a oneshot reply, so
//! actix workers stay free for I/O. Dedicated inference threads take whatever is queued (up to
//! `max_size`), wait at most `max_delay_us` for more when the batch is not full and other
//! requests are being decoded (an idle server does not wait: a lone query pays no delay), stack
//! the images and call [`Embedder::embed_tensor`] once. Under load the queue fills while a batch
//! runs, so batches grow and throughput rises instead of requests queueing one by one (as
//! Triton's dynamic batcher does). The queue is bounded: when it is full a request is refused
//! with 503 rather than waiting without end.

use parking_lot::Mutex;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{EmbedError, Embedder};
use ndarray::{Array3, Axis};
use tokio::sync::oneshot;

use super::config::BatchConfig;
use super::error::ApiError;
use super::metrics::Metrics;

/// One image waiting for inference.
struct Job {
    input: Array3<f32>,
    reply: oneshot::Sender<Result<Vec<f32>, String>>,
}

/// Handle to the inference threads; dropping it stops them once the queue is drained.
pub struct Batcher {
    tx: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    waiting: Arc<AtomicUsize>,
    coming: Arc<AtomicUsize>,
    capacity: usize,
}

/// Images announced by [`Batcher::announce`] and not yet queued; dropping it withdraws them.
pub struct Announced {
    coming: Arc<AtomicUsize>,
    n: usize,
}

impl Drop for Announced {
    fn drop(&mut self) {
        self.coming.fetch_sub(self.n, Ordering::Relaxed);
    }
}

impl Batcher {
    /// Starts `cfg.threads` inference threads sharing one bounded queue.
    pub fn start(embedder: Arc<dyn Embedder>, cfg: &BatchConfig, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Job>(cfg.queue);
        let rx = Arc::new(Mutex::new(rx));
        let waiting = Arc::new(AtomicUsize::new(0));
        let coming = Arc::new(AtomicUsize::new(0));
        let threads = (0..cfg.threads)
            .map(|i| {
                let rx = Arc::clone(&rx);
                let embedder = Arc::clone(&embedder);
                let metrics = Arc::clone(&metrics);
                let waiting = Arc::clone(&waiting);
                let coming = Arc::clone(&coming);
                let max_size = cfg.max_size;
                let max_delay = Duration::from_micros(cfg.max_delay_us);
                std::thread::Builder::new()
                    .name(format!("htg-infer-{i}"))
                    .spawn(move || {
                        while let Some(batch) = gather(&rx, max_size, max_delay, &coming) {
                            waiting.fetch_sub(batch.len(), Ordering::Relaxed);
                            run_batch(embedder.as_ref(), batch, &metrics);
                        }
                    })
                    .expect("spawning an inference thread")
            })
            .collect();
        Batcher {
            tx: Some(tx),
            threads,
            waiting,
            coming,
            capacity: cfg.queue,
        }
    }

    /// Images queued and not yet taken into a batch.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Announces `n` images that are being decoded and will be queued soon, so that a batch
    /// being gathered waits for them; the announcement ends when the guard is dropped.
    pub fn announce(&self, n: usize) -> Announced {
        self.coming.fetch_add(n, Ordering::Relaxed);
        Announced {
            coming: Arc::clone(&self.coming),
            n,
        }
    }

    /// True while every inference thread is running.
    pub fn alive(&self) -> bool {
        self.tx.is_some() && self.threads.iter().all(|t| !t.is_finished())
    }

    /// Embeds preprocessed images (one `[C, H, W]` or `[H, W, C]` array each, as the spec
    /// lays them out) and returns one unit vector per image, in order.
    ///
    /// Images of one call are queued together, so they usually share a batch. `announced` (from
    /// [`Batcher::announce`]) is withdrawn once they are queued.
    pub async fn embed(
        &self,
        inputs: Vec<Array3<f32>>,
        announced: Option<Announced>,
    ) -> Result<Vec<Vec<f32>>, ApiError> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| ApiError::Unavailable("the server is shutting down".into()))?;
        let mut replies = Vec::with_capacity(inputs.len());
        for input in inputs {
            let (reply, rx) = oneshot::channel();
            self.waiting.fetch_add(1, Ordering::Relaxed);
            match tx.try_send(Job { input, reply }) {
                Ok(()) => replies.push(rx),
                Err(TrySendError::Full(_)) => {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Err(ApiError::Overloaded(self.capacity));
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Err(ApiError::Internal("the inference threads stopped".into()));
                }
            }
        }
        drop(announced);
        let mut out = Vec::with_capacity(replies.len());
        for rx in replies {
            match rx.await {
                Ok(Ok(v)) => out.push(v),
                Ok(Err(msg)) => {
                    return Err(ApiError::Embed(EmbedError::run(
                        "a batch of the queue",
                        msg,
                    )))
                }
                Err(_) => {
                    return Err(ApiError::Internal(
                        "the inference thread dropped the request".into(),
                    ))
                }
            }
        }
        Ok(out)
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        // Closing the queue ends each thread after the batches already queued.
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Takes the next batch: blocks for a first job, takes what is already queued, then waits up
/// to `max_delay` for more while the batch is not full and images are announced (`coming`).
/// `None` once the queue is closed and empty. The lock is held while gathering so that threads
/// do not split a batch.
fn gather(
    rx: &Mutex<Receiver<Job>>,
    max_size: usize,
    max_delay: Duration,
    coming: &AtomicUsize,
) -> Option<Vec<Job>> {
    let rx = rx.lock();
    let first = rx.recv().ok()?;
    let deadline = Instant::now() + max_delay;
    let mut batch = vec![first];
    while batch.len() < max_size {
        match rx.try_recv() {
            Ok(job) => {
                batch.push(job);
                continue;
            }
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {}
        }
        let now = Instant::now();
        if now >= deadline || coming.load(Ordering::Relaxed) == 0 {
            break;
        }
        // Short waits, so that the batch closes as soon as nothing more is announced.
        match rx.recv_timeout((deadline - now).min(Duration::from_micros(50))) {
            Ok(job) => batch.push(job),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    Some(batch)
}

/// Runs one batch and answers every job; a panicking runtime answers errors, never hangs.
fn run_batch(embedder: &dyn Embedder, batch: Vec<Job>, metrics: &Metrics) {
    let (inputs, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|j| (j.input, j.reply)).unzip();
    let start = Instant::now();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let views: Vec<_> = inputs.iter().map(|a| a.view()).collect();
        let stacked = ndarray::stack(Axis(0), &views).map_err(|e| e.to_string())?;
        embedder
            .embed_tensor(stacked.view())
            .map_err(|e| e.to_string())
    }));
    metrics.embed(replies.len(), start.elapsed());
    match result {
        Ok(Ok(vectors)) => {
            for (reply, row) in replies.into_iter().zip(vectors.rows()) {
                // A client that went away dropped its receiver: nothing to do.
                let _ = reply.send(Ok(row.to_vec()));
            }
        }
        Ok(Err(msg)) => {
            for reply in replies {
                let _ = reply.send(Err(msg.clone()));
            }
        }
        Err(_) => {
            for reply in replies {
                let _ = reply.send(Err("the inference runtime panicked".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ModelId, ModelSpec};
    use ndarray::{Array2, ArrayD, ArrayView4};
    use std::sync::atomic::AtomicUsize;

    /// Returns each image's first pixel as a 2-d vector and records batch sizes.
    struct Fake {
        id: ModelId,
        sizes: Mutex<Vec<usize>>,
        calls: AtomicUsize,
        delay: Duration,
    }

    impl Embedder for Fake {
        fn spec(&self) -> &ModelSpec {
            &self.id.spec
        }
        fn model_id(&self) -> &ModelId {
            &self.id
        }
        fn backend(&self) -> &'static str {
            "fake"
        }
        fn run(&self, _input: ArrayView4<f32>) -> Result<ArrayD<f32>, EmbedError> {
            unreachable!("embed_tensor is overridden")
        }
        fn embed_tensor(&self, input: ArrayView4<f32>) -> Result<Array2<f32>, EmbedError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.sizes.lock().push(input.shape()[0]);
            std::thread::sleep(self.delay);
            let n = input.shape()[0];
            if input[[0, 0, 0, 0]] < 0.0 {
                panic!("negative input");
            }
            Ok(Array2::from_shape_fn((n, 2), |(i, j)| {
                input[[i, 0, 0, 0]] + j as f32
            }))
        }
    }

    fn fake(delay: Duration) -> Arc<Fake> {
        let spec: ModelSpec = serde_json::from_value(serde_json::json!({
            "input_name": "x", "output_name": "y", "layout": "NCHW", "height": 1, "width": 1,
            "color": "grey", "scale": 1.0, "mean": [0.0], "std": [1.0], "pooling": "none",
            "embedding_dim": 2
        }))
        .expect("a valid spec");
        Arc::new(Fake {
            id: ModelId {
                sha256: "0".into(),
                spec,
            },
            sizes: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
            delay,
        })
    }

    fn pixel(v: f32) -> Array3<f32> {
        Array3::from_elem((1, 1, 1), v)
    }

    fn cfg(max_size: usize, max_delay_us: u64, queue: usize) -> BatchConfig {
        BatchConfig {
            max_size,
            max_delay_us,
            queue,
            threads: 1,
        }
    }

    #[test]
    fn concurrent_requests_share_batches_and_get_their_own_answers() {
        let model = fake(Duration::from_millis(20));
        let b = Arc::new(Batcher::start(
            model.clone(),
            &cfg(8, 5_000, 64),
            Arc::new(Metrics::default()),
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answers = rt.block_on(async {
            let futs: Vec<_> = (0..16)
                .map(|i| {
                    let b = Arc::clone(&b);
                    tokio::spawn(async move { b.embed(vec![pixel(i as f32)], None).await })
                })
                .collect();
            let mut out = Vec::new();
            for f in futs {
                out.push(f.await.expect("task ran"));
            }
            out
        });
        for (i, a) in answers.into_iter().enumerate() {
            assert_eq!(a.unwrap(), vec![vec![i as f32, i as f32 + 1.0]]);
        }
        let sizes = model.sizes.lock().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 16);
        assert!(sizes.iter().all(|s| *s <= 8), "{sizes:?}");
        assert!(sizes.len() < 16, "requests were not batched: {sizes:?}");
    }

    #[test]
    fn a_lone_query_does_not_wait_but_an_announced_one_is_waited_for() {
        let model = fake(Duration::from_millis(0));
        let b = Arc::new(Batcher::start(
            model.clone(),
            &cfg(8, 300_000, 64),
            Arc::new(Metrics::default()),
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let start = Instant::now();
        rt.block_on(b.embed(vec![pixel(1.0)], None)).unwrap();
        assert!(
            start.elapsed() < Duration::from_millis(150),
            "nothing announced, yet the batch waited {:?}",
            start.elapsed()
        );
        // An announced image joins the batch of one queued before it.
        let ticket = b.announce(1);
        let b2 = Arc::clone(&b);
        let answers = rt.block_on(async move {
            let first = tokio::spawn(async move { b2.embed(vec![pixel(2.0)], None).await });
            tokio::time::sleep(Duration::from_millis(30)).await;
            let second = b.embed(vec![pixel(3.0)], Some(ticket)).await;
            (first.await.unwrap(), second)
        });
        assert_eq!(answers.0.unwrap()[0][0], 2.0);
        assert_eq!(answers.1.unwrap()[0][0], 3.0);
        assert_eq!(*model.sizes.lock(), vec![1, 2]);
    }

    #[test]
    fn full_queue_is_refused_and_a_panic_answers_an_error() {
        let model = fake(Duration::from_millis(50));
        let b = Batcher::start(model, &cfg(4, 0, 2), Arc::new(Metrics::default()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(b.embed(vec![pixel(-1.0)], None))
            .expect_err("the fake panics on negative input");
        assert!(err.to_string().contains("panicked"), "{err}");
        // The thread survived the panic.
        assert_eq!(
            rt.block_on(b.embed(vec![pixel(3.0)], None)).unwrap()[0],
            vec![3.0, 4.0]
        );
        assert!(b.alive());
        // More images in one call than the queue holds: refused, not blocked.
        let many: Vec<_> = (0..64).map(|i| pixel(i as f32)).collect();
        match rt.block_on(b.embed(many, None)) {
            Err(ApiError::Overloaded(2)) => {}
            other => panic!("expected Overloaded, got {other:?}"),
        }
    }
}
