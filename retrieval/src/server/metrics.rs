//! Prometheus metrics, written by hand in the text exposition format (version 0.0.4).
//!
//! Per route (the matched pattern, so ids do not explode the label space): request counts by
//! status and a latency histogram. Beside them, the time spent decoding, embedding (per batch,
//! with the batch size) and searching, which is what tells a slow model from a slow index.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets in seconds: 0.25 ms to 10 s.
const SECONDS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Batch-size buckets.
const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// A cumulative histogram with fixed buckets.
#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

#[derive(Debug)]
struct Inner {
    /// (method, route, status) → count.
    requests: BTreeMap<(String, String, u16), u64>,
    /// (method, route) → latency.
    latency: BTreeMap<(String, String), Histogram>,
    decode: Histogram,
    embed: Histogram,
    batch_size: Histogram,
    search: Histogram,
}

/// The server's metrics registry.
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            inner: Mutex::new(Inner {
                requests: BTreeMap::new(),
                latency: BTreeMap::new(),
                decode: Histogram::new(SECONDS),
                embed: Histogram::new(SECONDS),
                batch_size: Histogram::new(SIZES),
                search: Histogram::new(SECONDS),
            }),
        }
    }
}

/// Escapes a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A panic elsewhere while holding the lock leaves counters usable: keep serving them.
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Records one answered request.
    pub fn request(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.with(|m| {
            let key = (method.to_string(), route.to_string());
            *m.requests
                .entry((key.0.clone(), key.1.clone(), status))
                .or_default() += 1;
            m.latency
                .entry(key)
                .or_insert_with(|| Histogram::new(SECONDS))
                .observe(took.as_secs_f64());
        })
    }

    /// Records decoding and preprocessing of one image.
    pub fn decode(&self, took: Duration) {
        self.with(|m| m.decode.observe(took.as_secs_f64()))
    }

    /// Records one inference call on a batch of `size` images.
    pub fn embed(&self, size: usize, took: Duration) {
        self.with(|m| {
            m.embed.observe(took.as_secs_f64());
            m.batch_size.observe(size as f64);
        })
    }

    /// Records one index search.
    pub fn search(&self, took: Duration) {
        self.with(|m| m.search.observe(took.as_secs_f64()))
    }

    /// The text exposition, with `gauges` (name, help, value) appended.
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        self.with(|m| {
            out.push_str("# HELP htg_http_requests_total HTTP requests answered, by method, route pattern and status.\n");
            out.push_str("# TYPE htg_http_requests_total counter\n");
            for ((method, route, status), n) in &m.requests {
                let _ = writeln!(
                    out,
                    "htg_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                    escape(method),
                    escape(route)
                );
            }
            out.push_str("# HELP htg_http_request_duration_seconds Time from request to response, by method and route pattern.\n");
            out.push_str("# TYPE htg_http_request_duration_seconds histogram\n");
            for ((method, route), h) in &m.latency {
                let labels = format!("method=\"{}\",route=\"{}\"", escape(method), escape(route));
                h.write(&mut out, "htg_http_request_duration_seconds", &labels);
            }
            let singles: [(&str, &str, &str, &Histogram); 4] = [
                ("htg_decode_duration_seconds", "Decoding and preprocessing one uploaded image.", "histogram", &m.decode),
                ("htg_embed_duration_seconds", "One inference call on a dynamic batch.", "histogram", &m.embed),
                ("htg_embed_batch_size", "Images per inference call (dynamic batching).", "histogram", &m.batch_size),
                ("htg_search_duration_seconds", "One index search (HNSW or exact).", "histogram", &m.search),
            ];
            for (name, help, kind, h) in singles {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                h.write(&mut out, name, "");
            }
        });
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
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
        let text = m.render(&[("htg_index_images", "Live images.", 24.0)]);
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
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
