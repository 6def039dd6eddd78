//! Load test of `htg serve`: `POST /search` at concurrency 1, 8 and 32 on loopback, against the
//! in-process embed + search time of the same image measured in the same run.
//!
//! Run (see docs/HTTP.md for figures):
//!
//! ```text
//! cargo bench --profile dev --bench load -- [--seconds 10] [--max-requests 20000] [--model M]
//! ```
//!
//! Each level stops after `--seconds` or `--max-requests`, whichever comes first; connections
//! are keep-alive, one per client thread. Indexes the committed emoji fixtures with the bundled
//! model when present (`models/emoji-scratch.onnx`), else the tiny fixture model. Exits non-zero if
//! any answer is not 2xx.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use htg_retrieval::preprocess::tensor_from_bytes;
use htg_retrieval::{Embedder, LocalIndex, SearchIndex, SearchOptions, TractEmbedder};

const QUERY: &str = "1f999-google.png";
const K: usize = 10;

struct Opts {
    seconds: f64,
    max_requests: usize,
    model: PathBuf,
    levels: Vec<usize>,
}

fn opts() -> Opts {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bundled = root.join("models/emoji-scratch.onnx");
    let mut o = Opts {
        seconds: 10.0,
        max_requests: 20_000,
        model: if bundled.is_file() {
            bundled
        } else {
            root.join("tests/fixtures/models/tiny.onnx")
        },
        levels: vec![1, 8, 32],
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_default();
        match a.as_str() {
            "--seconds" => o.seconds = val().parse().expect("--seconds N"),
            "--max-requests" => o.max_requests = val().parse().expect("--max-requests N"),
            "--model" => o.model = PathBuf::from(val()),
            "--levels" => {
                o.levels = val()
                    .split(',')
                    .map(|l| l.parse().expect("--levels 1,8,32"))
                    .collect()
            }
            _ => {} // `cargo bench` adds `--bench`.
        }
    }
    o
}

/// A keep-alive HTTP/1.1 connection that reads sized answers.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Conn {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    /// Sends a request and returns (status, body).
    fn send(&mut self, head: &[u8], body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        self.writer.write_all(head)?;
        self.writer.write_all(body)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body)?;
        Ok((status, body))
    }
}

fn search_head(addr: &str, len: usize) -> Vec<u8> {
    format!(
        "POST /search?k={K} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: image/png\r\nContent-Length: {len}\r\n\r\n"
    )
    .into_bytes()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// In-process decode + preprocess + embed (batch of 1) + search, as the server does per query.
fn in_process(model: &Path, idx: &Path, bytes: &[u8]) -> (Duration, usize) {
    let e = TractEmbedder::load(model).expect("model loads");
    let index = LocalIndex::open(idx).expect("index opens");
    let spec = e.spec().clone();
    let once = || {
        let t = tensor_from_bytes(bytes, &spec, 40_000_000).unwrap();
        let v = e
            .embed_tensor(t.insert_axis(ndarray::Axis(0)).view())
            .unwrap();
        index
            .search(v.row(0).as_slice().unwrap(), K, &SearchOptions::default())
            .unwrap()
            .len()
    };
    for _ in 0..20 {
        once();
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 2000 && (times.len() < 50 || start.elapsed() < Duration::from_secs(5)) {
        let t = Instant::now();
        assert_eq!(once(), K);
        times.push(t.elapsed());
    }
    times.sort();
    (percentile(&times, 0.5), times.len())
}

struct Level {
    clients: usize,
    done: usize,
    non_2xx: usize,
    errors: usize,
    p50: Duration,
    p99: Duration,
    rps: f64,
    mean_batch: f64,
}

fn scrape(addr: &str, name: &str) -> f64 {
    let mut c = Conn::open(addr);
    let head = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let (_, body) = c.send(head.as_bytes(), b"").expect("metrics");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn run_level(addr: &str, body: &Arc<Vec<u8>>, clients: usize, o: &Opts) -> Level {
    let sum0 = scrape(addr, "htg_embed_batch_size_sum");
    let count0 = scrape(addr, "htg_embed_batch_size_count");
    let issued = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(o.seconds);
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let body = Arc::clone(body);
            let issued = Arc::clone(&issued);
            let addr = addr.to_string();
            let max = o.max_requests;
            std::thread::spawn(move || {
                let head = search_head(&addr, body.len());
                let mut conn = Conn::open(&addr);
                let (mut lat, mut non_2xx, mut errors) = (Vec::new(), 0, 0);
                while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max {
                    let t = Instant::now();
                    match conn.send(&head, &body) {
                        Ok((status, _)) => {
                            lat.push(t.elapsed());
                            if !(200..300).contains(&status) {
                                non_2xx += 1;
                            }
                        }
                        Err(_) => {
                            errors += 1;
                            conn = Conn::open(&addr);
                        }
                    }
                }
                (lat, non_2xx, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let (mut non_2xx, mut errors) = (0, 0);
    for h in handles {
        let (l, n, e) = h.join().expect("client thread");
        all.extend(l);
        non_2xx += n;
        errors += e;
    }
    let elapsed = start.elapsed();
    all.sort();
    let batches = scrape(addr, "htg_embed_batch_size_count") - count0;
    let images = scrape(addr, "htg_embed_batch_size_sum") - sum0;
    Level {
        clients,
        done: all.len(),
        non_2xx,
        errors,
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        mean_batch: if batches > 0.0 { images / batches } else { 0.0 },
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let o = opts();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let htg = env!("CARGO_BIN_EXE_htg");
    let tmp = tempfile::TempDir::new().unwrap();
    let idx = tmp.path().join("idx");
    let images = root.join("tests/fixtures/images");
    let st = Command::new(htg)
        .args([
            "index",
            images.to_str().unwrap(),
            "--index",
            idx.to_str().unwrap(),
        ])
        .arg("--model")
        .arg(&o.model)
        .stdout(Stdio::null())
        .status()
        .expect("htg index runs");
    assert!(st.success(), "htg index failed");
    let query = std::fs::read(images.join(QUERY)).unwrap();

    let (inproc, n_in) = in_process(&o.model, &idx, &query);

    let mut child = Command::new(htg)
        .args([
            "serve",
            "--index",
            idx.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("htg serve starts");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let server = Server(child);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .split("listening on http://")
        .nth(1)
        .expect("listening line")
        .trim()
        .to_string();
    let body = Arc::new(query);
    {
        let mut c = Conn::open(&addr);
        let head = search_head(&addr, body.len());
        for _ in 0..50 {
            let (status, _) = c.send(&head, &body).expect("warm-up");
            assert_eq!(status, 200);
        }
    }

    let model = o.model.file_name().unwrap().to_string_lossy().to_string();
    println!("htg serve load test: POST /search?k={K} with {QUERY} (model {model}), keep-alive, loopback");
    println!(
        "each level: {} s or {} requests; cores: {}",
        o.seconds,
        o.max_requests,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "in-process decode+preprocess+embed+search p50: {:.3} ms ({n_in} runs)",
        ms(inproc)
    );
    println!();
    println!("| clients | requests | non-2xx | errors | p50 ms | p99 ms | req/s | mean batch | p50 / in-process |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut bad = 0;
    for &c in &o.levels {
        let l = run_level(&addr, &body, c, &o);
        bad += l.non_2xx + l.errors;
        println!(
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.0} | {:.2} | {:.2} |",
            l.clients,
            l.done,
            l.non_2xx,
            l.errors,
            ms(l.p50),
            ms(l.p99),
            l.rps,
            l.mean_batch,
            l.p50.as_secs_f64() / inproc.as_secs_f64()
        );
    }
    drop(server);
    if bad > 0 {
        eprintln!("{bad} answers were not 2xx");
        std::process::exit(1);
    }
}
