//! Prometheus metrics: `metrics` handles recorded into a `metrics-exporter-prometheus`
//! recorder owned by the server (not installed globally, so in-process tests can run several
//! servers), rendered in the Prometheus text format (version 0.0.4).
//!
//! Per route (the matched pattern, so ids do not explode the label space): request counts by
//! status and a latency histogram. Beside them, the time spent decoding, embedding (per batch,
//! with the batch size) and searching, which is what tells a slow model from a slow index.
//!
//! `prometheus-client` was measured first and not kept: its encoder writes `le` before a
//! family's labels (`..._bucket{le="+Inf",method="POST",route="/search"}`), which fails the
//! line `tests/integration/http.rs` asserts (`{method=...,route=...,le="+Inf"}`), and it
//! does not escape label values. This exporter writes `le` last and escapes values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

/// Latency buckets in seconds: 0.25 ms to 10 s.
const SECONDS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Batch-size buckets.
const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// Where our metrics say they come from (the exporter does not print it).
static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Values read from the index and the batcher when `/metrics` is scraped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sampled {
    /// Live images.
    pub images: u64,
    /// Deleted images still in the graph.
    pub tombstones: u64,
    /// Write-ahead log bytes not yet checkpointed.
    pub log_bytes: u64,
    /// Checkpoints written since start.
    pub checkpoints: u64,
    /// Compactions since start.
    pub compactions: u64,
    /// Images waiting for inference.
    pub queue: u64,
}

/// The gauges, in [`Sampled`]'s order.
const GAUGES: [(&str, &str); 6] = [
    ("htg_index_images", "Live images in the index."),
    (
        "htg_index_tombstones",
        "Deleted images still in the graph, waiting for compaction.",
    ),
    (
        "htg_index_log_bytes",
        "Write-ahead log bytes not yet covered by a checkpoint.",
    ),
    (
        "htg_index_checkpoints",
        "Checkpoints written since the server started.",
    ),
    (
        "htg_index_compactions",
        "Compactions (rebuilds without deleted images) since the server started.",
    ),
    (
        "htg_inference_queue_images",
        "Images waiting for an inference batch.",
    ),
];

/// The server's metrics registry.
pub struct Metrics {
    recorder: PrometheusRecorder,
    decode: Histogram,
    decode_wait: Histogram,
    embed: Histogram,
    batch_size: Histogram,
    search: Histogram,
    gauges: Vec<Gauge>,
    /// Histogram samples recorded, to drain them every [`UPKEEP_EVERY`].
    samples: AtomicU64,
}

/// Histogram samples between two drains. The exporter keeps every raw sample until something
/// drains it into the buckets (a scrape, or this upkeep): a server nobody scrapes would
/// otherwise grow by each request's samples forever (the soak measured about 80 KiB/s at
/// 1,300 requests/s).
const UPKEEP_EVERY: u64 = 4096;

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full("htg_embed_batch_size".into()), SIZES)
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let describe = |name: &'static str, help: &'static str| (name, help);
        for (name, help) in [
            describe(
                "htg_http_requests_total",
                "HTTP requests answered, by method, route pattern and status.",
            ),
            describe(
                "htg_http_request_duration_seconds",
                "Time from request to response, by method and route pattern.",
            ),
            describe(
                "htg_decode_duration_seconds",
                "Decoding and preprocessing one uploaded image.",
            ),
            describe(
                "htg_decode_wait_seconds",
                "Time a request with a large image waited for a decode turn.",
            ),
            describe(
                "htg_embed_duration_seconds",
                "One inference call on a dynamic batch.",
            ),
            describe(
                "htg_embed_batch_size",
                "Images per inference call (dynamic batching).",
            ),
            describe(
                "htg_search_duration_seconds",
                "One index search (HNSW or exact).",
            ),
        ]
        .into_iter()
        .chain(GAUGES)
        {
            // Kinds are told apart by how they are registered; help text is per name.
            let (key, help) = (KeyName::from_const_str(name), help.into());
            if name.ends_with("_total") {
                recorder.describe_counter(key, None, help);
            } else if GAUGES.iter().any(|(g, _)| *g == name) {
                recorder.describe_gauge(key, None, help);
            } else {
                recorder.describe_histogram(key, None, help);
            }
        }
        let histogram =
            |name: &'static str| recorder.register_histogram(&Key::from_static_name(name), &META);
        let decode_wait = histogram("htg_decode_wait_seconds");
        let (decode, embed, batch_size, search) = (
            histogram("htg_decode_duration_seconds"),
            histogram("htg_embed_duration_seconds"),
            histogram("htg_embed_batch_size"),
            histogram("htg_search_duration_seconds"),
        );
        let gauges = GAUGES
            .iter()
            .map(|(name, _)| recorder.register_gauge(&Key::from_static_name(name), &META))
            .collect();
        Metrics {
            recorder,
            decode,
            decode_wait,
            embed,
            batch_size,
            search,
            gauges,
            samples: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &META)
    }

    /// Records one answered request.
    pub fn request(&self, method: &str, route: &str, status: u16, took: Duration) {
        let (m, r) = (
            Label::new("method", method.to_string()),
            Label::new("route", route.to_string()),
        );
        self.counter(
            "htg_http_requests_total",
            vec![
                m.clone(),
                r.clone(),
                Label::new("status", status.to_string()),
            ],
        )
        .increment(1);
        self.recorder
            .register_histogram(
                &Key::from_parts("htg_http_request_duration_seconds", vec![m, r]),
                &META,
            )
            .record(took.as_secs_f64());
        self.sampled(1);
    }

    /// Records decoding and preprocessing of one image.
    pub fn decode(&self, took: Duration) {
        self.decode.record(took.as_secs_f64());
        self.sampled(1);
    }

    /// Records how long a request waited for a large-decode turn.
    pub fn decode_wait(&self, took: Duration) {
        self.decode_wait.record(took.as_secs_f64());
        self.sampled(1);
    }

    /// Records one inference call on a batch of `size` images.
    pub fn embed(&self, size: usize, took: Duration) {
        self.embed.record(took.as_secs_f64());
        self.batch_size.record(size as f64);
        self.sampled(2);
    }

    /// Records one index search.
    pub fn search(&self, took: Duration) {
        self.search.record(took.as_secs_f64());
        self.sampled(1);
    }

    /// Counts `n` histogram samples and drains them into the buckets every [`UPKEEP_EVERY`].
    fn sampled(&self, n: u64) {
        let before = self.samples.fetch_add(n, Ordering::Relaxed);
        if (before + n) / UPKEEP_EVERY != before / UPKEEP_EVERY {
            self.recorder.handle().run_upkeep();
        }
    }

    /// The text exposition, with the gauges set to `now`.
    pub fn render(&self, now: Sampled) -> String {
        let values = [
            now.images,
            now.tombstones,
            now.log_bytes,
            now.checkpoints,
            now.compactions,
            now.queue,
        ];
        for (g, v) in self.gauges.iter().zip(values) {
            g.set(v as f64);
        }
        self.recorder.handle().render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counters_split_by_status() {
        let m = Metrics::default();
        m.request("POST", "/search", 200, Duration::from_micros(300));
        m.request("POST", "/search", 200, Duration::from_millis(20));
        m.request("POST", "/search", 400, Duration::from_millis(20));
        m.embed(4, Duration::from_millis(3));
        let text = m.render(Sampled {
            images: 24,
            ..Sampled::default()
        });
        for want in [
            "htg_http_requests_total{method=\"POST\",route=\"/search\",status=\"200\"} 2",
            "htg_http_requests_total{method=\"POST\",route=\"/search\",status=\"400\"} 1",
            "htg_http_request_duration_seconds_bucket{method=\"POST\",route=\"/search\",le=\"0.0005\"} 1",
            "htg_http_request_duration_seconds_bucket{method=\"POST\",route=\"/search\",le=\"0.025\"} 3",
            "htg_http_request_duration_seconds_bucket{method=\"POST\",route=\"/search\",le=\"+Inf\"} 3",
            "htg_http_request_duration_seconds_count{method=\"POST\",route=\"/search\"} 3",
            "htg_embed_batch_size_bucket{le=\"2\"} 0",
            "htg_embed_batch_size_bucket{le=\"4\"} 1",
            "htg_embed_duration_seconds_count 1",
            "htg_search_duration_seconds_count 0",
            "# TYPE htg_index_images gauge\nhtg_index_images 24",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        // Label values are escaped by the exporter (the hand-written `escape` is gone).
        m.request("GET", "a\"b\\c", 404, Duration::from_millis(1));
        let text = m.render(Sampled::default());
        assert!(text.contains("route=\"a\\\"b\\\\c\""), "{text}");
    }

    #[test]
    fn periodic_drains_lose_and_double_count_no_sample() {
        let m = Metrics::default();
        // Past two drains (UPKEEP_EVERY), with no scrape in between.
        let n = 2 * UPKEEP_EVERY + 5;
        for _ in 0..n {
            m.search(Duration::from_micros(50));
        }
        let text = m.render(Sampled::default());
        let want = format!("htg_search_duration_seconds_count {n}");
        assert!(text.contains(&want), "missing {want:?} in\n{text}");
    }
}
